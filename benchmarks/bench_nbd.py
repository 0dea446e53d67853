#!/usr/bin/env python3
"""`make bench-nbd`: fio's nbd engine against Ferrite's vol0 and against
qemu-nbd exporting a file of the same size on the same filesystem, in the
same run. Prints a table, then `RESULT <name> <value> <unit>` lines with
IOPS, MB/s, p50/p99 latency, CPU seconds and peak RSS of the serving
process, and the Ferrite/qemu-nbd ratios.

Ferrite acknowledges a write only once it is on stable media (its store
flushes the device per batch of writes). The peer with the same promise is
qemu-nbd with --cache=directsync (O_DIRECT|O_DSYNC): the ratios compare
against it. qemu-nbd with --cache=none (O_DIRECT, acknowledged while still
in the device's volatile cache) is measured too, for scale. fio runs each
job for RUNTIME seconds.
"""

import os
import shutil
import sys
import tempfile

from benchlib import ROOT, Procs, free_port, peak_rss_mib, rpc, run_jobs, wait_port

RUNTIME = int(os.environ.get("RUNTIME", "10"))
SIZE = 1 << 30
JOBS = [
    # name, rw, bs, iodepth
    ("seqwrite_128k", "write", "128k", 16),
    ("randwrite_4k_qd1", "randwrite", "4k", 1),
    ("randwrite_4k_qd32", "randwrite", "4k", 32),
    ("randread_4k_qd1", "randread", "4k", 1),
    ("randread_4k_qd32", "randread", "4k", 32),
]


def main():
    for tool in ["fio", "qemu-nbd", "etcd"]:
        if not shutil.which(tool):
            raise SystemExit(f"bench: {tool} is missing (scripts/install-deps.sh installs it)")
    tmp = tempfile.mkdtemp(prefix="ferrite-bench-nbd-", dir=os.environ.get("BENCH_DIR", ROOT))
    procs = Procs(tmp)
    try:
        etcd = procs.etcd()
        _, meta = procs.meta(etcd)
        node, sock, nbd = procs.node("bench", meta)
        rpc(sock, "pool_create", {"name": "bench", "replica_count": 1, "thin": False})
        rpc(sock, "volume_create", {"name": "vol0", "pool": "bench", "size": SIZE})
        rpc(sock, "nbd_export_start", {"volume": "vol0"})

        def qemu_nbd(cache):
            raw = f"{tmp}/qemu-{cache}.raw"
            with open(raw, "wb") as f:
                f.truncate(SIZE)
            port = free_port()
            p = procs.spawn(f"qemu-nbd-{cache}", ["qemu-nbd", "-f", "raw", "-x", "vol0", "-p", str(port), "-b", "127.0.0.1",
                                                  f"--cache={cache}", "--aio=native", "--discard=unmap", "-e", "4", "-t", raw])
            wait_port(port)
            return p, f"nbd://127.0.0.1:{port}/vol0"

        print(f"NBD benchmark: fio nbd engine, {RUNTIME}s per job, 1 GiB volume/files on the same filesystem")
        print("  ferrite: ferrited, 2 adaptive reactors, one node, 1 replica, durable on ack"
              + (f", extra flags: {os.environ['FERRITE_NODE_ARGS']}" if os.environ.get("FERRITE_NODE_ARGS") else ""))
        print("  qemu-nbd (directsync): durable on ack, the like-for-like peer; qemu-nbd (none): not durable on ack")
        fer = run_jobs("ferrite", f"nbd://127.0.0.1:{nbd}/vol0", [node.pid], JOBS, SIZE, RUNTIME)
        qemu, quri = qemu_nbd("directsync")
        qn = run_jobs("qemu-ds", quri, [qemu.pid], JOBS, SIZE, RUNTIME)
        qemu_none, quri_none = qemu_nbd("none")
        qnone = run_jobs("qemu-none", quri_none, [qemu_none.pid], JOBS, SIZE, RUNTIME)
        fer_rss, qn_rss = peak_rss_mib(node.pid), peak_rss_mib(qemu.pid)
        st = rpc(sock, "store_get_stats")
        print(f"  peak RSS: ferrited {fer_rss:.0f} MiB, qemu-nbd {qn_rss:.0f} MiB; store write amplification {st['write_amplification']:.2f}")
        print()
        for name, _, _, _ in JOBS:
            f, q = fer[name], qn[name]
            print(f"RESULT ferrite_{name}_iops {f['iops']:.0f} IOPS")
            print(f"RESULT qemunbd_{name}_iops {q['iops']:.0f} IOPS")
            print(f"RESULT ferrite_{name}_mbps {f['mbps']:.1f} MB/s")
            print(f"RESULT qemunbd_{name}_mbps {q['mbps']:.1f} MB/s")
            print(f"RESULT ferrite_{name}_p50_us {f['p50_us']:.1f} us")
            print(f"RESULT ferrite_{name}_p99_us {f['p99_us']:.1f} us")
            print(f"RESULT qemunbd_{name}_p50_us {q['p50_us']:.1f} us")
            print(f"RESULT qemunbd_{name}_p99_us {q['p99_us']:.1f} us")
            print(f"RESULT ferrite_{name}_cpu_s {f['cpu_s']:.2f} s")
            print(f"RESULT qemunbd_{name}_cpu_s {q['cpu_s']:.2f} s")
            print(f"RESULT qemunbd_nocache_{name}_iops {qnone[name]['iops']:.0f} IOPS")
            print(f"RESULT ratio_{name}_iops {f['iops'] / q['iops'] if q['iops'] else 0:.2f} ratio")
        print(f"RESULT ferrite_peak_rss_mib {fer_rss:.0f} MiB")
        print(f"RESULT qemunbd_peak_rss_mib {qn_rss:.0f} MiB")
        print(f"RESULT ferrite_store_write_amplification {st['write_amplification']:.2f} ratio")
    finally:
        procs.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
