#!/usr/bin/env bash
# NVMe/TCP with the Linux kernel initiator against real Ferrite nodes: boots
# the guest of ../vm against etcd + ferrite-meta + ferrited on the host's
# loopback and runs the guest checks.
#
#   hw-tests/nvmf/run.sh [basic] [multipath]      (default: both)
#
# basic:     one node, volumes in an RF 1 pool. vol0 exported by
#            `volume_export`; discovery (8009 and 4420), connect, fio verify
#            (io_uring, 4k and 128k randrw, crc32c) plain / with header+data
#            digests / with SQ flow control disabled, nvme-cli admin and NVM
#            commands, connect-all through discovery (entries advertise
#            10.0.2.100, ferrited --nvmf-advertise), a `volume_resize` the
#            host sees; a second subsystem made with SPDK's RPCs
#            (nvmf_create_subsystem, nvmf_subsystem_add_ns/_add_listener/
#            _add_host) whose allowed-host list refuses a wrong host NQN.
# multipath: three nodes, an RF 2 thick volume whose extent lives on two of
#            them; exported from a replica holder A (ANA optimized) and from
#            the third node B (non-optimized). The guest connects to both
#            (native multipath) and runs fio verify; A's ferrited is
#            SIGKILLed mid-run; I/O moves to B, which reaches the surviving
#            replica over the replica protocol; no verify error. Then meta
#            re-replicates onto B and the guest sees B become optimized.
#
# Binaries from FERRITE_BIN_DIR (default target/release: ferrited,
# ferrite-meta); etcd from PATH; spdk-rpc (PyPI spdk) when present, else
# the same SPDK methods through a small Python client. VM_CACHE as for
# vm-run.sh (default ./.vm-cache of the repository). Exit status 0 when
# every case passed; the case logs stay in $NVMF_HW_KEEP if set.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
VM_DIR=${VM_DIR:-$repo/hw-tests/vm}
export VM_CACHE=${VM_CACHE:-$repo/.vm-cache}
GUEST_NQN=nqn.2014-08.org.nvmexpress:uuid:6b1b2fd1-7c86-4e4b-9a33-6f2f5b9c0a11
NQN=nqn.2026-11.io.ferrite:vol0
# A subsystem with an allowed-host list (made through SPDK's RPCs).
RNQN=nqn.2026-11.io.ferrite:restricted

die() { printf 'nvmf-hw: error: %s\n' "$*" >&2; exit 2; }
say() { printf 'nvmf-hw: %s\n' "$*" >&2; }
# shellcheck source=hw-tests/nvmf/cluster.sh
. "$here/cluster.sh"
fc_check_bins
[ -x "$VM_DIR/vm-run.sh" ] || die "no VM harness at $VM_DIR"
[ -f "$VM_CACHE/vmlinux" ] || [ -f "$VM_CACHE/vmlinuz" ] || die "no VM cache at $VM_CACHE (make vm-cache)"

top=$(mktemp -d "${TMPDIR:-/tmp}/nvmf-hw.XXXXXX")
work=$top
pids=()
vmpid=
stop_all() {
    [ -z "$vmpid" ] || { kill "$vmpid" 2>/dev/null || true; wait "$vmpid" 2>/dev/null || true; }
    vmpid=
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    pids=()
}
# shellcheck disable=SC2317 # called through the EXIT trap
cleanup() {
    stop_all
    if [ -n "${NVMF_HW_KEEP:-}" ]; then
        mkdir -p "$NVMF_HW_KEEP" && cp -r "$top"/. "$NVMF_HW_KEEP"/ 2>/dev/null || true
    fi
    rm -rf "$top"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# spdk NODE METHOD ARGS...: SPDK's own client on a node's socket; without
# it, the JSON-RPC call (in the $json argument) through fc_rpc.
spdk() {
    local id=$1 json=$2; shift 2
    if command -v spdk-rpc >/dev/null; then
        timeout 60 spdk-rpc -s "${node_sock[$id]}" "$@" >/dev/null
    else
        fc_rpc "$id" "$1" "$json" >/dev/null
    fi
}

# start_vm SCRIPT VMARGS...: boots the guest in the background.
start_vm() {
    local script=$1; shift
    "$VM_DIR/vm-run.sh" -t "${VM_TIMEOUT:-900}" -a "$here/guest/common.sh:/vm/common.sh" "$@" \
        "$here/guest/$script" >"$work/vm.log" 2>&1 &
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
    grep -E '^(guest:|FAIL|MARK|RESULT|NQN|traddr|trsvcid|subnqn)|vm-run:|err=|IOPS=|error recovery|Reconnecting|capacity change|not allowed|new ctrl|ANA' "$work/vm.log" | sed 's/^/    /' >&2 || true
    if [ "$rc" -ne 0 ] || ! grep -q "$1" "$work/vm.log"; then
        say "guest failed (status $rc); its output:"
        tail -60 "$work/vm.log" >&2
        return 1
    fi
}

t0=$(date +%s)
elapsed() { echo $(($(date +%s) - t0)); }

case_basic() {
    say "basic: one ferrited node, kernel initiator"
    fc_start_meta
    fc_start_node node1 --nvmf-advertise 10.0.2.100
    local port=${node_nvmf[node1]} disc=${node_disc[node1]}
    fc_rpc node1 pool_create '{"name": "rf1", "replica_count": 1}' >/dev/null
    fc_rpc node1 volume_create '{"name": "vol0", "pool": "rf1", "size": 67108864}' >/dev/null
    fc_rpc node1 volume_create '{"name": "vol1", "pool": "rf1", "size": 16777216}' >/dev/null
    fc_rpc node1 volume_export '{"name": "vol0", "nbd": false, "iscsi": false}' >"$work/export.json"
    say "volume_export vol0: $(cat "$work/export.json")"
    # vol1 behind an allowed-host list, with SPDK's methods.
    spdk node1 "{\"nqn\": \"$RNQN\", \"serial_number\": \"FERRITE-R1\", \"allow_any_host\": false}" \
        nvmf_create_subsystem "$RNQN" -s FERRITE-R1
    spdk node1 "{\"nqn\": \"$RNQN\", \"namespace\": {\"bdev_name\": \"vol1\"}}" \
        nvmf_subsystem_add_ns "$RNQN" vol1
    spdk node1 "{\"nqn\": \"$RNQN\", \"listen_address\": {\"trtype\": \"tcp\", \"adrfam\": \"ipv4\", \"traddr\": \"127.0.0.1\", \"trsvcid\": \"$port\"}}" \
        nvmf_subsystem_add_listener "$RNQN" -t tcp -f ipv4 -a 127.0.0.1 -s "$port"
    spdk node1 "{\"nqn\": \"$RNQN\", \"host\": \"$GUEST_NQN\"}" \
        nvmf_subsystem_add_host "$RNQN" "$GUEST_NQN"
    say "cluster up ($(elapsed)s): NVMe/TCP 127.0.0.1:$port, discovery 127.0.0.1:$disc; $RNQN allows $GUEST_NQN only"
    # The guest's 4420 and 8009 reach the node's ports; discovery entries
    # say 10.0.2.100:$port, which the third forward makes reachable too.
    start_vm basic.sh --fwd "4420:$port" --fwd "8009:$disc" --fwd "$port:$port" \
        -e "NQN=$NQN" -e "RNQN=$RNQN" -e "NEW_SIZE=$((128 << 20))" \
        -e "FIO_SIZE_4K=${FIO_SIZE_4K:-32M}" -e "FIO_SIZE_128K=${FIO_SIZE_128K:-64M}"
    wait_mark resize-request || { finish_vm "NVMF BASIC OK"; return 1; }
    fc_rpc node1 volume_resize '{"name": "vol0", "size": 134217728}' >/dev/null
    say "volume_resize vol0 to 128 MiB done ($(elapsed)s)"
    finish_vm "NVMF BASIC OK" || return 1
    grep -q "is not allowed to connect to $RNQN" "$work/node1/ferrited.log" ||
        { say "ferrited did not log the refused host"; return 1; }
}

case_multipath() {
    say "multipath: three ferrited nodes, an RF 2 volume, two gateways, failover"
    fc_start_meta
    local n
    for n in node1 node2 node3; do fc_start_node "$n"; done
    fc_rpc node1 pool_create '{"name": "rf2", "replica_count": 2, "thin": false}' >/dev/null
    fc_rpc node1 volume_create '{"name": "vol0", "pool": "rf2", "size": 67108864}' >/dev/null
    # One extent (64 MiB < the 256 MiB extent size), placed by meta: A is
    # its primary, B the node without a replica.
    local reps a b other
    reps=$(fc_rpc node1 volume_get '{"name": "vol0"}' | json_get '" ".join(v["extents"][0]["replicas"])')
    a=${reps%% *}; other=${reps##* }
    for n in node1 node2 node3; do
        [ "$n" = "$a" ] || [ "$n" = "$other" ] || b=$n
    done
    fc_rpc "$a" volume_export '{"name": "vol0", "nbd": false, "iscsi": false}' >/dev/null
    fc_rpc "$b" volume_export '{"name": "vol0", "nbd": false, "iscsi": false}' >/dev/null
    local sa sb
    sa=$(fc_rpc "$a" bdev_get_bdevs null | json_get 'v[0]["driver_specific"]["ferrite"]["access_state"]')
    sb=$(fc_rpc "$b" bdev_get_bdevs null | json_get 'v[0]["driver_specific"]["ferrite"]["access_state"]')
    say "extent 0 on [$reps]; gateway A=$a ($sa, 4420), B=$b ($sb, 4421) ($(elapsed)s)"
    [ "$sa" = optimized ] && [ "$sb" = non-optimized ] ||
        { say "access states are $sa / $sb, expected optimized / non-optimized"; return 1; }
    start_vm multipath.sh --fwd "4420:${node_nvmf[$a]}" --fwd "4421:${node_nvmf[$b]}" \
        -e "NQN=$NQN" -e "FIO_SIZE=${FIO_SIZE_MPATH:-48M}" -e "HEAL_WAIT=${HEAL_WAIT:-90}"
    wait_mark fio-start || { finish_vm "NVMF MULTIPATH OK"; return 1; }
    sleep "${KILL_AFTER:-4}"
    say "SIGKILL to $a's ferrited (pid ${node_pid[$a]}), the optimized gateway, during fio verify ($(elapsed)s)"
    local killed_at
    killed_at=$(date +%s.%N)
    { kill -KILL "${node_pid[$a]}"; wait "${node_pid[$a]}"; } 2>/dev/null || true
    wait_mark fio-done || { finish_vm "NVMF MULTIPATH OK"; return 1; }
    finish_vm "NVMF MULTIPATH OK" || return 1
    local after
    after=$(fc_rpc "$b" volume_get '{"name": "vol0"}' | json_get 'v["extents"][0]["replicas"]')
    say "after the kill: extent 0 replicas $after; meta: $(grep -c 'removed on report' "$work/meta.log" || true) failure report(s) acted on"
    grep -m1 'removed on report' "$work/meta.log" | sed 's/^/    /' >&2 || true
    grep -m1 'joined the replicas' "$work/meta.log" | sed 's/^/    /' >&2 || true
    # When B first found A gone (ferrited logs carry milliseconds).
    local first
    first=$(grep -m1 "node $a reported failed" "$work/$b/ferrited.log" | sed -n 's/^\[\([^ ]*\)Z .*/\1/p')
    [ -z "$first" ] || say "B reported A to meta $(python3 -c "import datetime, sys; t = datetime.datetime.fromisoformat(sys.argv[1]).replace(tzinfo=datetime.timezone.utc).timestamp(); print('%.2f' % (t - float(sys.argv[2])))" "$first" "$killed_at")s after the kill"
}

cases=("$@")
[ ${#cases[@]} -gt 0 ] || cases=(basic multipath)
failed=()
for c in "${cases[@]}"; do
    declare -F "case_$c" >/dev/null || die "no case '$c' (basic, multipath)"
    t0=$(date +%s)
    work=$top/$c
    mkdir -p "$work"
    if "case_$c"; then
        say "PASS $c ($(elapsed)s)"
    else
        say "FAIL $c ($(elapsed)s); logs in $work (kept with NVMF_HW_KEEP=DIR)"
        [ -z "${NVMF_HW_VERBOSE:-}" ] || tail -40 "$work"/node*/ferrited.log >&2 || true
        failed+=("$c")
    fi
    stop_all
done
[ ${#failed[@]} -eq 0 ] || { say "failed: ${failed[*]}"; exit 1; }
say "all passed: ${cases[*]}"
