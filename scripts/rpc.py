#!/usr/bin/env python3
"""Ferrite's control script: JSON-RPC 2.0 over ferrited's Unix socket,
framed as SPDK frames it. Usage mirrors SPDK's rpc.py:

    scripts/rpc.py [-s SOCKET] METHOD [ARGS]
    scripts/rpc.py pool_create -n pool0 --replica-count 1
    scripts/rpc.py volume_create -n vol0 -p pool0 -s 1G
    scripts/rpc.py nbd_export_start -v vol0
    scripts/rpc.py call METHOD '{"param": 1}'

Every method has --help. Sizes accept K/M/G/T suffixes (powers of 1024).
Exit status: 0 on success, 1 on a JSON-RPC error (printed to stderr),
2 on a usage error, 3 when the socket cannot be reached.
"""

import argparse
import json
import os
import socket
import sys

DEFAULT_SOCKET = "/var/tmp/ferrite.sock"


class RpcError(Exception):
    def __init__(self, code, message):
        super().__init__(f"{message} (code {code})")
        self.code = code
        self.message = message


class Client:
    """One connection; requests are answered in order."""

    def __init__(self, path, timeout):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.next_id = 1
        self.buf = b""

    def call(self, method, params=None):
        req = {"jsonrpc": "2.0", "method": method, "id": self.next_id}
        self.next_id += 1
        if params is not None:
            req["params"] = params
        self.sock.sendall(json.dumps(req).encode())
        decoder = json.JSONDecoder()
        while True:
            text = self.buf.decode("utf-8", errors="strict").lstrip()
            if text:
                try:
                    resp, end = decoder.raw_decode(text)
                    self.buf = text[end:].encode()
                    break
                except json.JSONDecodeError:
                    pass  # incomplete: read more
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("ferrited closed the connection without an answer")
            self.buf += chunk
        if "error" in resp:
            err = resp["error"]
            raise RpcError(err.get("code"), err.get("message"))
        return resp.get("result")


def size_arg(text):
    """'1G' -> 1073741824; plain numbers are bytes."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    try:
        if t and t[-1] in mult:
            return int(float(t[:-1]) * mult[t[-1]])
        return int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a size like 1G, 512M or 4096")


def drop_none(d):
    return {k: v for k, v in d.items() if v is not None}


def build_parser():
    p = argparse.ArgumentParser(
        prog="rpc.py",
        description="Ferrite JSON-RPC client (SPDK-compatible framing and method names).",
    )
    p.add_argument("-s", "--server", default=os.environ.get("FERRITE_RPC_SOCKET", DEFAULT_SOCKET),
                   help=f"ferrited's RPC socket (default {DEFAULT_SOCKET}, or $FERRITE_RPC_SOCKET)")
    p.add_argument("-t", "--timeout", type=float, default=60.0, help="seconds to wait for an answer (default 60)")
    p.add_argument("-v", "--verbose", action="store_true", help="print the request before sending it")
    sub = p.add_subparsers(dest="command", metavar="METHOD")
    sub.required = True

    def method(name, help_text, build=lambda a: None):
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(method=name, build=build)
        return sp

    # SPDK-compatible methods.
    method("rpc_get_methods", "List every method this ferrited serves.")
    method("spdk_get_version", "Ferrite's version, in SPDK's format.")
    method("framework_get_reactors", "Reactors: core, poll mode, busy/idle time.")
    sp = method("bdev_get_bdevs", "Volumes as SPDK bdevs.", lambda a: drop_none({"name": a.name}))
    sp.add_argument("-b", "--name", help="only this bdev (volume)")

    # Pools.
    sp = method("pool_create", "Create a pool (replication and provisioning policy).",
                lambda a: drop_none({"name": a.name, "replica_count": a.replica_count,
                                     "thin": (not a.thick), "extent_size": a.extent_size,
                                     "failure_domain": a.failure_domain, "min_replicas": a.min_replicas}))
    sp.add_argument("-n", "--name", required=True)
    sp.add_argument("-r", "--replica-count", type=int, default=None, help="1 to 3 (default 1)")
    sp.add_argument("--thick", action="store_true", help="allocate every extent at volume creation")
    sp.add_argument("--extent-size", type=size_arg, default=None, help="default 256M")
    sp.add_argument("--failure-domain", choices=["node", "zone"], default=None)
    sp.add_argument("--min-replicas", type=int, default=None,
                    help="replicas a write needs before it is acknowledged (default: 1, or 2 for 3 replicas)")
    method("pool_list", "List pools.")
    sp = method("pool_delete", "Delete an empty pool.", lambda a: {"name": a.name})
    sp.add_argument("-n", "--name", required=True)

    # Volumes.
    sp = method("volume_create", "Create a volume in a pool.",
                lambda a: drop_none({"name": a.name, "pool": a.pool, "size": a.size, "block_size": a.block_size}))
    sp.add_argument("-n", "--name", required=True)
    sp.add_argument("-p", "--pool", required=True)
    sp.add_argument("-s", "--size", type=size_arg, required=True, help="e.g. 1G")
    sp.add_argument("-b", "--block-size", type=int, choices=[512, 4096], default=None)
    sp = method("volume_delete", "Delete a volume.", lambda a: {"name": a.name})
    sp.add_argument("-n", "--name", required=True)
    sp = method("volume_resize", "Grow a volume.", lambda a: {"name": a.name, "size": a.size})
    sp.add_argument("-n", "--name", required=True)
    sp.add_argument("-s", "--size", type=size_arg, required=True)
    sp = method("volume_list", "List volumes.", lambda a: drop_none({"pool": a.pool}))
    sp.add_argument("-p", "--pool")
    sp = method("volume_get", "A volume with its extents and their replicas.", lambda a: {"name": a.name})
    sp.add_argument("-n", "--name", required=True)

    # Everything at once.
    sp = method("volume_export", "Export a volume on every front end of this node (NBD, iSCSI, NVMe/TCP).",
                lambda a: drop_none({"name": a.name, "nbd": False if a.no_nbd else None,
                                     "iscsi": False if a.no_iscsi else None, "nvmf": False if a.no_nvmf else None}))
    sp.add_argument("-n", "--name", required=True)
    sp.add_argument("--no-nbd", action="store_true")
    sp.add_argument("--no-iscsi", action="store_true")
    sp.add_argument("--no-nvmf", action="store_true")

    # NBD exports.
    sp = method("nbd_export_start", "Export a volume over NBD.",
                lambda a: drop_none({"volume": a.volume, "name": a.name}))
    sp.add_argument("-v", "--volume", required=True)
    sp.add_argument("-n", "--name", help="export name (default: the volume name)")
    sp = method("nbd_export_stop", "Stop an NBD export and close its connections.", lambda a: {"name": a.name})
    sp.add_argument("-n", "--name", required=True)
    method("nbd_export_list", "List NBD exports.")

    # Nodes.
    method("node_list", "List the cluster's nodes.")
    sp = method("node_drain", "Move every replica off a node.", lambda a: {"id": a.id})
    sp.add_argument("id")
    sp = method("node_remove", "Remove an empty node from the cluster.", lambda a: {"id": a.id})
    sp.add_argument("id")

    # Node state.
    method("store_get_stats", "Chunk store counters: capacity, bytes, write amplification, checksum errors.")
    method("metrics_get", "Every metric of this node (the same as the Prometheus endpoint), as JSON.")
    method("replica_get_stats", "Replication counters: forwards, failures, checksum errors, repairs, resyncs.")

    # Anything else, raw.
    sp = sub.add_parser("call", help="Call any method with raw JSON params.",
                        description="Call any method with raw JSON params.")
    sp.add_argument("raw_method", metavar="METHOD")
    sp.add_argument("params", nargs="?", help="JSON object or array")
    sp.set_defaults(method=None, build=None)
    return p


def main(argv):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "call":
        method = args.raw_method
        try:
            params = json.loads(args.params) if args.params else None
        except json.JSONDecodeError as e:
            print(f"rpc.py: params are not JSON: {e}", file=sys.stderr)
            return 2
    else:
        method = args.method
        params = args.build(args)
    if args.verbose:
        print(json.dumps({"method": method, "params": params}), file=sys.stderr)
    try:
        client = Client(args.server, args.timeout)
    except OSError as e:
        print(f"rpc.py: cannot reach ferrited at {args.server}: {e}", file=sys.stderr)
        return 3
    try:
        result = client.call(method, params)
    except RpcError as e:
        print(f"rpc.py: {method} failed: {e.message} (code {e.code})", file=sys.stderr)
        return 1
    except (OSError, ConnectionError) as e:
        print(f"rpc.py: {method}: {e}", file=sys.stderr)
        return 3
    try:
        print(json.dumps(result, indent=2))
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader (e.g. `grep -q`) has what it wanted.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
