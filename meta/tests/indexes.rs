//! The extent indexes (`node-extents/`, `repair/`, `extent-ids/`)
//! against a scan of the extent records: under a random concurrent mix of
//! every kind of change (with node deaths, the scheduler and the
//! eviction running), read at single etcd revisions; and built from data
//! that an issue-4 meta wrote without them.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::scan::{assert_indexes, problems, snapshot};
use common::*;
use ferrite_meta::client::{Code, MetaClient, NodeKeeper, Status};
use ferrite_meta::{keys, records};

/// xorshift64*: a seeded, reproducible stream.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> Option<&'a T> {
        (!xs.is_empty()).then(|| &xs[self.below(xs.len())])
    }
}

const NODES: [(&str, &str); 6] = [
    ("n1", "z1"),
    ("n2", "z2"),
    ("n3", "z3"),
    ("n4", "z1"),
    ("n5", "z2"),
    ("n6", "z3"),
];

/// Errors a racing operation may meet; anything else fails the test.
fn expected(st: &Status) -> bool {
    matches!(
        st.code(),
        Code::NotFound
            | Code::FailedPrecondition
            | Code::AlreadyExists
            | Code::ResourceExhausted
            | Code::OutOfRange
    )
}

static DRAINED: AtomicBool = AtomicBool::new(false);

type Keepers = Arc<Mutex<HashMap<String, Option<NodeKeeper>>>>;

async fn churn(
    c: MetaClient,
    keepers: Keepers,
    seed: u64,
    task: usize,
    ops: usize,
    deadline: Instant,
) -> Vec<String> {
    let mut rng = Rng(seed ^ (task as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut unexpected = Vec::new();
    for i in 0..ops {
        if Instant::now() > deadline {
            break;
        }
        let roll = rng.below(100);
        let vols: Vec<String> = match c.list_volumes(None).await {
            Ok(v) => v.into_iter().map(|v| v.name).collect(),
            Err(e) => {
                unexpected.push(format!("list_volumes: {e:?}"));
                continue;
            }
        };
        let result: Result<(), Status> = if roll < 18 {
            let pool = ["r1", "r2", "r3", "k2"][rng.below(4)];
            let size = (1 + rng.below(6) as u64) * MIB;
            c.create_volume(volume(&format!("v{task}-{i}"), pool, size, 4096))
                .await
                .map(|_| ())
        } else if roll < 48 {
            match rng.pick(&vols) {
                Some(v) => c.allocate_extent(v, rng.below(6) as u64).await.map(|_| ()),
                None => Ok(()),
            }
        } else if roll < 51 {
            match rng.pick(&vols) {
                Some(v) => c.delete_volume(v).await,
                None => Ok(()),
            }
        } else if roll < 70 {
            // A failure report on a random member, by its primary.
            match rng.pick(&vols) {
                Some(v) => match c.get_volume(v).await {
                    Ok(g) => match rng.pick(&g.extents) {
                        Some(e) => {
                            let members: Vec<&String> =
                                e.replicas.iter().chain(&e.learners).collect();
                            let failed = members[rng.below(members.len())];
                            c.report_replica_failure(e.id, e.generation, failed, &e.replicas[0])
                                .await
                                .map(|_| ())
                        }
                        None => Ok(()),
                    },
                    Err(e) => Err(e),
                },
                None => Ok(()),
            }
        } else if roll < 88 {
            // A learner catches up.
            match rng.pick(&vols) {
                Some(v) => match c.get_volume(v).await {
                    Ok(g) => {
                        let learning: Vec<_> = g
                            .extents
                            .iter()
                            .filter(|e| !e.learners.is_empty())
                            .collect();
                        match rng.pick(&learning) {
                            Some(e) => c
                                .complete_resync(e.id, e.generation, &e.learners[0])
                                .await
                                .map(|_| ()),
                            None => Ok(()),
                        }
                    }
                    Err(e) => Err(e),
                },
                None => Ok(()),
            }
        } else if roll < 93 {
            // A node dies (at most two at a time).
            let victim = {
                let mut k = keepers.lock().unwrap();
                let dead = k.values().filter(|x| x.is_none()).count();
                let (id, _) = NODES[rng.below(NODES.len())];
                if dead < 2 {
                    k.get_mut(id).and_then(Option::take).map(|kp| (id, kp))
                } else {
                    None
                }
            };
            drop(victim);
            Ok(())
        } else if roll < 98 {
            // A dead node comes back.
            let (id, zone) = NODES[rng.below(NODES.len())];
            let dead = keepers.lock().unwrap().get(id).is_some_and(|x| x.is_none());
            if dead {
                let mut kp = c.spawn_node_keeper(node(id, zone, GIB));
                kp.wait_registered(Duration::from_secs(10)).await;
                keepers.lock().unwrap().insert(id.to_string(), Some(kp));
            }
            Ok(())
        } else if !DRAINED.swap(true, Ordering::Relaxed) {
            // One node is drained, once.
            let (id, _) = NODES[rng.below(NODES.len())];
            c.drain_node(id).await.map(|_| ())
        } else {
            Ok(())
        };
        if let Err(st) = result {
            if !expected(&st) {
                unexpected.push(format!(
                    "op {i} (roll {roll}): {:?} {}",
                    st.code(),
                    st.message()
                ));
            }
        }
    }
    unexpected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_indexes_match_a_scan_under_concurrent_changes() {
    let seed: u64 = std::env::var("FERRITE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_f00d);
    eprintln!("seed {seed} (FERRITE_SEED to repeat)");
    let etcd = Etcd::start();
    let meta = Meta::start(
        &etcd,
        "m1",
        &MetaOpts {
            node_ttl_secs: 2,
            node_grace_secs: 1,
            repair_interval_ms: 50,
            repair_extents_per_round: 8,
            max_learners_per_node: 4,
            // Small transactions: batches split often.
            max_txn_ops: 24,
            ..MetaOpts::default()
        },
    );
    let c = meta.client();
    wait_leader(&c, Duration::from_secs(15)).await;
    let keepers: Keepers = Arc::new(Mutex::new(HashMap::new()));
    for (id, zone) in NODES {
        let mut k = c.spawn_node_keeper(node(id, zone, GIB));
        k.wait_registered(Duration::from_secs(10))
            .await
            .expect("registered");
        keepers.lock().unwrap().insert(id.to_string(), Some(k));
    }
    c.create_pool(pool("r1", 1, false, MIB, false))
        .await
        .unwrap();
    c.create_pool(pool("r2", 2, false, MIB, true))
        .await
        .unwrap();
    c.create_pool(pool("r3", 3, false, MIB, false))
        .await
        .unwrap();
    c.create_pool(pool("k2", 2, true, MIB, false))
        .await
        .unwrap();

    // A checker reads everything at one revision, again and again.
    let stop = Arc::new(AtomicBool::new(false));
    let checked = Arc::new(AtomicUsize::new(0));
    let checker = {
        let (url, stop, checked) = (etcd.url.clone(), stop.clone(), checked.clone());
        tokio::spawn(async move {
            let mut bad = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let s = snapshot(&url).await;
                let p = problems(&s, false);
                if !p.is_empty() {
                    bad.push(format!("revision {}:\n{}", s.revision, p.join("\n")));
                }
                checked.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            bad
        })
    };
    let deadline = Instant::now() + Duration::from_secs(40);
    let tasks: Vec<_> = (0..3)
        .map(|t| tokio::spawn(churn(c.clone(), keepers.clone(), seed, t, 250, deadline)))
        .collect();
    let mut unexpected = Vec::new();
    for t in tasks {
        unexpected.extend(t.await.unwrap());
    }
    // Let deaths be noticed and the scheduler work while still checking.
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    let bad = checker.await.unwrap();
    assert!(
        unexpected.is_empty(),
        "unexpected errors:\n{}",
        unexpected.join("\n")
    );
    assert!(bad.is_empty(), "index problems:\n{}", bad.join("\n\n"));
    let n_checked = checked.load(Ordering::Relaxed);
    assert!(n_checked > 10, "only {n_checked} snapshots checked");

    // Everyone back; once settled (tombstones swept), the strict checks
    // and the API agree with the scan.
    for (id, zone) in NODES {
        let dead = keepers.lock().unwrap().get(id).is_some_and(|x| x.is_none());
        if dead {
            let mut k = c.spawn_node_keeper(node(id, zone, GIB));
            k.wait_registered(Duration::from_secs(10)).await;
            keepers.lock().unwrap().insert(id.to_string(), Some(k));
        }
    }
    let s = eventually("settled indexes", Duration::from_secs(20), || {
        let url = etcd.url.clone();
        async move {
            let s = snapshot(&url).await;
            problems(&s, true).is_empty().then_some(s)
        }
    })
    .await;
    let mut by_node: BTreeMap<String, BTreeSet<(u64, u64)>> = BTreeMap::new();
    for (e, _) in &s.extents {
        for m in e.members() {
            by_node
                .entry(m.clone())
                .or_default()
                .insert((e.id, e.generation));
        }
    }
    // No change runs now but the scheduler's: compare what it leaves.
    let snap_rev = s.revision;
    let mut api_mismatch = Vec::new();
    for (id, _) in NODES {
        let got: BTreeSet<(u64, u64)> = c
            .list_node_extents(id)
            .await
            .unwrap()
            .extents
            .iter()
            .map(|e| (e.id, e.generation))
            .collect();
        let want = by_node.get(id).cloned().unwrap_or_default();
        if got != want {
            api_mismatch.push(format!("{id}: api {got:?} scan {want:?}"));
        }
    }
    if !api_mismatch.is_empty() {
        // The scheduler may have moved something since the snapshot: only
        // a mismatch that a fresh snapshot confirms counts.
        let s2 = snapshot(&etcd.url).await;
        assert!(
            s2.revision != snap_rev,
            "ListNodeExtents disagrees with the scan at revision {snap_rev}:\n{}",
            api_mismatch.join("\n")
        );
    }
    let log = std::fs::read_to_string(&meta.log).unwrap_or_default();
    let count = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
    eprintln!(
        "FIGURE churn: {} failure removals, {} learners joined, {} down-node evictions, {} scheduler changes, {} nodes marked down",
        count("removed on report of"),
        count("joined the replicas"),
        count("is down: removed from"),
        count("re-replication: extent"),
        count("marked down")
    );
    if std::env::var_os("FERRITE_DUMP").is_some() {
        for (e, _) in &s.extents {
            let v = &s.volumes[&e.volume_uuid];
            eprintln!(
                "DUMP {} rc {} replicas {:?} learners {:?}",
                v.name, v.replica_count, e.replicas, e.learners
            );
        }
        for n in s.nodes.values() {
            eprintln!("DUMP node {} {:?} drain {}", n.id, n.state, n.drain);
        }
    }
    let extents = s.extents.len();
    let with_learners = s
        .extents
        .iter()
        .filter(|(e, _)| !e.learners.is_empty())
        .count();
    eprintln!(
        "FIGURE {n_checked} snapshots consistent during the churn; at the end {} volumes, {extents} extents ({with_learners} with learners), {} index keys",
        s.volumes.len(),
        s.node_extents.len()
    );
}

/// An etcd written by an issue-4 meta (extents without index keys, no
/// schema marker): the first leader builds the indexes, and until then
/// ListNodeExtents is refused rather than answered empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexes_are_built_for_data_written_before_them() {
    let etcd = Etcd::start();
    let mut e = etcd_client::Client::connect([etcd.url.as_str()], None)
        .await
        .unwrap();
    let put = |k: String, v: Vec<u8>| etcd_client::TxnOp::put(k, v, None);
    let pool = br#"{"name":"p","replica_count":2,"provisioning":"thick","extent_size":1048576,"failure_domain":"node","created_unix_ms":0}"#;
    let vol = br#"{"name":"old","uuid":"00000000-0000-4000-8000-00000000000a","pool":"p","size":3145728,"block_size":4096,"generation":4,"created_unix_ms":0,"extent_size":1048576,"replica_count":2,"provisioning":"thick","failure_domain":"node","state":"ready"}"#;
    let uuid = "00000000-0000-4000-8000-00000000000a";
    let mut ops = vec![
        put(keys::pool("p"), pool.to_vec()),
        put(keys::volume("old"), vol.to_vec()),
        put(keys::pool_volume("p", "old"), uuid.as_bytes().to_vec()),
        put(keys::EXTENT_ID_COUNTER.to_string(), b"4".to_vec()),
    ];
    let layout = [["a", "b"], ["b", "c"], ["c", "a"]];
    for (i, r) in layout.iter().enumerate() {
        let x = format!(
            r#"{{"id":{},"volume_uuid":"{uuid}","index":{i},"replicas":["{}","{}"],"generation":1}}"#,
            i + 1,
            r[0],
            r[1]
        );
        ops.push(put(keys::extent(uuid, i as u64), x.into_bytes()));
    }
    for n in ["a", "b", "c"] {
        let x = format!(
            r#"{{"id":"{n}","gateway_address":"127.0.0.1:1","replica_address":"127.0.0.1:2","zone":"","capacity_total":1073741824,"capacity_free":1073741824,"allocated":2097152,"state":"up","lease_id":0,"registered_unix_ms":0}}"#
        );
        ops.push(put(keys::node(n), x.into_bytes()));
    }
    // And a stray index key (as an interrupted build might leave).
    ops.push(put(keys::node_extent("z", uuid, 9), b"{}".to_vec()));
    assert!(e
        .txn(etcd_client::Txn::new().and_then(ops))
        .await
        .unwrap()
        .succeeded());

    let meta = Meta::start(&etcd, "m1", &MetaOpts::default());
    let c = meta.client();
    wait_leader(&c, Duration::from_secs(15)).await;
    let a = c.list_node_extents("a").await.unwrap();
    let ids: Vec<u64> = a.extents.iter().map(|x| x.id).collect();
    assert_eq!(ids, vec![1, 3]);
    assert_eq!(a.volume_names, ["old", "old"]);
    assert_eq!(c.get_extent(2).await.unwrap().replicas, ["b", "c"]);
    let s = assert_indexes(&etcd.url, true).await;
    assert_eq!(s.node_extents.len(), 6);
    let marker = e.get(keys::SCHEMA, None).await.unwrap();
    assert_eq!(marker.kvs()[0].value(), keys::SCHEMA_VERSION.as_bytes());
    // The records themselves were not rewritten.
    let rec = e.get(keys::extent(uuid, 0), None).await.unwrap();
    let r: records::ExtentRecord = serde_json::from_slice(rec.kvs()[0].value()).unwrap();
    assert_eq!(r.generation, 1);
    assert!(meta.log_tail().contains("extent indexes reconciled with 3 extents of 1 volumes: 9 key(s) written, 1 stray key(s) dropped"), "{}", meta.log_tail());
}
