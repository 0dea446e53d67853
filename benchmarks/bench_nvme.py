#!/usr/bin/env python3
"""make bench-nvme: 4k random reads and writes at QD1 and QD32 on QEMU's
emulated NVMe controller inside the VM of hw-tests/vm, in one VM run:
first through the kernel's nvme driver with fio's io_uring engine, then
through Ferrite's user-space driver (VFIO, no-IOMMU mode) with one reactor,
adaptive polling with MSI-X wake-ups ("ferrite") and busy polling
("ferrite-busy").

Without KVM every guest instruction is emulated: the absolute IOPS mean
little; the ratios and the CPU time per I/O are the point. CPU per I/O is
the process's CPU time (user + system) over the run divided by the I/Os,
for fio from its usr_cpu/sys_cpu figures; interrupt handling the kernel does
outside the process is not in either figure.

Environment: BENCH_SECS (default 5) per run, FERRITE_NVME_GUEST (the guest
binary, default target/release/nvme-guest), VM_CACHE.
Prints a table, then `RESULT <name> <value> <unit>` lines.
"""
import os
import re
import subprocess
import sys

here = os.path.dirname(os.path.abspath(__file__))
repo = os.path.dirname(here)


def main():
    env = dict(os.environ)
    env.setdefault("BENCH_SECS", "5")
    env.setdefault("BENCH_MODES", "adaptive busy")
    env.setdefault("RUST_LOG", "warn")
    target = env.get("CARGO_TARGET_DIR", os.path.join(repo, "target"))
    env.setdefault("FERRITE_NVME_GUEST", os.path.join(target, "release", "nvme-guest"))
    cmd = [os.path.join(repo, "hw-tests", "nvme", "run.sh"), "noiommu", "bench"]
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sys.stderr.write(p.stderr)
    rows = {}
    for line in p.stdout.splitlines():
        if not line.startswith("BENCH "):
            continue
        kv = dict(x.split("=", 1) for x in line.split()[1:])
        eng = kv["engine"].replace("kernel-io_uring", "kernel").replace("ferrite-adaptive", "ferrite")
        rows[(eng, kv["rw"], int(kv["qd"]))] = (float(kv["iops"]), float(kv["cpu_us_per_io"]))
    if p.returncode != 0 or not rows:
        sys.stdout.write(p.stdout)
        print(f"bench-nvme: the VM run failed (status {p.returncode})", file=sys.stderr)
        return 1
    engines = [e for e in ("kernel", "ferrite", "ferrite-busy") if any(k[0] == e for k in rows)]
    print(f"{'workload':<16}" + "".join(f"{e + ' IOPS':>18}{'CPU us/IO':>11}" for e in engines))
    for rw in ("randread", "randwrite"):
        for qd in (1, 32):
            line = f"{rw + ' qd' + str(qd):<16}"
            for e in engines:
                iops, cpu = rows.get((e, rw, qd), (0.0, 0.0))
                line += f"{iops:>18.0f}{cpu:>11.1f}"
            print(line)
    print()
    for rw in ("randread", "randwrite"):
        for qd in (1, 32):
            k = rows.get(("kernel", rw, qd))
            for e in engines:
                v = rows.get((e, rw, qd))
                if not v:
                    continue
                name = f"nvme_{rw}_qd{qd}_{e.replace('-', '_')}"
                print(f"RESULT {name}_iops {v[0]:.0f} IOPS")
                print(f"RESULT {name}_cpu_per_io {v[1]:.1f} us")
                if k and e != "kernel" and k[0] > 0:
                    print(f"RESULT {name}_vs_kernel_iops_ratio {v[0] / k[0]:.2f} x")
                    if v[1] > 0:
                        print(f"RESULT {name}_vs_kernel_cpu_ratio {v[1] / k[1]:.2f} x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
