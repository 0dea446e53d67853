//! The etcd transactions themselves, without the leader's in-process
//! write lock: two service instances writing the same etcd race for real,
//! and only the revision compares keep the data right. Also: a deposed
//! leader's writes are refused by the fence.

mod common;

use std::collections::HashSet;

use common::*;
use ferrite_meta::client::Code;
use ferrite_meta::keys;
use ferrite_meta::proto::{self, meta_server::Meta};
use ferrite_meta::service::{MetaService, ServiceConfig};
use ferrite_meta::store::Fence;
use tokio::sync::watch;
use tonic::Request;

async fn etcd_client(url: &str) -> etcd_client::Client {
    let opts = etcd_client::ConnectOptions::new().with_timeout(std::time::Duration::from_secs(5));
    etcd_client::Client::connect([url], Some(opts))
        .await
        .unwrap()
}

/// Wins the election directly and returns the fence and the leader key.
async fn lead(client: &mut etcd_client::Client) -> (Fence, etcd_client::LeaderKey) {
    let lease = client.lease_grant(30, None).await.unwrap().id();
    let mut resp = client
        .campaign(
            keys::LEADER_ELECTION,
            "{\"name\":\"t\",\"address\":\"127.0.0.1:1\"}",
            lease,
        )
        .await
        .unwrap();
    let leader = resp.take_leader().unwrap();
    (
        Fence {
            key: leader.key().to_vec(),
            rev: leader.rev(),
        },
        leader,
    )
}

fn service(
    client: &etcd_client::Client,
    fence: &Fence,
) -> (MetaService, watch::Sender<Option<Fence>>) {
    let (tx, rx) = watch::channel(Some(fence.clone()));
    let svc = MetaService::new(
        client.clone(),
        ServiceConfig {
            name: "t".into(),
            address: "127.0.0.1:1".into(),
            node_ttl_secs: 30,
            max_txn_ops: 128,
        },
        rx,
    );
    (svc, tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revision_compares_decide_races_and_the_fence_stops_a_deposed_leader() {
    let etcd = Etcd::start();
    let mut client = etcd_client(&etcd.url).await;
    let (fence, leader_key) = lead(&mut client).await;
    // Two writers with separate locks: as if two processes wrote at once.
    let (a, _ta) = service(&client, &fence);
    let (b, _tb) = service(&client, &fence);

    a.register_node(Request::new(node("n1", "", GIB)))
        .await
        .unwrap();
    a.create_pool(Request::new(pool("thin", 1, false, MIB, false)))
        .await
        .unwrap();
    a.create_pool(Request::new(pool("thick", 1, true, MIB, false)))
        .await
        .unwrap();

    for (name, pool_name) in [("tv", "thin"), ("kv", "thick")] {
        let mut tasks = Vec::new();
        for i in 0..8 {
            let svc = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move {
                svc.create_volume(Request::new(volume(name, pool_name, 4 * MIB, 4096)))
                    .await
                    .map(|r| r.into_inner())
            }));
        }
        let mut ok = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => ok += 1,
                Err(e) => assert!(
                    matches!(e.code(), Code::AlreadyExists),
                    "{name}: unexpected {:?}: {}",
                    e.code(),
                    e.message()
                ),
            }
        }
        assert_eq!(ok, 1, "{name}: exactly one create wins");
    }

    // Racing first writes of the same extents from both writers.
    let mut tasks = Vec::new();
    for i in 0..8u64 {
        let svc = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            svc.allocate_extent(Request::new(proto::AllocateExtentRequest {
                volume: "tv".into(),
                index: i % 2,
            }))
            .await
            .map(|r| r.into_inner())
        }));
    }
    let mut ids = HashSet::new();
    let mut created = 0;
    for t in tasks {
        let r = t.await.unwrap().unwrap();
        ids.insert((r.extent.as_ref().unwrap().index, r.extent.unwrap().id));
        created += r.created as usize;
    }
    assert_eq!(ids.len(), 2, "one extent per index: {ids:?}");
    assert_eq!(created, 2);
    let nodes = a
        .list_nodes(Request::new(proto::ListNodesRequest {}))
        .await
        .unwrap()
        .into_inner()
        .nodes;
    // 4 thick extents + 2 thin ones, counted once each.
    assert_eq!(nodes[0].allocated, 6 * MIB);

    // Deposed: the leader key is gone, but the service still believes it
    // leads. Its writes are refused.
    client
        .resign(Some(
            etcd_client::ResignOptions::new().with_leader(leader_key),
        ))
        .await
        .unwrap();
    let e = a
        .create_pool(Request::new(pool("late", 1, false, MIB, false)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(
        e.message().contains("lost its leadership"),
        "{}",
        e.message()
    );
    assert!(client
        .get(keys::pool("late"), None)
        .await
        .unwrap()
        .kvs()
        .is_empty());
}
