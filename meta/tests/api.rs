//! The gRPC API against a real etcd and a real `ferrite-meta`: every call,
//! every error, thin and thick allocation, placement, concurrency.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use ferrite_meta::client::Code;
use ferrite_meta::proto;

fn one_meta(opts: MetaOpts) -> (Etcd, Meta) {
    let etcd = Etcd::start();
    let meta = Meta::start(&etcd, "m1", &opts);
    (etcd, meta)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_and_their_errors() {
    let (_etcd, meta) = one_meta(MetaOpts::default());
    let c = meta.client();
    wait_leader(&c, Duration::from_secs(15)).await;

    let p = c
        .create_pool(pool("pool0", 2, false, 0, false))
        .await
        .unwrap();
    assert_eq!(p.extent_size, 256 * MIB, "0 means the default extent size");
    assert_eq!(p.provisioning, proto::Provisioning::Thin as i32);
    assert_eq!(p.failure_domain, proto::FailureDomain::Node as i32);
    c.create_pool(pool("pool1", 3, true, 4 * MIB, true))
        .await
        .unwrap();

    assert_err(
        c.create_pool(pool("pool0", 1, false, 0, false)).await,
        Code::AlreadyExists,
        "pool 'pool0' already exists",
    );
    assert_err(
        c.create_pool(pool("bad", 0, false, 0, false)).await,
        Code::InvalidArgument,
        "replica count 0",
    );
    assert_err(
        c.create_pool(pool("bad", 4, false, 0, false)).await,
        Code::InvalidArgument,
        "replica count 4",
    );
    assert_err(
        c.create_pool(pool("bad", 1, false, 3 * MIB, false)).await,
        Code::InvalidArgument,
        "extent size",
    );
    assert_err(
        c.create_pool(pool("bad", 1, false, 4096, false)).await,
        Code::InvalidArgument,
        "extent size",
    );
    assert_err(
        c.create_pool(pool("a/b", 1, false, 0, false)).await,
        Code::InvalidArgument,
        "pool name 'a/b'",
    );
    assert_err(
        c.create_pool(pool("", 1, false, 0, false)).await,
        Code::InvalidArgument,
        "empty",
    );

    let names: Vec<_> = c
        .list_pools()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, vec!["pool0", "pool1"]);
    let p1 = c.get_pool("pool1").await.unwrap();
    assert_eq!((p1.replica_count, p1.extent_size), (3, 4 * MIB));
    assert_eq!(p1.provisioning, proto::Provisioning::Thick as i32);
    assert_eq!(p1.failure_domain, proto::FailureDomain::Zone as i32);
    assert_err(
        c.get_pool("nope").await,
        Code::NotFound,
        "pool 'nope' not found",
    );
    assert_err(
        c.delete_pool("nope").await,
        Code::NotFound,
        "pool 'nope' not found",
    );

    // Delete only when empty.
    c.create_volume(volume("v0", "pool0", GIB, 4096))
        .await
        .unwrap();
    assert_err(
        c.delete_pool("pool0").await,
        Code::FailedPrecondition,
        "pool 'pool0' still holds 1 volume(s) ('v0')",
    );
    c.delete_volume("v0").await.unwrap();
    c.delete_pool("pool0").await.unwrap();
    c.delete_pool("pool1").await.unwrap();
    assert!(c.list_pools().await.unwrap().is_empty());
    // The name is free again.
    c.create_pool(pool("pool0", 1, false, 0, false))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thin_volumes_extents_and_errors() {
    let (_etcd, meta) = one_meta(MetaOpts::default());
    let c = meta.client();
    wait_leader(&c, Duration::from_secs(15)).await;
    c.create_pool(pool("thin", 2, false, 4 * MIB, false))
        .await
        .unwrap();
    c.create_pool(pool("other", 1, false, 4 * MIB, false))
        .await
        .unwrap();

    let v = c
        .create_volume(volume("vol0", "thin", 10 * MIB, 0))
        .await
        .unwrap();
    assert_eq!(v.block_size, 4096, "0 means 4096");
    assert_eq!(
        (v.size, v.generation, v.extent_size, v.replica_count),
        (10 * MIB, 1, 4 * MIB, 2)
    );
    assert_eq!(v.state, proto::VolumeState::Ready as i32);
    assert_eq!(uuid_version(&v.uuid), Some('4'), "uuid {}", v.uuid);
    c.create_volume(volume("vol1", "other", 512 * 3, 512))
        .await
        .unwrap();

    // Errors of create.
    assert_err(
        c.create_volume(volume("vol0", "thin", MIB, 512)).await,
        Code::AlreadyExists,
        "volume 'vol0' already exists",
    );
    assert_err(
        c.create_volume(volume("x", "nope", MIB, 512)).await,
        Code::NotFound,
        "pool 'nope' not found",
    );
    assert_err(
        c.create_volume(volume("x", "thin", 0, 512)).await,
        Code::InvalidArgument,
        "volume 'x': size is zero",
    );
    assert_err(
        c.create_volume(volume("x", "thin", 1000, 512)).await,
        Code::InvalidArgument,
        "not a multiple of the block size 512",
    );
    assert_err(
        c.create_volume(volume("x", "thin", 512, 0)).await,
        Code::InvalidArgument,
        "not a multiple of the block size 4096",
    );
    assert_err(
        c.create_volume(volume("x", "thin", MIB, 1024)).await,
        Code::InvalidArgument,
        "block size 1024",
    );
    assert_err(
        c.create_volume(volume("x y", "thin", MIB, 512)).await,
        Code::InvalidArgument,
        "volume name 'x y'",
    );

    // List and get.
    let all: Vec<_> = c
        .list_volumes(None)
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(all, vec!["vol0", "vol1"]);
    let thin: Vec<_> = c
        .list_volumes(Some("thin"))
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(thin, vec!["vol0"]);
    assert_err(
        c.list_volumes(Some("nope")).await,
        Code::NotFound,
        "pool 'nope' not found",
    );
    let g = c.get_volume("vol0").await.unwrap();
    assert!(g.extents.is_empty(), "a thin volume starts with no extents");
    assert_err(
        c.get_volume("nope").await,
        Code::NotFound,
        "volume 'nope' not found",
    );

    // Allocation needs nodes: a clear error first.
    assert_err(
        c.allocate_extent("vol0", 0).await,
        Code::FailedPrecondition,
        "only 0 node(s) are up",
    );
    c.register_node(node("n1", "", 100 * MIB)).await.unwrap();
    assert_err(
        c.allocate_extent("vol0", 0).await,
        Code::FailedPrecondition,
        "2 replica(s) need 2 distinct nodes but only 1 node(s) are up",
    );
    c.register_node(node("n2", "", 100 * MIB)).await.unwrap();

    let a = c.allocate_extent("vol0", 1).await.unwrap();
    assert!(a.created);
    let e = a.extent.unwrap();
    assert_eq!(e.index, 1);
    assert_eq!(e.generation, 1);
    assert_eq!(distinct(&e.replicas), 2);
    assert_eq!(
        a.volume_generation, 2,
        "allocation bumps the volume generation"
    );
    // Idempotent.
    let again = c.allocate_extent("vol0", 1).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.extent.unwrap().id, e.id);
    assert_eq!(again.volume_generation, 2);
    let b = c.allocate_extent("vol0", 0).await.unwrap().extent.unwrap();
    assert_ne!(b.id, e.id);
    // 10 MiB in 4 MiB extents: indices 0..=2.
    c.allocate_extent("vol0", 2).await.unwrap();
    assert_err(
        c.allocate_extent("vol0", 3).await,
        Code::OutOfRange,
        "extent index 3 is past its end",
    );
    assert_err(
        c.allocate_extent("nope", 0).await,
        Code::NotFound,
        "volume 'nope' not found",
    );

    let g = c.get_volume("vol0").await.unwrap();
    assert_eq!(
        g.extents.iter().map(|e| e.index).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert_eq!(g.volume.as_ref().unwrap().generation, 4);
    // Space accounting: 3 extents × 2 replicas × 4 MiB over 2 nodes.
    let nodes = c.list_nodes().await.unwrap();
    assert_eq!(nodes.iter().map(|n| n.allocated).sum::<u64>(), 24 * MIB);

    // Resize: up only.
    let r = c.resize_volume("vol0", 12 * MIB).await.unwrap();
    assert_eq!((r.size, r.generation), (12 * MIB, 5));
    assert_eq!(
        c.resize_volume("vol0", 12 * MIB).await.unwrap().generation,
        5,
        "same size is a no-op"
    );
    assert_err(
        c.resize_volume("vol0", 8 * MIB).await,
        Code::InvalidArgument,
        "cannot shrink from 12582912 to 8388608",
    );
    assert_err(
        c.resize_volume("vol0", 12 * MIB + 1).await,
        Code::InvalidArgument,
        "not a multiple",
    );
    assert_err(
        c.resize_volume("nope", MIB).await,
        Code::NotFound,
        "volume 'nope' not found",
    );
    c.allocate_extent("vol0", 2).await.unwrap();
    assert_err(
        c.allocate_extent("vol0", 3).await,
        Code::OutOfRange,
        "past its end",
    );
    c.resize_volume("vol0", 16 * MIB + 4096).await.unwrap();
    assert_eq!(
        c.allocate_extent("vol0", 4)
            .await
            .unwrap()
            .extent
            .unwrap()
            .index,
        4
    );

    // Delete gives the space back; the name can be used again and gets a
    // new uuid and no old extents.
    let old_uuid = c.get_volume("vol0").await.unwrap().volume.unwrap().uuid;
    c.delete_volume("vol0").await.unwrap();
    assert_err(
        c.delete_volume("vol0").await,
        Code::NotFound,
        "volume 'vol0' not found",
    );
    assert_eq!(
        c.list_nodes()
            .await
            .unwrap()
            .iter()
            .map(|n| n.allocated)
            .sum::<u64>(),
        0
    );
    let v2 = c
        .create_volume(volume("vol0", "thin", 4 * MIB, 512))
        .await
        .unwrap();
    assert_ne!(v2.uuid, old_uuid);
    assert!(c.get_volume("vol0").await.unwrap().extents.is_empty());
}

fn uuid_version(u: &str) -> Option<char> {
    // xxxxxxxx-xxxx-Vxxx-...
    (u.len() == 36).then(|| u.chars().nth(14)).flatten()
}

fn distinct(ids: &[String]) -> usize {
    ids.iter().collect::<HashSet<_>>().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thick_volumes_and_placement_rules() {
    // A low transaction limit makes thick creates span several
    // transactions, as a large volume would at etcd's default.
    let (_etcd, meta) = one_meta(MetaOpts {
        max_txn_ops: 16,
        ..MetaOpts::default()
    });
    let c = meta.client();
    wait_leader(&c, Duration::from_secs(15)).await;
    // Zone z1 holds the two largest nodes.
    c.register_node(node("a", "z1", 400 * MIB)).await.unwrap();
    c.register_node(node("b", "z1", 390 * MIB)).await.unwrap();
    c.register_node(node("c", "z2", 200 * MIB)).await.unwrap();
    c.register_node(node("d", "z3", 200 * MIB)).await.unwrap();
    let zone_of = |id: &str| match id {
        "a" | "b" => "z1",
        "c" => "z2",
        _ => "z3",
    };

    // Zone domain, RF 3, 3 zones: every extent in three zones.
    c.create_pool(pool("zoned", 3, true, MIB, true))
        .await
        .unwrap();
    let v = c
        .create_volume(volume("zv", "zoned", 40 * MIB, 4096))
        .await
        .unwrap();
    assert_eq!(v.state, proto::VolumeState::Ready as i32);
    let g = c.get_volume("zv").await.unwrap();
    assert_eq!(
        g.extents.len(),
        40,
        "a thick volume gets every extent at create"
    );
    let mut ids = HashSet::new();
    for (i, e) in g.extents.iter().enumerate() {
        assert_eq!(e.index, i as u64);
        assert!(ids.insert(e.id), "extent ids are unique");
        assert_eq!(distinct(&e.replicas), 3, "extent {i}: {:?}", e.replicas);
        let zones: HashSet<_> = e.replicas.iter().map(|r| zone_of(r)).collect();
        assert_eq!(
            zones.len(),
            3,
            "extent {i} has two replicas in one zone: {:?}",
            e.replicas
        );
    }
    // 40 extents in batches of a few per transaction: the generation
    // counts the extra transactions.
    assert!(g.volume.unwrap().generation > 1);

    // Node domain, RF 2: distinct nodes; zone does not matter, room does:
    // a and b (the emptiest) take the primaries first.
    c.create_pool(pool("plain", 2, true, MIB, false))
        .await
        .unwrap();
    c.create_volume(volume("pv", "plain", 4 * MIB, 4096))
        .await
        .unwrap();
    let g = c.get_volume("pv").await.unwrap();
    for e in &g.extents {
        assert_eq!(distinct(&e.replicas), 2);
    }
    assert!(
        g.extents
            .iter()
            .any(|e| zone_of(&e.replicas[0]) == zone_of(&e.replicas[1])),
        "with failure domain node, same-zone pairs are allowed: {:?}",
        g.extents
    );

    // Accounting: the nodes' allocated bytes equal the replicas placed.
    let nodes = c.list_nodes().await.unwrap();
    let allocated: u64 = nodes.iter().map(|n| n.allocated).sum();
    assert_eq!(allocated, (40 * 3 + 4 * 2) * MIB);

    // Too big for the pool: ResourceExhausted, and nothing is left behind.
    assert_err(
        c.create_volume(volume("huge", "plain", 2 * GIB, 4096))
            .await,
        Code::ResourceExhausted,
        "thick volume 'huge' of 2147483648 bytes does not fit pool 'plain'",
    );
    assert_err(
        c.get_volume("huge").await,
        Code::NotFound,
        "volume 'huge' not found",
    );
    let after: u64 = c
        .list_nodes()
        .await
        .unwrap()
        .iter()
        .map(|n| n.allocated)
        .sum();
    assert_eq!(after, allocated, "a refused thick create takes no space");

    // Thick resize places the new extents.
    let r = c.resize_volume("pv", 6 * MIB).await.unwrap();
    assert_eq!(r.size, 6 * MIB);
    assert_eq!(c.get_volume("pv").await.unwrap().extents.len(), 6);
    assert_err(
        c.resize_volume("pv", 4 * GIB).await,
        Code::ResourceExhausted,
        "does not fit pool 'plain'",
    );
    assert_eq!(
        c.get_volume("pv").await.unwrap().volume.unwrap().size,
        6 * MIB
    );

    // RF 3 with only one node that has room: a clear error.
    c.create_pool(pool("rf3", 3, true, MIB, false))
        .await
        .unwrap();
    for id in ["b", "c", "d"] {
        // Mark them full so only "a" has room.
        c.report_capacity(id, 400 * MIB, 0).await.unwrap();
    }
    assert_err(
        c.create_volume(volume("r3", "rf3", MIB, 4096)).await,
        Code::ResourceExhausted,
        "need 3 nodes with room but only 1 node(s) have it",
    );
    c.delete_volume("zv").await.unwrap();
    c.delete_volume("pv").await.unwrap();
    assert_eq!(
        c.list_nodes()
            .await
            .unwrap()
            .iter()
            .map(|n| n.allocated)
            .sum::<u64>(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_enough_nodes_and_zone_fallback() {
    let (_etcd, meta) = one_meta(MetaOpts::default());
    let c = meta.client();
    wait_leader(&c, Duration::from_secs(15)).await;
    c.register_node(node("solo", "z1", GIB)).await.unwrap();
    c.create_pool(pool("rf3", 3, true, MIB, true))
        .await
        .unwrap();
    assert_err(
        c.create_volume(volume("v", "rf3", MIB, 4096)).await,
        Code::FailedPrecondition,
        "3 replica(s) need 3 distinct nodes but only 1 node(s) are up",
    );
    // Two zones for three replicas: zones are shared only as needed.
    c.register_node(node("two", "z1", GIB)).await.unwrap();
    c.register_node(node("three", "z2", GIB / 2)).await.unwrap();
    c.create_volume(volume("v", "rf3", 2 * MIB, 4096))
        .await
        .unwrap();
    for e in c.get_volume("v").await.unwrap().extents {
        assert_eq!(distinct(&e.replicas), 3);
        assert!(
            e.replicas.contains(&"three".to_string()),
            "the only z2 node is always used: {:?}",
            e.replicas
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_of_one_name() {
    let (_etcd, meta) = one_meta(MetaOpts::default());
    let c = meta.client();
    wait_leader(&c, Duration::from_secs(15)).await;
    c.register_node(node("n1", "", GIB)).await.unwrap();

    // Pools: 8 clients (separate connections) race; one wins.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let c = meta.client();
        tasks.push(tokio::spawn(async move {
            c.create_pool(pool("race", 1, false, MIB, false)).await
        }));
    }
    let results: Vec<_> = futures_join(tasks).await;
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    for r in results.iter().filter(|r| r.is_err()) {
        assert_eq!(r.as_ref().unwrap_err().code(), Code::AlreadyExists);
    }

    // Volumes, thin and thick.
    c.create_pool(pool("thick", 1, true, MIB, false))
        .await
        .unwrap();
    for (name, pool_name) in [("tv", "race"), ("kv", "thick")] {
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let c = meta.client();
            tasks.push(tokio::spawn(async move {
                c.create_volume(volume(name, pool_name, 4 * MIB, 4096))
                    .await
            }));
        }
        let results = futures_join(tasks).await;
        let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(winners.len(), 1, "{name}: {results:?}");
        for r in results.iter().filter(|r| r.is_err()) {
            assert_eq!(r.as_ref().unwrap_err().code(), Code::AlreadyExists, "{r:?}");
        }
        assert_eq!(
            c.get_volume(name).await.unwrap().volume.unwrap().uuid,
            winners[0].uuid
        );
    }
    assert_eq!(c.get_volume("kv").await.unwrap().extents.len(), 4);

    // Concurrent first writes of one extent: one extent, one id.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let c = meta.client();
        tasks.push(tokio::spawn(
            async move { c.allocate_extent("tv", 2).await },
        ));
    }
    let results = futures_join(tasks).await;
    let ids: HashSet<_> = results
        .iter()
        .map(|r| r.as_ref().unwrap().extent.as_ref().unwrap().id)
        .collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(
        results
            .iter()
            .filter(|r| r.as_ref().unwrap().created)
            .count(),
        1
    );
    // Space taken once: 4 thick extents + 1 thin one.
    assert_eq!(c.list_nodes().await.unwrap()[0].allocated, 5 * MIB);
}

async fn futures_join<T: Send + 'static>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("task panicked"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_indexes_are_unique_and_kept_across_registrations() {
    let (_etcd, meta) = one_meta(MetaOpts::default());
    let c = meta.client();
    wait_leader(&c, Duration::from_secs(15)).await;
    let mut first = Vec::new();
    for id in ["g1", "g2", "g3"] {
        first.push(
            c.register_node(node(id, "", GIB))
                .await
                .unwrap()
                .gateway_index,
        );
    }
    let mut sorted = first.clone();
    sorted.sort();
    assert_eq!(sorted, vec![1, 2, 3], "indexes {first:?}");
    // A node registering again (a restart) keeps its index.
    let again = c.register_node(node("g2", "", GIB)).await.unwrap();
    assert_eq!(again.gateway_index, first[1]);
}
