#!/usr/bin/env bash
# The user-space NVMe driver against QEMU's emulated NVMe controller: boots
# the VM of hw-tests/vm with two emulated controllers (the first is handed
# to vfio-pci by scripts/setup.sh inside the guest, the second stays with
# the kernel) and runs the guest cases of hw-tests/nvme/guest/run.sh.
#
#   hw-tests/nvme/run.sh [noiommu|iommu] [CASE...]
#
# noiommu (default): vfio.enable_unsafe_noiommu_mode=1, DMA to physical
# addresses; iommu: an emulated Intel IOMMU, type1 DMA mapping.
# Cases (default: all but bench): setup-errors identify io queues errors
# timeout model signal exit reset bench.
# FERRITE_NVME_GUEST names the guest binary (default
# target/release/nvme-guest); MODEL_ARGS="SEED STEPS" for the store model
# test; VM_CACHE as for vm-run.sh (default ./.vm-cache of the repository).
# Exit status 0 when every case passed. The guest's output is on stdout.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
VM_DIR=${VM_DIR:-$repo/hw-tests/vm}
export VM_CACHE=${VM_CACHE:-$repo/.vm-cache}
BIN=${FERRITE_NVME_GUEST:-${CARGO_TARGET_DIR:-$repo/target}/release/nvme-guest}
die() { printf 'nvme-hw: error: %s\n' "$*" >&2; exit 2; }

mode=noiommu
if [ $# -gt 0 ] && { [ "$1" = iommu ] || [ "$1" = noiommu ]; }; then mode=$1; shift; fi
cases=("$@")
[ ${#cases[@]} -gt 0 ] || cases=(setup-errors identify io queues errors timeout model signal exit reset)
[ -x "$BIN" ] || die "no guest binary at $BIN (cargo build --release -p ferrite-hw-tests --bin nvme-guest, or set FERRITE_NVME_GUEST)"
[ -x "$VM_DIR/vm-run.sh" ] || die "no VM harness at $VM_DIR"
[ -f "$VM_CACHE/vmlinux" ] || [ -f "$VM_CACHE/vmlinuz" ] || die "no VM cache at $VM_CACHE (run $VM_DIR/vm-prepare.sh with VM_CACHE set)"

work=$(mktemp -d "${TMPDIR:-/tmp}/nvme-hw.XXXXXX")
trap 'rm -rf "$work"' EXIT
truncate -s "${NVME_IMG_SIZE:-1G}" "$work/nvme0.img"
truncate -s 64M "$work/nvme1.img"
if [ "$mode" = iommu ]; then
    opts=(--iommu)
else
    opts=(--append vfio.enable_unsafe_noiommu_mode=1)
fi
"$VM_DIR/vm-run.sh" --nvme "$work/nvme0.img" --nvme "$work/nvme1.img" "${opts[@]}" \
    -m "${VM_MEM:-2048}" -t "${VM_TIMEOUT:-900}" \
    -a "$BIN:/vm/files/nvme-guest" -a "$repo/scripts/setup.sh:/vm/setup.sh" \
    -e "MODEL_ARGS=${MODEL_ARGS:-1 700}" -e "BENCH_SECS=${BENCH_SECS:-5}" \
    -e "BENCH_MODES=${BENCH_MODES:-adaptive busy}" -e "RUST_LOG=${RUST_LOG:-info}" \
    "$here/guest/run.sh" "${cases[@]}"
