import socket,sys,json
s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f=s.makefile('rw')
print(f.readline().strip())
for c in sys.argv[2:]:
    f.write(c+"\n"); f.flush()
    while True:
        l=f.readline(); print(l.strip())
        if '"return"' in l or '"error"' in l: break
