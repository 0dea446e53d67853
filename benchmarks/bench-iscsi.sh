#!/usr/bin/env bash
# bench-iscsi: libiscsi's iscsi-perf (random 4 KiB reads) against Ferrite's
# iSCSI target and against Linux's user-space target tgt, in the same run,
# on LUNs of the same size, at a few queue depths. Prints a table, then
# `RESULT <name> <value> <unit>` lines with IOPS and the Ferrite/tgt ratios.
#
# Two pairs:
# - protocol: both targets keep their data in RAM (Ferrite: a RAM volume of
#   its test daemon; tgt: a file in /dev/shm), so this compares the protocol
#   layers, not storage;
# - store: a real node (etcd + ferrite-meta + ferrited, vol0 in an RF 1 pool
#   on a device file) against tgt on a file in the same directory opened
#   with O_DIRECT (bsoflags=direct), both filled with the same random data
#   first, so that every read goes to the disk on both sides.
# Knobs: SIZE (default 1G), STORE_SIZE (256M), DURATION per point in s (5), QDS ("1 8 32 64"),
# BLOCKS per request (8 = 4 KiB), REACTORS (2), PORT_FERRITE (3290),
# PORT_TGT (3291), TGT_CONTROL_PORT (29).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SIZE=${SIZE:-1G}
DURATION=${DURATION:-5}
QDS=${QDS:-"1 8 32 64"}
BLOCKS=${BLOCKS:-8}
REACTORS=${REACTORS:-2}
PORT_FERRITE=${PORT_FERRITE:-3290}
PORT_TGT=${PORT_TGT:-3291}
CTL=${TGT_CONTROL_PORT:-29}
IQN_TGT=iqn.2026-11.io.ferrite.bench:tgt

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo -n"; fi
for tool in iscsi-perf tgtd tgtadm; do
  command -v "$tool" >/dev/null || { echo "bench-iscsi: $tool missing; run scripts/install-deps.sh" >&2; exit 1; }
done

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
(cd "$ROOT" && cargo build --release -q -p ferrite-gateway --bin ferrite-iscsi-testd)
TESTD=$TARGET_DIR/release/ferrite-iscsi-testd

work=$(mktemp -d "${BENCH_DIR:-$ROOT}/.bench-iscsi.XXXXXX")
STORE_SIZE=${STORE_SIZE:-256M}
repo=$ROOT
pids=()
die() { printf 'bench-iscsi: error: %s\n' "$*" >&2; exit 2; }
say() { printf 'bench-iscsi: %s\n' "$*" >&2; }
# shellcheck source=hw-tests/nvmf/cluster.sh
. "$ROOT/hw-tests/nvmf/cluster.sh"
fc_check_bins
shm=/dev/shm; [ -d "$shm" ] && [ -w "$shm" ] || shm=$work
backing=$shm/bench-iscsi-tgt-$$.img
ferrite_pid=""; tgt_pid=""
# Waits up to 5 s for a process to go, then kills it.
reap() {
  local pid=$1
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return; }; sleep 0.1; done
  $SUDO kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do reap "$p"; done
  $SUDO tgtadm -C "$CTL" --lld iscsi --op delete --mode target --tid 2 --force >/dev/null 2>&1 || true
  if [ -n "$ferrite_pid" ]; then kill "$ferrite_pid" 2>/dev/null || true; reap "$ferrite_pid"; fi
  if [ -n "$tgt_pid" ]; then
    # tgtd ignores SIGTERM while it has targets: remove them, then stop it.
    $SUDO tgtadm -C "$CTL" --lld iscsi --op delete --mode target --tid 1 --force >/dev/null 2>&1 || true
    $SUDO tgtadm -C "$CTL" --op delete --mode system >/dev/null 2>&1 || true
    reap "$tgt_pid"
  fi
  rm -f "$backing"; rm -rf "$work"
}
trap cleanup EXIT

# Ferrite: one RAM volume exported as LUN 0.
RUST_LOG=warn "$TESTD" --reactors "$REACTORS" --volume "bench:$SIZE" --portal "127.0.0.1:$PORT_FERRITE" \
  --export --queue-depth 128 > "$work/ferrite.out" 2> "$work/ferrite.err" &
ferrite_pid=$!
for _ in $(seq 100); do grep -q READY "$work/ferrite.out" 2>/dev/null && break; sleep 0.1; done
grep -q READY "$work/ferrite.out" || { echo "bench-iscsi: Ferrite's target did not start:"; cat "$work/ferrite.err"; exit 1; }
URL_FERRITE="iscsi://127.0.0.1:$PORT_FERRITE/iqn.2026-11.io.ferrite:bench/0"

# tgt: in the foreground on its own port and management socket, one
# file-backed LUN (LUN 1; tgt's LUN 0 is its controller) of the same size.
truncate -s "$SIZE" "$backing"
dd if=/dev/zero of="$backing" bs=1M count=$(( $(stat -c %s "$backing") >> 20 )) conv=notrunc status=none
$SUDO tgtd -f -C "$CTL" --iscsi "portal=127.0.0.1:$PORT_TGT" > "$work/tgt.log" 2>&1 &
tgt_pid=$!
for _ in $(seq 100); do $SUDO tgtadm -C "$CTL" --op show --mode sys >/dev/null 2>&1 && break; sleep 0.1; done
$SUDO tgtadm -C "$CTL" --lld iscsi --op new --mode target --tid 1 -T "$IQN_TGT"
$SUDO tgtadm -C "$CTL" --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b "$backing"
$SUDO tgtadm -C "$CTL" --lld iscsi --op bind --mode target --tid 1 -I ALL
URL_TGT="iscsi://127.0.0.1:$PORT_TGT/$IQN_TGT/1"

# Average IOPS of one iscsi-perf run.
perf() {
  local url=$1 qd=$2 out
  out=$(timeout $((DURATION + 30)) iscsi-perf -r -m "$qd" -b "$BLOCKS" -t "$DURATION" "$url" 2>&1 | tr '\r' '\n')
  echo "$out" | awk '/iops average/ {v=$0} END {sub(/.*iops average /, "", v); sub(/ .*/, "", v); print (v == "" ? 0 : v)}'
}

# The store pair: a real ferrited and tgt with O_DIRECT on the same disk.
RUST_LOG=warn fc_start_meta
RUST_LOG=warn fc_start_node node1
store_bytes=$(numfmt --from=iec "$STORE_SIZE")
fc_rpc node1 pool_create '{"name": "bench", "replica_count": 1}' >/dev/null
fc_rpc node1 volume_create "{\"name\": \"vol0\", \"pool\": \"bench\", \"size\": $store_bytes}" >/dev/null
fc_rpc node1 volume_export '{"name": "vol0"}' >/dev/null
head -c "$store_bytes" /dev/urandom > "$work/data.img"
qemu-img convert -n -f raw -O raw "$work/data.img" "nbd://127.0.0.1:${node_nbd[node1]}/vol0"
URL_STORE="iscsi://127.0.0.1:${node_iscsi[node1]}/iqn.2026-11.io.ferrite:vol0/0"
mv "$work/data.img" "$work/tgt-disk.img"
$SUDO tgtadm -C "$CTL" --lld iscsi --op new --mode target --tid 2 -T "$IQN_TGT-disk"
$SUDO tgtadm -C "$CTL" --lld iscsi --op new --mode logicalunit --tid 2 --lun 1 -b "$work/tgt-disk.img" --bsoflags direct
$SUDO tgtadm -C "$CTL" --lld iscsi --op bind --mode target --tid 2 -I ALL
URL_TGT_DISK="iscsi://127.0.0.1:$PORT_TGT/$IQN_TGT-disk/1"

results=()
# measure LABEL URL_FERRITE URL_TGT: one table, RESULT lines named by LABEL.
measure() {
  local label=$1 uf=$2 ut=$3 qd f t ratio
  printf "%-8s %6s %14s %14s %8s\n" "pair" "qd" "ferrite IOPS" "tgt IOPS" "ratio"
  for qd in $QDS; do
    f=$(perf "$uf" "$qd")
    t=$(perf "$ut" "$qd")
    ratio=$(awk -v a="$f" -v b="$t" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
    printf "%-8s %6s %14s %14s %8s\n" "$label" "$qd" "$f" "$t" "$ratio"
    results+=("RESULT iscsi${label:+_$label}_randread_4k_qd${qd}_ferrite_iops $f IOPS"
              "RESULT iscsi${label:+_$label}_randread_4k_qd${qd}_tgt_iops $t IOPS"
              "RESULT iscsi${label:+_$label}_randread_4k_qd${qd}_ferrite_vs_tgt $ratio ratio")
  done
}

echo "iscsi-perf random read, $((BLOCKS * 512)) bytes per request, ${DURATION}s per point"
echo "protocol pair: RAM-backed both, LUN size $SIZE, $REACTORS reactors (label: none)"
measure "" "$URL_FERRITE" "$URL_TGT"
echo "store pair: ferrited vol0 (RF 1, device file) vs tgt O_DIRECT file, same disk, $STORE_SIZE of random data (label: store)"
measure store "$URL_STORE" "$URL_TGT_DISK"
printf '%s\n' "${results[@]}"
