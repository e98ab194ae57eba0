#!/usr/bin/env bash
# Cross-check vpm against perf: count the same KVM tracepoints for one VMM
# process over the same window, with perf (an independent counter) and with
# `vpm top --once`, and print both side by side.
#
#   scripts/kvm-perf-check.sh PID [SECONDS]
#
# Needs root, perf (Debian: linux-perf) and a built `vpm` (cargo xtask run builds it).
# Events that happen in the short gap between the two tools starting are the
# only expected difference; a steady VM shows the same rates.
set -euo pipefail

pid=${1:?usage: $0 PID [SECONDS]}
secs=${2:-5}
root=$(cd "$(dirname "$0")/.." && pwd)
vpm=${VPM:-$root/target/debug/vpm}
events=kvm:kvm_pio,kvm:kvm_mmio,kvm:kvm_userspace_exit,kvm:kvm_msi_set_irq,kvm:kvm_set_irq

[[ -d /proc/$pid ]] || { echo "no process $pid" >&2; exit 1; }
command -v perf >/dev/null || { echo "perf not found: apt-get install linux-perf" >&2; exit 1; }
[[ -x $vpm ]] || { echo "$vpm not built: run cargo build -p vpm-agent --bins (or set VPM=)" >&2; exit 1; }
[[ -d /sys/kernel/tracing/events ]] || mount -t tracefs nodev /sys/kernel/tracing

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$vpm" top --once --standalone --duration "${secs}s" --output json -o "$tmp/vpm.json" 2>/dev/null &
vpm_job=$!
perf stat -x, -e "$events" -p "$pid" -- sleep "$secs" 2>"$tmp/perf.csv" >/dev/null
wait "$vpm_job"

echo "event            perf      vpm"
for kind in pio mmio userspace_exit msi_set_irq set_irq; do
    perf_count=$(awk -F, -v ev="kvm:kvm_$kind" '$3 == ev { print $1 }' "$tmp/perf.csv")
    key=$kind
    [[ $kind == msi_set_irq ]] && key=msi
    [[ $kind == set_irq ]] && key=irq
    vpm_count=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); v=[x for x in d["vms"] if x["pid"]==int(sys.argv[2])]; print(v[0]["events"][sys.argv[3]] if v else 0)' "$tmp/vpm.json" "$pid" "$key")
    printf '%-16s %-9s %s\n' "$key" "${perf_count:-0}" "$vpm_count"
done
