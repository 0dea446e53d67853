"""Helpers shared by Ferrite's Python benchmarks: ports, JSON-RPC, process
CPU and memory, fio runs, and starting etcd / ferrite-meta / ferrited."""

import json
import os
import socket
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("BIN", os.path.join(ROOT, "target", "release"))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, secs=30):
    end = time.time() + secs
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"bench: nothing listens on port {port} after {secs}s")


def rpc(sock, method, params=None):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    req = {"jsonrpc": "2.0", "id": 1, "method": method}
    if params is not None:
        req["params"] = params
    s.sendall(json.dumps(req).encode())
    buf = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            raise SystemExit(f"bench: {method}: connection closed")
        buf += chunk
        try:
            v = json.loads(buf)
            break
        except ValueError:
            continue
    if "error" in v:
        raise SystemExit(f"bench: {method} failed: {v['error']}")
    return v["result"]


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick  # utime + stime


def run_jobs(label, uri, pids, jobs, size, runtime):
    """Runs each (name, rw, bs, iodepth) of `jobs` with fio against `uri`;
    a result per name, with the CPU seconds the processes `pids` spent on it
    as `cpu_s`. Prints a line per job."""
    res = {}
    for name, rw, bs, qd in jobs:
        c0 = sum(cpu_seconds(p) for p in pids)
        r = fio(uri, rw, bs, qd, size, runtime)
        r["cpu_s"] = sum(cpu_seconds(p) for p in pids) - c0
        res[name] = r
        print(f"  {label:9} {name:18} {r['iops']:10.0f} IOPS {r['mbps']:8.1f} MB/s  p50 {r['p50_us']:8.1f} us  p99 {r['p99_us']:9.1f} us  cpu {r['cpu_s']:5.2f} s", flush=True)
    return res


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def fio(uri, rw, bs, qd, size, runtime):
    cmd = ["fio", "--name=b", "--ioengine=nbd", f"--uri={uri}", f"--rw={rw}", f"--bs={bs}",
           f"--iodepth={qd}", f"--size={size}", "--time_based", f"--runtime={runtime}",
           "--output-format=json", "--randrepeat=0", "--norandommap"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"bench: fio failed on {uri}:\n{out.stdout}\n{out.stderr}")
    j = json.loads(out.stdout[out.stdout.index("{"):])["jobs"][0]
    side = j["write"] if "write" in rw else j["read"]
    pct = side["clat_ns"].get("percentile", {})
    return {
        "iops": side["iops"],
        "mbps": side["bw_bytes"] / 1e6,
        "p50_us": pct.get("50.000000", 0) / 1000,
        "p99_us": pct.get("99.000000", 0) / 1000,
    }




class Procs:
    """Processes started in sessions of their own, stopped in reverse order."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.procs = []

    def spawn(self, name, args):
        log = open(os.path.join(self.tmp, name + ".log"), "w")
        p = subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True)
        self.procs.append(p)
        return p

    def etcd(self):
        cp, pp = free_port(), free_port()
        self.spawn("etcd", ["etcd", "--name", "b", "--data-dir", f"{self.tmp}/etcd",
                            "--listen-client-urls", f"http://127.0.0.1:{cp}", "--advertise-client-urls", f"http://127.0.0.1:{cp}",
                            "--listen-peer-urls", f"http://127.0.0.1:{pp}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{pp}",
                            "--initial-cluster", f"b=http://127.0.0.1:{pp}"])
        wait_port(cp)
        return cp

    def meta(self, etcd_port):
        mp = free_port()
        p = self.spawn("meta", [f"{BIN}/ferrite-meta", "--etcd", f"http://127.0.0.1:{etcd_port}", "--listen", f"127.0.0.1:{mp}", "--name", "m1"])
        wait_port(mp)
        return p, mp

    def node(self, name, meta_port, device_size="3G", cores="0-1", extra=()):
        # FERRITE_NODE_ARGS: more ferrited flags for every node, e.g.
        # "--home-in-place".
        extra = [*extra, *os.environ.get("FERRITE_NODE_ARGS", "").split()]
        nbd = free_port()
        sock = f"{self.tmp}/{name}.sock"
        p = self.spawn(name, [f"{BIN}/ferrited", "--cores", cores, "--no-pin", "--poll-mode", "adaptive",
                              "--node-id", name, "--zone", name, "--device", f"{self.tmp}/{name}.img", "--device-size", device_size,
                              "--meta", f"127.0.0.1:{meta_port}", "-r", sock, "--nbd", f"127.0.0.1:{nbd}",
                              "--metrics", "off", "--replica", f"127.0.0.1:{free_port()}",
                              "--iscsi", "off", "--nvmf", "off", "--nvmf-discovery", "off", *extra])
        wait_port(nbd, 60)
        return p, sock, nbd

    def stop(self):
        import signal
        for p in reversed(self.procs):
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=20)
            except Exception:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except Exception:
                    pass
