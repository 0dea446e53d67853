//! Issue 5 end to end: replicated volumes on real ferrited processes, node
//! loss under load, self-healing, stale replicas, corruption and repair,
//! and writes that cannot reach enough replicas.

mod common;
use common::*;
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

fn volume_get(n: &Node, vol: &str) -> Value {
    n.rpc_ok("volume_get", json!({ "name": vol }))
}

/// Waits until every extent of `vol` has `rf` replicas, no learner, and
/// none on `gone`; returns the extents.
fn wait_healthy(n: &Node, vol: &str, rf: usize, gone: &str, timeout: Duration) -> Vec<Value> {
    let end = Instant::now() + timeout;
    let mut last = Value::Null;
    while Instant::now() < end {
        last = volume_get(n, vol);
        let exts = last["extents"].as_array().cloned().unwrap_or_default();
        let ok = !exts.is_empty()
            && exts.iter().all(|e| {
                let r = e["replicas"].as_array().unwrap();
                r.len() == rf
                    && e["learners"]
                        .as_array()
                        .map(|l| l.is_empty())
                        .unwrap_or(true)
                    && r.iter().all(|x| x != gone)
            });
        if ok {
            return exts;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("{vol} did not become healthy with {rf} replicas without {gone} in {timeout:?}; last: {last:#}");
}

#[test]
fn node_loss_under_load_heals_back_to_three_replicas() {
    let mut c = Cluster::start("heal", 1);
    for _ in 0..3 {
        c.add_node();
    }
    c.volume("rf3", 3, "vol0", 128 * MIB);
    c.node(0)
        .rpc_ok("nbd_export_start", json!({"volume": "vol0"}));
    let uri = c.node(0).nbd_uri("vol0");
    // fio verify runs while a node that does not export is killed.
    let fio = std::thread::spawn(move || {
        fio_verify(&uri, "4k", "32m", &["--time_based", "--runtime=15"])
    });
    std::thread::sleep(Duration::from_secs(4));
    c.nodes[2].proc.kill9();
    let (ok, out) = fio.join().unwrap();
    assert!(
        ok && !out.contains("verify: bad"),
        "fio verify failed across the node loss:\n{out}\nnode1 log:\n{}",
        c.node(0).proc.log_text()
    );
    // A fourth node joins; the volume heals to three replicas without node3.
    c.add_node();
    let start = Instant::now();
    let exts = wait_healthy(c.node(0), "vol0", 3, "node3", Duration::from_secs(90));
    eprintln!("healed to 3 replicas in {:?}: {exts:?}", start.elapsed());
    // Every copy holds the data: read it back through another node.
    c.node(1)
        .rpc_ok("nbd_export_start", json!({"volume": "vol0"}));
    let (ok, out) = fio_verify(&c.node(1).nbd_uri("vol0"), "64k", "16m", &[]);
    assert!(ok, "{out}");
}

#[test]
fn a_revived_replica_never_serves_stale_data() {
    let mut c = Cluster::start("stale", 1);
    c.add_node();
    c.add_node();
    c.volume("rf2", 2, "vol0", 32 * MIB);
    c.node(0)
        .rpc_ok("nbd_export_start", json!({"volume": "vol0"}));
    let u1 = c.node(0).nbd_uri("vol0");
    let (ok, out) =
        run(Command::new("qemu-io").args(["-f", "raw", "-c", "write -P 0xaa 0 1M", &u1]));
    assert!(ok && !out.contains("failed"), "{out}");
    // Node 2 dies; a newer write lands on node 1 alone.
    c.nodes[1].proc.kill9();
    let (ok, out) =
        run(Command::new("qemu-io").args(["-f", "raw", "-c", "write -P 0xbb 0 1M", &u1]));
    assert!(
        ok && !out.contains("failed"),
        "write with one replica down: {out}"
    );
    // Node 2 comes back holding 0xaa; reading through it must give 0xbb,
    // at once and after it caught up.
    c.restart_node(1);
    c.node(1)
        .rpc_ok("nbd_export_start", json!({"volume": "vol0"}));
    let u2 = c.node(1).nbd_uri("vol0");
    for round in 0..20 {
        let (ok, out) =
            run(Command::new("qemu-io").args(["-f", "raw", "-c", "read -P 0xbb 0 1M", &u2]));
        assert!(
            ok && !out.contains("failed"),
            "round {round}: a stale read through the revived node:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let exts = wait_healthy(c.node(0), "vol0", 2, "none", Duration::from_secs(60));
    assert!(
        exts.iter().all(|e| e["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "node2")),
        "{exts:?}"
    );
    let (ok, out) =
        run(Command::new("qemu-io").args(["-f", "raw", "-c", "read -P 0xbb 0 1M", &u2]));
    assert!(ok && !out.contains("failed"), "after resync: {out}");
}

/// A 1 MiB buffer whose every 4 KiB block starts with a findable marker.
fn marked(block_marker: &str) -> Vec<u8> {
    let mut v = vec![0u8; MIB as usize];
    for (i, b) in v.chunks_mut(4096).enumerate() {
        let m = format!("{block_marker}-{i:04}-");
        b[..m.len()].copy_from_slice(m.as_bytes());
        for (j, x) in b[m.len()..].iter_mut().enumerate() {
            *x = (i * 31 + j * 7) as u8;
        }
    }
    v
}

fn find_all(hay: &[u8], needle: &[u8]) -> Vec<usize> {
    hay.windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

#[test]
fn a_corrupted_replica_block_is_read_correctly_and_repaired() {
    let mut c = Cluster::start("corrupt", 1);
    c.add_node();
    c.add_node();
    c.volume("rf2", 2, "vol0", 16 * MIB);
    for n in 0..2 {
        c.node(n)
            .rpc_ok("nbd_export_start", json!({"volume": "vol0"}));
    }
    let data = marked("FERRITE-CORRUPTION-TEST");
    let src = c.dir.join("src.raw");
    std::fs::write(&src, &data).unwrap();
    let (ok, out) = run(Command::new("qemu-img")
        .args(["convert", "-n", "-f", "raw", "-O", "raw"])
        .arg(&src)
        .arg(c.node(0).nbd_uri("vol0")));
    assert!(ok, "{out}");
    // Flip a byte of block 7 wherever it lies in node 2's device.
    let dev = c.node(1).device.clone();
    let mut bytes = std::fs::read(&dev).unwrap();
    let hits = find_all(&bytes, b"FERRITE-CORRUPTION-TEST-0007-");
    assert!(!hits.is_empty(), "block 7 not found on node 2's device");
    for h in &hits {
        bytes[h + 100] ^= 0xff;
    }
    std::fs::write(&dev, &bytes).unwrap();
    drop(bytes);
    // Read the volume through node 2: right data, checksum error counted.
    let back = c.dir.join("back.raw");
    let (ok, out) = run(Command::new("nbdcopy")
        .arg(c.node(1).nbd_uri("vol0"))
        .arg(&back));
    assert!(ok, "{out}");
    assert!(
        std::fs::read(&back).unwrap()[..MIB as usize] == data[..],
        "wrong data read through the node with the bad copy"
    );
    let s2 = c.node(1).rpc_ok("replica_get_stats", Value::Null);
    assert!(s2["checksum_errors"].as_u64().unwrap() >= 1, "{s2}");
    let repairs = c.node(0).rpc_ok("replica_get_stats", Value::Null)["repairs"]
        .as_u64()
        .unwrap()
        + s2["repairs"].as_u64().unwrap();
    assert!(repairs >= 1, "no repair recorded");
    // Repaired on disk: reading again through node 2 finds no bad block.
    let before = s2["checksum_errors"].as_u64().unwrap();
    let (ok, out) = run(Command::new("nbdcopy")
        .arg(c.node(1).nbd_uri("vol0"))
        .arg(&back));
    assert!(ok, "{out}");
    assert!(std::fs::read(&back).unwrap()[..MIB as usize] == data[..]);
    let after = c.node(1).rpc_ok("replica_get_stats", Value::Null)["checksum_errors"]
        .as_u64()
        .unwrap();
    assert_eq!(before, after, "the bad copy was not rewritten");
}

#[test]
fn a_write_without_enough_replicas_is_never_acknowledged() {
    let mut c = Cluster::start("minrep", 1);
    for _ in 0..3 {
        c.add_node_with(&["--io-timeout-secs", "5"]);
    }
    c.volume("rf3", 3, "vol0", 16 * MIB);
    let pool = c.node(0).rpc_ok("volume_get", json!({"name": "vol0"}));
    assert_eq!(
        pool["min_replicas"], 2,
        "RF 3 needs two copies by default: {pool}"
    );
    c.node(0)
        .rpc_ok("nbd_export_start", json!({"volume": "vol0"}));
    let u = c.node(0).nbd_uri("vol0");
    let (ok, out) = run(Command::new("qemu-io").args(["-f", "raw", "-c", "write -P 1 0 64k", &u]));
    assert!(ok && !out.contains("failed"), "{out}");
    c.nodes[1].proc.kill9();
    c.nodes[2].proc.kill9();
    let start = Instant::now();
    let (_, out) = run(Command::new("qemu-io").args(["-f", "raw", "-c", "write -P 2 0 64k", &u]));
    assert!(
        out.contains("failed") || out.contains("error"),
        "a write with one live replica of three was acknowledged: {out}"
    );
    eprintln!("refused after {:?}", start.elapsed());
    // The node itself stays healthy and answers.
    c.node(0).rpc_ok("spdk_get_version", Value::Null);
}

/// A volume deleted through one node loses its exports on the others too:
/// each node asks meta about the volumes it exports (every 10 s, with its
/// capacity report) and removes the exports of those meta no longer has.
#[test]
fn a_volume_deleted_through_one_node_loses_its_exports_on_another() {
    let mut c = Cluster::start("delexp", 1);
    c.add_node();
    c.add_node();
    c.volume("rf1", 1, "gone", 16 * MIB);
    c.volume("rf1", 1, "kept", 16 * MIB);
    let b = c.node(1);
    let out = b.rpc_ok("volume_export", json!({"name": "gone"}));
    let nqn = out["nvmf"]["nqn"]
        .as_str()
        .expect("NVMe/TCP export")
        .to_string();
    let iqn = out["iscsi"].as_str().expect("iSCSI export").to_string();
    b.rpc_ok("volume_export", json!({"name": "kept"}));
    // A subsystem made with SPDK's methods, exporting both volumes.
    let custom = "nqn.2016-06.io.spdk:both";
    b.nvmf_subsystem_with(custom, &["gone", "kept"]);
    let custom_bdevs = || b.subsystem_bdevs(custom).unwrap_or_default();
    assert_eq!(custom_bdevs(), ["gone", "kept"]);
    let nbd_volumes = || b.listed("nbd_export_list", "volume");
    assert!(nbd_volumes().contains(&"gone".to_string()));
    assert!(b.listed("nvmf_get_subsystems", "nqn").contains(&nqn));
    assert!(b.listed("iscsi_get_target_nodes", "name").contains(&iqn));

    c.node(0).rpc_ok("volume_delete", json!({"name": "gone"}));
    // Each node asks meta every 10 s.
    let gone = eventually_within(Duration::from_secs(40), || {
        !nbd_volumes().contains(&"gone".to_string())
    });
    assert!(
        gone,
        "node 1 still exports the deleted volume over NBD after 40 s"
    );
    assert!(
        !b.listed("nvmf_get_subsystems", "nqn").contains(&nqn),
        "{nqn} outlived its volume"
    );
    assert!(
        !b.listed("iscsi_get_target_nodes", "name").contains(&iqn),
        "{iqn} outlived its volume"
    );
    assert_eq!(
        custom_bdevs(),
        ["kept"],
        "the namespace outlived its volume"
    );
    // The other volume's exports stay, and it still serves I/O.
    assert!(nbd_volumes().contains(&"kept".to_string()));
    let (ok, out) = run(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "write -P 3 0 64k",
        "-c",
        "read -P 3 0 64k",
        &b.nbd_uri("kept"),
    ]));
    assert!(ok && !out.contains("failed"), "{out}");
}
