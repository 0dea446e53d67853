//! Issue 8 end to end: two real ferrited processes whose replica traffic
//! goes over DPDK (feature `dpdk`), with real etcd, ferrite-meta, NBD and
//! fio verify.
//!
//! - `memif`: `net_memif` vdevs, server and client over a unix socket in
//!   the test's temp dir.
//! - `af_packet`: `net_af_packet` on a veth pair between two network
//!   namespaces the test creates (each node opens its end with
//!   `--dpdk-netns`; the processes themselves stay in the root namespace so
//!   that they reach etcd/meta and the test on loopback).
//! - loss: drop/duplicate/reorder injected on both nodes; a peer killed
//!   with SIGKILL in the middle of writes.
//! - idle: an idle node with DPDK on does not eat a core.
//!
//! Every EAL runs with `--no-pci --no-huge` and a `--file-prefix` of its
//! own; after a clean stop (SIGTERM) no runtime folder or hugepage file of
//! it may remain.
#![cfg(feature = "dpdk")]

mod common;
use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

/// Removes the EAL runtime folders of the test's nodes however the test
/// ends (a node killed with SIGKILL cannot remove its own).
struct Prefixes(Vec<String>);

fn runtime_dir(prefix: &str) -> PathBuf {
    Path::new("/var/run/dpdk").join(prefix)
}

/// Hugepage files of `prefix` anywhere hugetlbfs is mounted.
fn hugepage_files(prefix: &str) -> Vec<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut out = Vec::new();
    for m in mounts.lines().filter(|l| l.contains(" hugetlbfs ")) {
        let dir = m.split_whitespace().nth(1).unwrap();
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(prefix) {
                    out.push(e.path());
                }
            }
        }
    }
    out
}

impl Prefixes {
    fn new() -> Self {
        Self(Vec::new())
    }

    /// A prefix unique in this machine's runs: tests run in parallel in
    /// one process, and two EALs must never share a prefix.
    fn add(&mut self, node: &str) -> String {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = format!("fit-{}-{n}-{node}", std::process::id());
        self.0.push(p.clone());
        p
    }

    /// Nothing of these prefixes' EALs is left behind.
    fn assert_clean(&self, which: &[usize]) {
        for &i in which {
            let p = &self.0[i];
            let d = runtime_dir(p);
            assert!(!d.exists(), "{} was left behind", d.display());
            let h = hugepage_files(p);
            assert!(h.is_empty(), "hugepage files left behind: {h:?}");
        }
    }
}

impl Drop for Prefixes {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_dir_all(runtime_dir(p));
        }
    }
}

fn eal(prefix: &str, vdev: &str) -> String {
    format!("--dpdk-eal=--no-pci --no-huge -m 512 --file-prefix={prefix} --vdev={vdev}")
}

fn memif(dir: &Path, role: &str) -> String {
    format!(
        "net_memif0,role={role},id=0,socket={},socket-abstract=no",
        dir.join("memif.sock").display()
    )
}

/// Two nodes on a memif link (node1 the server), `extra` for both.
fn memif_cluster(name: &str, p: &mut Prefixes, extra: &[&str]) -> Cluster {
    memif_cluster_with(name, p, extra, "")
}

/// Same, with more memif vdev arguments (`vdev_extra`: ",key=value...").
fn memif_cluster_with(name: &str, p: &mut Prefixes, extra: &[&str], vdev_extra: &str) -> Cluster {
    let mut c = Cluster::start(name, 1);
    for (i, role) in ["server", "client"].iter().enumerate() {
        let vdev = format!("{}{vdev_extra}", memif(&c.dir, role));
        let e = eal(&p.add(&format!("n{}", i + 1)), &vdev);
        let ip = format!("--dpdk-ip=10.77.0.{}/24", i + 1);
        let mut args = vec![e.as_str(), ip.as_str()];
        args.extend_from_slice(extra);
        c.add_node_with(&args);
    }
    wait_links(&c);
    c
}

fn dpdk_stats(n: &Node) -> Value {
    n.rpc_ok("replica_dpdk_get_stats", Value::Null)
}

fn counter(v: &Value, name: &str) -> u64 {
    v[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {v}"))
}

/// Until every node's DPDK links are up (a memif client connects to its
/// server after both started).
fn wait_links(c: &Cluster) {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let all: Vec<Value> = c.nodes.iter().map(dpdk_stats).collect();
        if all.iter().all(|s| {
            s["links_up"]
                .as_array()
                .map(|l| !l.is_empty() && l.iter().all(|u| u == true))
                .unwrap_or(false)
        }) {
            return;
        }
        assert!(Instant::now() < end, "DPDK links did not come up: {all:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Each node registered its replica address with the `dpdk://` scheme.
fn assert_dpdk_addresses(c: &Cluster) {
    let nodes = c.node(0).rpc_ok("node_list", Value::Null);
    let list = nodes.as_array().cloned().unwrap_or_default();
    assert_eq!(list.len(), c.nodes.len(), "{nodes}");
    for n in &list {
        let a = n["replica"].as_str().unwrap_or("");
        assert!(a.starts_with("dpdk://10.77.0."), "{nodes}");
    }
}

/// The replica traffic went over DPDK, and none of it over TCP.
fn assert_traffic_on_dpdk(c: &Cluster) -> (Value, Value) {
    let s: Vec<Value> = c.nodes.iter().map(dpdk_stats).collect();
    let r: Vec<Value> = c
        .nodes
        .iter()
        .map(|n| n.rpc_ok("replica_get_stats", Value::Null))
        .collect();
    let sum = |k: &str| s.iter().map(|v| counter(v, k)).sum::<u64>();
    let forwarded: u64 = r.iter().map(|v| counter(v, "forwarded")).sum();
    assert!(forwarded > 0, "no replicated write: {r:?}");
    assert!(
        sum("requests_served") >= forwarded,
        "fewer requests served over DPDK ({}) than forwarded ({forwarded}): {s:?}",
        sum("requests_served")
    );
    assert!(sum("data_packets") > forwarded && sum("rx_packets") > forwarded);
    for (i, v) in r.iter().enumerate() {
        assert_eq!(
            (
                counter(v, "tcp_connections"),
                counter(v, "tcp_requests_served")
            ),
            (0, 0),
            "node {} served replica traffic over TCP: {v}",
            i + 1
        );
    }
    for v in &s {
        let ports = v["ports"].as_array().unwrap();
        assert!(
            ports.iter().all(|p| p["opackets"].as_u64().unwrap() > 0),
            "a port sent nothing: {v}"
        );
    }
    eprintln!("dpdk stats: {s:#?}\nreplica stats: {r:?}");
    (s[0].clone(), s[1].clone())
}

/// SIGINT, then waits (bounded) for the process to exit by itself.
fn interrupt(n: &mut Node) -> bool {
    let Some(mut c) = n.proc.child.take() else {
        return true;
    };
    let _ = Command::new("kill")
        .args(["-INT", &c.id().to_string()])
        .status();
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end {
        if let Ok(Some(_)) = c.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = c.kill();
    let _ = c.wait();
    false
}

/// Stops every node (SIGTERM; SIGINT for the second when `sigint`); each
/// must exit by itself, say it cleaned the EAL up, and leave nothing
/// behind.
fn stop_clean_with(c: &mut Cluster, p: &Prefixes, which: &[usize], sigint: bool) {
    for &i in which {
        let n = &mut c.nodes[i];
        let exited = if sigint && i == 1 {
            interrupt(n)
        } else {
            n.proc.stop()
        };
        let log = n.proc.log_text();
        assert!(exited, "{} did not stop on its signal:\n{log}", n.id);
        assert!(
            log.contains("dpdk: EAL cleaned up"),
            "{} did not clean its EAL up:\n{log}",
            n.id
        );
    }
    p.assert_clean(which);
}

fn stop_clean(c: &mut Cluster, p: &Prefixes, which: &[usize]) {
    stop_clean_with(c, p, which, false)
}

fn export(c: &Cluster, vol: &str) -> String {
    c.node(0)
        .rpc_ok("nbd_export_start", json!({ "volume": vol }));
    c.node(0).nbd_uri(vol)
}

fn verify(uri: &str, bs: &str, size: &str, extra: &[&str], c: &Cluster) {
    let (ok, out) = fio_verify(uri, bs, size, extra);
    assert!(
        ok && !out.contains("verify: bad"),
        "fio verify ({bs}) failed:\n{out}\nnode1 log:\n{}\nnode2 log:\n{}",
        c.node(0).proc.log_text(),
        c.node(1).proc.log_text()
    );
}

#[test]
fn rf2_over_memif_passes_fio_verify() {
    let mut p = Prefixes::new();
    let mut c = memif_cluster("dpdk-memif", &mut p, &[]);
    assert_dpdk_addresses(&c);
    c.volume("rf2", 2, "vol0", 256 * MIB);
    let uri = export(&c, "vol0");
    verify(&uri, "4k", "32m", &[], &c);
    // 128 KiB frames: ~90 packets each at MTU 1500, reassembled.
    verify(&uri, "128k", "64m", &[], &c);
    let (s1, s2) = assert_traffic_on_dpdk(&c);
    for s in [&s1, &s2] {
        assert_eq!(counter(s, "bad_frames"), 0, "{s}");
        assert_eq!(counter(s, "peers_dead"), 0, "{s}");
    }
    // node1 by SIGTERM, node2 by SIGINT: both clean up.
    stop_clean_with(&mut c, &p, &[0, 1], true);
}

/// Jumbo frames: `--dpdk-mtu 9000` on a memif link (memif carries a
/// packet larger than its 2 KiB buffers as a chain of them).
#[test]
fn rf2_over_memif_with_jumbo_frames() {
    let mut p = Prefixes::new();
    let mut c = memif_cluster_with("dpdk-jumbo", &mut p, &["--dpdk-mtu=9000"], ",bsize=16384");
    c.volume("rf2", 2, "vol0", 64 * MIB);
    let uri = export(&c, "vol0");
    verify(&uri, "128k", "32m", &[], &c);
    let (s1, s2) = assert_traffic_on_dpdk(&c);
    // A 128 KiB write takes ~15 packets of up to 8908 bytes, not ~94.
    let (pk, fr) = (counter(&s1, "data_packets"), counter(&s1, "frames_sent"));
    assert!(pk < fr * 20, "{pk} packets for {fr} frames: {s1}");
    assert_eq!(s1["ports"][0]["mtu"], 9000, "{s1}");
    assert_eq!(counter(&s2, "bad_frames"), 0, "{s2}");
    stop_clean(&mut c, &p, &[0, 1]);
}

/// Chained receive: jumbo frames (one memif buffer each, `bsize=16384`)
/// received into 2 KiB mbufs (`--dpdk-rx-mbuf-room`), so memif hands each
/// 9000-byte frame over as a chain of 5 mbufs. Reassembly copies from each
/// segment straight into the frame (no linearisation).
#[test]
fn rf2_over_memif_with_chained_receive_mbufs() {
    let mut p = Prefixes::new();
    let room = format!("--dpdk-rx-mbuf-room={}", 2048 + 128);
    let mut c = memif_cluster_with(
        "dpdk-chained",
        &mut p,
        &["--dpdk-mtu=9000", &room],
        ",bsize=16384",
    );
    c.volume("rf2", 2, "vol0", 64 * MIB);
    let uri = export(&c, "vol0");
    verify(&uri, "128k", "32m", &[], &c);
    verify(&uri, "4k", "8m", &[], &c);
    let (s1, s2) = assert_traffic_on_dpdk(&c);
    // Node 2 receives the forwarded writes: 9000-byte frames, chained.
    assert!(counter(&s2, "rx_chained") > 1000, "no chained mbufs: {s2}");
    for s in [&s1, &s2] {
        assert_eq!(counter(s, "bad_frames"), 0, "{s}");
        assert_eq!(counter(s, "malformed"), 0, "{s}");
        assert_eq!(counter(s, "peers_dead"), 0, "{s}");
    }
    stop_clean(&mut c, &p, &[0, 1]);
}

/// `--dpdk-mtu 9000` over memif with its default 2 KiB buffers (no
/// `bsize=`). DPDK 22.11's memif mishandles frames chained over several
/// buffers (a storm of replayed packets), so ferrited caps packets on
/// memif at one buffer: the link must work, at 2034 bytes of IP per packet.
#[test]
fn rf2_over_memif_with_jumbo_frames_and_default_buffers() {
    let mut p = Prefixes::new();
    let mut c = memif_cluster("dpdk-jumbo-2k", &mut p, &["--dpdk-mtu=9000"]);
    c.volume("rf2", 2, "vol0", 64 * MIB);
    let uri = export(&c, "vol0");
    verify(&uri, "128k", "32m", &[], &c);
    verify(&uri, "4k", "8m", &[], &c);
    let (s1, s2) = assert_traffic_on_dpdk(&c);
    for s in [&s1, &s2] {
        assert_eq!(s["ports"][0]["mtu"], 2034, "{s}");
        assert_eq!(counter(s, "bad_frames"), 0, "{s}");
        assert_eq!(counter(s, "peers_dead"), 0, "{s}");
        assert_eq!(counter(s, "session_resets"), 0, "{s}");
    }
    // The storm's signature: a driver receiving far more packets than its
    // peer sent (read one after the other, so allow a little).
    let port = |s: &Value, k: &str| s["ports"][0][k].as_u64().unwrap();
    for (a, b) in [(&s1, &s2), (&s2, &s1)] {
        assert!(
            port(b, "ipackets") <= port(a, "opackets") + 1000,
            "received more than was sent: {a}\n{b}"
        );
    }
    let log = c.node(0).proc.log_text();
    assert!(log.contains("does not fit one memif buffer"), "{log}");
    stop_clean(&mut c, &p, &[0, 1]);
}

/// `ip` inside the test, failing loudly.
fn ip(args: &[&str]) {
    let (ok, out) = run(Command::new("ip").args(args));
    assert!(ok, "ip {args:?}: {out}");
}

/// Two network namespaces joined by a veth pair; removed on drop (which
/// removes the veth too).
struct VethNetns {
    ns: [String; 2],
    ifs: [String; 2],
}

impl VethNetns {
    fn create() -> Self {
        let tag = std::process::id() % 100_000;
        let s = Self {
            ns: [format!("fdpdk{tag}a"), format!("fdpdk{tag}b")],
            ifs: [format!("fdv{tag}a"), format!("fdv{tag}b")],
        };
        for n in &s.ns {
            let _ = run(Command::new("ip").args(["netns", "del", n]));
            ip(&["netns", "add", n]);
        }
        ip(&[
            "link", "add", &s.ifs[0], "type", "veth", "peer", "name", &s.ifs[1],
        ]);
        for i in 0..2 {
            ip(&["link", "set", &s.ifs[i], "netns", &s.ns[i]]);
            ip(&["-n", &s.ns[i], "link", "set", &s.ifs[i], "up"]);
            ip(&["-n", &s.ns[i], "link", "set", "lo", "up"]);
        }
        s
    }
}

impl VethNetns {
    /// The MAC address of end `i`.
    fn mac(&self, i: usize) -> String {
        let (ok, out) = run(Command::new("ip").args([
            "-j",
            "-n",
            &self.ns[i],
            "link",
            "show",
            "dev",
            &self.ifs[i],
        ]));
        assert!(ok, "{out}");
        let v: Value = serde_json::from_str(&out).unwrap();
        v[0]["address"].as_str().unwrap().to_string()
    }
}

impl Drop for VethNetns {
    fn drop(&mut self) {
        for n in &self.ns {
            let _ = run(Command::new("ip").args(["netns", "del", n]));
        }
    }
}

#[test]
fn rf2_over_af_packet_on_a_veth_pair_between_namespaces() {
    let veth = VethNetns::create();
    let mut p = Prefixes::new();
    let mut c = Cluster::start("dpdk-afp", 1);
    // node1 knows node2 statically (IP and the MAC of node2's veth end);
    // node2 finds node1 by ARP over the veth.
    let peer = format!("--dpdk-peer=node2=10.78.0.2@{}", veth.mac(1));
    for i in 0..2 {
        let vdev = format!("net_af_packet0,iface={},qpairs=2", veth.ifs[i]);
        let e = eal(&p.add(&format!("n{}", i + 1)), &vdev);
        let ip = format!("--dpdk-ip=10.78.0.{}/24", i + 1);
        let ns = format!("--dpdk-netns={}", veth.ns[i]);
        let mut args = vec![e.as_str(), ip.as_str(), ns.as_str()];
        if i == 0 {
            args.push(peer.as_str());
        }
        c.add_node_with(&args);
    }
    wait_links(&c);
    c.volume("rf2", 2, "vol0", 128 * MIB);
    let nodes = c.node(0).rpc_ok("node_list", Value::Null);
    assert!(
        nodes.as_array().unwrap().iter().all(|n| n["replica"]
            .as_str()
            .unwrap()
            .starts_with("dpdk://10.78.0.")),
        "{nodes}"
    );
    let uri = export(&c, "vol0");
    verify(&uri, "4k", "16m", &[], &c);
    verify(&uri, "128k", "32m", &[], &c);
    assert_traffic_on_dpdk(&c);
    // node2 only answered so far (a session learns its peer's MAC from the
    // peer's packets); round trips it starts itself make it resolve node1.
    let a1 = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "node1")
        .unwrap()["replica"]
        .clone();
    let b = c.node(1).rpc_ok(
        "replica_bench",
        json!({"address": a1, "size": 4096, "count": 200, "depth": 4}),
    );
    assert_eq!(b["count"], 200, "{b}");
    let (s1, s2) = (dpdk_stats(c.node(0)), dpdk_stats(c.node(1)));
    assert_eq!(s1["ports"][0]["driver"], "net_af_packet", "{s1}");
    // node1 used its static entry and never asked; node2 asked by ARP and
    // node1 answered.
    assert_eq!(counter(&s1, "arp_requests"), 0, "{s1}");
    assert_eq!(s1["arp"][0]["static"], true, "{s1}");
    assert_eq!(s1["arp"][0]["mac"], veth.mac(1), "{s1}");
    assert!(counter(&s2, "arp_requests") > 0, "{s2}");
    assert!(counter(&s1, "arp_replies") > 0, "{s1}");
    assert_eq!(s2["arp"][0]["mac"], veth.mac(0), "{s2}");
    // The frames really crossed the veth: the kernel counted them.
    for i in 0..2 {
        let (ok, out) = run(Command::new("ip").args([
            "-j",
            "-s",
            "-n",
            &veth.ns[i],
            "link",
            "show",
            "dev",
            &veth.ifs[i],
        ]));
        assert!(ok, "{out}");
        let v: Value = serde_json::from_str(&out).unwrap();
        let st = &v[0]["stats64"];
        let (rx, tx) = (
            st["rx"]["packets"].as_u64().unwrap(),
            st["tx"]["packets"].as_u64().unwrap(),
        );
        eprintln!("{}: kernel counted {rx} packets in, {tx} out", veth.ifs[i]);
        assert!(rx > 1000 && tx > 1000, "{out}");
    }
    stop_clean(&mut c, &p, &[0, 1]);
}

#[test]
fn loss_duplicates_and_reordering_are_survived() {
    let mut p = Prefixes::new();
    let loss = "--dpdk-loss=drop=0.02,dup=0.02,reorder=0.03";
    let mut c = memif_cluster("dpdk-loss", &mut p, &[loss]);
    c.volume("rf2", 2, "vol0", 128 * MIB);
    let uri = export(&c, "vol0");
    verify(&uri, "4k", "16m", &[], &c);
    verify(&uri, "128k", "32m", &[], &c);
    let (s1, s2) = assert_traffic_on_dpdk(&c);
    let sum = |k: &str| counter(&s1, k) + counter(&s2, k);
    assert!(sum("loss_dropped") > 0 && sum("loss_duplicated") > 0 && sum("loss_reordered") > 0);
    assert!(
        sum("retransmits") + sum("fast_retransmits") > 0,
        "{s1}\n{s2}"
    );
    assert!(sum("duplicates") > 0, "{s1}\n{s2}");
    assert_eq!(sum("bad_frames"), 0);
    stop_clean(&mut c, &p, &[0, 1]);
}

#[test]
fn a_peer_killed_mid_write_is_detected_and_the_volume_goes_on() {
    let mut p = Prefixes::new();
    let mut c = memif_cluster("dpdk-kill", &mut p, &["--io-timeout-secs", "20"]);
    c.volume("rf2", 2, "vol0", 128 * MIB);
    let uri = export(&c, "vol0");
    let u = uri.clone();
    let fio =
        std::thread::spawn(move || fio_verify(&u, "4k", "32m", &["--time_based", "--runtime=12"]));
    std::thread::sleep(Duration::from_secs(4));
    let before = counter(
        &c.node(0).rpc_ok("replica_get_stats", Value::Null),
        "forwarded",
    );
    assert!(before > 0, "nothing was replicated before the kill");
    c.nodes[1].proc.kill9();
    let (ok, out) = fio.join().unwrap();
    assert!(
        ok && !out.contains("verify: bad"),
        "fio verify failed across the peer's death:\n{out}\nnode1 log:\n{}",
        c.node(0).proc.log_text()
    );
    // The dead peer was noticed on the DPDK path (link down or silence)
    // and reported to the replica layer as a failure.
    let s = dpdk_stats(c.node(0));
    assert!(
        counter(&s, "session_resets") + counter(&s, "peers_dead") + counter(&s, "link_downs") > 0,
        "{s}"
    );
    let r = c.node(0).rpc_ok("replica_get_stats", Value::Null);
    assert!(
        counter(&r, "forward_failures") + counter(&r, "failures_reported") > 0,
        "{r}"
    );
    // Degraded, the volume still takes writes and reads them back.
    verify(&uri, "64k", "16m", &[], &c);
    eprintln!("after the kill: {s}\n{r}");
    stop_clean(&mut c, &p, &[0]);
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces).
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn an_idle_node_with_dpdk_does_not_eat_a_core() {
    let mut p = Prefixes::new();
    let mut c = memif_cluster("dpdk-idle", &mut p, &[]);
    // Some traffic first, so that the pollers went active and back.
    c.volume("rf2", 2, "vol0", 64 * MIB);
    let uri = export(&c, "vol0");
    verify(&uri, "4k", "4m", &[], &c);
    std::thread::sleep(Duration::from_secs(2));
    let hz = 100.0; // USER_HZ on Linux
    for n in &c.nodes {
        let pid = n.proc.pid();
        let (t0, w0) = (cpu_ticks(pid), Instant::now());
        std::thread::sleep(Duration::from_secs(2));
        let (t1, w1) = (cpu_ticks(pid), Instant::now());
        let share = (t1 - t0) as f64 / hz / (w1 - w0).as_secs_f64();
        eprintln!("{} idle: {:.1}% of a core", n.id, share * 100.0);
        assert!(
            share < 0.30,
            "{} used {:.0}% of a core while idle",
            n.id,
            share * 100.0
        );
    }
    stop_clean(&mut c, &p, &[0, 1]);
}

/// The replica layer on DPDK as on TCP (cluster.rs's stale-replica test):
/// node 2 dies (SIGKILL), a newer write lands on node 1 alone, node 2
/// restarts with the same `--file-prefix` (its EAL reuses the runtime
/// folder SIGKILL left) and a new session epoch; reads through it never
/// return the stale data, and it catches up.
#[test]
fn a_restarted_peer_gets_a_new_session_and_never_serves_stale_data() {
    let mut p = Prefixes::new();
    let mut c = memif_cluster("dpdk-restart", &mut p, &[]);
    c.volume("rf2", 2, "vol0", 32 * MIB);
    let u1 = export(&c, "vol0");
    let qemu_io =
        |cmd: &str, uri: &str| run(Command::new("qemu-io").args(["-f", "raw", "-c", cmd, uri]));
    let (ok, out) = qemu_io("write -P 0xaa 0 1M", &u1);
    assert!(ok && !out.contains("failed"), "{out}");
    c.nodes[1].proc.kill9();
    let (ok, out) = qemu_io("write -P 0xbb 0 1M", &u1);
    assert!(
        ok && !out.contains("failed"),
        "write with node2 dead: {out}"
    );
    c.restart_node(1);
    wait_links(&c);
    c.node(1)
        .rpc_ok("nbd_export_start", json!({"volume": "vol0"}));
    let u2 = c.node(1).nbd_uri("vol0");
    for round in 0..20 {
        let (ok, out) = qemu_io("read -P 0xbb 0 1M", &u2);
        assert!(
            ok && !out.contains("failed"),
            "round {round}: a stale read through the restarted node:\n{out}\nnode2 log:\n{}",
            c.node(1).proc.log_text()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // Back to two replicas, node2 among them, resynced over DPDK.
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let v = c.node(0).rpc_ok("volume_get", json!({"name": "vol0"}));
        let exts = v["extents"].as_array().cloned().unwrap_or_default();
        let healthy = !exts.is_empty()
            && exts.iter().all(|e| {
                let r = e["replicas"].as_array().unwrap();
                r.len() == 2
                    && r.iter().any(|x| x == "node2")
                    && e["learners"]
                        .as_array()
                        .map(|l| l.is_empty())
                        .unwrap_or(true)
            });
        if healthy {
            break;
        }
        assert!(Instant::now() < end, "vol0 did not heal: {v:#}");
        std::thread::sleep(Duration::from_millis(250));
    }
    let (ok, out) = qemu_io("read -P 0xbb 0 1M", &u2);
    assert!(ok && !out.contains("failed"), "after resync: {out}");
    let s1 = dpdk_stats(c.node(0));
    let r = c
        .nodes
        .iter()
        .map(|n| n.rpc_ok("replica_get_stats", Value::Null))
        .collect::<Vec<_>>();
    eprintln!("node1 dpdk after the restart: {s1}\nreplica: {r:?}");
    for v in &r {
        assert_eq!(counter(v, "tcp_requests_served"), 0, "{v}");
    }
    stop_clean(&mut c, &p, &[0, 1]);
}
