#!/usr/bin/env bash
# A local Ferrite cluster on loopback, in the background.
#
#   scripts/cluster.sh up [NODES] [RF]   etcd, ferrite-meta, NODES ferrited, vol0 (RF replicas)
#   scripts/cluster.sh down              stop everything (data stays under run/cluster)
#   scripts/cluster.sh status            what runs
#
# Node K: RPC socket /var/tmp/ferrite-nodeK.sock, pid file
# run/cluster/ferrited-K.pid, NBD on 127.0.0.1:(10808+K), replica port
# 7100+K, metrics 9560+K, iSCSI 3259+K, NVMe/TCP 4419+K (discovery 8008+K).
# vol0 is exported from node 1 on every front end.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
DIR=${CLUSTER_DIR:-$PWD/run/cluster}
ETCD_PORT=${ETCD_PORT:-2379}
META_ADDR=${META_ADDR:-127.0.0.1:7000}
SIZE=${SIZE:-1G}

log() { printf 'cluster: %s\n' "$*"; }
sock() { echo "/var/tmp/ferrite-node$1.sock"; }
rpc() { local k=$1; shift; python3 scripts/rpc.py -s "$(sock "$k")" "$@"; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() { # what seconds command...
  local what=$1 secs=$2; shift 2
  for _ in $(seq $((secs * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  log "$what did not come up within ${secs}s (logs in $DIR)"; exit 1
}

start_bg() { # name pidfile command...
  local name=$1 pidf=$2; shift 2
  setsid "$@" >"$DIR/$name.log" 2>&1 < /dev/null &
  echo $! >"$pidf"
}

up() {
  local nodes=${1:-3} rf=${2:-3}
  mkdir -p "$DIR"
  if alive "$DIR/etcd.pid"; then log "already running (scripts/cluster.sh down first)"; exit 1; fi
  log "etcd on 127.0.0.1:$ETCD_PORT"
  start_bg etcd "$DIR/etcd.pid" etcd --name cluster --data-dir "$DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
    --initial-cluster "cluster=http://127.0.0.1:$((ETCD_PORT + 1))"
  wait_for etcd 20 etcdctl --endpoints "127.0.0.1:$ETCD_PORT" endpoint health
  log "ferrite-meta on $META_ADDR"
  start_bg meta "$DIR/meta.pid" "$BIN/ferrite-meta" --etcd "http://127.0.0.1:$ETCD_PORT" --listen "$META_ADDR" --name meta1
  wait_for ferrite-meta 20 bash -c "exec 3<>/dev/tcp/127.0.0.1/${META_ADDR##*:}"
  for k in $(seq 1 "$nodes"); do
    mkdir -p "$DIR/node$k"
    log "ferrited node$k (NBD 127.0.0.1:$((10808 + k)), replica 127.0.0.1:$((7100 + k)), $(sock "$k"))"
    start_bg "ferrited-$k" "$DIR/ferrited-$k.pid" "$BIN/ferrited" --cores 0-1 --no-pin --poll-mode adaptive \
      --node-id "node$k" --zone "zone$k" --data-dir "$DIR/node$k" --device-size 4G --meta "$META_ADDR" \
      -r "$(sock "$k")" --nbd "127.0.0.1:$((10808 + k))" --replica "127.0.0.1:$((7100 + k))" \
      --metrics "127.0.0.1:$((9560 + k))" --iscsi "127.0.0.1:$((3259 + k))" \
      --nvmf "127.0.0.1:$((4419 + k))" --nvmf-discovery "127.0.0.1:$((8008 + k))"
  done
  for k in $(seq 1 "$nodes"); do wait_for "node$k" 60 rpc "$k" spdk_get_version; done
  pools=$(rpc 1 pool_list)
  grep -q "\"name\": \"pool-rf$rf\"" <<<"$pools" || rpc 1 pool_create -n "pool-rf$rf" --replica-count "$rf" >/dev/null
  vols=$(rpc 1 volume_list)
  grep -q '"name": "vol0"' <<<"$vols" || rpc 1 volume_create -n vol0 -p "pool-rf$rf" -s "$SIZE" >/dev/null
  rpc 1 volume_export -n vol0 >/dev/null
  log "up: $nodes nodes, vol0 ($SIZE, RF $rf) at nbd://127.0.0.1:10809/vol0"
  log "try: scripts/rpc.py -s $(sock 1) node_list; scripts/cluster.sh down"
}

stop_pid() { # pidfile
  local pidf=$1
  [ -f "$pidf" ] || return 0
  local p; p=$(cat "$pidf")
  if kill -0 "$p" 2>/dev/null; then
    kill -TERM "$p" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  fi
  rm -f "$pidf"
}

down() {
  for pidf in "$DIR"/ferrited-*.pid; do [ -e "$pidf" ] && stop_pid "$pidf"; done
  stop_pid "$DIR/meta.pid"
  stop_pid "$DIR/etcd.pid"
  log "down (data kept under $DIR)"
}

status() {
  for pidf in "$DIR"/*.pid; do
    [ -e "$pidf" ] || continue
    if alive "$pidf"; then echo "$(basename "$pidf" .pid): running (pid $(cat "$pidf"))"; else echo "$(basename "$pidf" .pid): dead"; fi
  done
}

case "${1:-}" in
  up) shift; up "$@" ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up [NODES] [RF] | down | status"; exit 2 ;;
esac
