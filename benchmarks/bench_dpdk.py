#!/usr/bin/env python3
"""`make bench-dpdk`: replica traffic over DPDK against kernel TCP, same run,
same machine (one shared 2-core machine: treat figures as relative).

Two ferrited nodes (2 adaptive reactors each) per transport, each pair with
its own etcd and ferrite-meta, one pair after the other:
- DPDK: a `net_memif` link between the two nodes (EAL `--no-pci --no-huge`).
- TCP: kernel TCP on loopback (the default transport).

For each: replica round trips from node1's reactor 0 to node2's replica
address (`replica_bench`: PING frames carrying 4 KiB or 128 KiB of payload,
answered by node2's replica service without touching its store): latency
p50/p99 at depth 1, and throughput at depth 16; then fio (nbd engine via
node1) 4k random write at QD1 and QD32 on an RF2 volume (node1 and node2).
Prints `RESULT <name> <value> <unit>` lines and the DPDK/TCP ratios.
"""

import glob
import time
import os
import shutil
import tempfile

from benchlib import ROOT, Procs, fio, rpc

RUNTIME = int(os.environ.get("RUNTIME", "10"))
SIZE = 1 << 30
RTT = [("4k", 4096, 5000), ("128k", 131072, 1000)]
TPUT = [("4k", 4096, 40000), ("128k", 131072, 4000)]
FIO = [("rf2_randwrite_4k_qd1", "randwrite", "4k", 1), ("rf2_randwrite_4k_qd32", "randwrite", "4k", 32)]


def dpdk_args(tmp, prefix, role, ip):
    vdev = f"net_memif0,role={role},id=0,socket={tmp}/memif.sock,socket-abstract=no"
    return [f"--dpdk-eal=--no-pci --no-huge -m 512 --file-prefix={prefix} --vdev={vdev}", f"--dpdk-ip={ip}/24"]


def phase(label, tmp, extra):
    """One pair of nodes: returns {metric: value}."""
    sub = os.path.join(tmp, label)
    os.makedirs(sub)
    procs = Procs(sub)
    res = {}
    try:
        etcd = procs.etcd()
        _, meta = procs.meta(etcd)
        nodes = [procs.node(f"node{i + 1}", meta, device_size="2G", extra=extra[i]) for i in range(2)]
        sock = nodes[0][1]
        addrs = {n["id"]: n["replica"] for n in rpc(sock, "node_list")}
        peer = addrs["node2"]
        print(f"{label}: node1 -> node2 at {peer}", flush=True)
        if label == "dpdk":
            # Until the memif link is up on both sides.

            end = time.time() + 30
            while time.time() < end and not all(all(rpc(s, "replica_dpdk_get_stats")["links_up"]) for _, s, _ in nodes):
                time.sleep(0.1)
        for name, size, count in RTT:
            r = rpc(sock, "replica_bench", {"address": peer, "size": size, "count": count, "depth": 1})
            print(f"  rtt {name:5} depth 1: p50 {r['p50_us']:8.1f} us  p99 {r['p99_us']:8.1f} us  mean {r['mean_us']:8.1f} us  ({r['count']} calls)", flush=True)
            res[f"rtt_{name}_p50_us"] = (r["p50_us"], "us")
            res[f"rtt_{name}_p99_us"] = (r["p99_us"], "us")
        for name, size, count in TPUT:
            r = rpc(sock, "replica_bench", {"address": peer, "size": size, "count": count, "depth": 16})
            print(f"  tput {name:5} depth 16: {r['mbps']:8.1f} MB/s {r['ops_per_s']:9.0f} ops/s  p50 {r['p50_us']:8.1f} us", flush=True)
            res[f"tput_{name}_mbps"] = (r["mbps"], "MB/s")
            res[f"tput_{name}_ops"] = (r["ops_per_s"], "ops/s")
        rpc(sock, "pool_create", {"name": "rf2", "replica_count": 2})
        rpc(sock, "volume_create", {"name": "v", "pool": "rf2", "size": SIZE})
        rpc(sock, "nbd_export_start", {"volume": "v"})
        uri = f"nbd://127.0.0.1:{nodes[0][2]}/v"
        # Allocate the extents first, so the random writes measure steady state.
        fio(uri, "write", "1m", 8, SIZE, 3)
        for name, rw, bs, qd in FIO:
            r = fio(uri, rw, bs, qd, SIZE, RUNTIME)
            print(f"  fio {name:22} {r['iops']:9.0f} IOPS  p50 {r['p50_us']:8.1f} us  p99 {r['p99_us']:9.1f} us", flush=True)
            res[f"{name}_iops"] = (r["iops"], "IOPS")
            res[f"{name}_p50_us"] = (r["p50_us"], "us")
            res[f"{name}_p99_us"] = (r["p99_us"], "us")
        if label == "dpdk":
            s = rpc(sock, "replica_dpdk_get_stats")
            t = rpc(sock, "replica_get_stats")
            print(f"  node1 dpdk: {s['tx_packets']} packets out, {s['rx_packets']} in, {s['retransmits']} retransmits; tcp replica requests served: {t['tcp_requests_served']}", flush=True)
    finally:
        procs.stop()
    return res


def main():
    tmp = tempfile.mkdtemp(prefix="ferrite-bench-dpdk-", dir=os.environ.get("BENCH_DIR", ROOT))
    prefixes = [f"fbench-{os.getpid()}-{i}" for i in (1, 2)]
    try:
        print(f"DPDK replica benchmark: 2 ferrited (2 adaptive reactors each) per transport on one machine; fio {RUNTIME}s per job", flush=True)
        tcp = phase("tcp", tmp, [[], []])
        dsub = os.path.join(tmp, "dpdk")
        dpdk = phase("dpdk", tmp, [dpdk_args(dsub, prefixes[0], "server", "10.99.0.1"),
                                   dpdk_args(dsub, prefixes[1], "client", "10.99.0.2")])
        print()
        for k in tcp:
            print(f"RESULT dpdk_{k} {dpdk[k][0]:.1f} {dpdk[k][1]}")
            print(f"RESULT tcp_{k} {tcp[k][0]:.1f} {tcp[k][1]}")
        for k in tcp:
            t, d = tcp[k][0], dpdk[k][0]
            # For latencies: TCP over DPDK (>1: DPDK faster); else DPDK over TCP.
            if k.endswith("_us"):
                print(f"RESULT ratio_tcp_dpdk_{k} {t / d if d else 0:.2f} ratio")
            else:
                print(f"RESULT ratio_dpdk_tcp_{k} {d / t if t else 0:.2f} ratio")
        left = [p for p in prefixes if os.path.exists(f"/var/run/dpdk/{p}")] + glob.glob("/dev/hugepages/fbench-*")
        print(f"RESULT dpdk_leftover_runtime_files {len(left)} files")
    finally:
        for p in prefixes:
            shutil.rmtree(f"/var/run/dpdk/{p}", ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
