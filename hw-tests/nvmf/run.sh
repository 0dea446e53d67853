#!/usr/bin/env bash
# NVMe/TCP with the Linux kernel initiator: boots the guest of ../shared/vm
# against Ferrite targets on the host's loopback and runs the guest checks.
#
#   hw-tests/nvmf/run.sh [basic] [multipath]      (default: both)
#
# basic:     one target; discovery, connect, fio verify (io_uring, 4k and
#            128k randrw, crc32c) plain / with header+data digests / with SQ
#            flow control disabled, connect-all, a resize the host sees, a
#            host NQN that is refused.
# multipath: two target processes exporting one volume (a shared file
#            standing in for a replicated volume); ANA states and an ANA
#            change the kernel follows; the optimized target is SIGKILLed
#            during fio verify and I/O moves to the other path.
#
# The target is any program that prints `READY ... listen=H:P` like
# ferrite-nvmf-testd and takes its options; FERRITE_NVMF_TESTD names it
# (default: target/release/ferrite-nvmf-testd). VM_CACHE as for vm-run.sh
# (default: ./.vm-cache of the repository). Exit status 0 when every case
# passed; the case logs stay in $NVMF_HW_KEEP if set.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
TESTD=${FERRITE_NVMF_TESTD:-$repo/target/release/ferrite-nvmf-testd}
VM_DIR=${VM_DIR:-$repo/hw-tests/vm}
export VM_CACHE=${VM_CACHE:-$repo/.vm-cache}
GUEST_NQN=nqn.2014-08.org.nvmexpress:uuid:6b1b2fd1-7c86-4e4b-9a33-6f2f5b9c0a11
NQN=nqn.2026-11.io.ferrite:vol0

die() { printf 'nvmf-hw: error: %s\n' "$*" >&2; exit 2; }
say() { printf 'nvmf-hw: %s\n' "$*" >&2; }
[ -x "$TESTD" ] || die "no target binary at $TESTD (cargo build --release --bins, or set FERRITE_NVMF_TESTD)"
[ -x "$VM_DIR/vm-run.sh" ] || die "no VM harness at $VM_DIR"
[ -f "$VM_CACHE/vmlinux" ] || [ -f "$VM_CACHE/vmlinuz" ] || die "no VM cache at $VM_CACHE (run $VM_DIR/vm-prepare.sh with VM_CACHE set)"

work=$(mktemp -d "${TMPDIR:-/tmp}/nvmf-hw.XXXXXX")
pids=()
vmpid=
# shellcheck disable=SC2317 # called through the EXIT trap
cleanup() {
    [ -z "$vmpid" ] || kill "$vmpid" 2>/dev/null || true
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ -n "${NVMF_HW_KEEP:-}" ]; then
        mkdir -p "$NVMF_HW_KEEP" && cp -r "$work"/. "$NVMF_HW_KEEP"/
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start_testd NAME ARGS...: starts a target, waits for READY; sets $ready.
start_testd() {
    local name=$1; shift
    RUST_LOG=${RUST_LOG:-info} "$TESTD" --rpc-socket "$work/$name.sock" "$@" >"$work/$name.out" 2>"$work/$name.log" &
    pids+=($!)
    local pid=$!
    for _ in $(seq 300); do
        if grep -q '^READY' "$work/$name.out" 2>/dev/null; then
            ready=$(grep '^READY' "$work/$name.out")
            eval "${name}_pid=$pid"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || { cat "$work/$name.log" >&2; die "target $name exited"; }
        sleep 0.1
    done
    die "target $name did not get ready"
}

# port_of KEY: the port of the first KEY=host:port in $ready.
port_of() { tr ' ' '\n' <<<"$ready" | sed -n "s/^$1=.*:\([0-9]*\)$/\1/p" | head -1; }

# rpc NAME METHOD JSON: one JSON-RPC call on target NAME's socket.
rpc() {
    python3 - "$work/$1.sock" "$2" "$3" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(json.dumps({"jsonrpc": "2.0", "id": 1, "method": sys.argv[2], "params": json.loads(sys.argv[3])}).encode())
buf = b""
dec = json.JSONDecoder()
while True:
    chunk = s.recv(65536)
    if not chunk:
        sys.exit("rpc: connection closed")
    buf += chunk
    try:
        r, _ = dec.raw_decode(buf.decode())
        break
    except ValueError:
        continue
if "error" in r:
    sys.exit("rpc %s: %s" % (sys.argv[2], r["error"]))
PY
}

# start_vm SCRIPT VMARGS...: boots the guest in the background.
start_vm() {
    local script=$1; shift
    "$VM_DIR/vm-run.sh" -a "$here/guest/common.sh:/vm/common.sh" "$@" "$here/guest/$script" >"$work/vm.log" 2>&1 &
    vmpid=$!
}

# wait_mark NAME: waits for `MARK NAME` in the guest's output.
wait_mark() {
    while ! grep -q "^MARK $1" "$work/vm.log"; do
        kill -0 "$vmpid" 2>/dev/null || return 1
        sleep 0.2
    done
    say "guest: $1 ($(elapsed)s)"
}

# finish_vm OKLINE: waits for the guest; passes if it printed OKLINE.
finish_vm() {
    local rc=0
    wait "$vmpid" || rc=$?
    vmpid=
    grep -E '^(guest:|FAIL|MARK|RESULT|NQN|traddr|subnqn)|vm-run:|err=|IOPS=|error recovery|Reconnecting|capacity change|not allowed|new ctrl' "$work/vm.log" | sed 's/^/    /' >&2 || true
    if [ "$rc" -ne 0 ] || ! grep -q "$1" "$work/vm.log"; then
        say "guest failed (status $rc); its output:"
        tail -60 "$work/vm.log" >&2
        return 1
    fi
}

t0=$(date +%s)
elapsed() { echo $(($(date +%s) - t0)); }

case_basic() {
    say "basic: one target, kernel initiator"
    start_testd a --mem vol0:64M --export --allow-host "$GUEST_NQN" \
        --listen 127.0.0.1:0=10.0.2.100:4420 --discovery 127.0.0.1:0=10.0.2.100:8009
    local port disc
    port=$(port_of listen); disc=$(port_of discovery)
    start_vm basic.sh --fwd "4420:$port" --fwd "8009:$disc" -e "NQN=$NQN" -e "NEW_SIZE=$((128 << 20))" \
        -e "FIO_SIZE_4K=${FIO_SIZE_4K:-32M}" -e "FIO_SIZE_128K=${FIO_SIZE_128K:-64M}"
    wait_mark resize-request || { finish_vm "NVMF BASIC OK"; return 1; }
    rpc a test_volume_resize '{"name": "vol0", "size": 134217728}'
    finish_vm "NVMF BASIC OK"
    grep -q 'is not allowed to connect' "$work/a.log" || { say "the target did not log the refused host"; return 1; }
    kill "$a_pid"
}

case_multipath() {
    say "multipath: two targets, one volume (shared file), ANA, failover"
    truncate -s 64M "$work/vol0.img"
    start_testd a --file "vol0:$work/vol0.img:64M" --export --ana optimized --cntlid-range 1-999 \
        --listen 127.0.0.1:0=10.0.2.100:4420
    local pa pb
    pa=$(port_of listen)
    start_testd b --file "vol0:$work/vol0.img:64M" --export --ana non-optimized --cntlid-range 1000-1999 \
        --listen 127.0.0.1:0=10.0.2.100:4421
    pb=$(port_of listen)
    start_vm multipath.sh --fwd "4420:$pa" --fwd "4421:$pb" -e "NQN=$NQN" -e "FIO_SIZE=${FIO_SIZE_MPATH:-48M}"
    wait_mark ana-swap || { finish_vm "NVMF MULTIPATH OK"; return 1; }
    rpc a test_volume_set_access_state '{"name": "vol0", "state": "inaccessible"}'
    rpc b test_volume_set_access_state '{"name": "vol0", "state": "optimized"}'
    wait_mark ana-restore || { finish_vm "NVMF MULTIPATH OK"; return 1; }
    rpc b test_volume_set_access_state '{"name": "vol0", "state": "non-optimized"}'
    rpc a test_volume_set_access_state '{"name": "vol0", "state": "optimized"}'
    wait_mark fio-start || { finish_vm "NVMF MULTIPATH OK"; return 1; }
    sleep "${KILL_AFTER:-4}"
    say "SIGKILL to the optimized target (pid $a_pid) during fio verify ($(elapsed)s)"
    kill -KILL "$a_pid"
    finish_vm "NVMF MULTIPATH OK"
    say "target b served $(grep -c 'created for host' "$work/b.log") controller(s); failover passed"
    kill "$b_pid"
}

cases=("$@")
[ ${#cases[@]} -gt 0 ] || cases=(basic multipath)
failed=()
for c in "${cases[@]}"; do
    t0=$(date +%s)
    if "case_$c"; then
        say "PASS $c ($(elapsed)s)"
    else
        say "FAIL $c ($(elapsed)s)"
        failed+=("$c")
    fi
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    pids=()
done
[ ${#failed[@]} -eq 0 ] || { say "failed: ${failed[*]}"; exit 1; }
say "all passed: ${cases[*]}"
