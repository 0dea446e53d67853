//! Reads everything under `/ferrite/v1/` at one etcd revision and checks
//! the extent indexes against a scan of the extent records.

use std::collections::{BTreeMap, BTreeSet};

use etcd_client::{Client, GetOptions, KeyValue};
use ferrite_meta::keys;
use ferrite_meta::records::{
    DeletedVolume, ExtentEntry, ExtentRecord, ExtentRef, NodeRecord, VolumeRecord,
};

/// The cluster's records at one revision.
pub struct Snapshot {
    pub revision: i64,
    /// By uuid.
    pub volumes: BTreeMap<String, VolumeRecord>,
    /// With mod revisions.
    pub extents: Vec<(ExtentRecord, i64)>,
    /// By key, with mod revisions.
    pub node_extents: BTreeMap<String, (ExtentEntry, i64)>,
    pub repair: BTreeMap<String, (ExtentEntry, i64)>,
    pub ids: BTreeMap<String, ExtentRef>,
    pub nodes: BTreeMap<String, NodeRecord>,
    pub tombstones: Vec<DeletedVolume>,
}

async fn range(c: &mut Client, prefix: &str, rev: i64) -> (Vec<KeyValue>, i64) {
    let r = c
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_revision(rev)),
        )
        .await
        .expect("etcd range");
    let at = r.header().map_or(0, |h| h.revision());
    (r.kvs().to_vec(), at)
}

fn de<T: serde::de::DeserializeOwned>(kv: &KeyValue) -> T {
    serde_json::from_slice(kv.value())
        .unwrap_or_else(|e| panic!("{} does not decode: {e}", String::from_utf8_lossy(kv.key())))
}

fn key(kv: &KeyValue) -> String {
    String::from_utf8_lossy(kv.key()).into_owned()
}

/// Everything at the current revision.
pub async fn snapshot(url: &str) -> Snapshot {
    let mut c = Client::connect([url], None).await.expect("etcd");
    let (vols, rev) = range(&mut c, keys::VOLUMES, 0).await;
    let (extents, _) = range(&mut c, keys::EXTENTS, rev).await;
    let (nx, _) = range(&mut c, keys::NODE_EXTENTS, rev).await;
    let (rp, _) = range(&mut c, keys::REPAIR, rev).await;
    let (ids, _) = range(&mut c, keys::EXTENT_IDS, rev).await;
    let (nodes, _) = range(&mut c, keys::NODES, rev).await;
    let (tombs, _) = range(&mut c, keys::DELETED_VOLUMES, rev).await;
    Snapshot {
        revision: rev,
        volumes: vols
            .iter()
            .map(|kv| {
                let v: VolumeRecord = de(kv);
                (v.uuid.clone(), v)
            })
            .collect(),
        extents: extents
            .iter()
            .map(|kv| (de(kv), kv.mod_revision()))
            .collect(),
        node_extents: nx
            .iter()
            .map(|kv| (key(kv), (de(kv), kv.mod_revision())))
            .collect(),
        repair: rp
            .iter()
            .map(|kv| (key(kv), (de(kv), kv.mod_revision())))
            .collect(),
        ids: ids.iter().map(|kv| (key(kv), de(kv))).collect(),
        nodes: nodes
            .iter()
            .map(|kv| {
                let n: NodeRecord = de(kv);
                (n.id.clone(), n)
            })
            .collect(),
        tombstones: tombs.iter().map(de).collect(),
    }
}

/// What is wrong with the indexes of `s` (empty: nothing). `settled`
/// adds the checks that only hold once the sweeper has run and no change
/// is under way: no id key of a deleted volume left, and every node's
/// `allocated` equal to the extents it holds.
pub fn problems(s: &Snapshot, settled: bool) -> Vec<String> {
    let mut p = Vec::new();
    let mut want_nx: BTreeSet<String> = BTreeSet::new();
    let mut want_repair: BTreeSet<String> = BTreeSet::new();
    let mut want_ids: BTreeSet<String> = BTreeSet::new();
    let mut held: BTreeMap<String, u64> = BTreeMap::new();
    for (e, rev) in &s.extents {
        let Some(v) = s.volumes.get(&e.volume_uuid) else {
            p.push(format!("extent {} of no volume ({})", e.id, e.volume_uuid));
            continue;
        };
        if e.replicas.is_empty() {
            p.push(format!("extent {} has no replica", e.id));
        }
        let members: Vec<&String> = e.members().collect();
        let distinct: BTreeSet<&String> = members.iter().copied().collect();
        if distinct.len() != members.len() {
            p.push(format!(
                "extent {} names a node twice: replicas {:?} learners {:?}",
                e.id, e.replicas, e.learners
            ));
        }
        for m in distinct {
            *held.entry(m.clone()).or_default() += v.extent_size;
            let k = keys::node_extent(m, &e.volume_uuid, e.index);
            match s.node_extents.get(&k) {
                None => p.push(format!("extent {} on '{m}' has no index key {k}", e.id)),
                Some((entry, erev)) => {
                    // Written with the record (same revision) or, by an
                    // index build, after it.
                    if entry.extent != *e || erev < rev {
                        p.push(format!(
                            "index key {k} holds {:?} at rev {erev}, the record is {:?} at rev {rev}",
                            entry.extent, e
                        ));
                    }
                    if entry.volume != v.name || entry.extent_size != v.extent_size {
                        p.push(format!("index key {k} names volume '{}'", entry.volume));
                    }
                }
            }
            want_nx.insert(k);
        }
        let rk = keys::repair(&e.volume_uuid, e.index);
        let needs = e.needs_repair(v.replica_count);
        match (needs, s.repair.get(&rk)) {
            (true, None) => p.push(format!("extent {} needs repair but has no key", e.id)),
            (true, Some((entry, erev))) if entry.extent != *e || erev < rev => {
                p.push(format!("repair key {rk} is stale: {:?}", entry.extent))
            }
            _ => {}
        }
        if needs {
            want_repair.insert(rk);
        }
        let ik = keys::extent_id(e.id);
        match s.ids.get(&ik) {
            Some(r)
                if r.volume_uuid == e.volume_uuid && r.index == e.index && r.volume == v.name => {}
            other => p.push(format!("extent {} id key is {other:?}", e.id)),
        }
        want_ids.insert(ik);
    }
    for k in s.node_extents.keys().filter(|k| !want_nx.contains(*k)) {
        p.push(format!("stray index key {k}"));
    }
    for k in s.repair.keys().filter(|k| !want_repair.contains(*k)) {
        p.push(format!("stray repair key {k}"));
    }
    let buried: BTreeSet<&String> = s.tombstones.iter().map(|t| &t.volume_uuid).collect();
    for (k, r) in s.ids.iter().filter(|(k, _)| !want_ids.contains(*k)) {
        if settled || !buried.contains(&r.volume_uuid) {
            p.push(format!("stray id key {k} -> {r:?}"));
        }
    }
    if settled {
        if !s.tombstones.is_empty() {
            p.push(format!("{} tombstone(s) left", s.tombstones.len()));
        }
        for (id, n) in &s.nodes {
            let h = held.get(id).copied().unwrap_or(0);
            if n.allocated != h {
                p.push(format!(
                    "node '{id}': allocated {} but holds {h} bytes of extents",
                    n.allocated
                ));
            }
        }
    }
    p
}

/// Panics with the problems of the indexes now.
pub async fn assert_indexes(url: &str, settled: bool) -> Snapshot {
    let s = snapshot(url).await;
    let p = problems(&s, settled);
    assert!(
        p.is_empty(),
        "index problems at revision {}:\n{}",
        s.revision,
        p.join("\n")
    );
    s
}
