//! Real initiators against the iSCSI target: qemu's iscsi block driver
//! (qemu-img convert into a LUN and back, byte-identical, for 512- and
//! 4096-byte blocks), libiscsi's discovery and query tools, and SPDK's own
//! JSON-RPC client driving the target's configuration.

mod iscsi_common;

use iscsi_common::{require, run, scratch_dir, Target, NODE_BASE};

/// Deterministic, incompressible test data.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

#[test]
fn qemu_img_round_trips_through_a_lun() {
    require("qemu-img");
    let size = 16usize << 20;
    let t = Target::start("qemu", &["q512:16M", "q4k:16M:4096"], 1, true, &[]);
    let dir = scratch_dir("qemu-files");
    for (i, vol) in ["q512", "q4k"].iter().enumerate() {
        let src = dir.join(format!("{vol}-in.raw"));
        let back = dir.join(format!("{vol}-out.raw"));
        let data = pattern(size, 0x9E37_79B9 + i as u64);
        std::fs::write(&src, &data).unwrap();
        let url = t.url(0, vol, 0);
        let (ok, out) = run(
            120,
            "qemu-img",
            &[
                "convert",
                "-n",
                "-f",
                "raw",
                "-O",
                "raw",
                src.to_str().unwrap(),
                &url,
            ],
        );
        assert!(ok, "qemu-img convert into {url} failed (is qemu-block-extra installed? scripts/install-deps.sh):\n{out}\n{}", t.log());
        let (ok, out) = run(
            120,
            "qemu-img",
            &[
                "convert",
                "-f",
                "raw",
                "-O",
                "raw",
                &url,
                back.to_str().unwrap(),
            ],
        );
        assert!(ok, "qemu-img convert out of {url} failed:\n{out}");
        let got = std::fs::read(&back).unwrap();
        assert_eq!(got.len(), size, "{vol}: size");
        assert!(
            got == data,
            "{vol}: the data read back differs from what was written"
        );
        let (ok, info) = run(60, "qemu-img", &["info", &url]);
        assert!(ok && info.contains("16 MiB"), "qemu-img info {url}: {info}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn libiscsi_tools_discover_and_query() {
    require("iscsi-ls");
    let mut t = Target::start("tools", &["alpha:8M", "beta:4M:4096"], 2, true, &[]);
    let (ok, out) = run(
        30,
        "iscsi-ls",
        &["-s", &format!("iscsi://{}", t.portals[0])],
    );
    assert!(ok, "{out}");
    for v in ["alpha", "beta"] {
        assert!(
            out.contains(&format!("{NODE_BASE}:{v}")),
            "discovery lists {v}: {out}"
        );
    }
    // Both portal groups are advertised, each with its tag.
    assert!(
        out.contains(&format!("{},1", t.portals[0]))
            && out.contains(&format!("{},2", t.portals[1])),
        "{out}"
    );
    let (ok, out) = run(30, "iscsi-readcapacity16", &[&t.url(1, "beta", 0)]);
    assert!(
        ok && out.contains("LOGICAL BLOCK LENGTH IN BYTES:4096")
            && out.contains("Total size:4194304"),
        "{out}"
    );
    let (ok, out) = run(
        30,
        "iscsi-inq",
        &["-e", "1", "-c", "0x83", &t.url(0, "alpha", 0)],
    );
    assert!(ok, "{out}");
    // A LUN that does not exist is refused, and the target lives on.
    let (ok, _) = run(30, "iscsi-readcapacity16", &[&t.url(0, "alpha", 7)]);
    assert!(!ok, "LUN 7 does not exist");
    let (ok, _) = run(
        30,
        "iscsi-inq",
        &[&format!("iscsi://{}/{NODE_BASE}:nope/0", t.portals[0])],
    );
    assert!(!ok, "unknown target must be refused");
    assert!(t.alive());
}

#[test]
fn spdk_rpc_client_configures_the_target() {
    require("spdk-rpc");
    require("iscsi-inq");
    let t = Target::start("spdk-rpc", &["v0:8M", "v1:8M"], 1, false, &[]);
    let sock = t.rpc.to_str().unwrap().to_string();
    let rpc = |args: &[&str]| {
        let mut a = vec!["-s", &sock];
        a.extend_from_slice(args);
        run(60, "spdk-rpc", &a)
    };
    let (ok, out) = rpc(&["iscsi_create_initiator_group", "7", "ANY", "127.0.0.1/32"]);
    assert!(ok, "{out}");
    let (ok, out) = rpc(&[
        "iscsi_create_target_node",
        "two-luns",
        "alias-2",
        "v0:0 v1:1",
        "1:7",
        "32",
    ]);
    assert!(ok, "{out}");
    let (ok, out) = rpc(&["iscsi_get_target_nodes"]);
    assert!(
        ok && out.contains("\"name\": \"iqn.2026-11.io.ferrite:two-luns\"")
            && out.contains("\"bdev_name\": \"v1\""),
        "{out}"
    );
    let (ok, out) = rpc(&["iscsi_get_initiator_groups"]);
    assert!(ok && out.contains("127.0.0.1/32"), "{out}");
    let (ok, out) = rpc(&["iscsi_get_portal_groups"]);
    assert!(
        ok && out.contains(&t.portals[0].port().to_string()),
        "{out}"
    );
    let url1 = format!("iscsi://{}/{NODE_BASE}:two-luns/1", t.portals[0]);
    let (ok, out) = run(30, "iscsi-inq", &[&url1]);
    assert!(ok, "{out}");
    // Errors come back as JSON-RPC errors with SPDK-style codes.
    let (ok, out) = rpc(&[
        "iscsi_create_target_node",
        "two-luns",
        "again",
        "v0:0",
        "1:7",
        "32",
    ]);
    assert!(!ok && out.contains("already exists"), "{out}");
    let (ok, out) = rpc(&[
        "iscsi_create_target_node",
        "bad",
        "bad",
        "nosuchvol:0",
        "1:7",
        "32",
    ]);
    assert!(!ok && out.contains("nosuchvol"), "{out}");
    // A portal group created over RPC listens at once (port 0: any free
    // one, reported back), a duplicate tag is refused, deletion closes it.
    let (ok, out) = rpc(&["iscsi_create_portal_group", "5", "127.0.0.1:0"]);
    assert!(ok, "{out}");
    let (ok, out) = rpc(&["iscsi_get_portal_groups"]);
    assert!(ok, "{out}");
    let groups: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let port = groups
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["tag"] == 5)
        .map(|g| g["portals"][0]["port"].as_str().unwrap().to_string())
        .expect("group 5");
    let addr = format!("127.0.0.1:{port}");
    assert!(
        port != "0" && std::net::TcpStream::connect(&addr).is_ok(),
        "portal group 5 listens on {addr}"
    );
    let (ok, out) = rpc(&["iscsi_create_portal_group", "5", "127.0.0.1:0"]);
    assert!(!ok && out.contains("already exists"), "{out}");
    let (ok, out) = rpc(&["iscsi_delete_portal_group", "5"]);
    assert!(ok, "{out}");
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "portal group 5 stopped listening"
    );
    let (ok, out) = rpc(&[
        "iscsi_delete_target_node",
        "iqn.2026-11.io.ferrite:two-luns",
    ]);
    assert!(ok, "{out}");
    let (ok, _) = run(30, "iscsi-inq", &[&url1]);
    assert!(!ok, "deleted target must be gone");
}
