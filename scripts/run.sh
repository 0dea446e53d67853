#!/usr/bin/env bash
# `make run`: a one-node Ferrite in the foreground: etcd, ferrite-meta and
# ferrited on a file-backed device under ./run/, pool `pool0` (1 replica),
# a 1 GiB volume `vol0` exported over NBD, iSCSI and NVMe/TCP. Ctrl-C stops everything cleanly;
# a second `make run` finds the data still there.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
RUN=${RUN_DIR:-$PWD/run}
SOCK=${FERRITE_RPC_SOCKET:-/var/tmp/ferrite.sock}
ETCD_PORT=${ETCD_PORT:-2379}
META_ADDR=${META_ADDR:-127.0.0.1:7000}
NBD_ADDR=${NBD_ADDR:-127.0.0.1:10809}
METRICS_ADDR=${METRICS_ADDR:-127.0.0.1:9560}
ISCSI_ADDR=${ISCSI_ADDR:-127.0.0.1:3260}
NVMF_ADDR=${NVMF_ADDR:-127.0.0.1:4420}
DISC_ADDR=${DISC_ADDR:-127.0.0.1:8009}
RPC="python3 scripts/rpc.py -s $SOCK"

mkdir -p "$RUN/etcd" "$RUN/node1"
pids=()

log() { printf 'ferrite: %s\n' "$*"; }

stop_all() {
  trap - INT TERM EXIT
  log "stopping"
  # In reverse order of start: the node first (it checkpoints its store),
  # then meta, then etcd.
  for ((i=${#pids[@]}-1; i>=0; i--)); do
    p=${pids[$i]}
    kill -TERM "$p" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  log "stopped; data kept under $RUN"
}
# Ctrl-C and SIGTERM stop everything and end the script there (0: a stop
# asked for is no failure); any other exit stops everything too.
trap 'stop_all; exit 0' INT TERM
trap stop_all EXIT

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # what, seconds, command...
  local what=$1 secs=$2; shift 2
  for _ in $(seq $((secs * 10))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  log "$what did not come up within ${secs}s; see the logs in $RUN"
  exit 1
}

for port in $ETCD_PORT ${META_ADDR##*:} ${NBD_ADDR##*:} ${ISCSI_ADDR##*:} ${NVMF_ADDR##*:} ${DISC_ADDR##*:}; do
  if port_busy "$port"; then log "port $port is in use: is another Ferrite (or etcd) running?"; exit 1; fi
done

log "starting etcd (data in $RUN/etcd)"
setsid etcd --name ferrite-dev --data-dir "$RUN/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
  --initial-cluster "ferrite-dev=http://127.0.0.1:$((ETCD_PORT + 1))" >"$RUN/etcd.log" 2>&1 &
pids+=($!)
wait_for etcd 20 etcdctl --endpoints "127.0.0.1:$ETCD_PORT" endpoint health

log "starting ferrite-meta on $META_ADDR"
setsid "$BIN/ferrite-meta" --etcd "http://127.0.0.1:$ETCD_PORT" --listen "$META_ADDR" --name meta1 >"$RUN/meta.log" 2>&1 &
pids+=($!)
wait_for ferrite-meta 20 bash -c "exec 3<>/dev/tcp/127.0.0.1/${META_ADDR##*:}"

log "starting ferrited (2 reactors, adaptive polling, device $RUN/node1/dev0.img)"
setsid "$BIN/ferrited" --cores 0-1 --no-pin --poll-mode adaptive --node-id node1 \
  --data-dir "$RUN/node1" --device-size 4G --meta "$META_ADDR" -r "$SOCK" \
  --nbd "$NBD_ADDR" --metrics "$METRICS_ADDR" --iscsi "$ISCSI_ADDR" --nvmf "$NVMF_ADDR" \
  --nvmf-discovery "$DISC_ADDR" >"$RUN/ferrited.log" 2>&1 &
pids+=($!)
wait_for ferrited 60 $RPC spdk_get_version

# Idempotent set-up: on a second run the pool and the volume exist already.
pools=$($RPC pool_list)
vols=$($RPC volume_list)
grep -q '"name": "pool0"' <<<"$pools" || $RPC pool_create -n pool0 --replica-count 1 >/dev/null
grep -q '"name": "vol0"' <<<"$vols" || $RPC volume_create -n vol0 -p pool0 -s 1G >/dev/null
$RPC volume_export -n vol0 >/dev/null

NBD_URI="nbd://$NBD_ADDR/vol0"
cat <<EOF

Ferrite is running: one node, pool0 (1 replica), vol0 (1 GiB).
  NBD export:    $NBD_URI
  iSCSI:         iscsi://$ISCSI_ADDR/iqn.2026-11.io.ferrite:vol0/0   (LUN 0)
  NVMe/TCP:      nqn.2026-11.io.ferrite:vol0 on $NVMF_ADDR (discovery on $DISC_ADDR)
  control:       scripts/rpc.py -s $SOCK volume_list      (and rpc_get_methods, --help)
  metrics:       curl http://$METRICS_ADDR/metrics
  logs:          $RUN/{etcd,meta,ferrited}.log

Try it:
  nbdinfo $NBD_URI
  qemu-io -f raw -c 'write -P 0xab 0 64k' -c 'read -P 0xab 0 64k' $NBD_URI
  iscsi-inq iscsi://$ISCSI_ADDR/iqn.2026-11.io.ferrite:vol0/0
  nvme discover -t tcp -a ${DISC_ADDR%:*} -s ${DISC_ADDR##*:}; nvme connect -t tcp -a ${NVMF_ADDR%:*} -s ${NVMF_ADDR##*:} -n nqn.2026-11.io.ferrite:vol0
  fio --name=try --ioengine=nbd --uri=$NBD_URI --rw=randrw --bs=4k --iodepth=16 --size=256m --verify=crc32c --verify_state_save=0

Ctrl-C stops everything; the data stays under $RUN.
EOF

# Run until Ctrl-C, or until a process dies on its own.
while true; do
  for p in "${pids[@]}"; do
    if ! kill -0 "$p" 2>/dev/null; then log "a Ferrite process exited; see $RUN/*.log"; exit 1; fi
  done
  sleep 1
done
