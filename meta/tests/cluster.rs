//! Node leases and meta leader failover, with real processes: a node
//! that stops renewing its lease is marked down after the grace period;
//! several `ferrite-meta` elect one leader, followers redirect to it, and
//! when it is killed with SIGKILL another takes over while a client keeps
//! working.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use ferrite_meta::client::{Code, MetaClient};
use ferrite_meta::proto;
use ferrite_meta::{keys, records};

fn state_of(nodes: &[proto::Node], id: &str) -> (i32, bool) {
    let n = nodes.iter().find(|n| n.id == id).expect("node listed");
    (n.state, n.alive)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_leases_and_failure_detection() {
    let etcd = Etcd::start();
    let meta = Meta::start(
        &etcd,
        "m1",
        &MetaOpts {
            node_ttl_secs: 2,
            node_grace_secs: 1,
            ..MetaOpts::default()
        },
    );
    let c = meta.client();
    wait_leader(&c, Duration::from_secs(15)).await;

    // Registration checks.
    let mut bad = node("n/1", "", GIB);
    assert_err(
        c.register_node(bad.clone()).await,
        Code::InvalidArgument,
        "node id 'n/1'",
    );
    bad.id = "n1".into();
    bad.addresses = None;
    assert_err(
        c.register_node(bad.clone()).await,
        Code::InvalidArgument,
        "node 'n1': gateway address",
    );
    let mut bad = node("n1", "", GIB);
    bad.capacity_free = 2 * GIB;
    assert_err(
        c.register_node(bad).await,
        Code::InvalidArgument,
        "free capacity",
    );

    let r = c.register_node(node("n1", "z1", GIB)).await.unwrap();
    assert_eq!(r.ttl_secs, 2);
    let nodes = c.list_nodes().await.unwrap();
    assert_eq!(nodes.len(), 1);
    let n = &nodes[0];
    assert_eq!(
        (n.state, n.alive, n.zone.as_str()),
        (proto::NodeState::Up as i32, true, "z1")
    );
    assert_eq!(n.lease_id, r.lease_id);
    assert_eq!(n.addresses.as_ref().unwrap().gateway, "127.0.0.1:10809");

    // Capacity reports.
    c.report_capacity("n1", 2 * GIB, GIB).await.unwrap();
    let n = &c.list_nodes().await.unwrap()[0];
    assert_eq!((n.capacity_total, n.capacity_free), (2 * GIB, GIB));
    assert_err(
        c.report_capacity("nope", GIB, GIB).await,
        Code::NotFound,
        "node 'nope' is not registered",
    );
    assert_err(
        c.report_capacity("n1", GIB, 2 * GIB).await,
        Code::InvalidArgument,
        "free capacity",
    );

    // Keep-alives hold the node up well past its TTL (2 s).
    for _ in 0..8 {
        assert_eq!(c.keep_alive("n1", r.lease_id).await.unwrap(), 2);
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    assert_eq!(
        state_of(&c.list_nodes().await.unwrap(), "n1"),
        (proto::NodeState::Up as i32, true)
    );
    assert_err(
        c.keep_alive("n1", r.lease_id + 1).await,
        Code::FailedPrecondition,
        "is not its current lease",
    );
    assert_err(
        c.keep_alive("ghost", r.lease_id).await,
        Code::NotFound,
        "node 'ghost' is not registered",
    );

    // Silence: the lease expires (alive false), then after the grace
    // period the node is marked down.
    let silent_at = Instant::now();
    eventually("n1 marked down", Duration::from_secs(15), || {
        let c = c.clone();
        async move {
            let nodes = c.list_nodes().await.ok()?;
            (state_of(&nodes, "n1") == (proto::NodeState::Down as i32, false)).then_some(())
        }
    })
    .await;
    let took = silent_at.elapsed();
    eprintln!(
        "node marked down {:.1}s after its last keep-alive (ttl 2s, grace 1s)",
        took.as_secs_f64()
    );
    assert_err(
        c.keep_alive("n1", r.lease_id).await,
        Code::NotFound,
        "has expired; register again",
    );

    // A down node gets no extents.
    c.create_pool(pool("p", 1, false, MIB, false))
        .await
        .unwrap();
    c.create_volume(volume("v", "p", MIB, 4096)).await.unwrap();
    assert_err(
        c.allocate_extent("v", 0).await,
        Code::FailedPrecondition,
        "only 0 node(s) are up",
    );

    // Registering again brings it back up, with a new lease; its space
    // accounting survives.
    let r2 = c.register_node(node("n1", "z1", GIB)).await.unwrap();
    assert_ne!(r2.lease_id, r.lease_id);
    assert_eq!(
        state_of(&c.list_nodes().await.unwrap(), "n1"),
        (proto::NodeState::Up as i32, true)
    );
    c.allocate_extent("v", 0).await.unwrap();
    assert_eq!(c.list_nodes().await.unwrap()[0].allocated, MIB);

    // The client's node keeper registers and renews by itself.
    let mut keeper = c.spawn_node_keeper(node("n2", "z2", GIB));
    let lease = keeper
        .wait_registered(Duration::from_secs(10))
        .await
        .expect("n2 registered");
    assert_eq!(lease.ttl_secs, 2);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        state_of(&c.list_nodes().await.unwrap(), "n2"),
        (proto::NodeState::Up as i32, true)
    );
    drop(keeper);
    eventually(
        "n2 marked down after its keeper stopped",
        Duration::from_secs(15),
        || {
            let c = c.clone();
            async move {
                let nodes = c.list_nodes().await.ok()?;
                (state_of(&nodes, "n2").0 == proto::NodeState::Down as i32).then_some(())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failover_and_redirects() {
    let etcd = Etcd::start();
    let opts = MetaOpts {
        leader_ttl_secs: 2,
        ..MetaOpts::default()
    };
    let mut metas: Vec<Meta> = ["m1", "m2", "m3"]
        .iter()
        .map(|n| Meta::start(&etcd, n, &opts))
        .collect();
    let endpoints: Vec<String> = metas.iter().map(|m| m.addr.clone()).collect();
    let client = MetaClient::with_config(&endpoints, test_client_config()).unwrap();
    let leader = wait_leader(&client, Duration::from_secs(15)).await;
    let li = metas
        .iter()
        .position(|m| m.addr == leader.leader_address)
        .expect("leader is one of ours");
    eprintln!(
        "leader: {} at {}",
        leader.leader_name, leader.leader_address
    );

    // A follower answers UNAVAILABLE naming the leader, in the message and
    // in the metadata the client follows.
    let follower = &metas[(li + 1) % 3];
    let mut raw = proto::meta_client::MetaClient::connect(format!("http://{}", follower.addr))
        .await
        .unwrap();
    let st = raw
        .list_pools(proto::ListPoolsRequest {})
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::Unavailable);
    assert!(
        st.message().contains(&format!(
            "the leader is '{}' at {}",
            leader.leader_name, leader.leader_address
        )),
        "{}",
        st.message()
    );
    assert_eq!(
        st.metadata()
            .get(ferrite_meta::LEADER_METADATA_KEY)
            .unwrap()
            .to_str()
            .unwrap(),
        leader.leader_address
    );
    let gl = raw
        .get_leader(proto::GetLeaderRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!gl.is_leader);
    assert_eq!(gl.leader_address, leader.leader_address);

    // A client that only knows the follower is redirected.
    let via_follower =
        MetaClient::with_config([follower.addr.as_str()], test_client_config()).unwrap();
    via_follower
        .create_pool(pool("p", 1, false, MIB, false))
        .await
        .unwrap();
    assert_eq!(via_follower.current_endpoint(), leader.leader_address);
    client.register_node(node("n1", "", GIB)).await.unwrap();
    client
        .create_volume(volume("before", "p", 4 * MIB, 4096))
        .await
        .unwrap();
    let e0 = client
        .allocate_extent("before", 0)
        .await
        .unwrap()
        .extent
        .unwrap();

    // A thick create that an earlier leader left half-done (as if it died
    // between two transactions): the next leader rolls it back.
    let allocated_before = client.list_nodes().await.unwrap()[0].allocated;
    plant_half_created_volume(&etcd.url, "ghost", "n1").await;
    assert_eq!(
        client.list_nodes().await.unwrap()[0].allocated,
        allocated_before + MIB
    );

    // A client works without pause while the leader is killed.
    client
        .create_volume(volume("work", "p", 64 * MIB, 4096))
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let workload = {
        let (c, stop, done) = (client.clone(), stop.clone(), done.clone());
        tokio::spawn(async move {
            let mut errors = Vec::new();
            for i in 0..2000u64 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match c.allocate_extent("work", i % 64).await {
                    Ok(_) => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => errors.push(format!("op {i}: {:?} {}", e.code(), e.message())),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            errors
        })
    };
    eventually("the workload to start", Duration::from_secs(10), || {
        let d = done.clone();
        async move { (d.load(Ordering::Relaxed) >= 5).then_some(()) }
    })
    .await;

    // Kill -9 the leader; another leads within a few seconds.
    let killed_at = Instant::now();
    metas[li].proc_.kill9();
    let survivors: Vec<String> = metas
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != li)
        .map(|(_, m)| m.addr.clone())
        .collect();
    let watcher = MetaClient::with_config(&survivors, test_client_config()).unwrap();
    let new_leader = eventually("a new leader", Duration::from_secs(20), || {
        let w = watcher.clone();
        let old = leader.leader_address.clone();
        async move {
            let l = w.get_leader().await.ok()?;
            (!l.leader_address.is_empty() && l.leader_address != old).then_some(l)
        }
    })
    .await;
    let failover = killed_at.elapsed();
    eprintln!(
        "failover: '{}' leads {:.2}s after SIGKILL of '{}' (leader lease ttl 2s)",
        new_leader.leader_name,
        failover.as_secs_f64(),
        leader.leader_name
    );
    assert!(failover < Duration::from_secs(15));

    let at_failover = done.load(Ordering::Relaxed);
    eventually(
        "the workload to go on under the new leader",
        Duration::from_secs(20),
        || {
            let d = done.clone();
            async move { (d.load(Ordering::Relaxed) >= at_failover + 10).then_some(()) }
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let errors = workload.await.unwrap();
    assert!(
        errors.is_empty(),
        "the client saw errors across the failover: {errors:?}"
    );
    eprintln!(
        "workload: {} allocate_extent calls, none failed",
        done.load(Ordering::Relaxed)
    );
    let work_extents = client.get_volume("work").await.unwrap().extents.len() as u64;
    assert_eq!(work_extents, 64.min(done.load(Ordering::Relaxed) as u64));

    eventually(
        "the half-created volume rolled back",
        Duration::from_secs(10),
        || {
            let c = client.clone();
            async move {
                let gone = c.get_volume("ghost").await.err()?.code() == Code::NotFound;
                let n = c.list_nodes().await.ok()?;
                (gone && n[0].allocated == allocated_before + work_extents * MIB).then_some(())
            }
        },
    )
    .await;

    // The original client (which pointed at the dead leader) just works;
    // the data written before is there.
    let v = client
        .create_volume(volume("after", "p", 4 * MIB, 4096))
        .await
        .unwrap();
    assert_eq!(v.name, "after");
    assert_eq!(client.current_endpoint(), new_leader.leader_address);
    let again = client.allocate_extent("before", 0).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.extent.unwrap().id, e0.id);
    let e1 = client
        .allocate_extent("after", 0)
        .await
        .unwrap()
        .extent
        .unwrap();
    assert!(e1.id > e0.id, "extent ids keep counting up across leaders");
    let names: Vec<_> = client
        .list_volumes(None)
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(names, vec!["after", "before", "work"]);

    // SIGTERM on the new leader: it resigns, exits 0, and the last one
    // takes over without waiting for a lease to expire.
    let ni = metas
        .iter()
        .position(|m| m.addr == new_leader.leader_address)
        .unwrap();
    let term_at = Instant::now();
    let status = metas[ni]
        .proc_
        .signal_and_wait("TERM", Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "clean exit on SIGTERM: {status:?}\n{}",
        metas[ni].log_tail()
    );
    assert!(
        metas[ni].log_tail().contains("resigned"),
        "{}",
        metas[ni].log_tail()
    );
    let last = metas.iter().position(|m| m.proc_.child.is_some()).unwrap();
    let only = metas[last].client();
    let l = eventually("the last meta leads", Duration::from_secs(15), || {
        let c = only.clone();
        async move { c.get_leader().await.ok().filter(|l| l.is_leader) }
    })
    .await;
    eprintln!(
        "handover after SIGTERM: {:.2}s",
        term_at.elapsed().as_secs_f64()
    );
    assert_eq!(l.leader_address, metas[last].addr);
    assert_eq!(client.list_pools().await.unwrap().len(), 1);

    // And SIGINT ends the last one cleanly too.
    let status = metas[last]
        .proc_
        .signal_and_wait("INT", Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "clean exit on SIGINT: {status:?}"
    );
}

/// Writes, behind meta's back, what a leader that died in the middle of a
/// multi-transaction thick create leaves: a volume in state "creating" of
/// an old term, one extent on `node`, and that node's space taken.
async fn plant_half_created_volume(etcd_url: &str, name: &str, node: &str) {
    let mut etcd = etcd_client::Client::connect([etcd_url], None)
        .await
        .unwrap();
    let uuid = "00000000-0000-4000-8000-000000000001".to_string();
    let vol = records::VolumeRecord {
        name: name.into(),
        uuid: uuid.clone(),
        pool: "p".into(),
        size: 4 * MIB,
        block_size: 4096,
        generation: 1,
        created_unix_ms: 0,
        extent_size: MIB,
        replica_count: 1,
        provisioning: records::Provisioning::Thick,
        failure_domain: records::FailureDomain::Node,
        state: records::VolumeState::Creating,
        creating_term: Some(1),
        min_replicas: 0,
    };
    let ext = records::ExtentRecord {
        id: 1_000_000,
        volume_uuid: uuid.clone(),
        index: 0,
        replicas: vec![node.into()],
        generation: 1,
        learners: Vec::new(),
    };
    let nkey = keys::node(node);
    let resp = etcd.get(nkey.clone(), None).await.unwrap();
    let mut n: records::NodeRecord = serde_json::from_slice(resp.kvs()[0].value()).unwrap();
    n.allocated += MIB;
    let txn = etcd_client::Txn::new().and_then(vec![
        etcd_client::TxnOp::put(keys::volume(name), serde_json::to_vec(&vol).unwrap(), None),
        etcd_client::TxnOp::put(keys::pool_volume("p", name), uuid.clone(), None),
        etcd_client::TxnOp::put(
            keys::extent(&uuid, 0),
            serde_json::to_vec(&ext).unwrap(),
            None,
        ),
        etcd_client::TxnOp::put(nkey, serde_json::to_vec(&n).unwrap(), None),
    ]);
    assert!(etcd.txn(txn).await.unwrap().succeeded());
}
