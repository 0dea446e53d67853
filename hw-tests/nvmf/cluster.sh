# Real Ferrite processes on the host's loopback for the VM tests (sourced
# by run.sh and benchmarks/bench-nvmf.sh): etcd, one ferrite-meta and
# ferrited nodes, each on free 127.0.0.1 ports, data under $work.
#
# The caller defines: $repo, $work (a temp dir it removes), the array
# `pids` (every process started here is appended; the caller kills them),
# die() and say().
#
# Binaries: FERRITE_BIN_DIR (default $repo/target/release, where `make
# build` puts them) holds ferrited and ferrite-meta; etcd comes from PATH.
# Meta leases: FERRITE_NODE_TTL (seconds, default 5) and
# FERRITE_NODE_GRACE (default 1): a node killed with SIGKILL is marked
# down after about their sum; a replica it held is dropped at once when
# another node reports it unreachable.

FERRITE_BIN_DIR=${FERRITE_BIN_DIR:-$repo/target/release}
declare -A node_pid node_sock node_nvmf node_disc node_iscsi node_nbd

fc_check_bins() {
    local b
    for b in ferrited ferrite-meta; do
        [ -x "$FERRITE_BIN_DIR/$b" ] ||
            die "no $b in $FERRITE_BIN_DIR (make build, or set FERRITE_BIN_DIR)"
    done
    command -v etcd >/dev/null || die "etcd not found (scripts/install-deps.sh installs etcd-server)"
}

# free_port: a free TCP port on 127.0.0.1 (bound, then released).
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

tcp_up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_up WHAT SECONDS PID COMMAND...: until COMMAND succeeds; dies when the
# process PID exits or the time is up.
wait_up() {
    local what=$1 secs=$2 pid=$3 log=$4; shift 4
    local i
    for ((i = 0; i < secs * 10; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        kill -0 "$pid" 2>/dev/null || { tail -30 "$log" >&2; die "$what exited"; }
        sleep 0.1
    done
    tail -30 "$log" >&2
    die "$what did not come up within ${secs}s"
}

# fc_start_meta: etcd and ferrite-meta; sets $meta_addr.
fc_start_meta() {
    local cp pp mp
    cp=$(free_port); pp=$(free_port); mp=$(free_port)
    etcd --name nvmf --data-dir "$work/etcd" \
        --listen-client-urls "http://127.0.0.1:$cp" --advertise-client-urls "http://127.0.0.1:$cp" \
        --listen-peer-urls "http://127.0.0.1:$pp" --initial-advertise-peer-urls "http://127.0.0.1:$pp" \
        --initial-cluster "nvmf=http://127.0.0.1:$pp" >"$work/etcd.log" 2>&1 </dev/null &
    pids+=($!)
    wait_up etcd 30 $! "$work/etcd.log" tcp_up "$cp"
    RUST_LOG=${RUST_LOG:-info} "$FERRITE_BIN_DIR/ferrite-meta" --etcd "http://127.0.0.1:$cp" \
        --listen "127.0.0.1:$mp" --name meta1 --node-ttl-secs "${FERRITE_NODE_TTL:-5}" \
        --node-grace-secs "${FERRITE_NODE_GRACE:-1}" --leader-ttl-secs 2 \
        >"$work/meta.log" 2>&1 </dev/null &
    pids+=($!)
    wait_up ferrite-meta 30 $! "$work/meta.log" tcp_up "$mp"
    meta_addr=127.0.0.1:$mp
}

# fc_start_node ID [FERRITED ARGS...]: a ferrited with a 2 GiB sparse device
# file, every front end on a free port; its ports are in node_nvmf[ID],
# node_disc[ID], node_iscsi[ID], node_nbd[ID], its socket in node_sock[ID].
fc_start_node() {
    local id=$1; shift
    local dir=$work/$id
    mkdir -p "$dir"
    node_sock[$id]=$dir/rpc.sock
    node_nvmf[$id]=$(free_port)
    node_disc[$id]=$(free_port)
    node_iscsi[$id]=$(free_port)
    node_nbd[$id]=$(free_port)
    RUST_LOG=${RUST_LOG:-info} "$FERRITE_BIN_DIR/ferrited" --cores 0-1 --no-pin --poll-mode adaptive \
        --node-id "$id" --zone "zone-$id" --device "$dir/dev0.img" --device-size 2G \
        --meta "$meta_addr" -r "${node_sock[$id]}" \
        --nbd "127.0.0.1:${node_nbd[$id]}" --metrics "127.0.0.1:$(free_port)" \
        --replica "127.0.0.1:$(free_port)" --iscsi "127.0.0.1:${node_iscsi[$id]}" \
        --nvmf "127.0.0.1:${node_nvmf[$id]}" --nvmf-discovery "127.0.0.1:${node_disc[$id]}" \
        "$@" >"$dir/ferrited.log" 2>&1 </dev/null &
    pids+=($!)
    node_pid[$id]=$!
    wait_up "ferrited $id" 90 $! "$dir/ferrited.log" fc_rpc "$id" spdk_get_version null
}

# fc_rpc ID METHOD JSON: one JSON-RPC call on node ID's socket; prints the
# result as JSON; fails (status 1, the error on stderr) on an error answer.
fc_rpc() {
    python3 - "${node_sock[$1]}" "$2" "$3" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(120)
s.connect(sys.argv[1])
req = {"jsonrpc": "2.0", "id": 1, "method": sys.argv[2]}
params = json.loads(sys.argv[3])
if params is not None:
    req["params"] = params
s.sendall(json.dumps(req).encode())
buf = b""
dec = json.JSONDecoder()
while True:
    chunk = s.recv(65536)
    if not chunk:
        sys.exit("rpc %s: connection closed" % sys.argv[2])
    buf += chunk
    try:
        r, _ = dec.raw_decode(buf.decode())
        break
    except ValueError:
        continue
if "error" in r:
    sys.exit("rpc %s: %s" % (sys.argv[2], r["error"]))
print(json.dumps(r["result"]))
PY
}

# json_get EXPR: evaluates a Python expression over the JSON on stdin (`v`).
json_get() { python3 -c "import json, sys; v = json.load(sys.stdin); print($1)"; }
