#!/bin/sh
# Native NVMe multipath over two Ferrite gateways exporting one replicated
# volume: 10.0.2.100:4420 (a node holding a replica: ANA optimized) and
# :4421 (a node without one: non-optimized). Checks the ANA states the
# kernel sees, then runs fio verify while the host SIGKILLs the optimized
# gateway: I/O must move to the other path with no verify error. Then
# waits for that path to turn optimized (meta re-replicates the volume onto
# its node; the change reaches the host by an ANA async event).
# Env: NQN, FIO_SIZE, HEAL_WAIT (seconds; 0 skips the last check).
set -u
. /vm/common.sh
nqn=${NQN:?}
modprobe nvme_tcp || fail "modprobe nvme_tcp"
grep -q Y /sys/module/nvme_core/parameters/multipath || fail "native multipath is off in the guest kernel"
nvme connect -t tcp -a "$VM_HOST" -s 4420 -n "$nqn" || fail "connect path A"
nvme connect -t tcp -a "$VM_HOST" -s 4421 -n "$nqn" || fail "connect path B"
wait_for 20 nvme_dev_for "$nqn" || fail "no namespace"
dev=$(nvme_dev_for "$nqn")
nvme list-subsys
# The per-path nodes nvmeXcYnZ, by the port their controller uses.
path_for() {
    for _p in /sys/block/nvme*c*n1; do
        _c=$(basename "$(readlink -f "$_p/device")")
        grep -q "trsvcid=$1" "/sys/class/nvme/$_c/address" 2>/dev/null && { echo "${_p##*/}"; return 0; }
    done
    return 1
}
wait_for 20 path_for 4421 || fail "no second path"
pa=$(path_for 4420); pb=$(path_for 4421)
ana() { cat "/sys/block/$1/ana_state"; }
# ana_is PATH STATE (a function, so that wait_for reads the state anew each time)
ana_is() { [ "$(ana "$1")" = "$2" ]; }
log "paths: $pa ($(ana "$pa")), $pb ($(ana "$pb")); head $dev"
wait_for 20 ana_is "$pa" optimized || fail "path A is $(ana "$pa"), not optimized"
[ "$(ana "$pb")" = non-optimized ] || fail "path B is $(ana "$pb"), not non-optimized"
mark ana-initial-ok

log "fio verify; the host kills the optimized target while it runs"
mark fio-start
fio --name=mpath --filename="$dev" --ioengine=io_uring --direct=1 --rw=randwrite \
    --bs=4k --iodepth=16 --size="${FIO_SIZE:-48M}" --verify=crc32c --verify_fatal=1 \
    --do_verify=1 --randrepeat=0 --verify_state_save=0 --eta=never --output=/tmp/mpath.txt
rc=$?
grep -E 'err=|IOPS=|verify|^ +lat \(' /tmp/mpath.txt
[ $rc -eq 0 ] && grep -q 'err= 0' /tmp/mpath.txt || { cat /tmp/mpath.txt; fail "fio verify across the failover"; }
mark fio-done
_w=$(sed -n 's/.*write: IOPS=\([0-9.k]*\).*/\1/p' /tmp/mpath.txt | head -1)
_r=$(sed -n 's/.*read: IOPS=\([0-9.k]*\).*/\1/p' /tmp/mpath.txt | head -1)
log "fio verify across the failover: write IOPS $_w, verify-read IOPS $_r, no verify error"
log "after: $pa $(ana "$pa" 2>/dev/null || echo gone) ($(cat "/sys/class/nvme/$(basename "$(readlink -f "/sys/block/$pa/device")")/state" 2>/dev/null)), $pb $(ana "$pb")"
dmesg | grep -iE 'nvme|failover|reconnect' | tail -12
mark failover-ok
if [ "${HEAL_WAIT:-0}" -gt 0 ]; then
    log "waiting for $pb to become optimized (re-replication onto its node)"
    wait_for "$HEAL_WAIT" ana_is "$pb" optimized || fail "path B stayed $(ana "$pb")"
    dd if="$dev" of=/dev/null bs=4k count=256 iflag=direct 2>/dev/null || fail "I/O after the ANA change"
    log "ANA change followed: $pb $(ana "$pb")"
    mark ana-heal-ok
fi
nvme disconnect -n "$nqn" >/dev/null 2>&1
echo "NVMF MULTIPATH OK"
