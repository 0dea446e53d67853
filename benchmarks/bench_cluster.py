#!/usr/bin/env python3
"""`make bench-cluster`: a local 3-node cluster (etcd, ferrite-meta, three
ferrited on loopback, one shared 2-core machine). fio's nbd engine against
an RF 3 volume and, in the same run, an RF 1 volume: 4k random write and
read at QD 1 and 32, 128k sequential write. RESULT lines with IOPS,
p50/p99, total CPU seconds and peak RSS of all Ferrite processes, the RF3/RF1
ratios, and the time to re-replicate 1 GiB after a node is lost.
"""

import os
import shutil
import tempfile
import time

from benchlib import ROOT, Procs, peak_rss_mib, rpc, run_jobs

RUNTIME = int(os.environ.get("RUNTIME", "10"))
SIZE = 1 << 30
JOBS = [
    ("seqwrite_128k", "write", "128k", 16),
    ("randwrite_4k_qd1", "randwrite", "4k", 1),
    ("randwrite_4k_qd32", "randwrite", "4k", 32),
    ("randread_4k_qd1", "randread", "4k", 1),
    ("randread_4k_qd32", "randread", "4k", 32),
]


def healthy(sock, vol, rf, gone):
    v = rpc(sock, "volume_get", {"name": vol})
    exts = v.get("extents", [])
    return exts and all(len(e["replicas"]) == rf and not e.get("learners") and gone not in e["replicas"] for e in exts)


def main():
    tmp = tempfile.mkdtemp(prefix="ferrite-bench-cluster-", dir=os.environ.get("BENCH_DIR", ROOT))
    procs = Procs(tmp)
    try:
        etcd = procs.etcd()
        meta_proc, meta = procs.meta(etcd)
        nodes = [procs.node(f"node{i}", meta, device_size="4G") for i in (1, 2, 3)]
        sock = nodes[0][1]
        rpc(sock, "pool_create", {"name": "rf3", "replica_count": 3})
        rpc(sock, "pool_create", {"name": "rf1", "replica_count": 1})
        for vol, pool in (("v3", "rf3"), ("v1", "rf1")):
            rpc(sock, "volume_create", {"name": vol, "pool": pool, "size": SIZE})
            rpc(sock, "nbd_export_start", {"volume": vol})
        pids = [p.pid for p, _, _ in nodes] + [meta_proc.pid]
        nbd = nodes[0][2]
        print(f"Cluster benchmark: 3 ferrited (2 adaptive reactors each) + ferrite-meta + etcd on one machine; fio nbd via node1, {RUNTIME}s per job")
        rf3 = run_jobs("RF3", f"nbd://127.0.0.1:{nbd}/v3", pids, JOBS, SIZE, RUNTIME)
        rf1 = run_jobs("RF1", f"nbd://127.0.0.1:{nbd}/v1", pids, JOBS, SIZE, RUNTIME)
        rss = sum(peak_rss_mib(p) for p in pids)

        # Re-replication: v3 was written by the sequential job; a fourth
        # node joins, a replica holder dies, time until 3 healthy replicas.
        procs.node("node4", meta, device_size="4G")
        victim = "node3"
        nodes[2][0].kill()
        t0 = time.time()
        deadline = t0 + 600
        while time.time() < deadline and not healthy(sock, "v3", 3, victim):
            time.sleep(0.5)
        heal_s = time.time() - t0
        ok = healthy(sock, "v3", 3, victim)
        print(f"  re-replication of v3 (1 GiB, 4 extents) after losing {victim}: {heal_s:.1f} s{'' if ok else ' (did not finish)'}")
        print(f"  peak RSS of ferrited x3 + ferrite-meta: {rss:.0f} MiB")
        print()
        for name, _, _, _ in JOBS:
            a, b = rf3[name], rf1[name]
            print(f"RESULT rf3_{name}_iops {a['iops']:.0f} IOPS")
            print(f"RESULT rf1_{name}_iops {b['iops']:.0f} IOPS")
            print(f"RESULT rf3_{name}_p50_us {a['p50_us']:.1f} us")
            print(f"RESULT rf3_{name}_p99_us {a['p99_us']:.1f} us")
            print(f"RESULT rf1_{name}_p50_us {b['p50_us']:.1f} us")
            print(f"RESULT rf1_{name}_p99_us {b['p99_us']:.1f} us")
            print(f"RESULT rf3_{name}_cpu_s {a['cpu_s']:.2f} s")
            print(f"RESULT rf1_{name}_cpu_s {b['cpu_s']:.2f} s")
            print(f"RESULT ratio_rf3_rf1_{name}_iops {a['iops'] / b['iops'] if b['iops'] else 0:.2f} ratio")
        print(f"RESULT cluster_peak_rss_mib {rss:.0f} MiB")
        print(f"RESULT rereplicate_1g_s {heal_s:.1f} s")
    finally:
        procs.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
