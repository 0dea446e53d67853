//! Replication on the meta side: the replica/learner state of extents,
//! its indexes, and the leader's duties that keep it healthy.
//!
//! # State machine of an extent's copies
//!
//! An extent has `replicas` (primary first; they serve reads and ack
//! every write) and `learners` (being filled by the primary; no reads, not
//! durable copies). Every change of either bumps the extent's generation
//! (and its volume's), in one etcd transaction that also rewrites the
//! extent's index keys:
//!
//! ```text
//!             scheduler: len(replicas)+len(learners) < replica_count
//!  (new node) ───────────────────────────────────────────────▶ learner
//!  learner ──CompleteResync(gen) by the primary─────────────────▶ replica (appended)
//!  learner ──ReportReplicaFailure / node down / node draining──▶ removed
//!  replica ──ReportReplicaFailure / node down──────────────────▶ removed (never the last)
//!  replica on a draining node ──once another replica joined───▶ removed
//! ```
//!
//! # Indexes (kept in the same transactions as the extent records)
//!
//! - `node-extents/<node>/<uuid>/<index>`: one key per replica and per
//!   learner, value an [`ExtentEntry`] (a copy of the record): what
//!   `ListNodeExtents` answers with one range.
//! - `repair/<uuid>/<index>`: extents whose replica count differs from
//!   the pool's, or with learners: what the scheduler ranges.
//! - `extent-ids/<id>`: where extent `id` lives, for the calls by id.
//!
//! All writes go through [`MetaService::change_extents`] (and the
//! allocation path in `service`, which uses [`index_ops`]), so the
//! indexes cannot drift from the records.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use tonic::Status;

use crate::health::{self, Tally};
use crate::keys;
use crate::placement::{Candidate, Placer};
use crate::proto;
use crate::records::{
    now_unix_ms, DeletedVolume, ExtentEntry, ExtentRecord, ExtentRef, NodeRecord, NodeState,
    VolumeRecord, VolumeState,
};
use crate::service::{conflict_status, invalid, store_status, MetaService, MAX_TXN_RETRIES};
use crate::store::{Commit, Store, Txn, Versioned};
use crate::validate;

/// Nodes by id with their records, as read for one decision.
pub type Nodes = BTreeMap<String, Versioned<NodeRecord>>;

/// Settings of the re-replication scheduler.
#[derive(Debug, Clone)]
pub struct RepairConfig {
    /// Pause between rounds.
    pub interval: Duration,
    /// Most learners one node is filled as at once.
    pub max_learners_per_node: usize,
    /// Most extents changed per round.
    pub extents_per_round: usize,
}

impl Default for RepairConfig {
    fn default() -> Self {
        RepairConfig {
            interval: Duration::from_millis(500),
            max_learners_per_node: 8,
            extents_per_round: 64,
        }
    }
}

/// What one scheduler round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoundReport {
    /// Learners added.
    pub learners_added: usize,
    /// Learners or surplus replicas on draining nodes removed.
    pub drained: usize,
    /// Extents that need a copy but no node qualifies for it.
    pub unplaceable: usize,
    /// Extents that need a copy but whose primary is not live (nothing
    /// can fill a learner).
    pub waiting: usize,
    /// Extents that needed work but were left for the next round.
    pub deferred: usize,
}

/// An extent to change, by where it lives.
#[derive(Debug, Clone)]
pub struct Target {
    /// Volume name.
    pub volume: String,
    /// Volume uuid.
    pub uuid: String,
    /// Extent index.
    pub index: u64,
    /// The record as last seen (an index entry's copy, written in the same
    /// transaction as the record and so at its revision): saves a read on
    /// the first attempt; a stale one only costs a conflict.
    pub known: Option<Versioned<ExtentRecord>>,
}

impl Target {
    fn of_entry(e: &Versioned<ExtentEntry>) -> Target {
        Target {
            volume: e.value.volume.clone(),
            uuid: e.value.extent.volume_uuid.clone(),
            index: e.value.extent.index,
            known: Some(Versioned {
                value: e.value.extent.clone(),
                mod_rev: e.mod_rev,
            }),
        }
    }

    fn of_ref(r: &ExtentRef) -> Target {
        Target {
            volume: r.volume.clone(),
            uuid: r.volume_uuid.clone(),
            index: r.index,
            known: None,
        }
    }
}

/// The nodes as one decision sees them.
pub struct View<'a> {
    /// Node records by id.
    pub nodes: &'a Nodes,
    /// Ids whose liveness key exists.
    pub alive: &'a HashSet<String>,
}

impl View<'_> {
    /// Up or draining, with a live lease: can serve and copy.
    pub fn live(&self, id: &str) -> bool {
        self.alive.contains(id)
            && self
                .nodes
                .get(id)
                .is_some_and(|n| matches!(n.value.state, NodeState::Up | NodeState::Draining))
    }

    /// Being drained (whatever its liveness).
    pub fn draining(&self, id: &str) -> bool {
        self.nodes
            .get(id)
            .is_some_and(|n| n.value.drain || n.value.state == NodeState::Draining)
    }

    /// The node's recorded state.
    pub fn state(&self, id: &str) -> Option<NodeState> {
        self.nodes.get(id).map(|n| n.value.state)
    }

    fn zone(&self, id: &str) -> &str {
        self.nodes.get(id).map_or("", |n| n.value.zone.as_str())
    }
}

/// One extent after [`MetaService::change_extents`].
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Its position in the targets.
    pub target: usize,
    /// The record now in etcd.
    pub extent: ExtentRecord,
    /// Whether this call changed it.
    pub changed: bool,
}

/// Adds to `txn` the index operations for `new` (of `volume`), which
/// replaces `old` (None for a new extent): index keys of members that left
/// are deleted, every member's is (re)written, and the repair key follows
/// [`ExtentRecord::needs_repair`]. Operations: members of `new` + leavers
/// + 1 when `old` is given (+1 for a new extent that needs repair).
pub fn index_ops(
    txn: &mut Txn,
    volume: &VolumeRecord,
    old: Option<&ExtentRecord>,
    new: &ExtentRecord,
) {
    let (uuid, index) = (&new.volume_uuid, new.index);
    let members: BTreeSet<&String> = new.members().collect();
    if let Some(old) = old {
        let before: BTreeSet<&String> = old.members().collect();
        for gone in before.difference(&members) {
            txn.delete(&keys::node_extent(gone, uuid, index));
        }
    }
    let entry = ExtentEntry::new(volume, new);
    for m in &members {
        txn.put_json(&keys::node_extent(m, uuid, index), &entry);
    }
    if new.needs_repair(volume.replica_count) {
        txn.put_json(&keys::repair(uuid, index), &entry);
    } else if old.is_some() {
        txn.delete(&keys::repair(uuid, index));
    }
}

fn same_members(a: &ExtentRecord, b: &ExtentRecord) -> bool {
    a.replicas == b.replicas && a.learners == b.learners
}

/// How long a node reported failed is avoided for new learners (unless it
/// registers again first).
pub const SUSPECT_FOR: std::time::Duration = std::time::Duration::from_secs(30);

fn failed_precondition(msg: String) -> Status {
    Status::failed_precondition(msg)
}

impl MetaService {
    /// Changes the replicas/learners of `targets` in one transaction under
    /// the write lock: for each, `decide` sees the current record (and its
    /// volume and the nodes) and returns the new membership, or None to
    /// leave it. The generation (extent's and volume's) is bumped, the
    /// nodes' `allocated` follows the members that joined or left, and the
    /// index keys are rewritten. Stops before a target that might not fit
    /// etcd's operation limit: returns the outcomes and how many targets
    /// were dealt with (≥ 1 when any were given). Targets whose volume or
    /// extent no longer exists have no outcome.
    ///
    /// `decide` may run again for a target after a conflict (re-read).
    pub async fn change_extents<F>(
        &self,
        store: &Store,
        what: &str,
        targets: &[Target],
        mut decide: F,
    ) -> Result<(Vec<Outcome>, usize), Status>
    where
        F: FnMut(&View<'_>, &VolumeRecord, &ExtentRecord) -> Result<Option<ExtentRecord>, Status>,
    {
        let max_ops = self.inner.config.max_txn_ops;
        let _w = self.inner.write_lock.lock().await;
        for attempt in 0..MAX_TXN_RETRIES {
            let (nodes, alive) = self.nodes(store).await?;
            let view = View {
                nodes: &nodes,
                alive: &alive,
            };
            let mut volumes: HashMap<String, Option<Versioned<VolumeRecord>>> = HashMap::new();
            let mut outcomes = Vec::new();
            // (old, new, volume name, target position)
            let mut updates: Vec<(Versioned<ExtentRecord>, ExtentRecord, String, usize)> =
                Vec::new();
            let mut touched_volumes: BTreeSet<String> = BTreeSet::new();
            let mut deltas: BTreeMap<String, i128> = BTreeMap::new();
            // The fence compare.
            let (mut ops, mut cmps) = (0usize, 1usize);
            let mut consumed = targets.len();
            // An extent named twice is decided once (etcd refuses two puts
            // of one key in a transaction).
            let mut seen: HashSet<(&str, u64)> = HashSet::new();
            for (i, t) in targets.iter().enumerate() {
                if !seen.insert((t.uuid.as_str(), t.index)) {
                    continue;
                }
                if !volumes.contains_key(&t.volume) {
                    let v = store
                        .get::<VolumeRecord>(&keys::volume(&t.volume))
                        .await
                        .map_err(store_status)?;
                    volumes.insert(t.volume.clone(), v);
                }
                let Some(vol) = volumes[&t.volume]
                    .as_ref()
                    .filter(|v| v.value.uuid == t.uuid)
                else {
                    continue;
                };
                let rec = match (&t.known, attempt) {
                    (Some(k), 0) => k.clone(),
                    _ => match store
                        .get::<ExtentRecord>(&keys::extent(&t.uuid, t.index))
                        .await
                        .map_err(store_status)?
                    {
                        Some(r) => r,
                        None => continue,
                    },
                };
                // The most this extent can cost: every member and every
                // new copy rewritten or deleted, its volume and nodes.
                let rc = vol.value.replica_count as usize;
                let m = rec.value.replicas.len() + rec.value.learners.len();
                let worst_ops = 1 + (m + rc) + m + 1 + 1 + (m + rc);
                let worst_cmps = 1 + 1 + (m + rc);
                if !updates.is_empty() && (ops + worst_ops > max_ops || cmps + worst_cmps > max_ops)
                {
                    consumed = i;
                    break;
                }
                let decided = decide(&view, &vol.value, &rec.value)?;
                let new = match decided {
                    Some(n) if !same_members(&n, &rec.value) => n,
                    _ => {
                        outcomes.push(Outcome {
                            target: i,
                            extent: rec.value.clone(),
                            changed: false,
                        });
                        continue;
                    }
                };
                let before: BTreeSet<&String> = rec.value.members().collect();
                let after: BTreeSet<&String> = new.members().collect();
                let mut new_nodes = 0;
                for gone in before.difference(&after) {
                    if !deltas.contains_key(gone.as_str()) && nodes.contains_key(gone.as_str()) {
                        new_nodes += 1;
                    }
                    *deltas.entry((*gone).clone()).or_default() -=
                        i128::from(vol.value.extent_size);
                }
                for came in after.difference(&before) {
                    if !deltas.contains_key(came.as_str()) && nodes.contains_key(came.as_str()) {
                        new_nodes += 1;
                    }
                    *deltas.entry((*came).clone()).or_default() +=
                        i128::from(vol.value.extent_size);
                }
                let new_volume = usize::from(touched_volumes.insert(t.volume.clone()));
                ops += 1
                    + after.len()
                    + before.difference(&after).count()
                    + 1
                    + new_volume
                    + new_nodes;
                cmps += 1 + new_volume + new_nodes;
                let mut new = new;
                new.generation = rec.value.generation + 1;
                updates.push((rec, new, t.volume.clone(), i));
            }
            if updates.is_empty() {
                return Ok((outcomes, consumed));
            }
            let mut txn = Txn::new(what);
            let mut new_volumes: BTreeMap<String, VolumeRecord> = BTreeMap::new();
            for name in &touched_volumes {
                let Some(v) = volumes.get(name).and_then(|v| v.as_ref()) else {
                    continue;
                };
                let mut nv = v.value.clone();
                nv.generation += 1;
                txn.expect_rev(&keys::volume(name), v.mod_rev)
                    .put_json(&keys::volume(name), &nv);
                new_volumes.insert(name.clone(), nv);
            }
            for (id, delta) in &deltas {
                // A member without a node record (removed behind meta's
                // back) has no space to account.
                let Some(n) = nodes.get(id) else { continue };
                let mut rec = n.value.clone();
                rec.allocated = if *delta >= 0 {
                    rec.allocated.saturating_add(*delta as u64)
                } else {
                    rec.allocated.saturating_sub(delta.unsigned_abs() as u64)
                };
                txn.expect_rev(&keys::node(id), n.mod_rev)
                    .put_json(&keys::node(id), &rec);
            }
            for (old, new, vname, _) in &updates {
                let vol = &new_volumes[vname];
                let key = keys::extent(&new.volume_uuid, new.index);
                txn.expect_rev(&key, old.mod_rev).put_json(&key, new);
                index_ops(&mut txn, vol, Some(&old.value), new);
            }
            match store.commit(txn).await.map_err(store_status)? {
                Commit::Applied(_) => {
                    for (_, new, _, i) in updates {
                        outcomes.push(Outcome {
                            target: i,
                            extent: new,
                            changed: true,
                        });
                    }
                    outcomes.sort_by_key(|o| o.target);
                    return Ok((outcomes, consumed));
                }
                Commit::Conflict => continue,
            }
        }
        Err(conflict_status(what))
    }

    /// Applies `decide` to every target, as many transactions as needed.
    async fn change_all<F>(
        &self,
        store: &Store,
        what: &str,
        targets: &[Target],
        mut decide: F,
    ) -> Result<Vec<Outcome>, Status>
    where
        F: FnMut(&View<'_>, &VolumeRecord, &ExtentRecord) -> Result<Option<ExtentRecord>, Status>,
    {
        let mut all = Vec::new();
        let mut done = 0;
        while done < targets.len() {
            let (outs, consumed) = self
                .change_extents(store, what, &targets[done..], &mut decide)
                .await?;
            all.extend(outs.into_iter().map(|mut o| {
                o.target += done;
                o
            }));
            done += consumed.max(1);
        }
        Ok(all)
    }

    /// Fails with UNAVAILABLE until the extent indexes are complete.
    pub(crate) async fn require_indexes(&self, store: &Store) -> Result<(), Status> {
        if self.inner.indexes_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let marker = store.get_raw(keys::SCHEMA).await.map_err(store_status)?;
        if marker.is_some_and(|(v, _)| v == keys::SCHEMA_VERSION.as_bytes()) {
            self.inner.indexes_ready.store(true, Ordering::Release);
            return Ok(());
        }
        Err(Status::unavailable(
            "the leader is still building the extent indexes; retry shortly",
        ))
    }

    /// Makes the extent indexes match the extent records when etcd does
    /// not say they are complete (data written before issue 5, or an
    /// interrupted build): index keys that are missing or differ are
    /// written (compared on their extent record), stray ones deleted, then
    /// the schema marker is written. Keys that are right are left alone,
    /// so what this leader already wrote keeps its revision. Runs under the
    /// write lock; a no-op once the marker exists.
    pub async fn ensure_indexes(&self, store: &Store) -> Result<(), Status> {
        if self.require_indexes(store).await.is_ok() {
            return Ok(());
        }
        let _w = self.inner.write_lock.lock().await;
        for _ in 0..MAX_TXN_RETRIES {
            if self.reconcile_indexes(store).await? {
                let mut done = Txn::new("mark the extent indexes built");
                done.put_raw(keys::SCHEMA, keys::SCHEMA_VERSION.as_bytes().to_vec(), None);
                store.commit(done).await.map_err(store_status)?;
                self.inner.indexes_ready.store(true, Ordering::Release);
                return Ok(());
            }
        }
        Err(conflict_status("build the extent indexes"))
    }

    /// One pass of [`Self::ensure_indexes`]; false on a conflict.
    async fn reconcile_indexes(&self, store: &Store) -> Result<bool, Status> {
        let max_ops = self.inner.config.max_txn_ops.saturating_sub(2).max(1);
        let volumes = store
            .list::<VolumeRecord>(keys::VOLUMES)
            .await
            .map_err(store_status)?;
        // What the records say the indexes hold.
        let mut want: BTreeMap<String, (Vec<u8>, String, i64)> = BTreeMap::new();
        let mut n_extents = 0;
        for v in &volumes {
            let extents = store
                .list::<ExtentRecord>(&keys::extents(&v.value.uuid))
                .await
                .map_err(store_status)?;
            n_extents += extents.len();
            for e in extents {
                let ekey = keys::extent(&e.value.volume_uuid, e.value.index);
                let entry =
                    serde_json::to_vec(&ExtentEntry::new(&v.value, &e.value)).unwrap_or_default();
                let members: BTreeSet<&String> = e.value.members().collect();
                for m in members {
                    want.insert(
                        keys::node_extent(m, &e.value.volume_uuid, e.value.index),
                        (entry.clone(), ekey.clone(), e.mod_rev),
                    );
                }
                if e.value.needs_repair(v.value.replica_count) {
                    want.insert(
                        keys::repair(&e.value.volume_uuid, e.value.index),
                        (entry.clone(), ekey.clone(), e.mod_rev),
                    );
                }
                let r = ExtentRef {
                    volume: v.value.name.clone(),
                    volume_uuid: v.value.uuid.clone(),
                    index: e.value.index,
                };
                want.insert(
                    keys::extent_id(e.value.id),
                    (serde_json::to_vec(&r).unwrap_or_default(), ekey, e.mod_rev),
                );
            }
        }
        // What they hold.
        let mut have: BTreeMap<String, serde_json::Value> = BTreeMap::new();
        for prefix in [keys::NODE_EXTENTS, keys::REPAIR, keys::EXTENT_IDS] {
            for (k, v) in store
                .list_keyed::<serde_json::Value>(prefix)
                .await
                .map_err(store_status)?
            {
                have.insert(k, v.value);
            }
        }
        let mut puts = Vec::new();
        for (k, (value, ekey, rev)) in &want {
            let same = have.get(k).is_some_and(|h| {
                serde_json::from_slice::<serde_json::Value>(value).is_ok_and(|w| w == *h)
            });
            if !same {
                puts.push((k, value, ekey, *rev));
            }
        }
        let strays: Vec<&String> = have.keys().filter(|k| !want.contains_key(*k)).collect();
        let (n_puts, n_strays) = (puts.len(), strays.len());
        for chunk in strays.chunks(max_ops) {
            let mut txn = Txn::new("drop stray extent index keys");
            for k in chunk {
                txn.delete(k);
            }
            store.commit(txn).await.map_err(store_status)?;
        }
        for chunk in puts.chunks((max_ops / 2).max(1)) {
            let mut txn = Txn::new("write missing extent index keys");
            let mut compared = BTreeSet::new();
            for (k, value, ekey, rev) in chunk {
                if compared.insert(*ekey) {
                    txn.expect_rev(ekey, *rev);
                }
                txn.put_raw(k, value.to_vec(), None);
            }
            if store.commit(txn).await.map_err(store_status)? == Commit::Conflict {
                return Ok(false);
            }
        }
        if n_puts + n_strays > 0 {
            log::info!(
                "extent indexes reconciled with {n_extents} extents of {} volumes: {n_puts} key(s) written, {n_strays} stray key(s) dropped",
                volumes.len()
            );
        }
        Ok(true)
    }

    /// Where extent `id` lives; NOT_FOUND when unknown.
    async fn lookup_extent(&self, store: &Store, id: u64) -> Result<ExtentRef, Status> {
        store
            .get::<ExtentRef>(&keys::extent_id(id))
            .await
            .map_err(store_status)?
            .map(|r| r.value)
            .ok_or_else(|| Status::not_found(format!("extent {id} not found")))
    }

    pub(crate) async fn get_extent_impl(&self, id: u64) -> Result<proto::Extent, Status> {
        let store = self.leader().await?;
        self.require_indexes(&store).await?;
        let r = self.lookup_extent(&store, id).await?;
        match store
            .get::<ExtentRecord>(&keys::extent(&r.volume_uuid, r.index))
            .await
            .map_err(store_status)?
        {
            Some(e) if e.value.id == id => Ok((&e.value).into()),
            _ => Err(Status::not_found(format!(
                "extent {id} not found (volume '{}' was deleted)",
                r.volume
            ))),
        }
    }

    /// Nodes reported failed in the last [`SUSPECT_FOR`] that have not
    /// registered since: picked as learners only when no other node
    /// qualifies (their lease may still be alive while a copy placed there
    /// would fail at once).
    fn recent_suspects(&self) -> HashSet<String> {
        let mut s = self
            .inner
            .suspects
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        s.retain(|_, t| t.elapsed() < SUSPECT_FOR);
        s.keys().cloned().collect()
    }

    /// A node registered again: it may hold learners at once.
    pub(crate) fn clear_suspect(&self, node: &str) {
        self.inner
            .suspects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(node);
    }

    pub(crate) async fn report_replica_failure_impl(
        &self,
        req: proto::ReportReplicaFailureRequest,
    ) -> Result<proto::Extent, Status> {
        validate::name("failed node id", &req.failed_node).map_err(invalid)?;
        validate::name("reporter node id", &req.reporter).map_err(invalid)?;
        let store = self.leader().await?;
        self.require_indexes(&store).await?;
        let id = req.extent_id;
        let r = self.lookup_extent(&store, id).await?;
        let (failed, reporter) = (req.failed_node.as_str(), req.reporter.as_str());
        let what = format!("node '{failed}' failed on extent {id} (reported by '{reporter}')");
        let (mut outs, _) = self
            .change_extents(&store, &what, &[Target::of_ref(&r)], |view, _vol, rec| {
                if !view.live(reporter) {
                    return Err(failed_precondition(format!(
                        "extent {id}: reporter '{reporter}' is not a node with a live lease"
                    )));
                }
                if rec.generation != req.generation {
                    return Ok(None);
                }
                let mut new = rec.clone();
                if let Some(p) = new.learners.iter().position(|l| l == failed) {
                    new.learners.remove(p);
                    return Ok(Some(new));
                }
                if let Some(p) = new.replicas.iter().position(|n| n == failed) {
                    if new.replicas.len() == 1 {
                        return Err(failed_precondition(format!(
                            "extent {id}: node {failed} holds its last copy"
                        )));
                    }
                    new.replicas.remove(p);
                    return Ok(Some(new));
                }
                Ok(None)
            })
            .await?;
        let o = outs.pop().filter(|o| o.extent.id == id).ok_or_else(|| {
            Status::not_found(format!("extent {id} not found (its volume was deleted)"))
        })?;
        if o.changed {
            log::warn!(
                "extent {id} (volume '{}' index {}): node '{failed}' removed on report of '{reporter}'; generation {}, replicas {:?}, learners {:?}",
                r.volume,
                r.index,
                o.extent.generation,
                o.extent.replicas,
                o.extent.learners
            );
            self.forget_progress(id, failed);
            self.inner
                .suspects
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(failed.to_string(), std::time::Instant::now());
        }
        Ok((&o.extent).into())
    }

    pub(crate) async fn complete_resync_impl(
        &self,
        req: proto::CompleteResyncRequest,
    ) -> Result<proto::Extent, Status> {
        validate::name("node id", &req.node).map_err(invalid)?;
        let store = self.leader().await?;
        self.require_indexes(&store).await?;
        let id = req.extent_id;
        let r = self.lookup_extent(&store, id).await?;
        let node = req.node.as_str();
        let what = format!("learner '{node}' of extent {id} caught up");
        let (mut outs, _) = self
            .change_extents(&store, &what, &[Target::of_ref(&r)], |view, vol, rec| {
                if rec.generation != req.generation {
                    return Ok(None);
                }
                let Some(p) = rec.learners.iter().position(|l| l == node) else {
                    if rec.replicas.iter().any(|n| n == node) {
                        return Ok(None);
                    }
                    return Err(failed_precondition(format!(
                        "extent {id}: node '{node}' is not one of its learners ({:?})",
                        rec.learners
                    )));
                };
                if view.state(node) == Some(NodeState::Down) {
                    return Err(failed_precondition(format!(
                        "extent {id}: learner '{node}' is down"
                    )));
                }
                let mut new = rec.clone();
                new.learners.remove(p);
                new.replicas.push(node.to_string());
                drop_surplus_draining(&mut new, vol.replica_count as usize, view, Some(node));
                Ok(Some(new))
            })
            .await?;
        let o = outs.pop().filter(|o| o.extent.id == id).ok_or_else(|| {
            Status::not_found(format!("extent {id} not found (its volume was deleted)"))
        })?;
        if o.changed {
            log::info!(
                "extent {id} (volume '{}' index {}): learner '{node}' joined the replicas; generation {}, replicas {:?}, learners {:?}",
                r.volume,
                r.index,
                o.extent.generation,
                o.extent.replicas,
                o.extent.learners
            );
            self.forget_progress(id, node);
        }
        Ok((&o.extent).into())
    }

    pub(crate) async fn report_resync_progress_impl(
        &self,
        req: proto::ReportResyncProgressRequest,
    ) -> Result<(), Status> {
        validate::name("node id", &req.node).map_err(invalid)?;
        if req.bytes_done > req.bytes_total {
            return Err(invalid(format!(
                "extent {}: resync of '{}' reports {} of {} bytes done",
                req.extent_id, req.node, req.bytes_done, req.bytes_total
            )));
        }
        let store = self.leader().await?;
        self.require_indexes(&store).await?;
        let r = self.lookup_extent(&store, req.extent_id).await?;
        let rec = store
            .get::<ExtentRecord>(&keys::extent(&r.volume_uuid, r.index))
            .await
            .map_err(store_status)?
            .filter(|e| e.value.id == req.extent_id)
            .ok_or_else(|| Status::not_found(format!("extent {} not found", req.extent_id)))?;
        if !rec.value.learners.contains(&req.node) {
            return Err(failed_precondition(format!(
                "extent {}: node '{}' is not one of its learners ({:?})",
                req.extent_id, req.node, rec.value.learners
            )));
        }
        self.inner
            .progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                (req.extent_id, req.node.clone()),
                proto::ResyncProgress {
                    node: req.node,
                    bytes_done: req.bytes_done,
                    bytes_total: req.bytes_total,
                    updated_unix_ms: now_unix_ms(),
                },
            );
        Ok(())
    }

    fn forget_progress(&self, extent: u64, node: &str) {
        self.inner
            .progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(extent, node.to_string()));
    }

    /// Drops all resync progress (this process no longer leads).
    pub fn clear_progress(&self) {
        self.inner
            .progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// The progress of each learner of `e` (zeros where none was reported).
    fn resync_of(&self, e: &ExtentRecord) -> Vec<proto::ResyncProgress> {
        if e.learners.is_empty() {
            return Vec::new();
        }
        let map = self
            .inner
            .progress
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        e.learners
            .iter()
            .map(|l| {
                map.get(&(e.id, l.clone()))
                    .cloned()
                    .unwrap_or_else(|| proto::ResyncProgress {
                        node: l.clone(),
                        ..Default::default()
                    })
            })
            .collect()
    }

    pub(crate) async fn list_node_extents_impl(
        &self,
        req: proto::ListNodeExtentsRequest,
    ) -> Result<proto::ListNodeExtentsResponse, Status> {
        validate::name("node id", &req.node).map_err(invalid)?;
        let store = self.leader().await?;
        self.require_indexes(&store).await?;
        if store
            .get_raw(&keys::node(&req.node))
            .await
            .map_err(store_status)?
            .is_none()
        {
            return Err(Status::not_found(format!(
                "node '{}' is not registered",
                req.node
            )));
        }
        let entries = store
            .list::<ExtentEntry>(&keys::node_extents(&req.node))
            .await
            .map_err(store_status)?;
        let mut resp = proto::ListNodeExtentsResponse {
            extents: Vec::with_capacity(entries.len()),
            volume_names: Vec::with_capacity(entries.len()),
            extent_sizes: Vec::with_capacity(entries.len()),
        };
        for e in entries {
            resp.extents.push((&e.value.extent).into());
            resp.volume_names.push(e.value.volume);
            resp.extent_sizes.push(e.value.extent_size);
        }
        Ok(resp)
    }

    pub(crate) async fn drain_node_impl(&self, id: &str) -> Result<proto::Node, Status> {
        validate::name("node id", id).map_err(invalid)?;
        let store = self.leader().await?;
        let _w = self.inner.write_lock.lock().await;
        for _ in 0..MAX_TXN_RETRIES {
            let key = keys::node(id);
            let node = store
                .get::<NodeRecord>(&key)
                .await
                .map_err(store_status)?
                .ok_or_else(|| Status::not_found(format!("node '{id}' is not registered")))?;
            let alive = store
                .get_raw(&keys::node_alive(id))
                .await
                .map_err(store_status)?
                .is_some();
            let mut rec = node.value.clone();
            rec.drain = true;
            if rec.state == NodeState::Up {
                rec.state = NodeState::Draining;
            }
            if rec == node.value {
                return Ok(rec.to_proto(alive));
            }
            let mut txn = Txn::new(format!("drain node '{id}'"));
            txn.expect_rev(&key, node.mod_rev).put_json(&key, &rec);
            if let Commit::Applied(_) = store.commit(txn).await.map_err(store_status)? {
                log::info!(
                    "node '{id}' is draining (was {:?}); its replicas move to other nodes",
                    node.value.state
                );
                return Ok(rec.to_proto(alive));
            }
        }
        Err(conflict_status(&format!("drain node '{id}'")))
    }

    pub(crate) async fn remove_node_impl(&self, id: &str) -> Result<(), Status> {
        validate::name("node id", id).map_err(invalid)?;
        let store = self.leader().await?;
        self.require_indexes(&store).await?;
        let _w = self.inner.write_lock.lock().await;
        for _ in 0..MAX_TXN_RETRIES {
            let key = keys::node(id);
            let node = store
                .get::<NodeRecord>(&key)
                .await
                .map_err(store_status)?
                .ok_or_else(|| Status::not_found(format!("node '{id}' is not registered")))?;
            let held = store
                .count(&keys::node_extents(id))
                .await
                .map_err(store_status)?;
            if held > 0 {
                return Err(failed_precondition(format!(
                    "node '{id}' still holds {held} replica(s) or learner(s); drain it first (node_drain) and wait until it is empty"
                )));
            }
            let mut txn = Txn::new(format!("remove node '{id}'"));
            txn.expect_rev(&key, node.mod_rev)
                .expect_empty_prefix(&keys::node_extents(id))
                .delete(&key)
                .delete(&keys::node_alive(id));
            if let Commit::Applied(_) = store.commit(txn).await.map_err(store_status)? {
                if node.value.lease_id != 0 {
                    let _ = self
                        .inner
                        .client
                        .lease_client()
                        .revoke(node.value.lease_id)
                        .await;
                }
                log::info!("removed node '{id}' (was {:?})", node.value.state);
                return Ok(());
            }
        }
        Err(conflict_status(&format!("remove node '{id}'")))
    }

    /// Removes every down node from the extents it is on (one transaction
    /// per batch; generation bumped each), except where it holds the last
    /// replica. Runs every monitor tick, so a new leader finishes what an
    /// old one started. Returns how many extents changed.
    pub async fn evict_down_nodes(&self, store: &Store) -> Result<usize, Status> {
        self.require_indexes(store).await?;
        let (nodes, _) = self.nodes(store).await?;
        let mut changed = 0;
        for n in nodes.values().filter(|n| n.value.state == NodeState::Down) {
            let id = n.value.id.as_str();
            let entries = store
                .list::<ExtentEntry>(&keys::node_extents(id))
                .await
                .map_err(store_status)?;
            let targets: Vec<Target> = entries
                .iter()
                .filter(|e| {
                    let x = &e.value.extent;
                    x.learners.iter().any(|l| l == id) || x.replicas.len() > 1
                })
                .map(Target::of_entry)
                .collect();
            if targets.is_empty() {
                continue;
            }
            let started = std::time::Instant::now();
            let what = format!("remove down node '{id}' from its extents");
            let outs = self
                .change_all(store, &what, &targets, |view, _vol, rec| {
                    // It registered again meanwhile: it stays.
                    if view.state(id) != Some(NodeState::Down) {
                        return Ok(None);
                    }
                    let mut new = rec.clone();
                    new.learners.retain(|l| l != id);
                    if new.replicas.len() > 1 {
                        new.replicas.retain(|r| r != id);
                    }
                    Ok(Some(new))
                })
                .await?;
            let n_changed = outs.iter().filter(|o| o.changed).count();
            for o in outs.iter().filter(|o| o.changed) {
                self.forget_progress(o.extent.id, id);
            }
            changed += n_changed;
            let last_copies = entries.len() - targets.len();
            log::warn!(
                "node '{id}' is down: removed from {n_changed} extent(s) in {:.0} ms (generation bumped each){}",
                started.elapsed().as_secs_f64() * 1000.0,
                if last_copies > 0 {
                    format!("; {last_copies} extent(s) keep their only replica on it and are unavailable")
                } else {
                    String::new()
                }
            );
        }
        Ok(changed)
    }

    /// Deletes the extent id keys of deleted volumes (their tombstones say
    /// which id span to look in), then the tombstones. Returns how many
    /// id keys went.
    pub async fn sweep_deleted_volumes(&self, store: &Store) -> Result<usize, Status> {
        let tombstones = store
            .list::<DeletedVolume>(keys::DELETED_VOLUMES)
            .await
            .map_err(store_status)?;
        let per_txn = self.inner.config.max_txn_ops.saturating_sub(2).max(1);
        let mut removed = 0;
        for t in tombstones {
            let d = &t.value;
            let refs = store
                .list_between::<ExtentRef>(
                    &keys::extent_id(d.first_id),
                    &keys::extent_id(d.last_id.saturating_add(1)),
                )
                .await
                .map_err(store_status)?;
            let mine: Vec<String> = refs
                .into_iter()
                .filter(|(_, r)| r.value.volume_uuid == d.volume_uuid)
                .map(|(k, _)| k)
                .collect();
            for chunk in mine.chunks(per_txn) {
                let mut txn = Txn::new(format!("drop extent ids of deleted volume '{}'", d.volume));
                for k in chunk {
                    txn.delete(k);
                }
                store.commit(txn).await.map_err(store_status)?;
                removed += chunk.len();
            }
            let mut txn = Txn::new(format!("drop the tombstone of volume '{}'", d.volume));
            let key = keys::deleted_volume(&d.volume_uuid);
            txn.expect_rev(&key, t.mod_rev).delete(&key);
            store.commit(txn).await.map_err(store_status)?;
            log::debug!(
                "dropped {} extent id key(s) of deleted volume '{}'",
                mine.len(),
                d.volume
            );
        }
        Ok(removed)
    }
}

impl MetaService {
    /// One round of the re-replication scheduler. Work comes from the
    /// repair index and from the extents of draining nodes:
    ///
    /// - learners on draining nodes are removed, and replicas on draining
    ///   nodes beyond the replica count;
    /// - an extent with fewer `replicas` (not counting draining ones) +
    ///   `learners` than its replica count, and a live primary to fill
    ///   them, gets learners on new nodes (the placement rules: up with a
    ///   live lease, not draining, not holding it, a new zone first with
    ///   failure domain zone, most room; at most
    ///   `max_learners_per_node` learners per node at a time).
    ///
    /// Riskiest first (fewest live replicas). Placement is tried on a
    /// scratch copy first, so extents no node can take are counted and
    /// skipped without costing the round anything; at most
    /// `extents_per_round` extents are then changed.
    pub async fn repair_round(
        &self,
        store: &Store,
        cfg: &RepairConfig,
    ) -> Result<RoundReport, Status> {
        self.require_indexes(store).await?;
        let (nodes, alive) = self.nodes(store).await?;
        let view = View {
            nodes: &nodes,
            alive: &alive,
        };
        let avoid = self.recent_suspects();
        let mut entries: BTreeMap<(String, u64), Versioned<ExtentEntry>> = BTreeMap::new();
        for e in store
            .list::<ExtentEntry>(keys::REPAIR)
            .await
            .map_err(store_status)?
        {
            entries.insert(
                (e.value.extent.volume_uuid.clone(), e.value.extent.index),
                e,
            );
        }
        // Every extent with learners is in the repair index: count them
        // per node, and forget progress of learners that are gone.
        let mut learners_on: HashMap<String, usize> = HashMap::new();
        let mut current: HashSet<(u64, String)> = HashSet::new();
        for e in entries.values() {
            for l in &e.value.extent.learners {
                *learners_on.entry(l.clone()).or_default() += 1;
                current.insert((e.value.extent.id, l.clone()));
            }
        }
        self.inner
            .progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| current.contains(k));
        for n in nodes.values() {
            if !view.draining(&n.value.id) || n.value.state == NodeState::Down {
                continue;
            }
            for e in store
                .list::<ExtentEntry>(&keys::node_extents(&n.value.id))
                .await
                .map_err(store_status)?
            {
                entries
                    .entry((e.value.extent.volume_uuid.clone(), e.value.extent.index))
                    .or_insert(e);
            }
        }

        let placer = Placer::new(
            nodes
                .values()
                .filter(|n| {
                    n.value.state == NodeState::Up && !n.value.drain && alive.contains(&n.value.id)
                })
                .map(|n| Candidate {
                    id: n.value.id.clone(),
                    zone: n.value.zone.clone(),
                    available: n.value.available(),
                })
                .collect(),
        );
        let max_learners = cfg.max_learners_per_node;

        // Plan on the index copies: (live replicas, staying replicas, key),
        // fewest live first.
        let mut report = RoundReport::default();
        let mut ranked: Vec<(usize, usize, (String, u64))> = Vec::new();
        for (k, e) in &entries {
            let x = &e.value.extent;
            let rc = e.value.replica_count as usize;
            let (clean, cleaned) = cleaned(x, rc, &view);
            let short = short_by(&clean, rc, &view) > 0;
            if cleaned == 0 && !short {
                continue;
            }
            if cleaned == 0 && !clean.replicas.first().is_some_and(|p| view.live(p)) {
                report.waiting += 1;
                continue;
            }
            let live = x.replicas.iter().filter(|r| view.live(r)).count();
            ranked.push((live, clean.replicas.len(), k.clone()));
        }
        ranked.sort();
        let mut scratch = placer.clone();
        let mut scratch_learners = learners_on.clone();
        let mut work: Vec<Target> = Vec::new();
        for (_, _, k) in &ranked {
            let e = &entries[k].value;
            let rc = e.replica_count as usize;
            let (clean, cleaned) = cleaned(&e.extent, rc, &view);
            if short_by(&clean, rc, &view) > 0
                && clean.replicas.first().is_some_and(|p| view.live(p))
            {
                let got = pick_learners(
                    &mut scratch,
                    &mut scratch_learners,
                    max_learners,
                    &view,
                    &e.extent,
                    &clean,
                    rc,
                    e.failure_domain,
                    e.extent_size,
                    &avoid,
                );
                if got.is_empty() && cleaned == 0 {
                    report.unplaceable += 1;
                    continue;
                }
            }
            if work.len() >= cfg.extents_per_round {
                report.deferred += 1;
                continue;
            }
            work.push(Target::of_entry(&entries[k]));
        }
        if work.is_empty() {
            return Ok(report);
        }

        let mut placer = placer;
        let (mut added, mut drained) = (0, 0);
        let outs = self
            .change_all(store, "re-replication round", &work, |view, vol, rec| {
                if vol.state != VolumeState::Ready {
                    return Ok(None);
                }
                let rc = vol.replica_count as usize;
                let (mut new, cleaned) = cleaned(rec, rc, view);
                let got = pick_learners(
                    &mut placer,
                    &mut learners_on,
                    max_learners,
                    view,
                    rec,
                    &new,
                    rc,
                    vol.failure_domain,
                    vol.extent_size,
                    &avoid,
                );
                added += got.len();
                drained += cleaned;
                new.learners.extend(got);
                Ok(Some(new))
            })
            .await?;
        report.learners_added = added;
        report.drained = drained;
        for o in outs.iter().filter(|o| o.changed) {
            log::info!(
                "re-replication: extent {} (volume uuid {} index {}): generation {}, replicas {:?}, learners {:?}",
                o.extent.id,
                o.extent.volume_uuid,
                o.extent.index,
                o.extent.generation,
                o.extent.replicas,
                o.extent.learners
            );
        }
        Ok(report)
    }

    /// Health of `vol` from its extent records.
    pub(crate) fn volume_health(
        &self,
        vol: &VolumeRecord,
        records: &[ExtentRecord],
        nodes: &Nodes,
        alive: &HashSet<String>,
    ) -> (proto::VolumeHealth, Vec<proto::ExtentStatus>) {
        let view = View { nodes, alive };
        let mut tally = Tally::new();
        let mut statuses = Vec::with_capacity(records.len());
        for e in records {
            let (state, live) = health::extent_health(e, vol.replica_count, |n| view.live(n));
            let resync = self.resync_of(e);
            tally.add(state, &resync);
            statuses.push(proto::ExtentStatus {
                extent_id: e.id,
                state: state as i32,
                live_replicas: live,
                resync,
            });
        }
        (tally.finish(), statuses)
    }

    /// `volumes` with their health, without reading every extent: only
    /// those in the repair index or on nodes that are not live can be
    /// anything but healthy; the rest are counted.
    pub(crate) async fn volumes_with_health(
        &self,
        store: &Store,
        volumes: Vec<VolumeRecord>,
    ) -> Result<Vec<proto::Volume>, Status> {
        if volumes.is_empty() {
            return Ok(Vec::new());
        }
        let (nodes, alive) = self.nodes(store).await?;
        let view = View {
            nodes: &nodes,
            alive: &alive,
        };
        let ready = self.require_indexes(store).await.is_ok();
        let mut suspects: HashMap<String, BTreeMap<u64, ExtentRecord>> = HashMap::new();
        if ready {
            let mut add = |e: ExtentEntry| {
                suspects
                    .entry(e.extent.volume_uuid.clone())
                    .or_default()
                    .insert(e.extent.index, e.extent);
            };
            for e in store
                .list::<ExtentEntry>(keys::REPAIR)
                .await
                .map_err(store_status)?
            {
                add(e.value);
            }
            for n in nodes.keys().filter(|n| !view.live(n)) {
                for e in store
                    .list::<ExtentEntry>(&keys::node_extents(n))
                    .await
                    .map_err(store_status)?
                {
                    add(e.value);
                }
            }
        }
        let mut out = Vec::with_capacity(volumes.len());
        for v in volumes {
            let mut pv: proto::Volume = (&v).into();
            if ready {
                let total = store
                    .count(&keys::extents(&v.uuid))
                    .await
                    .map_err(store_status)?;
                let mut tally = Tally::new();
                let mine = suspects.remove(&v.uuid).unwrap_or_default();
                for e in mine.values() {
                    let (state, _) = health::extent_health(e, v.replica_count, |n| view.live(n));
                    tally.add(state, &self.resync_of(e));
                }
                tally.add_n(
                    proto::ExtentHealth::Healthy,
                    total.saturating_sub(mine.len() as u64),
                );
                pv.health = Some(tally.finish());
            }
            out.push(pv);
        }
        Ok(out)
    }

    /// The nodes with their replica and learner counts and resync
    /// progress.
    pub(crate) async fn nodes_with_counts(
        &self,
        store: &Store,
        nodes: &Nodes,
        alive: &HashSet<String>,
    ) -> Result<Vec<proto::Node>, Status> {
        let ready = self.require_indexes(store).await.is_ok();
        let mut learners: HashMap<String, (u64, u64, u64)> = HashMap::new();
        if ready {
            for e in store
                .list::<ExtentEntry>(keys::REPAIR)
                .await
                .map_err(store_status)?
            {
                for p in self.resync_of(&e.value.extent) {
                    let c = learners.entry(p.node).or_default();
                    c.0 += 1;
                    c.1 += p.bytes_done;
                    c.2 += p.bytes_total;
                }
            }
        }
        let mut out = Vec::with_capacity(nodes.len());
        for n in nodes.values() {
            let mut pn = n.value.to_proto(alive.contains(&n.value.id));
            if ready {
                let total = store
                    .count(&keys::node_extents(&n.value.id))
                    .await
                    .map_err(store_status)?;
                let (l, done, of) = learners.get(&n.value.id).copied().unwrap_or_default();
                pn.learners = l;
                pn.replicas = total.saturating_sub(l);
                pn.resync_bytes_done = done;
                pn.resync_bytes_total = of;
            }
            out.push(pn);
        }
        Ok(out)
    }
}

/// `e` without learners on draining nodes and without replicas on
/// draining nodes beyond `replica_count`, and how many copies went.
fn cleaned(e: &ExtentRecord, replica_count: usize, view: &View<'_>) -> (ExtentRecord, usize) {
    let mut new = e.clone();
    new.learners.retain(|l| !view.draining(l));
    drop_surplus_draining(&mut new, replica_count, view, None);
    let gone = e.learners.len() - new.learners.len() + e.replicas.len() - new.replicas.len();
    (new, gone)
}

/// How many copies `e` lacks: the replica count minus its replicas on
/// nodes not being drained and its learners.
fn short_by(e: &ExtentRecord, replica_count: usize, view: &View<'_>) -> usize {
    let staying = e.replicas.iter().filter(|r| !view.draining(r)).count();
    replica_count.saturating_sub(staying + e.learners.len())
}

/// Chooses nodes for the copies `clean` (the extent after clean-up) lacks,
/// when its primary is live: never one of `original`'s members, never a
/// node already filling `max_learners` learners, a new zone first. Takes
/// the space from `placer` and counts the learners.
#[allow(clippy::too_many_arguments)]
fn pick_learners(
    placer: &mut Placer,
    learners_on: &mut HashMap<String, usize>,
    max_learners: usize,
    view: &View<'_>,
    original: &ExtentRecord,
    clean: &ExtentRecord,
    replica_count: usize,
    domain: crate::records::FailureDomain,
    extent_size: u64,
    avoid: &HashSet<String>,
) -> Vec<String> {
    let mut need = short_by(clean, replica_count, view);
    if need == 0 || !clean.replicas.first().is_some_and(|p| view.live(p)) {
        return Vec::new();
    }
    let mut zones: Vec<String> = clean
        .replicas
        .iter()
        .filter(|r| !view.draining(r))
        .chain(clean.learners.iter())
        .map(|n| view.zone(n).to_string())
        .collect();
    let mut exclude: HashSet<String> = original.members().cloned().collect();
    exclude.extend(
        learners_on
            .iter()
            .filter(|(_, c)| **c >= max_learners)
            .map(|(n, _)| n.clone()),
    );
    let mut got = Vec::new();
    while need > 0 {
        let zs: Vec<&str> = zones.iter().map(String::as_str).collect();
        // Nodes recently reported failed are a last resort: their lease may
        // still be alive while they cannot take a copy.
        let preferred: HashSet<&str> = exclude
            .iter()
            .chain(avoid.iter())
            .map(String::as_str)
            .collect();
        let any: HashSet<&str> = exclude.iter().map(String::as_str).collect();
        let chosen = match placer.place_more(1, domain, extent_size, &preferred, &zs) {
            Ok(c) if !c.is_empty() => Ok(c),
            _ => placer.place_more(1, domain, extent_size, &any, &zs),
        };
        let Ok(mut chosen) = chosen else {
            break;
        };
        let Some(n) = chosen.pop() else { break };
        *learners_on.entry(n.clone()).or_default() += 1;
        zones.push(view.zone(&n).to_string());
        exclude.insert(n.clone());
        got.push(n);
        need -= 1;
    }
    got
}

/// Removes replicas on draining nodes (never `keep`, never below
/// `replica_count`) while there are more than `replica_count`.
fn drop_surplus_draining(
    e: &mut ExtentRecord,
    replica_count: usize,
    view: &View<'_>,
    keep: Option<&str>,
) {
    while e.replicas.len() > replica_count {
        let Some(p) = e
            .replicas
            .iter()
            .position(|r| view.draining(r) && Some(r.as_str()) != keep)
        else {
            break;
        };
        e.replicas.remove(p);
    }
}
