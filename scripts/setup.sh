#!/usr/bin/env bash
# Hands NVMe controllers to Ferrite's user-space driver (SPDK's setup.sh,
# in small): binds them to vfio-pci and reserves hugepages; `reset` undoes it.
#
#   scripts/setup.sh [config] [PCI-ADDRESS...]   bind (default: every NVMe
#                                                controller with nothing mounted)
#   scripts/setup.sh reset [PCI-ADDRESS...]      back to the kernel's driver,
#                                                hugepages released
#   scripts/setup.sh status                      what is bound where
#
# Environment: HUGEMEM=MiB of 2 MiB hugepages to reserve (default 1024;
# 0 keeps what is reserved), NOIOMMU=1 switches vfio's unsafe no-IOMMU mode
# on where there is no IOMMU (needs a kernel built with CONFIG_VFIO_NOIOMMU;
# DMA then reaches all of memory: test machines only), FORCE=1 binds a
# controller even if one of its namespaces is mounted.
# Then open the device as nvme://PCI-ADDRESS/NAMESPACE (e.g. --device
# nvme://0000:00:04.0/1). Needs root.
set -euo pipefail

die() { printf 'setup.sh: error: %s\n' "$*" >&2; exit 1; }
say() { printf 'setup.sh: %s\n' "$*" >&2; }
SYS=/sys/bus/pci/devices
NVME_CLASS=0x010802

nvme_controllers() {
    local d
    for d in "$SYS"/*; do
        [ "$(cat "$d/class" 2>/dev/null)" = "$NVME_CLASS" ] && basename "$d"
    done
    return 0
}

driver_of() {
    local l
    l=$(readlink "$SYS/$1/driver" 2>/dev/null) || { echo none; return; }
    basename "$l"
}

check_bdf() {
    [[ $1 =~ ^[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$ ]] || die "'$1' is not a PCI address (DDDD:BB:DD.F)"
    [ -e "$SYS/$1" ] || die "no PCI function $1 ($SYS/$1 is missing)"
}

# Block devices of the controller at $1 (while the kernel's nvme driver has it).
block_devs() {
    local c
    for c in "$SYS/$1"/nvme/nvme*; do
        [ -e "$c" ] || continue
        ls "$c" 2>/dev/null | grep -E '^nvme[0-9]+(c[0-9]+)?n[0-9]+$' || true
    done
}

mounted() {
    local b
    for b in $(block_devs "$1"); do
        if grep -q "^/dev/${b}" /proc/mounts 2>/dev/null; then echo "$b"; return 0; fi
    done
    return 1
}

need_root() { [ "$(id -u)" = 0 ] || die "needs root (sysfs binds, hugepages)"; }

check_vfio() {
    modprobe vfio-pci 2>/dev/null || true
    modprobe vfio_iommu_type1 2>/dev/null || true
    [ -d /sys/bus/pci/drivers/vfio-pci ] || die "the vfio-pci driver is not available (modprobe vfio-pci failed: a kernel without VFIO?)"
    # IOMMU units (dmar*, ivhd*) show in /sys/class/iommu; iommu_groups
    # alone is not proof: vfio's no-IOMMU groups appear there too.
    if [ -n "$(ls /sys/class/iommu 2>/dev/null)" ]; then
        say "IOMMU present: type1 DMA mapping"
        return
    fi
    local p=/sys/module/vfio/parameters/enable_unsafe_noiommu_mode
    if [ ! -e "$p" ]; then
        die "no IOMMU (/sys/class/iommu is empty) and this kernel's vfio has no no-IOMMU mode (CONFIG_VFIO_NOIOMMU): enable the IOMMU (intel_iommu=on / amd_iommu=on on the kernel command line, VT-d/AMD-Vi in the firmware)"
    fi
    if [ "$(cat "$p")" != Y ]; then
        if [ "${NOIOMMU:-0}" = 1 ]; then
            echo 1 >"$p" || die "cannot switch vfio's no-IOMMU mode on"
            say "no IOMMU: vfio no-IOMMU mode switched on (NOIOMMU=1; unsafe: DMA reaches all memory)"
        else
            die "no IOMMU (/sys/class/iommu is empty) and vfio's no-IOMMU mode is off: enable the IOMMU (intel_iommu=on / amd_iommu=on), or on a test machine set NOIOMMU=1 (or boot with vfio.enable_unsafe_noiommu_mode=1)"
        fi
    else
        say "no IOMMU: vfio no-IOMMU mode (DMA to physical addresses; hugepages required)"
    fi
}

hugepages() {
    local mib=${HUGEMEM:-1024}
    [[ $mib =~ ^[0-9]+$ ]] || die "HUGEMEM='$mib' is not a number of MiB"
    [ "$mib" -eq 0 ] && return
    local want=$(( (mib + 1) / 2 )) f=/proc/sys/vm/nr_hugepages
    [ -w "$f" ] || die "$f is not writable: no hugepage support in this kernel?"
    local have; have=$(cat "$f")
    if [ "$have" -lt "$want" ]; then
        echo "$want" >"$f" || true
        have=$(cat "$f")
    fi
    [ "$have" -ge "$want" ] || die "only $have of $want 2 MiB hugepages could be reserved (memory too fragmented or too small: lower HUGEMEM, or reserve at boot with hugepages=$want)"
    say "hugepages: $have x 2 MiB reserved ($(grep HugePages_Free /proc/meminfo | awk '{print $2}') free)"
}

bind_vfio() {
    local bdf=$1 drv m
    drv=$(driver_of "$bdf")
    if [ "$drv" = vfio-pci ]; then say "$bdf: already bound to vfio-pci"; return; fi
    if m=$(mounted "$bdf"); then
        [ "${FORCE:-0}" = 1 ] || die "$bdf: /dev/$m is mounted; not taking the controller away (FORCE=1 to insist)"
    fi
    if [ "$drv" != none ]; then
        echo "$bdf" >"$SYS/$bdf/driver/unbind" || die "$bdf: cannot unbind from $drv"
    fi
    echo vfio-pci >"$SYS/$bdf/driver_override"
    echo "$bdf" >/sys/bus/pci/drivers_probe 2>/dev/null || true
    [ "$(driver_of "$bdf")" = vfio-pci ] || die "$bdf: vfio-pci did not bind (dmesg says why; with an IOMMU every device of the IOMMU group must be unbound)"
    local g; g=$(basename "$(readlink "$SYS/$bdf/iommu_group")")
    local node=/dev/vfio/$g
    [ -e "$node" ] || node=/dev/vfio/noiommu-$g
    [ -e "$node" ] || die "$bdf: no VFIO group device for IOMMU group $g"
    say "$bdf: $drv -> vfio-pci ($node); open it as nvme://$bdf/1"
}

unbind_vfio() {
    local bdf=$1 drv
    drv=$(driver_of "$bdf")
    echo >"$SYS/$bdf/driver_override" 2>/dev/null || true
    if [ "$drv" = vfio-pci ]; then
        echo "$bdf" >"$SYS/$bdf/driver/unbind" || die "$bdf: cannot unbind from vfio-pci (in use by a process?)"
    fi
    echo "$bdf" >/sys/bus/pci/drivers_probe 2>/dev/null || true
    say "$bdf: $drv -> $(driver_of "$bdf")"
}

cmd=config
case "${1:-}" in
    config|reset|status) cmd=$1; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
esac
devs=("$@")
[ ${#devs[@]} -gt 0 ] || mapfile -t devs < <(nvme_controllers)
for d in "${devs[@]}"; do check_bdf "$d"; done

case $cmd in
    status)
        for d in "${devs[@]}"; do
            printf '%s nvme driver=%s\n' "$d" "$(driver_of "$d")"
        done
        printf 'hugepages: %s reserved\n' "$(cat /proc/sys/vm/nr_hugepages)"
        ;;
    config)
        need_root
        [ ${#devs[@]} -gt 0 ] || die "no NVMe controller found (PCI class $NVME_CLASS)"
        check_vfio
        hugepages
        for d in "${devs[@]}"; do bind_vfio "$d"; done
        ;;
    reset)
        need_root
        for d in "${devs[@]}"; do unbind_vfio "$d"; done
        if [ "${HUGEMEM:-}" != keep ]; then
            echo 0 >/proc/sys/vm/nr_hugepages 2>/dev/null || true
            say "hugepages released ($(cat /proc/sys/vm/nr_hugepages) left: some in use)"
        fi
        ;;
esac
