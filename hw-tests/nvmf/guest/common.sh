# Helpers for the NVMe/TCP guest scripts (busybox sh), at /vm/common.sh.
# Markers the host driver waits for are lines `MARK <name>`.

log() { echo "guest: $*"; }
fail() { echo "FAIL: $*"; dmesg | grep -i nvme | tail -20; exit 1; }
mark() { echo "MARK $*"; }

# wait_for SECONDS COMMAND...: retry COMMAND every 0.1 s until it succeeds.
wait_for() {
    _n=$(($1 * 10)); shift
    while ! "$@" >/dev/null 2>&1; do
        _n=$((_n - 1))
        [ "$_n" -gt 0 ] || return 1
        sleep 0.1
    done
}

# nvme_dev_for NQN: the (multipath head) block device of namespace 1 of NQN.
nvme_dev_for() {
    for _b in /sys/block/nvme*n*; do
        case "${_b##*/}" in *c*) continue ;; esac
        if [ "$(cat "$_b/device/subsysnqn" 2>/dev/null)" = "$1" ]; then
            echo "/dev/${_b##*/}"
            return 0
        fi
    done
    return 1
}

no_dev_for() { ! nvme_dev_for "$1"; }

# fio_verify NAME DEVICE BS SIZE [EXTRA...]: io_uring random read/write with
# crc32c verification of everything written; prints IOPS, fails on error.
fio_verify() {
    _name=$1 _dev=$2 _bs=$3 _size=$4; shift 4
    fio --name="$_name" --filename="$_dev" --ioengine=io_uring --direct=1 \
        --rw=randrw --bs="$_bs" --iodepth=16 --size="$_size" \
        --verify=crc32c --verify_fatal=1 --do_verify=1 --randrepeat=0 \
        --verify_state_save=0 --eta=never "$@" --output="/tmp/fio-$_name.txt" \
        || { cat "/tmp/fio-$_name.txt"; fail "fio $_name on $_dev"; }
    grep -q 'err= 0' "/tmp/fio-$_name.txt" || { cat "/tmp/fio-$_name.txt"; fail "fio $_name reported errors"; }
    _r=$(sed -n 's/.*read: IOPS=\([0-9.k]*\).*/\1/p' "/tmp/fio-$_name.txt" | head -1)
    _w=$(sed -n 's/.*write: IOPS=\([0-9.k]*\).*/\1/p' "/tmp/fio-$_name.txt" | head -1)
    log "fio $_name ($_bs randrw $_size, verify crc32c): read IOPS $_r, write IOPS $_w, no verify error"
}

# blocks DEVICE: its size in 512-byte sectors.
blocks() { cat "/sys/block/${1##*/}/size"; }
# size_is DEVICE SECTORS
size_is() { [ "$(blocks "$1")" -eq "$2" ]; }
