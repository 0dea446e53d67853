#!/bin/bash
# Guest side of the VFIO NVMe tests (hw-tests/nvme/run.sh boots the VM).
#   run.sh CASE...   cases of /vm/files/nvme-guest, plus `setup-errors`
#                    and `bench` (kernel fio and the driver, same device)
# The first NVMe controller (vm-run.sh --nvme) is the test device; a second
# one, when present, stays with the kernel's nvme driver (for the "not bound
# to vfio-pci" error). Prints `NVME-HW PASS|FAIL case` per case.
set -u
export RUST_LOG=${RUST_LOG:-info}
BIN=/vm/files/nvme-guest
SETUP=/vm/setup.sh
ctrls=()
for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/class")" = 0x010802 ] && ctrls+=("${d##*/}")
done
[ ${#ctrls[@]} -gt 0 ] || { echo "NVME-HW FAIL setup: no NVMe controller"; exit 1; }
bdf=${ctrls[0]}
other=${ctrls[1]:-}
failed=0
result() { echo "NVME-HW $1 $2"; [ "$1" = PASS ] || failed=1; }

bind() {
    if HUGEMEM=${HUGEMEM:-256} "$SETUP" config "$bdf"; then return 0; fi
    echo "NVME-HW FAIL setup: scripts/setup.sh could not bind $bdf"
    exit 1
}

fio_kernel() {
    local dev=$1 rw=$2 qd=$3 secs=$4
    fio --name=k --filename="$dev" --ioengine=io_uring --direct=1 --rw="$rw" --bs=4k \
        --iodepth="$qd" --time_based --runtime="$secs" --size=1G --norandommap \
        --randrepeat=0 --output-format=json --output=/tmp/fio.json >/dev/null 2>/tmp/fio.err ||
        { cat /tmp/fio.err; return 1; }
    # usr_cpu/sys_cpu are percentages of the job's run time.
    awk -v rw="$rw" -v qd="$qd" '
        /"(read|write|trim|sync)" : \{/ { sect=$1; gsub(/"/, "", sect) }
        /"total_ios"/ { gsub(/[",]/, "", $3); if (sect == (rw ~ /read/ ? "read" : "write")) ios=$3 }
        /"runtime"/ { gsub(/[",]/, "", $3); if (sect == (rw ~ /read/ ? "read" : "write") && $3 > 0) ms=$3 }
        /"usr_cpu"/ { gsub(/[",]/, "", $3); usr=$3 }
        /"sys_cpu"/ { gsub(/[",]/, "", $3); sys=$3 }
        END { secs=ms/1000; cpu=(usr+sys)/100*secs;
              printf "BENCH engine=kernel-io_uring rw=%s qd=%s ios=%d secs=%.3f iops=%.0f cpu_s=%.3f cpu_us_per_io=%.1f\n",
                     rw, qd, ios, secs, ios/secs, cpu, cpu*1e6/(ios>0?ios:1) }' /tmp/fio.json
}

for case in "$@"; do
    case $case in
        setup-errors)
            # No hugepages possible / nonsense inputs: clear errors, no harm.
            out=$("$SETUP" config 0000:00:1f.6 2>&1); rc=$?
            echo "$out"
            if [ $rc -ne 0 ] && grep -q "no PCI function" <<<"$out"; then
                out=$(HUGEMEM=abc "$SETUP" config "$bdf" 2>&1); rc=$?
                echo "$out"
                if [ $rc -ne 0 ] && grep -q "not a number" <<<"$out"; then
                    result PASS setup-errors
                else result FAIL setup-errors; fi
            else result FAIL setup-errors; fi
            ;;
        reset)
            # Undo and redo: the kernel's driver gets the controller back.
            "$SETUP" reset "$bdf" && [ "$(basename "$(readlink /sys/bus/pci/devices/$bdf/driver)")" = nvme ] &&
                [ "$(cat /proc/sys/vm/nr_hugepages)" = 0 ] && result PASS reset || result FAIL reset
            ;;
        bench)
            secs=${BENCH_SECS:-5}
            mdev -s 2>/dev/null || true
            for i in $(seq 50); do [ -n "$(ls /sys/bus/pci/devices/$bdf/nvme/*/ 2>/dev/null | grep -E '^nvme[0-9]+n1$')" ] && break; sleep 0.1; done
            blk=$(ls /sys/bus/pci/devices/$bdf/nvme/*/ 2>/dev/null | grep -E '^nvme[0-9]+n1$' | head -1)
            [ -b "/dev/$blk" ] || mknod "/dev/$blk" b "$(cut -d: -f1 /sys/block/$blk/dev)" "$(cut -d: -f2 /sys/block/$blk/dev)"
            ok=1
            for rw in randread randwrite; do
                for qd in 1 32; do fio_kernel "/dev/$blk" $rw $qd "$secs" || ok=0; done
            done
            bind
            for mode in ${BENCH_MODES:-adaptive busy}; do
                "$BIN" bench "$bdf" "$secs" "$mode" || ok=0
            done
            [ $ok = 1 ] && result PASS bench || result FAIL bench
            ;;
        *)
            bind
            case $case in
                errors) set -- $other ;;
                model) set -- ${MODEL_ARGS:-1 300} ;;
                *) set -- ;;
            esac
            "$BIN" "$case" "$bdf" "$@" 2>&1 | tee /tmp/case.log
            rc=${PIPESTATUS[0]}
            if [ "$case" = signal ] || [ "$case" = exit ]; then
                grep -q "shut down cleanly" /tmp/case.log || rc=1
            fi
            [ "$rc" = 0 ] && result PASS "$case" || result FAIL "$case"
            ;;
    esac
done
exit $failed
