//! Issue 4 end to end: a real etcd, ferrite-meta and ferrited on loopback,
//! driven by clients nobody here wrote (fio, qemu-img, qemu-io, nbdinfo,
//! SPDK's spdk-rpc).

mod common;
use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

const MIB: u64 = 1 << 20;

fn one_node(name: &str) -> Cluster {
    let mut c = Cluster::start(name, 1);
    c.add_node();
    c
}

#[test]
fn fio_verify_4k_and_64k_through_nbd() {
    let mut c = Cluster::start("fio", 1);
    c.add_node_with(&["--dma-arena", "80M"]);
    c.volume("pool0", 1, "vol0", 256 * MIB);
    let n = c.node(0);
    n.rpc_ok("nbd_export_start", json!({"volume": "vol0"}));
    for bs in ["4k", "64k"] {
        let (ok, out) = fio_verify(&n.nbd_uri("vol0"), bs, "64m", &[]);
        assert!(
            ok,
            "fio {bs} failed:\n{out}\nnode log:\n{}",
            n.proc.log_text()
        );
        assert!(!out.contains("verify: bad"), "{out}");
    }
    // The data path wrote through the store: its counters moved.
    let st = n.rpc_ok("store_get_stats", Value::Null);
    assert!(
        st["user_bytes_written"].as_u64().unwrap() >= 64 * MIB,
        "{st}"
    );
    assert_eq!(st["checksum_errors"], 0);
    // Every I/O buffer came from the arena --dma-arena sized.
    assert_eq!(st["dma"]["arena_bytes"], 80 * MIB, "{st}");
    assert_eq!(st["dma"]["heap_buffers"], 0, "{st}");
}

/// Small writes go to new blocks, written once with the batch that maps
/// them (the default). Random 4k writes through NBD, verified by fio. Once
/// the node is idle its cleaner moves the scattered blocks back in order;
/// the node is then SIGKILLed and the data verified again after journal
/// replay.
#[test]
fn logged_small_writes_verify_before_and_after_sigkill() {
    small_writes_verify_before_and_after_sigkill("logged", &[]);
}

/// The same with `--journal-small-writes`: small writes journaled, and
/// their blocks relocated home to new blocks (160 MiB is more than a
/// quarter of the journals, so home writes run).
#[test]
fn relocated_home_writes_verify_before_and_after_sigkill() {
    small_writes_verify_before_and_after_sigkill("relocate", &["--journal-small-writes"]);
}

fn small_writes_verify_before_and_after_sigkill(name: &str, args: &[&str]) {
    let mut c = Cluster::start(name, 1);
    c.add_node_with(args);
    c.volume("pool0", 1, "vol0", 256 * MIB);
    c.node(0).rpc_ok("volume_export", json!({"name": "vol0"}));
    let job = ["--rw=randwrite", "--randrepeat=1"];
    let (ok, out) = fio_verify(&c.node(0).nbd_uri("vol0"), "4k", "160m", &job);
    assert!(ok && !out.contains("verify: bad"), "{out}");
    let st = c.node(0).rpc_ok("store_get_stats", Value::Null);
    let (moved, idle) = if args.is_empty() {
        ("logged_bytes", "relocated_bytes")
    } else {
        ("relocated_bytes", "logged_bytes")
    };
    assert!(st[moved].as_u64().unwrap() > 0, "{st}");
    assert_eq!(st[idle], 0, "{st}");
    assert_eq!(st["checksum_errors"], 0);
    let cleaned = eventually(|| {
        let st = c.node(0).rpc_ok("store_get_stats", Value::Null);
        st["cleaned_bytes"].as_u64().unwrap() > 0
    });
    assert!(cleaned, "the idle node's cleaner moved nothing");
    // The same counter on the Prometheus endpoint.
    let mut http = std::net::TcpStream::connect(("127.0.0.1", c.node(0).metrics)).unwrap();
    http.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    http.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut page = String::new();
    http.read_to_string(&mut page).unwrap();
    let moved: f64 = page
        .lines()
        .find_map(|l| l.strip_prefix("ferrite_store_cleaned_bytes_total "))
        .unwrap_or_else(|| panic!("no ferrite_store_cleaned_bytes_total in:\n{page}"))
        .trim()
        .parse()
        .unwrap();
    assert!(moved > 0.0, "ferrite_store_cleaned_bytes_total is {moved}");
    assert!(page.contains("ferrite_store_free_segments "), "{page}");
    assert!(page.contains("ferrite_store_logged_bytes_total "), "{page}");
    assert!(page.contains("ferrite_dma_heap_buffers_total "), "{page}");
    // The default arena: 64 MiB and a quarter of a 64 MiB journal for each
    // of the two reactors.
    let arena = page
        .lines()
        .find_map(|l| l.strip_prefix("ferrite_dma_arena_bytes "))
        .unwrap_or_else(|| panic!("no ferrite_dma_arena_bytes in:\n{page}"));
    assert_eq!(arena.trim().parse::<f64>().unwrap(), (96 * MIB) as f64);
    c.restart_node(0);
    let back = eventually(|| {
        let l = c.node(0).rpc_ok("nbd_export_list", Value::Null).to_string();
        l.contains("vol0")
    });
    assert!(back, "the restarted node did not export vol0 again");
    let verify_only = ["--rw=randwrite", "--randrepeat=1", "--verify_only"];
    let (ok, out) = fio_verify(&c.node(0).nbd_uri("vol0"), "4k", "160m", &verify_only);
    assert!(ok && !out.contains("verify: bad"), "after SIGKILL: {out}");
    assert!(out.contains("READ:"), "verify_only read nothing: {out}");
    let st = c.node(0).rpc_ok("store_get_stats", Value::Null);
    assert_eq!(st["checksum_errors"], 0);
}

#[test]
fn qemu_img_round_trip_and_qemu_io_at_the_edges() {
    let c = one_node("qemu");
    let size = 32 * MIB;
    c.volume("pool0", 1, "vol0", size);
    let n = c.node(0);
    n.rpc_ok("nbd_export_start", json!({"volume": "vol0"}));
    let uri = n.nbd_uri("vol0");
    let src = c.dir.join("src.raw");
    let back = c.dir.join("back.raw");
    let data: Vec<u8> = (0..size)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    std::fs::write(&src, &data).unwrap();
    let (ok, out) = run(Command::new("qemu-img")
        .args(["convert", "-n", "-f", "raw", "-O", "raw"])
        .arg(&src)
        .arg(&uri));
    assert!(ok, "{out}");
    let (ok, out) = run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw", &uri])
        .arg(&back));
    assert!(ok, "{out}");
    assert!(
        std::fs::read(&back).unwrap() == data,
        "qemu-img round trip differs"
    );
    // The last block is writable and readable; past the end is refused cleanly.
    let last = size - 4096;
    let (ok, out) = run(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        &format!("write -P 0x5a {last} 4096"),
        "-c",
        &format!("read -P 0x5a {last} 4096"),
        &uri,
    ]));
    assert!(
        ok && !out.contains("verification failed") && !out.contains("failed"),
        "{out}"
    );
    let (_, out) = run(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        &format!("write -P 0x5a {size} 4096"),
        &uri,
    ]));
    assert!(
        out.contains("failed") || out.contains("error"),
        "a write past the end must be refused: {out}"
    );
    // After the refused write, the server still serves the same data.
    let (ok, out) = run(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        &format!("read -P 0x5a {last} 4096"),
        &uri,
    ]));
    assert!(ok && !out.contains("failed"), "{out}");
}

#[test]
fn spdk_rpc_client_talks_to_ferrited() {
    let c = one_node("spdk");
    c.volume("pool0", 1, "vol0", 64 * MIB);
    let n = c.node(0);
    let sock = n.sock.to_str().unwrap();
    let (ok, out) = run(Command::new("spdk-rpc").args(["-s", sock, "rpc_get_methods"]));
    assert!(ok, "{out}");
    let methods: Vec<String> = serde_json::from_str(&out).expect("spdk-rpc prints JSON");
    for m in [
        "bdev_get_bdevs",
        "nbd_export_start",
        "volume_create",
        "framework_get_reactors",
        "spdk_get_version",
    ] {
        assert!(
            methods.iter().any(|x| x == m),
            "{m} missing from {methods:?}"
        );
    }
    let (ok, out) =
        run(Command::new("spdk-rpc").args(["-s", sock, "bdev_get_bdevs", "-b", "vol0"]));
    assert!(ok, "{out}");
    let b: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(b[0]["name"], "vol0");
    assert_eq!(
        b[0]["num_blocks"].as_u64().unwrap() * b[0]["block_size"].as_u64().unwrap(),
        64 * MIB
    );
    let (ok, out) = run(Command::new("spdk-rpc").args(["-s", sock, "framework_get_reactors"]));
    assert!(ok, "{out}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["reactors"].as_array().unwrap().len(), 2);
    // An unknown bdev is an error from SPDK's client's point of view too.
    let (ok, _) = run(Command::new("spdk-rpc").args(["-s", sock, "bdev_get_bdevs", "-b", "nope"]));
    assert!(!ok);
    // Our own script covers every method with --help.
    let (ok, out) = run(Command::new("python3").args([
        "../../scripts/rpc.py",
        "-s",
        sock,
        "volume_get",
        "-n",
        "vol0",
    ]));
    assert!(ok && out.contains("\"extents\""), "{out}");
    let (ok, out) =
        run(Command::new("python3").args(["../../scripts/rpc.py", "pool_create", "--help"]));
    assert!(ok && out.contains("--replica-count"), "{out}");
}

#[test]
fn clear_errors_for_bad_requests() {
    let c = one_node("errors");
    let n = c.node(0);
    n.rpc_ok("pool_create", json!({"name": "p", "replica_count": 1}));
    let e = n.rpc("pool_create", json!({"name": "p"})).unwrap_err();
    assert_eq!(e.0, -17, "{e:?}");
    let e = n
        .rpc(
            "volume_create",
            json!({"name": "v", "pool": "nope", "size": 4096}),
        )
        .unwrap_err();
    assert_eq!(e.0, -2, "{e:?}");
    assert!(e.1.contains("nope"), "{e:?}");
    let e = n
        .rpc(
            "volume_create",
            json!({"name": "v", "pool": "p", "size": 0}),
        )
        .unwrap_err();
    assert_eq!(e.0, -22, "{e:?}");
    let e = n
        .rpc(
            "volume_create",
            json!({"name": "v", "pool": "p", "size": 4097}),
        )
        .unwrap_err();
    assert_eq!(e.0, -22, "{e:?}");
    let e = n
        .rpc("volume_create", json!({"name": "v", "pool": "p"}))
        .unwrap_err();
    assert_eq!(e.0, -32602, "missing size: {e:?}");
    n.rpc_ok("pool_create", json!({"name": "thick", "thin": false}));
    let e = n
        .rpc(
            "volume_create",
            json!({"name": "huge", "pool": "thick", "size": 1u64 << 40}),
        )
        .unwrap_err();
    assert_eq!(e.0, -28, "thick beyond capacity: {e:?}");
    n.rpc_ok(
        "volume_create",
        json!({"name": "v", "pool": "p", "size": 8 * MIB}),
    );
    let e = n
        .rpc(
            "volume_create",
            json!({"name": "v", "pool": "p", "size": 8 * MIB}),
        )
        .unwrap_err();
    assert_eq!(e.0, -17, "{e:?}");
    let e = n
        .rpc("volume_resize", json!({"name": "v", "size": 4 * MIB}))
        .unwrap_err();
    assert_eq!(e.0, -22, "shrink: {e:?}");
    let e = n
        .rpc("nbd_export_start", json!({"volume": "missing"}))
        .unwrap_err();
    assert_eq!(e.0, -2, "{e:?}");
    let e = n.rpc("no_such_method", Value::Null).unwrap_err();
    assert_eq!(e.0, -32601);

    // A deleted volume takes the exports `volume_export` made with it.
    let out = n.rpc_ok("volume_export", json!({"name": "v"}));
    let nqn = out["nvmf"]["nqn"]
        .as_str()
        .expect("NVMe/TCP export")
        .to_string();
    let iqn = out["iscsi"].as_str().expect("iSCSI export").to_string();
    let subsystems = |n: &common::Node| n.listed("nvmf_get_subsystems", "nqn");
    let targets = |n: &common::Node| n.listed("iscsi_get_target_nodes", "name");
    assert!(subsystems(n).contains(&nqn));
    assert!(targets(n).contains(&iqn));
    // And those made with SPDK's methods: its namespace in a subsystem of
    // the user's naming, and a target node exporting only it. A subsystem
    // and a target node that export another volume too keep that one.
    n.rpc_ok(
        "volume_create",
        json!({"name": "w", "pool": "p", "size": 8 * MIB}),
    );
    let custom = "nqn.2016-06.io.spdk:custom";
    n.nvmf_subsystem_with(custom, &["v", "w"]);
    let node = |name: &str, luns: &[&str]| {
        json!({
            "name": name, "alias_name": name, "queue_depth": 16,
            "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 1}],
            "luns": luns.iter().enumerate()
                .map(|(i, b)| json!({"bdev_name": b, "lun_id": i}))
                .collect::<Vec<_>>(),
        })
    };
    n.rpc_ok("iscsi_create_target_node", node("only-v", &["v"]));
    n.rpc_ok("iscsi_create_target_node", node("v-and-w", &["v", "w"]));
    let custom_bdevs = |n: &common::Node| -> Vec<String> {
        n.subsystem_bdevs(custom)
            .unwrap_or_else(|| panic!("{custom} not listed"))
    };
    let named = |n: &common::Node, tail: &str| targets(n).iter().any(|t| t.ends_with(tail));
    assert_eq!(custom_bdevs(n), ["v", "w"]);
    assert!(
        named(n, ":only-v") && named(n, ":v-and-w"),
        "{:?}",
        targets(n)
    );

    n.rpc_ok("volume_delete", json!({"name": "v"}));
    assert!(!subsystems(n).contains(&nqn), "{nqn} outlived its volume");
    assert!(!targets(n).contains(&iqn), "{iqn} outlived its volume");
    assert_eq!(custom_bdevs(n), ["w"], "v's namespace outlived it");
    assert!(!named(n, ":only-v"), "only-v outlived its volume");
    assert!(named(n, ":v-and-w"), "v-and-w exports w too and stays");
}

#[test]
fn resize_is_seen_by_new_clients() {
    let c = one_node("resize");
    c.volume("pool0", 1, "vol0", 16 * MIB);
    let n = c.node(0);
    n.rpc_ok("nbd_export_start", json!({"volume": "vol0"}));
    n.rpc_ok("volume_resize", json!({"name": "vol0", "size": 48 * MIB}));
    let (ok, out) = run(Command::new("nbdinfo").args(["--size", &n.nbd_uri("vol0")]));
    assert!(ok, "{out}");
    assert_eq!(out.trim(), (48 * MIB).to_string());
    let (ok, out) = run(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        &format!("write -P 7 {} 4096", 47 * MIB),
        &n.nbd_uri("vol0"),
    ]));
    assert!(ok && !out.contains("failed"), "{out}");
}

#[test]
fn data_survives_sigkill_of_ferrited_and_meta_fails_over() {
    let mut c = Cluster::start("restart", 2);
    c.add_node();
    c.volume("pool0", 1, "vol0", 64 * MIB);
    let exported = c.node(0).rpc_ok("volume_export", json!({"name": "vol0"}));
    let nqn = exported["nvmf"]["nqn"].as_str().unwrap().to_string();
    let (ok, out) = run(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "write -P 0x3c 1M 4M",
        &c.node(0).nbd_uri("vol0"),
    ]));
    assert!(ok && !out.contains("failed"), "{out}");
    // Kill -9 the node: writes were acknowledged, so they are durable, and
    // the restarted node exports vol0 again by itself (saved exports).
    c.restart_node(0);
    let restored = eventually(|| {
        let nbd = c.node(0).rpc_ok("nbd_export_list", Value::Null).to_string();
        let nvmf = c
            .node(0)
            .rpc_ok("nvmf_get_subsystems", Value::Null)
            .to_string();
        nbd.contains("vol0") && nvmf.contains(&nqn)
    });
    assert!(restored, "the restarted node did not export vol0 again");
    let (ok, out) = run(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "read -P 0x3c 1M 4M",
        &c.node(0).nbd_uri("vol0"),
    ]));
    assert!(ok && !out.contains("failed"), "after SIGKILL: {out}");
    // Kill the meta leader: the other takes over and the node's calls go on.
    let leader = (0..100)
        .find_map(|_| {
            let l = c
                .metas
                .iter()
                .position(|(p, _)| p.log_text().contains("is the leader"));
            if l.is_none() {
                std::thread::sleep(Duration::from_millis(100));
            }
            l
        })
        .expect("one meta says it leads");
    c.metas[leader].0.kill9();
    let mut done = false;
    for _ in 0..100 {
        if c.node(0)
            .rpc(
                "volume_create",
                json!({"name": "after", "pool": "pool0", "size": 8 * MIB}),
            )
            .is_ok()
        {
            done = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        done,
        "no meta leader took over; logs:\n{}",
        c.metas[1 - leader].0.log_text()
    );
    c.node(0)
        .rpc_ok("nbd_export_start", json!({"volume": "after"}));
    let (ok, out) = run(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "write -P 9 0 64k",
        "-c",
        "read -P 9 0 64k",
        &c.node(0).nbd_uri("after"),
    ]));
    assert!(ok && !out.contains("failed"), "{out}");
}

#[test]
fn bad_input_on_nbd_and_rpc_costs_nothing_else() {
    let c = one_node("badinput");
    c.volume("pool0", 1, "vol0", 16 * MIB);
    let n = c.node(0);
    n.rpc_ok("nbd_export_start", json!({"volume": "vol0"}));
    // A client that keeps a good connection open through all of it.
    let mut keeper = Command::new("qemu-io")
        .args(["-f", "raw", &n.nbd_uri("vol0")])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // NBD: garbage after the greeting; an unknown export; an oversized request.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", n.nbd)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut g = [0u8; 18];
    s.read_exact(&mut g).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let mut b = [0u8; 64];
    assert_eq!(
        s.read(&mut b).unwrap_or(0),
        0,
        "garbage closes that connection"
    );
    let (ok, _) = run(Command::new("nbdinfo").arg(n.nbd_uri("no-such-export")));
    assert!(!ok, "unknown export refused");
    let (ok, out) =
        run(Command::new("qemu-io").args(["-f", "raw", "-c", "read 0 64M", &n.nbd_uri("vol0")]));
    assert!(
        !ok || out.contains("failed") || out.contains("error") || out.contains("Invalid"),
        "an oversized read is refused: {out}"
    );
    // RPC: garbage, half-written JSON, a non-request.
    let mut r = std::os::unix::net::UnixStream::connect(&n.sock).unwrap();
    r.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    r.write_all(b"}{ not json").unwrap();
    let mut resp = String::new();
    let _ = r.read_to_string(&mut resp);
    assert!(resp.contains("-32700"), "parse error answered: {resp}");
    let mut half = std::os::unix::net::UnixStream::connect(&n.sock).unwrap();
    half.write_all(br#"{"jsonrpc":"2.0","id":1,"method":"spdk_get_"#)
        .unwrap();
    let e = n.rpc("spdk_get_version", Value::Null);
    assert!(
        e.is_ok(),
        "another client is served while one sends half a request"
    );
    drop(half);
    let mut w = std::os::unix::net::UnixStream::connect(&n.sock).unwrap();
    w.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    w.write_all(b"[1,2,3]").unwrap();
    let mut buf = [0u8; 4096];
    let k = w.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..k]).contains("-32600"));
    // The keeper's connection still works, and so does a fresh client.
    {
        let stdin = keeper.stdin.as_mut().unwrap();
        stdin
            .write_all(b"write -P 0x11 0 4096\nread -P 0x11 0 4096\nquit\n")
            .unwrap();
    }
    let out = keeper.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("read 4096/4096") && !text.contains("failed"),
        "{text}"
    );
    let (ok, out) = fio_verify(&n.nbd_uri("vol0"), "4k", "8m", &[]);
    assert!(ok, "{out}");
}
