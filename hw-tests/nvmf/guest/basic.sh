#!/bin/sh
# The kernel's NVMe/TCP initiator against a Ferrite node the host
# forwards to 10.0.2.100:4420 (subsystems) and :8009 (discovery):
# discover, connect, fio verify (io_uring, 4k and 128k randrw, crc32c),
# disconnect; again with header and data digests and with SQ flow control
# disabled (C2H SUCCESS); connect-all through discovery; a namespace resize
# the host sees; a host NQN not on a subsystem's allowed list refused.
# Env: NQN (exported to any host), RNQN (allows this guest's host NQN
# only; default: NQN), NEW_SIZE (bytes, for the resize), FIO_SIZE_4K,
# FIO_SIZE_128K.
set -u
. /vm/common.sh
nqn=${NQN:?}
rnqn=${RNQN:-$nqn}
modprobe nvme_tcp || fail "modprobe nvme_tcp"

# nvme-cli's admin commands and the NVM commands fio does not send.
admin_and_nvm_checks() {
    _dev=$1
    _ctrl=/dev/$(ls /sys/block/"${_dev##*/}"/device/ 2>/dev/null | grep -m1 '^nvme[0-9]*$')
    [ -c "$_ctrl" ] || _ctrl=/dev/nvme0
    nvme id-ctrl "$_ctrl" >/tmp/idc.txt || fail "nvme id-ctrl"
    grep -q "subnqn *: $nqn" /tmp/idc.txt || { cat /tmp/idc.txt; fail "id-ctrl subnqn"; }
    grep -E '^(mn|cmic|mdts|kas|anacap|oncs|fuses|ioccsz) ' /tmp/idc.txt
    nvme id-ns "$_dev" -n 1 | grep -E '^(nsze|nmic|anagrpid|nguid) ' || fail "nvme id-ns"
    nvme ns-descs "$_dev" -n 1 | grep -E 'nguid|uuid|csi' || fail "nvme ns-descs"
    nvme smart-log "$_ctrl" >/dev/null || fail "nvme smart-log"
    nvme error-log "$_ctrl" -e 1 >/dev/null || fail "nvme error-log"
    nvme fw-log "$_ctrl" >/dev/null || fail "nvme fw-log"
    nvme ana-log "$_ctrl" | grep -E 'ANA state|state' | head -3 || fail "nvme ana-log"
    nvme get-feature "$_ctrl" -f 7 -H | grep -i 'queues' | head -2 || fail "get-feature 7"
    # Write a pattern, then zero a part (Write Zeroes) and deallocate
    # another (Dataset Management): both must read as zeroes.
    dd if=/dev/urandom of=/tmp/pat bs=4096 count=8 2>/dev/null
    dd if=/tmp/pat of="$_dev" bs=4096 count=8 oflag=direct 2>/dev/null || fail "pattern write"
    # 4 KiB each, in logical blocks of this namespace (512 or 4096 bytes).
    _lb=$(( 4096 / $(cat /sys/block/"${_dev##*/}"/queue/logical_block_size) ))
    nvme write-zeroes "$_dev" -n 1 -s 0 -c $((_lb - 1)) >/dev/null || fail "nvme write-zeroes"
    nvme dsm "$_dev" -n 1 -d -s "$_lb" -b "$_lb" >/dev/null || fail "nvme dsm deallocate"
    nvme flush "$_dev" -n 1 >/dev/null || fail "nvme flush"
    dd if="$_dev" of=/tmp/back bs=4096 count=8 iflag=direct 2>/dev/null
    dd if=/dev/zero of=/tmp/z bs=4096 count=2 2>/dev/null
    dd if=/tmp/pat of=/tmp/want bs=4096 skip=2 count=6 2>/dev/null
    cat /tmp/z /tmp/want >/tmp/want2
    cmp /tmp/back /tmp/want2 || fail "write-zeroes/deallocate did not read back as zeroes followed by the pattern"
    log "admin commands, write-zeroes, dsm, flush: OK"
    # A controller reset (fabrics: the host reconnects every queue).
    echo 1 >"/sys/class/nvme/${_ctrl##*/}/reset_controller" || fail "reset_controller"
    wait_for 30 ctrl_live "${_ctrl##*/}" || fail "controller not live after reset"
    dd if="$_dev" of=/dev/null bs=4096 count=16 iflag=direct 2>/dev/null || fail "I/O after reset"
    log "controller reset and reconnect: OK"
}
ctrl_live() { [ "$(cat "/sys/class/nvme/$1/state")" = live ]; }

log "discovery on 8009"
nvme discover -t tcp -a "$VM_HOST" -s 8009 >/tmp/disc.txt 2>&1 || { cat /tmp/disc.txt; fail "nvme discover"; }
cat /tmp/disc.txt
grep -q "subnqn:  *$nqn" /tmp/disc.txt || fail "discovery log lacks $nqn"
grep -q "subnqn:  *$rnqn" /tmp/disc.txt || fail "discovery log lacks $rnqn (this host is on its list)"
grep -q "traddr:  *10.0.2.100" /tmp/disc.txt || fail "discovery log does not advertise 10.0.2.100"
grep -q "traddr:  *127.0.0.1" /tmp/disc.txt && fail "discovery log advertises the host's loopback"
nvme discover -t tcp -a "$VM_HOST" -s 4420 >/tmp/disc2.txt 2>&1 || { cat /tmp/disc2.txt; fail "discovery on the subsystem port"; }
grep -q "subnqn:  *$nqn" /tmp/disc2.txt || fail "discovery on the subsystem port lacks $nqn"
if [ "$rnqn" != "$nqn" ]; then
    nvme discover -t tcp -a "$VM_HOST" -s 8009 --hostnqn=nqn.2014-08.org.example:not-allowed >/tmp/disc3.txt 2>&1 ||
        { cat /tmp/disc3.txt; fail "discovery as another host"; }
    grep -q "subnqn:  *$rnqn" /tmp/disc3.txt && fail "discovery showed $rnqn to a host not on its list"
    grep -q "subnqn:  *$nqn" /tmp/disc3.txt || fail "discovery as another host lacks $nqn"
    log "discovery as a host not on $rnqn's list: only $nqn listed"
fi
mark discovery-ok

for mode in plain digests sqflow; do
    case $mode in
        plain) opts= ;;
        digests) opts="--hdr-digest --data-digest" ;;
        sqflow) opts="--disable-sqflow" ;;
    esac
    log "connect ($mode)"
    # shellcheck disable=SC2086
    nvme connect -t tcp -a "$VM_HOST" -s 4420 -n "$nqn" $opts || fail "nvme connect $mode"
    wait_for 20 nvme_dev_for "$nqn" || fail "no namespace appeared ($mode)"
    dev=$(nvme_dev_for "$nqn")
    nvme list | grep -E 'Node|nvme'
    if [ "$mode" = plain ]; then
        admin_and_nvm_checks "$dev"
    fi
    if [ "$mode" = sqflow ]; then
        fio_verify "sqflow-4k" "$dev" 4k 8M
    else
        fio_verify "$mode-4k" "$dev" 4k "${FIO_SIZE_4K:-32M}"
        fio_verify "$mode-128k" "$dev" 128k "${FIO_SIZE_128K:-64M}"
    fi
    nvme disconnect -n "$nqn" || fail "nvme disconnect $mode"
    wait_for 20 no_dev_for "$nqn" || fail "namespace still there after disconnect ($mode)"
    mark "$mode-ok"
done

log "connect-all through discovery (entries advertise 10.0.2.100)"
nvme connect-all -t tcp -a "$VM_HOST" -s 8009 || fail "nvme connect-all"
wait_for 20 nvme_dev_for "$nqn" || fail "connect-all: no namespace"
dev=$(nvme_dev_for "$nqn")
if [ "$rnqn" != "$nqn" ]; then
    # The allowed host got in through discovery too.
    wait_for 20 nvme_dev_for "$rnqn" || fail "connect-all: no namespace of $rnqn (this host is allowed)"
    rdev=$(nvme_dev_for "$rnqn")
    dd if=/dev/urandom of=/tmp/rpat bs=4096 count=4 2>/dev/null
    dd if=/tmp/rpat of="$rdev" bs=4096 count=4 oflag=direct 2>/dev/null || fail "write to $rnqn"
    dd if="$rdev" of=/tmp/rback bs=4096 count=4 iflag=direct 2>/dev/null || fail "read from $rnqn"
    cmp /tmp/rpat /tmp/rback || fail "$rnqn read back other data"
    log "allowed host: $rnqn connected through discovery as $rdev ($(blocks "$rdev") sectors), data read back"
    nvme disconnect -n "$rnqn" >/dev/null || fail "disconnect $rnqn"
fi
before=$(blocks "$dev")
log "resize: $dev has $before sectors; asking the host to grow the volume"
mark resize-request
want=$((${NEW_SIZE:?} / 512))
wait_for 30 size_is "$dev" "$want" || fail "size stayed $(blocks "$dev") sectors, expected $want"
dmesg | grep -i 'capacity change' | tail -1
log "resize seen: $before -> $(blocks "$dev") sectors"
dd if="$dev" of=/dev/null bs=4096 count=1 skip=$((want / 8 - 1)) iflag=direct 2>/dev/null || fail "reading the new last block"
mark resize-ok
nvme disconnect -n "$nqn" || fail "disconnect after connect-all"

log "a host NQN that is not allowed"
if nvme connect -t tcp -a "$VM_HOST" -s 4420 -n "$rnqn" --hostnqn=nqn.2014-08.org.example:not-allowed 2>/tmp/deny.txt; then
    fail "a host not on the list of $rnqn connected"
fi
cat /tmp/deny.txt
dmesg | grep -i 'not allowed' | tail -1 | grep -q . || fail "no 'not allowed' in the kernel log"
no_dev_for "$rnqn" || fail "a namespace of $rnqn appeared for the refused host"
log "host nqn.2014-08.org.example:not-allowed refused by $rnqn"
mark wrong-nqn-ok
echo "NVMF BASIC OK"
