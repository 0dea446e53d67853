//! Replication on the meta side, with real etcd and real `ferrite-meta`
//! processes; nodes are simulated by the client's node keepers (a node
//! "dies" when its keeper is dropped) and the engine's part (filling
//! learners) by calling `complete_resync` from the test.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::scan::assert_indexes;
use common::*;
use ferrite_meta::client::{Code, MetaClient, NodeKeeper};
use ferrite_meta::proto::{self, ExtentHealth, NodeState};

async fn keeper(c: &MetaClient, id: &str, zone: &str, capacity: u64) -> NodeKeeper {
    let mut k = c.spawn_node_keeper(node(id, zone, capacity));
    k.wait_registered(Duration::from_secs(15))
        .await
        .unwrap_or_else(|| panic!("node {id} did not register"));
    k
}

async fn extents(c: &MetaClient, volume: &str) -> Vec<proto::Extent> {
    c.get_volume(volume).await.unwrap().extents
}

fn node_of<'a>(nodes: &'a [proto::Node], id: &str) -> &'a proto::Node {
    nodes
        .iter()
        .find(|n| n.id == id)
        .unwrap_or_else(|| panic!("node {id} not listed"))
}

fn health(v: &proto::Volume) -> proto::VolumeHealth {
    v.health.expect("volume health")
}

fn fast() -> MetaOpts {
    MetaOpts {
        node_ttl_secs: 2,
        node_grace_secs: 1,
        repair_interval_ms: 100,
        ..MetaOpts::default()
    }
}

/// Completes the resync of every learner of `volume`'s extents, as their
/// primaries would; returns how many joined.
async fn catch_up_learners(c: &MetaClient, volume: &str) -> usize {
    let mut n = 0;
    for e in extents(c, volume).await {
        // One learner per extent and pass: the generation moves.
        if let Some(l) = e.learners.first() {
            let after = c.complete_resync(e.id, e.generation, l).await.unwrap();
            assert!(after.generation > e.generation, "{e:?} -> {after:?}");
            // Otherwise it changed since it was read: the call was a no-op.
            if after.replicas.contains(l) && !after.learners.contains(l) {
                n += 1;
            }
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_reports_resync_and_generations() {
    let etcd = Etcd::start();
    let meta = Meta::start(&etcd, "m1", &fast());
    let c = meta.client();
    wait_leader(&c, Duration::from_secs(15)).await;
    let mut keepers = Vec::new();
    for id in ["n1", "n2", "n3", "n4"] {
        keepers.push(keeper(&c, id, "", GIB).await);
    }

    // min_replicas: 1 up to two replicas, else 2; copied to volumes.
    let p3 = c
        .create_pool(pool("p3", 3, false, MIB, false))
        .await
        .unwrap();
    assert_eq!(p3.min_replicas, 2);
    let p2 = c
        .create_pool(pool("p2", 2, false, MIB, false))
        .await
        .unwrap();
    assert_eq!(p2.min_replicas, 1);
    let p1 = c
        .create_pool(pool("p1", 1, false, MIB, false))
        .await
        .unwrap();
    assert_eq!(p1.min_replicas, 1);
    assert_eq!(c.get_pool("p3").await.unwrap().min_replicas, 2);
    let v = c
        .create_volume(volume("v", "p3", 8 * MIB, 4096))
        .await
        .unwrap();
    assert_eq!(v.min_replicas, 2);
    assert_eq!(c.list_volumes(None).await.unwrap()[0].min_replicas, 2);

    let e = c.allocate_extent("v", 0).await.unwrap().extent.unwrap();
    assert_eq!(e.replicas, ["n1", "n2", "n3"]);
    assert!(e.learners.is_empty());
    assert_eq!(e.generation, 1);
    assert_eq!(c.get_extent(e.id).await.unwrap(), e);
    let l = c.list_node_extents("n2").await.unwrap();
    assert_eq!(l.extents, vec![e.clone()]);
    assert_eq!(
        (l.volume_names, l.extent_sizes),
        (vec!["v".to_string()], vec![MIB])
    );
    assert!(c.list_node_extents("n4").await.unwrap().extents.is_empty());
    assert_err(
        c.list_node_extents("ghost").await,
        Code::NotFound,
        "node 'ghost' is not registered",
    );
    assert_err(c.get_extent(e.id + 1000).await, Code::NotFound, "not found");

    // Who may report, and reports that change nothing.
    assert_err(
        c.report_replica_failure(e.id, 1, "n2", "ghost").await,
        Code::FailedPrecondition,
        "reporter 'ghost' is not a node with a live lease",
    );
    assert_err(
        c.report_replica_failure(e.id + 1000, 1, "n2", "n1").await,
        Code::NotFound,
        "not found",
    );
    assert_eq!(
        c.report_replica_failure(e.id, 8, "n2", "n1").await.unwrap(),
        e
    );
    assert_eq!(
        c.report_replica_failure(e.id, 1, "n4", "n1").await.unwrap(),
        e
    );
    let vgen = c.get_volume("v").await.unwrap().volume.unwrap().generation;

    // A secondary missed a write: out, generation bumped (extent and
    // volume), its index entry gone, its space given back.
    let e2 = c.report_replica_failure(e.id, 1, "n2", "n1").await.unwrap();
    assert_eq!(e2.replicas, ["n1", "n3"]);
    assert_eq!(e2.generation, 2);
    assert!(c.get_volume("v").await.unwrap().volume.unwrap().generation > vgen);
    assert!(!c
        .list_node_extents("n2")
        .await
        .unwrap()
        .extents
        .iter()
        .any(|x| x.id == e.id && x.replicas.contains(&"n2".to_string())));
    // The same report again (stale generation) changes nothing.
    let again = c.report_replica_failure(e.id, 1, "n2", "n1").await.unwrap();
    assert!(again.generation >= 2 && !again.replicas.contains(&"n2".to_string()));

    // The scheduler adds a learner on a node not holding it.
    let with = eventually("a learner", Duration::from_secs(10), || {
        let c = c.clone();
        async move {
            let x = c.get_extent(e.id).await.ok()?;
            (x.learners.len() == 1).then_some(x)
        }
    })
    .await;
    let learner = with.learners[0].clone();
    assert!(learner == "n2" || learner == "n4", "{with:?}");
    assert_eq!(with.replicas, ["n1", "n3"]);
    assert_eq!(with.generation, 3);
    let ln = c.list_node_extents(&learner).await.unwrap();
    assert_eq!(ln.extents, vec![with.clone()]);

    // Resync progress: soft state, shown in the volume and node listings.
    c.report_resync_progress(e.id, &learner, MIB / 2, MIB)
        .await
        .unwrap();
    assert_err(
        c.report_resync_progress(e.id, "n1", 1, 2).await,
        Code::FailedPrecondition,
        "is not one of its learners",
    );
    assert_err(
        c.report_resync_progress(e.id, &learner, 3, 2).await,
        Code::InvalidArgument,
        "3 of 2 bytes",
    );
    let gv = c.get_volume("v").await.unwrap();
    let st = &gv.extent_status[0];
    assert_eq!(st.extent_id, e.id);
    assert_eq!(st.state, ExtentHealth::Resyncing as i32);
    assert_eq!(st.live_replicas, 2);
    assert_eq!(st.resync.len(), 1);
    assert_eq!(
        (
            st.resync[0].node.as_str(),
            st.resync[0].bytes_done,
            st.resync[0].bytes_total
        ),
        (learner.as_str(), MIB / 2, MIB)
    );
    let h = health(gv.volume.as_ref().unwrap());
    assert_eq!(h.state, ExtentHealth::Resyncing as i32);
    assert_eq!(
        (h.extents, h.resyncing, h.resync_bytes_done),
        (1, 1, MIB / 2)
    );
    let lv = c.list_volumes(None).await.unwrap();
    assert_eq!(health(&lv[0]), h);
    let nodes = c.list_nodes().await.unwrap();
    let ln = node_of(&nodes, &learner);
    assert_eq!((ln.replicas, ln.learners), (0, 1));
    assert_eq!(
        (ln.resync_bytes_done, ln.resync_bytes_total),
        (MIB / 2, MIB)
    );
    assert_eq!(
        (
            node_of(&nodes, "n1").replicas,
            node_of(&nodes, "n1").learners
        ),
        (1, 0)
    );

    // CompleteResync: stale → nothing; not a learner → refused; current →
    // the learner joins the replicas (appended), generation bumped.
    assert_eq!(c.complete_resync(e.id, 2, &learner).await.unwrap(), with);
    let other = if learner == "n4" { "n2" } else { "n4" };
    assert_err(
        c.complete_resync(e.id, 3, other).await,
        Code::FailedPrecondition,
        "is not one of its learners",
    );
    let done = c.complete_resync(e.id, 3, &learner).await.unwrap();
    assert_eq!(done.replicas, ["n1", "n3", learner.as_str()]);
    assert!(done.learners.is_empty());
    assert_eq!(done.generation, 4);
    assert_eq!(c.complete_resync(e.id, 3, &learner).await.unwrap(), done);
    let gv = c.get_volume("v").await.unwrap();
    assert_eq!(gv.extent_status[0].state, ExtentHealth::Healthy as i32);
    assert!(gv.extent_status[0].resync.is_empty());
    assert_eq!(health(gv.volume.as_ref().unwrap()).healthy, 1);
    let nodes = c.list_nodes().await.unwrap();
    let ln = node_of(&nodes, &learner);
    assert_eq!((ln.replicas, ln.learners, ln.resync_bytes_total), (1, 0, 0));

    // The primary fails: the next replica leads.
    let e5 = c.report_replica_failure(e.id, 4, "n1", "n3").await.unwrap();
    assert_eq!(e5.replicas, ["n3", learner.as_str()]);
    assert_eq!(e5.generation, 5);

    // Never the last copy; learners are not copies.
    c.create_volume(volume("one", "p1", MIB, 4096))
        .await
        .unwrap();
    let o = c.allocate_extent("one", 0).await.unwrap().extent.unwrap();
    let only = o.replicas[0].clone();
    assert_err(
        c.report_replica_failure(o.id, o.generation, &only, &only)
            .await,
        Code::FailedPrecondition,
        &format!("extent {}: node {only} holds its last copy", o.id),
    );
    c.create_volume(volume("two", "p2", MIB, 4096))
        .await
        .unwrap();
    let t = c.allocate_extent("two", 0).await.unwrap().extent.unwrap();
    let t2 = c
        .report_replica_failure(t.id, t.generation, &t.replicas[1], &t.replicas[0])
        .await
        .unwrap();
    assert_eq!(t2.replicas, [t.replicas[0].clone()]);
    let t3 = eventually("a learner for 'two'", Duration::from_secs(10), || {
        let c = c.clone();
        async move {
            let x = c.get_extent(t.id).await.ok()?;
            (!x.learners.is_empty()).then_some(x)
        }
    })
    .await;
    assert_err(
        c.report_replica_failure(t3.id, t3.generation, &t3.replicas[0], &t3.learners[0])
            .await,
        Code::FailedPrecondition,
        "holds its last copy",
    );
    // A learner can fail: it is simply removed.
    let t4 = c
        .report_replica_failure(t3.id, t3.generation, &t3.learners[0], &t3.replicas[0])
        .await
        .unwrap();
    assert!(t4.learners.is_empty());
    assert_eq!(t4.generation, t3.generation + 1);

    assert_indexes(&etcd.url, true).await;
    drop(keepers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_is_removed_and_its_copies_rebuilt_across_zones() {
    let etcd = Etcd::start();
    let meta = Meta::start(&etcd, "m1", &fast());
    let c = meta.client();
    wait_leader(&c, Duration::from_secs(15)).await;
    let a1 = keeper(&c, "a1", "z1", 4 * GIB).await;
    let b1 = keeper(&c, "b1", "z2", 4 * GIB).await;
    let c1 = keeper(&c, "c1", "z3", 4 * GIB).await;
    let a2 = keeper(&c, "a2", "z1", 2 * GIB).await;
    let c2 = keeper(&c, "c2", "z3", 2 * GIB).await;
    let b2 = keeper(&c, "b2", "z2", GIB).await;

    c.create_pool(pool("pz", 3, true, MIB, true)).await.unwrap();
    c.create_volume(volume("vz", "pz", 6 * MIB, 4096))
        .await
        .unwrap();
    let before = extents(&c, "vz").await;
    assert_eq!(before.len(), 6);
    let trio: BTreeSet<&str> = ["a1", "b1", "c1"].into_iter().collect();
    for e in &before {
        let set: BTreeSet<&str> = e.replicas.iter().map(String::as_str).collect();
        assert_eq!(set, trio, "{e:?}");
    }

    // b1 dies: after its lease TTL and the grace period it is marked down
    // and removed from every extent (generation bumped each).
    let killed = Instant::now();
    drop(b1);
    let after = eventually("b1 removed everywhere", Duration::from_secs(20), || {
        let c = c.clone();
        async move {
            let xs = extents(&c, "vz").await;
            xs.iter()
                .all(|e| !e.replicas.iter().chain(&e.learners).any(|n| n == "b1"))
                .then_some(xs)
        }
    })
    .await;
    eprintln!(
        "FIGURE b1 removed from {} extents {:.2}s after its keeper stopped (lease ttl 2s, grace 1s)",
        after.len(),
        killed.elapsed().as_secs_f64()
    );
    for (a, b) in before.iter().zip(&after) {
        assert!(b.generation > a.generation);
        assert_eq!(b.replicas.len(), 2);
    }
    let nodes = c.list_nodes().await.unwrap();
    assert_eq!(node_of(&nodes, "b1").state, NodeState::Down as i32);
    assert_eq!(node_of(&nodes, "b1").replicas, 0);

    // The copies come back on b2: the only other node in zone z2,
    // although a2 and c2 have more room; never a node holding it.
    let with = eventually("a learner everywhere", Duration::from_secs(10), || {
        let c = c.clone();
        async move {
            let xs = extents(&c, "vz").await;
            xs.iter().all(|e| !e.learners.is_empty()).then_some(xs)
        }
    })
    .await;
    for e in &with {
        assert_eq!(e.learners, ["b2"], "{e:?}");
        assert!(!e.replicas.contains(&"b2".to_string()));
    }
    let gv = c.get_volume("vz").await.unwrap();
    let h = health(gv.volume.as_ref().unwrap());
    assert_eq!((h.state, h.resyncing), (ExtentHealth::Resyncing as i32, 6));
    assert_eq!(node_of(&c.list_nodes().await.unwrap(), "b2").learners, 6);

    // The primaries say b2 caught up: three replicas in three zones.
    assert_eq!(catch_up_learners(&c, "vz").await, 6);
    for e in extents(&c, "vz").await {
        let set: BTreeSet<&str> = e.replicas.iter().map(String::as_str).collect();
        assert_eq!(set, ["a1", "b2", "c1"].into_iter().collect(), "{e:?}");
        assert!(e.learners.is_empty());
    }
    let gv = c.get_volume("vz").await.unwrap();
    let h = health(gv.volume.as_ref().unwrap());
    assert_eq!((h.state, h.healthy), (ExtentHealth::Healthy as i32, 6));
    let nodes = c.list_nodes().await.unwrap();
    assert_eq!(
        (
            node_of(&nodes, "b2").replicas,
            node_of(&nodes, "b2").learners
        ),
        (6, 0)
    );
    assert_indexes(&etcd.url, true).await;

    // b1 comes back: up again, and meta places nothing on it any more
    // (what it still holds is garbage for it to delete).
    let b1 = keeper(&c, "b1", "z2", 4 * GIB).await;
    let nodes = c.list_nodes().await.unwrap();
    assert_eq!(node_of(&nodes, "b1").state, NodeState::Up as i32);
    assert!(c.list_node_extents("b1").await.unwrap().extents.is_empty());
    drop((a1, b1, c1, a2, c2, b2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn riskiest_first_learner_limits_and_last_copies() {
    let etcd = Etcd::start();
    let meta = Meta::start(
        &etcd,
        "m1",
        &MetaOpts {
            repair_extents_per_round: 1,
            max_learners_per_node: 3,
            ..fast()
        },
    );
    let c = meta.client();
    wait_leader(&c, Duration::from_secs(15)).await;
    let mut keepers = Vec::new();
    for id in ["n1", "n2", "n3"] {
        keepers.push(keeper(&c, id, "", 64 * MIB).await);
    }
    c.create_pool(pool("p", 3, true, MIB, false)).await.unwrap();
    c.create_volume(volume("v", "p", 8 * MIB, 4096))
        .await
        .unwrap();
    // No room left anywhere: nothing can be re-replicated for now.
    for id in ["n1", "n2", "n3"] {
        c.report_capacity(id, 64 * MIB, 0).await.unwrap();
    }
    // Extents 0-3 keep one copy (n1), 4-7 two (n1, n2).
    let mut risky = BTreeSet::new();
    for e in extents(&c, "v").await {
        assert_eq!(e.replicas, ["n1", "n2", "n3"]);
        let e = c
            .report_replica_failure(e.id, e.generation, "n3", "n1")
            .await
            .unwrap();
        if e.index < 4 {
            risky.insert(e.id);
            c.report_replica_failure(e.id, e.generation, "n2", "n1")
                .await
                .unwrap();
        }
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(extents(&c, "v").await.iter().all(|e| e.learners.is_empty()));
    let h = health(&c.list_volumes(None).await.unwrap()[0]);
    assert_eq!((h.state, h.degraded), (ExtentHealth::Degraded as i32, 8));

    // A node with room arrives: one extent per round, riskiest first, at
    // most three learners on it at a time.
    keepers.push(keeper(&c, "n4", "", 64 * MIB).await);
    let learning = |c: MetaClient| async move {
        extents(&c, "v")
            .await
            .into_iter()
            .filter(|e| !e.learners.is_empty())
            .collect::<Vec<_>>()
    };
    let first = eventually("three learners on n4", Duration::from_secs(10), || {
        let c = c.clone();
        async move {
            let xs = learning(c).await;
            (xs.len() == 3).then_some(xs)
        }
    })
    .await;
    for e in &first {
        assert!(risky.contains(&e.id), "a two-copy extent went first: {e:?}");
        assert_eq!(e.learners, ["n4"]);
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        learning(c.clone()).await.len(),
        3,
        "the per-node limit holds"
    );
    assert_eq!(node_of(&c.list_nodes().await.unwrap(), "n4").learners, 3);

    // They catch up; the fourth one-copy extent goes next, then two-copy
    // ones.
    assert_eq!(catch_up_learners(&c, "v").await, 3);
    let second = eventually("three more learners", Duration::from_secs(10), || {
        let c = c.clone();
        async move {
            let xs = learning(c).await;
            (xs.len() == 3).then_some(xs)
        }
    })
    .await;
    let risky_now: Vec<_> = second.iter().filter(|e| risky.contains(&e.id)).collect();
    assert_eq!(risky_now.len(), 1, "{second:?}");
    assert_eq!(catch_up_learners(&c, "v").await, 3);
    eventually("the last two", Duration::from_secs(10), || {
        let c = c.clone();
        async move { (learning(c).await.len() == 2).then_some(()) }
    })
    .await;
    assert_eq!(catch_up_learners(&c, "v").await, 2);
    for e in extents(&c, "v").await {
        if risky.contains(&e.id) {
            assert_eq!(e.replicas, ["n1", "n4"]);
        } else {
            assert_eq!(e.replicas, ["n1", "n2", "n4"]);
        }
    }

    // An RF 1 extent on n4 (the only node with room), then n4 dies: it
    // leaves every extent where another replica stays, but keeps the
    // only copy, which is unavailable.
    c.create_pool(pool("p1", 1, false, MIB, false))
        .await
        .unwrap();
    c.create_volume(volume("solo", "p1", MIB, 4096))
        .await
        .unwrap();
    let s = c.allocate_extent("solo", 0).await.unwrap().extent.unwrap();
    assert_eq!(s.replicas, ["n4"]);
    let n4 = keepers.pop().unwrap();
    drop(n4);
    eventually(
        "n4 removed where it is not alone",
        Duration::from_secs(20),
        || {
            let c = c.clone();
            async move {
                let xs = extents(&c, "v").await;
                xs.iter()
                    .all(|e| !e.replicas.contains(&"n4".to_string()))
                    .then_some(())
            }
        },
    )
    .await;
    let gs = c.get_volume("solo").await.unwrap();
    assert_eq!(gs.extents[0].replicas, ["n4"]);
    assert_eq!(gs.extents[0].generation, s.generation);
    assert_eq!(gs.extent_status[0].state, ExtentHealth::Unavailable as i32);
    assert_eq!(gs.extent_status[0].live_replicas, 0);
    assert_eq!(
        health(gs.volume.as_ref().unwrap()).state,
        ExtentHealth::Unavailable as i32
    );
    let lv = c.list_volumes(Some("p1")).await.unwrap();
    assert_eq!(health(&lv[0]).unavailable, 1);
    assert_err(
        c.remove_node("n4").await,
        Code::FailedPrecondition,
        "node 'n4' still holds 1 replica(s) or learner(s)",
    );
    // It comes back: the copy is served again.
    keepers.push(keeper(&c, "n4", "", 64 * MIB).await);
    let gs = c.get_volume("solo").await.unwrap();
    assert_eq!(gs.extent_status[0].state, ExtentHealth::Healthy as i32);
    assert_indexes(&etcd.url, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_moves_everything_off_and_remove_waits_for_it() {
    let etcd = Etcd::start();
    let meta = Meta::start(
        &etcd,
        "m1",
        &MetaOpts {
            repair_interval_ms: 100,
            ..MetaOpts::default()
        },
    );
    let c = meta.client();
    wait_leader(&c, Duration::from_secs(15)).await;
    let mut keepers = Vec::new();
    for id in ["n1", "n2", "n3", "n4"] {
        keepers.push(keeper(&c, id, "", GIB).await);
    }
    c.create_pool(pool("p2", 2, true, MIB, false))
        .await
        .unwrap();
    c.create_pool(pool("p1", 1, true, MIB, false))
        .await
        .unwrap();
    c.create_pool(pool("t2", 2, false, MIB, false))
        .await
        .unwrap();
    c.create_volume(volume("d2", "p2", 6 * MIB, 4096))
        .await
        .unwrap();
    c.create_volume(volume("d1", "p1", 4 * MIB, 4096))
        .await
        .unwrap();
    let held = c.list_node_extents("n1").await.unwrap().extents.len();
    assert!(held > 0);

    assert_err(c.drain_node("ghost").await, Code::NotFound, "node 'ghost'");
    let n = c.drain_node("n1").await.unwrap();
    assert_eq!(n.state, NodeState::Draining as i32);
    assert_eq!(
        c.drain_node("n1").await.unwrap().state,
        NodeState::Draining as i32
    );
    assert_err(
        c.remove_node("n1").await,
        Code::FailedPrecondition,
        "node 'n1' still holds",
    );
    // Nothing new lands on a draining node.
    c.create_volume(volume("t", "t2", 16 * MIB, 4096))
        .await
        .unwrap();
    for i in 0..16 {
        let e = c.allocate_extent("t", i).await.unwrap().extent.unwrap();
        assert!(!e.replicas.contains(&"n1".to_string()));
    }

    // Play the primaries: whenever learners appear, they catch up. The
    // scheduler then drops n1's copies.
    let started = Instant::now();
    let mut joined = 0;
    loop {
        for v in ["d2", "d1"] {
            joined += catch_up_learners(&c, v).await;
        }
        if c.list_node_extents("n1").await.unwrap().extents.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "n1 still holds {:?}",
            c.list_node_extents("n1").await.unwrap().extents
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "FIGURE drain of n1 ({held} extents) done in {:.2}s ({joined} learners caught up)",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(joined, held);
    for (v, rc) in [("d2", 2), ("d1", 1), ("t", 2)] {
        for e in extents(&c, v).await {
            assert_eq!(e.replicas.len(), rc, "{e:?}");
            assert!(e.learners.is_empty() && !e.replicas.contains(&"n1".to_string()));
        }
    }
    let nodes = c.list_nodes().await.unwrap();
    assert_eq!(
        (
            node_of(&nodes, "n1").replicas,
            node_of(&nodes, "n1").learners
        ),
        (0, 0)
    );
    assert_indexes(&etcd.url, true).await;

    // Empty now: the node goes away (its daemon stopped first).
    drop(keepers.remove(0));
    c.remove_node("n1").await.unwrap();
    assert!(!c.list_nodes().await.unwrap().iter().any(|n| n.id == "n1"));
    assert_err(
        c.list_node_extents("n1").await,
        Code::NotFound,
        "not registered",
    );
    assert_err(c.remove_node("n1").await, Code::NotFound, "node 'n1'");

    // A draining node that restarts stays draining.
    c.drain_node("n2").await.unwrap();
    drop(keepers.remove(0));
    keepers.push(keeper(&c, "n2", "", GIB).await);
    assert_eq!(
        node_of(&c.list_nodes().await.unwrap(), "n2").state,
        NodeState::Draining as i32
    );
}

/// Three metas; the leader is SIGKILLed while the scheduler works through
/// a backlog one extent per round; the next leader carries on until every
/// extent has its copies back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_carries_on_with_re_replication() {
    let etcd = Etcd::start();
    let opts = MetaOpts {
        // Nodes must outlive the failover (leader lease 2 s).
        node_ttl_secs: 8,
        node_grace_secs: 1,
        repair_interval_ms: 250,
        repair_extents_per_round: 1,
        max_learners_per_node: 64,
        ..MetaOpts::default()
    };
    let mut metas: Vec<Meta> = ["m1", "m2", "m3"]
        .iter()
        .map(|n| Meta::start(&etcd, n, &opts))
        .collect();
    let endpoints: Vec<String> = metas.iter().map(|m| m.addr.clone()).collect();
    let c = MetaClient::with_config(&endpoints, test_client_config()).unwrap();
    let leader = wait_leader(&c, Duration::from_secs(15)).await;
    let mut keepers = Vec::new();
    for id in ["n1", "n2", "n3", "n4"] {
        keepers.push(keeper(&c, id, "", GIB).await);
    }
    c.create_pool(pool("p", 2, true, MIB, false)).await.unwrap();
    c.create_volume(volume("v", "p", 24 * MIB, 4096))
        .await
        .unwrap();
    // Every extent loses its secondary: 24 extents need a new copy.
    for e in extents(&c, "v").await {
        c.report_replica_failure(e.id, e.generation, &e.replicas[1], &e.replicas[0])
            .await
            .unwrap();
    }
    let count_learning = |c: MetaClient| async move {
        extents(&c, "v")
            .await
            .iter()
            .filter(|e| !e.learners.is_empty())
            .count()
    };
    eventually("the scheduler to start", Duration::from_secs(10), || {
        let c = c.clone();
        async move { (count_learning(c).await >= 3).then_some(()) }
    })
    .await;
    let li = metas
        .iter()
        .position(|m| m.addr == leader.leader_address)
        .unwrap();
    let at_kill = count_learning(c.clone()).await;
    assert!(at_kill < 24, "the backlog was done before the failover");
    metas[li].proc_.kill9();
    eprintln!(
        "killed leader {} with {at_kill}/24 learners placed",
        leader.leader_name
    );

    // The primaries keep completing resyncs through the failover.
    let started = Instant::now();
    loop {
        let xs = extents(&c, "v").await;
        if xs
            .iter()
            .all(|e| e.replicas.len() == 2 && e.learners.is_empty())
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "not back to two copies: {xs:?}"
        );
        catch_up_learners(&c, "v").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let new_leader = c.get_leader().await.unwrap();
    assert_ne!(new_leader.leader_address, leader.leader_address);
    eprintln!(
        "FIGURE new leader {} finished re-replication {:.2}s after the SIGKILL",
        new_leader.leader_name,
        started.elapsed().as_secs_f64()
    );
    let ni = metas
        .iter()
        .position(|m| m.addr == new_leader.leader_address)
        .unwrap();
    assert!(
        metas[ni].log_tail().contains("re-replication"),
        "{}",
        metas[ni].log_tail()
    );
    assert_indexes(&etcd.url, true).await;
    drop(keepers);
}

/// Figures: how long removing a dead node from a few hundred extents
/// takes, and how fast the scheduler places their new copies (no
/// assertion on either; bounded waits only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_and_scheduler_figures() {
    let etcd = Etcd::start();
    let meta = Meta::start(
        &etcd,
        "m1",
        &MetaOpts {
            max_learners_per_node: 10_000,
            repair_interval_ms: 100,
            ..fast()
        },
    );
    let c = meta.client();
    wait_leader(&c, Duration::from_secs(15)).await;
    let mut keepers = Vec::new();
    for id in ["n1", "n2", "n3"] {
        keepers.push(keeper(&c, id, "", 64 * GIB).await);
    }
    c.create_pool(pool("p", 2, true, MIB, false)).await.unwrap();
    c.create_volume(volume("v", "p", 384 * MIB, 4096))
        .await
        .unwrap();
    // The spare comes after placement, so the dead node's extents all get
    // their new copy on it... or on the survivor not holding it.
    keepers.push(keeper(&c, "n4", "", 64 * GIB).await);
    let on_n3 = c.list_node_extents("n3").await.unwrap().extents.len();
    let killed = Instant::now();
    drop(keepers.remove(2));
    let evicted_at = eventually("n3 evicted", Duration::from_secs(30), || {
        let c = c.clone();
        async move {
            let l = c.list_node_extents("n3").await.ok()?;
            l.extents.is_empty().then(Instant::now)
        }
    })
    .await;
    let placed_at = eventually("copies placed", Duration::from_secs(60), || {
        let c = c.clone();
        async move {
            let xs = extents(&c, "v").await;
            xs.iter()
                .all(|e| e.replicas.len() + e.learners.len() == 2)
                .then(Instant::now)
        }
    })
    .await;
    let log = std::fs::read_to_string(&meta.log).unwrap_or_default();
    let line = log
        .lines()
        .find(|l| l.contains("node 'n3' is down: removed from"))
        .unwrap_or("");
    eprintln!(
        "FIGURE {on_n3} extents on n3: out of every extent {:.2}s after its keeper stopped (ttl 2s, grace 1s); meta: {}",
        (evicted_at - killed).as_secs_f64(),
        line.split("monitor").last().unwrap_or(line).trim()
    );
    eprintln!(
        "FIGURE scheduler: {on_n3} learners placed {:.2}s after the eviction ({:.0}/s, 64 per round, 100 ms rounds)",
        (placed_at - evicted_at).as_secs_f64(),
        on_n3 as f64 / (placed_at - evicted_at).as_secs_f64().max(1e-3)
    );
    let t = Instant::now();
    let mut joined = 0;
    while joined < on_n3 {
        let n = catch_up_learners(&c, "v").await;
        assert!(n > 0 || t.elapsed() < Duration::from_secs(30));
        joined += n;
    }
    eprintln!(
        "FIGURE {joined} CompleteResync calls (with a GetVolume per pass) in {:.2}s",
        t.elapsed().as_secs_f64()
    );
    assert_indexes(&etcd.url, true).await;
}
