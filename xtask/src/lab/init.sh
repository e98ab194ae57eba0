#!/bin/busybox sh
# /init of vpm's lab guest (built by `cargo xtask vm-test`; see xtask/src/lab/).
# Mounts the kernel file systems, loads the modules, mounts the host's workspace
# over 9p at the same path it has on the host, runs /etc/vpm-lab/run.sh and
# prints its exit status as `VPM-LAB-EXIT <status>` before powering off.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mkdir -p /proc /sys /dev /tmp /run /mnt
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t bpf bpf /sys/fs/bpf
mkdir -p /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup
ip link set lo up
for m in $(cat /etc/vpm-lab/modules); do
    modprobe "$m" || echo "VPM-LAB: modprobe $m failed"
done
WS=$(cat /etc/vpm-lab/workspace)
mkdir -p "$WS"
if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=1048576,cache=loose host "$WS"; then
    echo "VPM-LAB: cannot mount the workspace over 9p"
    echo "VPM-LAB-EXIT 125"
    poweroff -f
fi
echo "VPM-LAB: guest up: kernel $(uname -r), $(nproc) CPUs"
cd "$WS"
sh /etc/vpm-lab/run.sh
status=$?
sync
echo "VPM-LAB-EXIT $status"
poweroff -f
