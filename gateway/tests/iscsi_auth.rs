//! CHAP (one-way and mutual, per target node, per initiator group and for
//! discovery) and initiator ACLs, with libiscsi's tools as initiators and
//! SPDK's `spdk-rpc` configuring the target.

mod iscsi_common;

use iscsi_common::{require, run, Target, NODE_BASE};

const ALICE: &str = "alice%alice-secret-1";
const TGT: &str = "target_user=tgt&target_password=tgt-secret-22";

fn setup() -> Target {
    require("spdk-rpc");
    require("iscsi-inq");
    let t = Target::start("auth", &["v0:4M"], 1, false, &[]);
    let sock = t.rpc.to_str().unwrap().to_string();
    let rpc = |args: &[&str]| {
        let mut a = vec!["-s", sock.as_str()];
        a.extend_from_slice(args);
        let (ok, out) = run(60, "spdk-rpc", &a);
        assert!(ok, "spdk-rpc {args:?}: {out}");
    };
    rpc(&[
        "iscsi_create_auth_group",
        "1",
        "-c",
        "user:alice secret:alice-secret-1 muser:tgt msecret:tgt-secret-22",
    ]);
    rpc(&[
        "iscsi_create_auth_group",
        "2",
        "-c",
        "user:bob secret:bob-secret-123",
    ]);
    rpc(&["iscsi_create_initiator_group", "1", "ANY", "127.0.0.0/8"]);
    rpc(&[
        "iscsi_create_initiator_group",
        "2",
        "iqn.2026-11.io.ferrite:allowed",
        "127.0.0.1/32",
    ]);
    rpc(&[
        "iscsi_create_target_node",
        "open",
        "open",
        "v0:0",
        "1:1",
        "16",
    ]);
    rpc(&[
        "iscsi_create_target_node",
        "oneway",
        "oneway",
        "v0:0",
        "1:1",
        "16",
        "-r",
        "-g",
        "1",
    ]);
    rpc(&[
        "iscsi_create_target_node",
        "mutual",
        "mutual",
        "v0:0",
        "1:1",
        "16",
        "-r",
        "-m",
        "-g",
        "1",
    ]);
    rpc(&[
        "iscsi_create_target_node",
        "acl",
        "acl",
        "v0:0",
        "1:2",
        "16",
    ]);
    t
}

fn inq(
    t: &Target,
    creds: Option<&str>,
    node: &str,
    query: &str,
    initiator: Option<&str>,
) -> (bool, String) {
    let iqn = format!("{NODE_BASE}:{node}");
    let mut url = match creds {
        Some(c) => t.url_with(0, c, &iqn, 0),
        None => format!("iscsi://{}/{iqn}/0", t.portals[0]),
    };
    if !query.is_empty() {
        url = format!("{url}?{query}");
    }
    let mut args = Vec::new();
    if let Some(i) = initiator {
        args.extend(["-i", i]);
    }
    args.push(&url);
    run(30, "iscsi-inq", &args)
}

#[test]
fn one_way_chap() {
    let t = setup();
    assert!(inq(&t, None, "open", "", None).0, "no CHAP needed");
    let (ok, out) = inq(&t, None, "oneway", "", None);
    assert!(
        !ok && out.contains("Authentication failure"),
        "no credentials: {out}"
    );
    let (ok, out) = inq(&t, Some(ALICE), "oneway", "", None);
    assert!(ok, "right secret: {out}\n{}", t.log());
    let (ok, out) = inq(&t, Some("alice%wrong-secret-9"), "oneway", "", None);
    assert!(
        !ok && out.contains("Authentication failure"),
        "wrong secret: {out}"
    );
    // bob exists, but in auth group 2, not the node's group 1.
    let (ok, _) = inq(&t, Some("bob%bob-secret-123"), "oneway", "", None);
    assert!(!ok, "user of another auth group");
}

#[test]
fn mutual_chap() {
    let t = setup();
    let (ok, out) = inq(&t, Some(ALICE), "mutual", TGT, None);
    assert!(ok, "mutual CHAP with the right secrets: {out}\n{}", t.log());
    let (ok, out) = inq(
        &t,
        Some(ALICE),
        "mutual",
        "target_user=tgt&target_password=not-the-one",
        None,
    );
    assert!(
        !ok && out.contains("CHAP_R"),
        "the initiator must refuse a target that answers wrong: {out}"
    );
    let (ok, _) = inq(&t, Some(ALICE), "mutual", "", None);
    assert!(
        !ok,
        "mutual CHAP required but the initiator does not challenge"
    );
}

#[test]
fn initiator_acl() {
    let t = setup();
    let (ok, out) = inq(&t, None, "acl", "", Some("iqn.2026-11.io.ferrite:allowed"));
    assert!(ok, "listed initiator: {out}");
    let (ok, out) = inq(&t, None, "acl", "", Some("iqn.2026-11.io.ferrite:stranger"));
    assert!(
        !ok && out.contains("Authorization failure"),
        "unlisted initiator: {out}"
    );
    // Discovery only shows what the initiator may use.
    let (ok, out) = run(
        30,
        "iscsi-ls",
        &[
            "-i",
            "iqn.2026-11.io.ferrite:stranger",
            &format!("iscsi://{}", t.portals[0]),
        ],
    );
    assert!(
        ok && out.contains(":open") && !out.contains(":acl"),
        "{out}"
    );
}

#[test]
fn chap_per_initiator_group_and_for_discovery() {
    let t = setup();
    // An initiator group that requires CHAP (Ferrite extension to SPDK's
    // method) overrides its target node's "no CHAP".
    t.rpc("iscsi_create_initiator_group", serde_json::json!({"tag": 3, "initiators": ["iqn.2026-11.io.ferrite:guarded"], "netmasks": ["ANY"], "require_chap": true, "chap_group": 2})).unwrap();
    t.rpc("iscsi_create_target_node", serde_json::json!({"name": "viaig", "alias_name": "viaig", "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 3}], "luns": [{"bdev_name": "v0", "lun_id": 0}], "queue_depth": 8})).unwrap();
    let g = Some("iqn.2026-11.io.ferrite:guarded");
    assert!(!inq(&t, None, "viaig", "", g).0, "the group requires CHAP");
    let (ok, out) = inq(&t, Some("bob%bob-secret-123"), "viaig", "", g);
    assert!(ok, "{out}\n{}", t.log());
    // Discovery CHAP.
    let sock = t.rpc.to_str().unwrap();
    let (ok, out) = run(
        30,
        "spdk-rpc",
        &["-s", sock, "iscsi_set_discovery_auth", "-r", "-g", "2"],
    );
    assert!(ok, "{out}");
    let (ok, _) = run(30, "iscsi-ls", &[&format!("iscsi://{}", t.portals[0])]);
    assert!(!ok, "discovery without CHAP must fail");
    let (ok, out) = run(
        30,
        "iscsi-ls",
        &[&format!("iscsi://bob%bob-secret-123@{}", t.portals[0])],
    );
    assert!(ok && out.contains(":open"), "{out}");
}
