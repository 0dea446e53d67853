#!/usr/bin/env bash
# bench-iscsi: libiscsi's iscsi-perf (random 4 KiB reads) against Ferrite's
# iSCSI target and against Linux's user-space target tgt, in the same run,
# on LUNs of the same size, at a few queue depths. Prints a table, then
# `RESULT <name> <value> <unit>` lines with IOPS and the Ferrite/tgt ratios.
#
# Both targets keep their data in RAM (Ferrite: a RAM volume; tgt: a file
# in /dev/shm), so this compares the protocol layers, not storage.
# Knobs: SIZE (default 1G), DURATION per point in s (5), QDS ("1 8 32 64"),
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

work=$(mktemp -d /tmp/bench-iscsi.XXXXXX)
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

echo "iscsi-perf random read, $((BLOCKS * 512)) bytes per request, ${DURATION}s per point, LUN size $SIZE, $REACTORS reactors"
printf "%6s %14s %14s %8s\n" "qd" "ferrite IOPS" "tgt IOPS" "ratio"
results=()
for qd in $QDS; do
  # Warm both once per depth so neither pays for first touch.
  f=$(perf "$URL_FERRITE" "$qd")
  t=$(perf "$URL_TGT" "$qd")
  ratio=$(awk -v a="$f" -v b="$t" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
  printf "%6s %14s %14s %8s\n" "$qd" "$f" "$t" "$ratio"
  results+=("RESULT iscsi_randread_4k_qd${qd}_ferrite_iops $f IOPS"
            "RESULT iscsi_randread_4k_qd${qd}_tgt_iops $t IOPS"
            "RESULT iscsi_randread_4k_qd${qd}_ferrite_vs_tgt $ratio ratio")
done
printf '%s\n' "${results[@]}"
