#!/usr/bin/env bash
# bench-nvmf: fio inside the VM of hw-tests/vm against Ferrite's NVMe/TCP
# export of a volume and, in the same run and the same guest, against the
# iSCSI export of the same volume: one real node (etcd + ferrite-meta +
# ferrited on the host's loopback), a volume in an RF 1 pool exported by
# `volume_export` (NVMe/TCP subsystem nqn.2026-11.io.ferrite:vol0 and
# iSCSI target iqn.2026-11.io.ferrite:vol0 LUN 0 of the same ferrited).
# 4k random read and write at QD1 and QD32, 128k sequential read and
# write at QD8. Jobs alternate between the protocols so that drift of the
# host's load hits both alike.
#
#   benchmarks/bench-nvmf.sh            RUNTIME=8 SIZE=64M (defaults)
#
# Binaries from FERRITE_BIN_DIR (default target/release); VM_CACHE as for
# hw-tests/vm/vm-run.sh. Prints a table, then `RESULT <name> <value> <unit>`
# lines: IOPS, p50 and p99 completion latency (µs) per protocol and job,
# and NVMe/iSCSI ratios. Without KVM the guest is emulated (TCG): the
# figures compare the two protocols on this machine; they are not a
# measure of either target.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
VM_DIR=${VM_DIR:-$repo/hw-tests/vm}
export VM_CACHE=${VM_CACHE:-$repo/.vm-cache}
RUNTIME=${RUNTIME:-8}
SIZE=${SIZE:-64M}
die() { printf 'bench-nvmf: error: %s\n' "$*" >&2; exit 2; }
say() { printf 'bench-nvmf: %s\n' "$*" >&2; }
# shellcheck source=hw-tests/nvmf/cluster.sh
. "$repo/hw-tests/nvmf/cluster.sh"
fc_check_bins
[ -x "$VM_DIR/vm-run.sh" ] || die "no VM harness at $VM_DIR"
[ -f "$VM_CACHE/vmlinux" ] || [ -f "$VM_CACHE/vmlinuz" ] || die "no VM cache at $VM_CACHE (make vm-cache)"

work=$(mktemp -d "${TMPDIR:-/tmp}/bench-nvmf.XXXXXX")
pids=()
# shellcheck disable=SC2317 # called through the EXIT trap
cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

RUST_LOG=${RUST_LOG:-warn}
fc_start_meta
fc_start_node node1
fc_rpc node1 pool_create '{"name": "rf1", "replica_count": 1}' >/dev/null
fc_rpc node1 volume_create '{"name": "vol0", "pool": "rf1", "size": 268435456}' >/dev/null
fc_rpc node1 volume_export '{"name": "vol0", "nbd": false}' >/dev/null
nvme_port=${node_nvmf[node1]}
iscsi_port=${node_iscsi[node1]}

mkdir -p "$work/out"
cat >"$work/guest.sh" <<'GUEST'
#!/bin/sh
set -u
fail() { echo "FAIL: $*"; dmesg | tail -20; exit 1; }
wait_for() { _n=$(($1 * 10)); shift; while ! "$@" >/dev/null 2>&1; do _n=$((_n - 1)); [ "$_n" -gt 0 ] || return 1; sleep 0.1; done; }
nvme_dev() {
    for b in /sys/block/nvme*n*; do
        case "${b##*/}" in *c*) continue ;; esac
        [ "$(cat "$b/device/subsysnqn" 2>/dev/null)" = "nqn.2026-11.io.ferrite:vol0" ] && { echo "/dev/${b##*/}"; return 0; }
    done
    return 1
}
scsi_dev() {
    for b in /sys/class/iscsi_session/session*/device/target*/*/block/sd*; do
        [ -e "$b" ] && { echo "/dev/${b##*/}"; return 0; }
    done
    return 1
}
modprobe nvme_tcp && modprobe iscsi_tcp || fail modprobe
nvme connect -t tcp -a "$VM_HOST" -s 4420 -n nqn.2026-11.io.ferrite:vol0 || fail "nvme connect"
wait_for 20 nvme_dev || fail "no NVMe namespace"
iqn=iqn.2026-11.io.ferrite:vol0
iscsiadm -m node -o new -T "$iqn" -p "$VM_HOST:3260" >/dev/null || fail "iscsiadm new"
iscsiadm -m node -T "$iqn" -p "$VM_HOST:3260" --login >/dev/null || fail "iscsi login"
wait_for 30 scsi_dev || fail "no SCSI disk"
nv=$(nvme_dev); sc=$(scsi_dev)
wait_for 10 test -b "$sc"
echo "guest: NVMe/TCP $nv, iSCSI $sc (same volume)"
# Reads of never-written space would cost nothing: write the area first.
fio --name=fill --filename="$nv" --ioengine=io_uring --direct=1 --rw=write --bs=128k --iodepth=8 \
    --size="$SIZE" --eta=never --output=/dev/null || fail "prefill"
for job in "randread 4k 1" "randwrite 4k 1" "randread 4k 32" "randwrite 4k 32" "read 128k 8" "write 128k 8"; do
    set -- $job
    for proto in nvmf iscsi; do
        dev=$nv; [ "$proto" = iscsi ] && dev=$sc
        name="$proto-$1-$2-qd$3"
        fio --name="$name" --filename="$dev" --ioengine=io_uring --direct=1 --rw="$1" --bs="$2" \
            --iodepth="$3" --size="$SIZE" --time_based --runtime="$RUNTIME" --ramp_time=1 \
            --randrepeat=0 --eta=never --output-format=json --output="/mnt/host/$name.json" || fail "fio $name"
        echo "guest: done $name"
    done
done
nvme disconnect -n nqn.2026-11.io.ferrite:vol0 >/dev/null
iscsiadm -m node -T "$iqn" -p "$VM_HOST:3260" --logout >/dev/null
echo "BENCH DONE"
GUEST
chmod +x "$work/guest.sh"

say "fio in the VM, ${RUNTIME}s per job, ${SIZE} area; one ferrited: NVMe/TCP on 127.0.0.1:$nvme_port, iSCSI on 127.0.0.1:$iscsi_port, vol0 in an RF 1 pool"
"$VM_DIR/vm-run.sh" --fwd "4420:$nvme_port" --fwd "3260:$iscsi_port" --share "$work/out" \
    -e "RUNTIME=$RUNTIME" -e "SIZE=$SIZE" "$work/guest.sh" >"$work/vm.log" 2>&1 || {
    tail -40 "$work/vm.log" >&2
    die "the guest failed"
}
grep -q 'BENCH DONE' "$work/vm.log" || { tail -40 "$work/vm.log" >&2; die "the guest did not finish"; }
accel=$(sed -n 's/.*accel=\([a-z]*\).*/\1/p' "$work/vm.log" | tail -1)

python3 - "$work/out" "$accel" <<'PY'
import json, os, sys
out, accel = sys.argv[1], sys.argv[2]
jobs = [("randread", "4k", 1), ("randwrite", "4k", 1), ("randread", "4k", 32), ("randwrite", "4k", 32), ("read", "128k", 8), ("write", "128k", 8)]
res = {}
for rw, bs, qd in jobs:
    for proto in ("nvmf", "iscsi"):
        with open(os.path.join(out, f"{proto}-{rw}-{bs}-qd{qd}.json")) as f:
            text = f.read()
        j = json.loads(text[text.index("{"):])["jobs"][0]
        side = j["write" if "write" in rw else "read"]
        pct = side["clat_ns"].get("percentile", {})
        res[(proto, rw, bs, qd)] = (side["iops"], pct.get("50.000000", 0) / 1000, pct.get("99.000000", 0) / 1000, side["bw"] / 1024)
print(f"bench-nvmf (guest: {accel}; one ferrited, the same volume behind both protocols)")
print(f"{'job':<20} {'NVMe/TCP IOPS':>14} {'p50 us':>9} {'p99 us':>9} {'iSCSI IOPS':>11} {'p50 us':>9} {'p99 us':>9} {'ratio':>6}")
lines = []
for rw, bs, qd in jobs:
    n, i = res[("nvmf", rw, bs, qd)], res[("iscsi", rw, bs, qd)]
    ratio = n[0] / i[0] if i[0] else 0
    key = f"{rw}_{bs}_qd{qd}"
    print(f"{key:<20} {n[0]:>14.0f} {n[1]:>9.0f} {n[2]:>9.0f} {i[0]:>11.0f} {i[1]:>9.0f} {i[2]:>9.0f} {ratio:>6.2f}")
    for proto, r in (("nvmf", n), ("iscsi", i)):
        lines.append(f"RESULT {proto}_{key}_iops {r[0]:.0f} IOPS")
        lines.append(f"RESULT {proto}_{key}_p50 {r[1]:.0f} us")
        lines.append(f"RESULT {proto}_{key}_p99 {r[2]:.0f} us")
        if bs == "128k":
            lines.append(f"RESULT {proto}_{key}_bw {r[3]:.1f} MiB/s")
    lines.append(f"RESULT nvmf_vs_iscsi_{key}_iops_ratio {ratio:.2f} x")
print("\n".join(lines))
PY
