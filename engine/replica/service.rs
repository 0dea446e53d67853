//! A node's side of replication.
//!
//! # Writes
//! The volume client sends a write to the extent's primary. The primary
//! takes the range lock, writes locally and forwards the write to the other
//! replicas and to the learners in parallel, and acknowledges when every one
//! of them has it durably. A replica or learner that fails is reported to
//! meta, which removes it (bumping the generation); the write is then
//! acknowledged if at least `min_replicas` replicas have it. Never with
//! fewer: then it fails with `Unavailable` and the client retries or gives up.
//!
//! # Generations
//! Every request carries the extent's generation. A request older than the
//! receiver's view is refused (`StaleGeneration`); a newer one makes the
//! receiver ask meta first. Membership changes only through meta.
//!
//! # Reads and read leases
//! A replica serves reads only while its membership was confirmed with meta
//! within [`ServiceConfig::read_lease`] (by the periodic poll). When the
//! primary has a replica removed, it waits one read lease before it
//! acknowledges the write that replica missed, so a removed replica has
//! stopped serving reads by then: no stale read is ever served. A sole copy
//! needs no lease (nobody else can take it over). A node that restarts
//! knows no extent until its first poll.
//!
//! # Repair
//! A checksum error at the primary is served from another replica and the
//! bad copy rewritten; at a secondary, the client reads from the primary and
//! asks it to push a good copy back (`Repair`).

use super::proto::{self, ExtentCtx, Frame, Header, Op, Status, FLAG_DEALLOCATE};
use super::server::{Answer, Handler};
use super::transport::{Request, Transport, TransportError};
use crate::bdev::DmaBuf;
use crate::rt;
use crate::store::ChunkStore;
use crate::volume::local::{LocalStoreIo, Target};
use crate::volume::IoError;
use prost::Message;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// An extent's placement as meta records it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExtentRecord {
    pub id: u64,
    pub index: u64,
    /// Replica node ids; the first is the primary.
    pub replicas: Vec<String>,
    /// Nodes being filled by the primary.
    pub learners: Vec<String>,
    pub generation: u64,
}

impl ExtentRecord {
    pub fn primary(&self) -> Option<&str> {
        self.replicas.first().map(String::as_str)
    }
}

/// An extent placed on this node, as the node poll returns it.
#[derive(Debug, Clone)]
pub struct PlacedExtent {
    pub record: ExtentRecord,
    pub volume: String,
    pub extent_size: u64,
}

/// Why meta refused a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaRefusal {
    /// The node holds the extent's last copy: meta keeps it.
    LastCopy(String),
    /// Meta could not be reached or failed.
    Unavailable(String),
}

/// What replication needs from the meta service (over `MetaLink` in
/// `ferrited`). Calls may park.
pub trait ReplicaMeta: Send + Sync {
    fn list_node_extents(&self, node: &str) -> Result<Vec<PlacedExtent>, String>;
    fn get_extent(&self, id: u64) -> Result<ExtentRecord, String>;
    fn report_failure(
        &self,
        id: u64,
        generation: u64,
        failed: &str,
        reporter: &str,
    ) -> Result<ExtentRecord, MetaRefusal>;
    fn complete_resync(&self, id: u64, generation: u64, node: &str)
        -> Result<ExtentRecord, String>;
    fn report_progress(&self, id: u64, node: &str, done: u64, total: u64);
    /// Node id → replica address, for every known node.
    fn replica_addresses(&self) -> Result<HashMap<String, String>, String>;
}

/// Tunables.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    pub node_id: String,
    pub read_lease: Duration,
    pub poll_every: Duration,
    /// Bytes per resync message.
    pub resync_chunk: u64,
    /// Polls an extent must be absent from meta's list before its local copy
    /// is deleted.
    pub gc_after_polls: u32,
}

impl ServiceConfig {
    pub fn new(node_id: &str) -> Self {
        Self {
            node_id: node_id.to_string(),
            read_lease: Duration::from_secs(2),
            poll_every: Duration::from_millis(500),
            resync_chunk: 1 << 20,
            gc_after_polls: 4,
        }
    }
}

/// Counters of replication, readable over JSON-RPC and Prometheus.
#[derive(Default, Debug)]
pub struct ReplicaStats {
    pub forwarded: AtomicU64,
    pub forward_failures: AtomicU64,
    pub failures_reported: AtomicU64,
    pub stale_refused: AtomicU64,
    pub checksum_errors: AtomicU64,
    pub repairs: AtomicU64,
    pub resync_bytes: AtomicU64,
    pub resyncs_completed: AtomicU64,
    pub extents_collected: AtomicU64,
}

/// Why a replica operation did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaError {
    /// A protocol refusal (stale, not primary, not a replica, unavailable).
    Refused(Status, String),
    /// The I/O itself failed.
    Io(IoError),
    /// The peer could not be reached.
    Transport(TransportError),
}

impl From<IoError> for ReplicaError {
    fn from(e: IoError) -> Self {
        ReplicaError::Io(e)
    }
}

#[derive(Clone, Debug)]
struct ExtentView {
    rec: ExtentRecord,
    volume: String,
    extent_size: u64,
    /// When (before the meta call) membership was last confirmed.
    confirmed: Instant,
}

/// The node's replication service.
pub struct ReplicaService {
    cfg: ServiceConfig,
    local: Arc<LocalStoreIo>,
    meta: Arc<dyn ReplicaMeta>,
    transport: Arc<dyn Transport>,
    view: RwLock<HashMap<u64, ExtentView>>,
    addrs: RwLock<HashMap<String, String>>,
    last_poll: Mutex<Option<Instant>>,
    resyncing: Mutex<HashSet<(u64, String)>>,
    gc_candidates: Mutex<HashMap<u64, u32>>,
    stop: AtomicBool,
    pub stats: ReplicaStats,
}

fn io_status(e: &IoError) -> (Status, u32) {
    match e {
        IoError::Checksum { .. } => (Status::Checksum, 0),
        IoError::NoSpace { .. } => (Status::NoSpace, 0),
        IoError::OutOfRange { .. } | IoError::Misaligned { .. } => (Status::OutOfRange, 0),
        IoError::CompareMismatch { .. } => (Status::CompareMismatch, 0),
        IoError::Unavailable { .. } => (Status::Unavailable, 0),
        _ => (Status::IoError, 0),
    }
}

impl ReplicaService {
    pub fn new(
        cfg: ServiceConfig,
        store: Arc<ChunkStore>,
        meta: Arc<dyn ReplicaMeta>,
        transport: Arc<dyn Transport>,
    ) -> Arc<Self> {
        Arc::new(Self {
            cfg,
            local: LocalStoreIo::new(store),
            meta,
            transport,
            view: RwLock::new(HashMap::new()),
            addrs: RwLock::new(HashMap::new()),
            last_poll: Mutex::new(None),
            resyncing: Mutex::new(HashSet::new()),
            gc_candidates: Mutex::new(HashMap::new()),
            stop: AtomicBool::new(false),
            stats: ReplicaStats::default(),
        })
    }

    pub fn node_id(&self) -> &str {
        &self.cfg.node_id
    }

    pub fn local(&self) -> &Arc<LocalStoreIo> {
        &self.local
    }

    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.transport
    }

    pub fn meta(&self) -> &Arc<dyn ReplicaMeta> {
        &self.meta
    }

    /// Whether this node confirmed its view with meta recently enough to
    /// serve reads of replicated extents.
    pub fn confirmed_recently(&self, within: Duration) -> bool {
        self.last_poll
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|t| t.elapsed() < within)
            .unwrap_or(false)
    }

    /// The replica address of a node (refreshing the table once if unknown).
    pub fn addr_of(&self, node: &str) -> Option<String> {
        if let Some(a) = self
            .addrs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(node)
        {
            return Some(a.clone());
        }
        if let Ok(m) = self.meta.replica_addresses() {
            *self.addrs.write().unwrap_or_else(|e| e.into_inner()) = m;
        }
        self.addrs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(node)
            .cloned()
    }

    fn remember(
        &self,
        rec: &ExtentRecord,
        volume: Option<&str>,
        extent_size: Option<u64>,
        confirmed: Instant,
    ) -> ExtentView {
        let mut view = self.view.write().unwrap_or_else(|e| e.into_inner());
        let entry = view.get(&rec.id).cloned();
        let v = ExtentView {
            rec: rec.clone(),
            volume: volume
                .map(str::to_string)
                .or_else(|| entry.as_ref().map(|e| e.volume.clone()))
                .unwrap_or_default(),
            extent_size: extent_size
                .or_else(|| entry.as_ref().map(|e| e.extent_size))
                .unwrap_or(0),
            confirmed,
        };
        match entry {
            Some(old) if old.rec.generation > rec.generation => old,
            _ => {
                view.insert(rec.id, v.clone());
                v
            }
        }
    }

    /// The view of extent `id` at generation `gen` or newer, asking meta
    /// when this node's view is older or missing.
    fn view_at(
        &self,
        id: u64,
        gen: u64,
        ctx: Option<&ExtentCtx>,
    ) -> Result<ExtentView, ReplicaError> {
        if let Some(v) = self.view.read().unwrap_or_else(|e| e.into_inner()).get(&id) {
            if v.rec.generation >= gen {
                return Ok(v.clone());
            }
        }
        let t0 = Instant::now();
        let rec = self.meta.get_extent(id).map_err(|e| {
            ReplicaError::Refused(
                Status::Unavailable,
                format!("extent {id}: asking meta: {e}"),
            )
        })?;
        let v = self.remember(
            &rec,
            ctx.map(|c| c.volume.as_str()),
            ctx.map(|c| c.extent_size),
            t0,
        );
        if v.extent_size == 0 {
            return Err(ReplicaError::Refused(
                Status::BadRequest,
                format!("extent {id}: size unknown (no context in the request)"),
            ));
        }
        Ok(v)
    }

    fn target<'a>(v: &'a ExtentView) -> Target<'a> {
        Target {
            volume: &v.volume,
            extent: v.rec.id,
            index: v.rec.index,
            extent_size: v.extent_size,
        }
    }

    /// The latest known record of an extent (asking meta if unknown).
    pub fn record(&self, id: u64, at_least: u64) -> Result<ExtentRecord, ReplicaError> {
        self.view_at(id, at_least, None)
            .map(|v| v.rec)
            .or_else(|_| {
                self.meta
                    .get_extent(id)
                    .map_err(|e| ReplicaError::Refused(Status::Unavailable, e))
            })
    }

    /// Reports that `failed` did not get a write or could not be reached;
    /// returns the new record.
    pub fn report_failure(
        &self,
        id: u64,
        gen: u64,
        failed: &str,
    ) -> Result<ExtentRecord, MetaRefusal> {
        self.stats.failures_reported.fetch_add(1, Relaxed);
        let t0 = Instant::now();
        let rec = self
            .meta
            .report_failure(id, gen, failed, &self.cfg.node_id)?;
        log::warn!(
            "replica: extent {id}: node {failed} reported failed; now generation {} replicas {:?}",
            rec.generation,
            rec.replicas
        );
        self.remember(&rec, None, None, t0);
        Ok(rec)
    }

    // ------------------------------------------------------------------
    // The primary.

    /// Writes as the primary: local and every other replica and learner.
    /// With `shared` (the same bytes in a DMA buffer), the local copy takes
    /// its blocks without copying them.
    pub fn write_as_primary(
        &self,
        id: u64,
        gen: u64,
        ctx: &ExtentCtx,
        offset: u64,
        data: &[u8],
        shared: Option<&Arc<DmaBuf>>,
    ) -> Result<(), ReplicaError> {
        self.primary_op(
            id,
            gen,
            ctx,
            offset,
            data.len() as u64,
            Op::Replicate,
            0,
            data,
            |local, t| match shared {
                Some(d) => local.write_locked_shared(t, offset, d),
                None => local.write_locked(t, offset, data),
            },
        )
    }

    /// Zeroes as the primary.
    pub fn zero_as_primary(
        &self,
        id: u64,
        gen: u64,
        ctx: &ExtentCtx,
        offset: u64,
        len: u64,
        deallocate: bool,
    ) -> Result<(), ReplicaError> {
        let flags = if deallocate { FLAG_DEALLOCATE } else { 0 };
        self.primary_op(
            id,
            gen,
            ctx,
            offset,
            len,
            Op::ZeroReplica,
            flags,
            &[],
            |local, t| local.zero_locked(t, offset, len, deallocate),
        )
    }

    /// Compare-and-write as the primary (atomic under the range lock).
    pub fn compare_and_write_as_primary(
        &self,
        id: u64,
        gen: u64,
        ctx: &ExtentCtx,
        offset: u64,
        compare: &[u8],
        write: &[u8],
    ) -> Result<(), ReplicaError> {
        self.primary_op(
            id,
            gen,
            ctx,
            offset,
            write.len() as u64,
            Op::Replicate,
            0,
            write,
            |local, t| local.compare_and_write_locked(t, offset, compare, write),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn primary_op(
        &self,
        id: u64,
        gen: u64,
        ctx: &ExtentCtx,
        offset: u64,
        len: u64,
        fwd_op: Op,
        fwd_flags: u16,
        payload: &[u8],
        local_op: impl FnOnce(&LocalStoreIo, Target<'_>) -> Result<(), IoError>,
    ) -> Result<(), ReplicaError> {
        let v = self.view_at(id, gen, Some(ctx))?;
        if v.rec.generation > gen {
            self.stats.stale_refused.fetch_add(1, Relaxed);
            return Err(ReplicaError::Refused(
                Status::StaleGeneration,
                format!(
                    "extent {id}: generation {gen} is older than {}",
                    v.rec.generation
                ),
            ));
        }
        if v.rec.primary() != Some(self.cfg.node_id.as_str()) {
            return Err(ReplicaError::Refused(
                Status::NotPrimary,
                format!("extent {id}: primary is {:?}", v.rec.primary()),
            ));
        }
        // Never write what could not be acknowledged: with fewer replicas
        // than the pool's minimum, nothing is written at all.
        let min = ctx_min_replicas(ctx, &v.rec);
        if (v.rec.replicas.len() as u32) < min {
            return Err(ReplicaError::Refused(
                Status::Unavailable,
                format!(
                    "extent {id}: {} replica(s) left, the pool needs {min} for a write",
                    v.rec.replicas.len()
                ),
            ));
        }
        let _lock = self.local.lock_range(id, offset, len);
        // Local first: a compare that fails must forward nothing.
        local_op(&self.local, Self::target(&v))?;
        let targets: Vec<String> = v
            .rec
            .replicas
            .iter()
            .skip(1)
            .chain(v.rec.learners.iter())
            .cloned()
            .collect();
        if targets.is_empty() {
            return Ok(());
        }
        let data: Rc<Vec<u8>> = Rc::new(payload.to_vec());
        let body = Rc::new(ctx.encode_to_vec());
        let mut joins = Vec::with_capacity(targets.len());
        for node in &targets {
            let addr = self.addr_of(node);
            let (transport, data, body, node) = (
                self.transport.clone(),
                data.clone(),
                body.clone(),
                node.clone(),
            );
            let header = Header {
                op: fwd_op as u8,
                flags: fwd_flags,
                extent: id,
                generation: v.rec.generation,
                offset,
                aux: len as u32,
                ..Default::default()
            };
            joins.push(rt::spawn(move || {
                let Some(addr) = addr else {
                    let why = format!("no replica address known for node {node}");
                    return (node, Err(why));
                };
                match transport.call(
                    &addr,
                    Request {
                        header,
                        body: (*body).clone(),
                        payload: &data,
                    },
                ) {
                    Ok(f) if f.header.status == Status::Ok as i32 => (node, Ok(())),
                    Ok(f) => (
                        node,
                        Err(format!(
                            "{:?}: {}",
                            Status::from_i32(f.header.status),
                            f.error_message()
                        )),
                    ),
                    Err(e) => (node, Err(e.to_string())),
                }
            }));
        }
        self.stats
            .forwarded
            .fetch_add(targets.len() as u64, Relaxed);
        let mut failed = Vec::new();
        for j in joins {
            match j.join() {
                Ok((_, Ok(()))) => {}
                Ok((node, Err(why))) => {
                    log::warn!("replica: extent {id}: forwarding to {node} failed: {why}");
                    failed.push(node);
                }
                Err(e) => {
                    return Err(ReplicaError::Refused(
                        Status::IoError,
                        format!("forwarding coroutine failed: {e}"),
                    ))
                }
            }
        }
        if failed.is_empty() {
            return Ok(());
        }
        self.stats
            .forward_failures
            .fetch_add(failed.len() as u64, Relaxed);
        // Have meta drop the nodes that missed the write, then count copies.
        let mut rec = v.rec.clone();
        let mut removed_replica = false;
        for node in &failed {
            if !rec.replicas.contains(node) && !rec.learners.contains(node) {
                continue;
            }
            let was_replica = rec.replicas.contains(node);
            match self.report_failure(id, rec.generation, node) {
                Ok(r) => {
                    removed_replica |= was_replica && !r.replicas.contains(node);
                    rec = r;
                }
                Err(MetaRefusal::LastCopy(m)) | Err(MetaRefusal::Unavailable(m)) => {
                    return Err(ReplicaError::Refused(Status::Unavailable, format!("extent {id}: node {node} missed a write and meta could not drop it: {m}")));
                }
            }
        }
        if failed.iter().any(|n| rec.replicas.contains(n)) {
            return Err(ReplicaError::Refused(
                Status::Unavailable,
                format!(
                    "extent {id}: replicas {failed:?} missed the write and are still in the set"
                ),
            ));
        }
        if (rec.replicas.len() as u32) < min {
            return Err(ReplicaError::Refused(
                Status::Unavailable,
                format!(
                    "extent {id}: only {} replica(s) have the write; the pool needs {min}",
                    rec.replicas.len()
                ),
            ));
        }
        if removed_replica {
            // The removed replica may still be within its read lease: once
            // it has run out, it can no longer serve the data this write
            // replaces.
            rt::sleep(self.cfg.read_lease);
        }
        Ok(())
    }

    // ------------------------------------------------------------------
    // Replicas and learners.

    fn check_member(
        &self,
        id: u64,
        gen: u64,
        ctx: Option<&ExtentCtx>,
        learner_ok: bool,
    ) -> Result<ExtentView, ReplicaError> {
        let v = self.view_at(id, gen, ctx)?;
        if v.rec.generation > gen {
            self.stats.stale_refused.fetch_add(1, Relaxed);
            return Err(ReplicaError::Refused(
                Status::StaleGeneration,
                format!(
                    "extent {id}: generation {gen} is older than {}",
                    v.rec.generation
                ),
            ));
        }
        let me = &self.cfg.node_id;
        if !(v.rec.replicas.contains(me) || (learner_ok && v.rec.learners.contains(me))) {
            return Err(ReplicaError::Refused(
                Status::NotReplica,
                format!("extent {id}: node {me} holds no replica at generation {gen}"),
            ));
        }
        Ok(v)
    }

    fn replicated_write(&self, f: &Frame) -> Result<(), ReplicaError> {
        let h = f.header;
        let ctx = f.ctx();
        let v = self.check_member(h.extent, h.generation, ctx.as_ref(), true)?;
        let _lock = self.local.lock_range(
            h.extent,
            h.offset,
            f.payload.len().max(h.aux as usize) as u64,
        );
        let t = Self::target(&v);
        match Op::from_u8(h.op) {
            Some(Op::ZeroReplica) => {
                self.local
                    .zero_locked(t, h.offset, h.aux as u64, h.flags & FLAG_DEALLOCATE != 0)?
            }
            _ => {
                self.local.write_locked(t, h.offset, &f.payload)?;
                if h.op == Op::Resync as u8 {
                    self.stats
                        .resync_bytes
                        .fetch_add(f.payload.len() as u64, Relaxed);
                }
            }
        }
        Ok(())
    }

    /// Reads this node's copy, if it may serve reads now. `peer` reads (from
    /// the primary, for repair) skip the lease: the primary holds one.
    pub fn read_local(
        &self,
        id: u64,
        gen: u64,
        ctx: Option<&ExtentCtx>,
        offset: u64,
        buf: &mut [u8],
        peer: bool,
    ) -> Result<(), ReplicaError> {
        // A view older than the reader's, or none: meta's answer is a fresh
        // confirmation of membership (its lease starts before the call).
        let v = self.view_at(id, gen, ctx)?;
        let me = &self.cfg.node_id;
        if !v.rec.replicas.contains(me) {
            return Err(ReplicaError::Refused(
                Status::NotReplica,
                format!("extent {id}: node {me} is not a replica"),
            ));
        }
        let sole = v.rec.replicas.len() == 1 && v.rec.learners.is_empty();
        if !peer && !sole && v.confirmed.elapsed() >= self.cfg.read_lease {
            return Err(ReplicaError::Refused(
                Status::Unavailable,
                format!(
                    "extent {id}: read lease expired (meta not confirmed for {:?})",
                    v.confirmed.elapsed()
                ),
            ));
        }
        match self.local.read_at(Self::target(&v), offset, buf) {
            Err(IoError::Checksum { .. }) if v.rec.primary() == Some(me.as_str()) && !peer => {
                self.stats.checksum_errors.fetch_add(1, Relaxed);
                self.repair_from_peers(&v, offset, buf)
            }
            Err(e @ IoError::Checksum { .. }) => {
                self.stats.checksum_errors.fetch_add(1, Relaxed);
                Err(ReplicaError::Io(e))
            }
            r => r.map_err(ReplicaError::Io),
        }
    }

    /// The primary's copy failed its checksum: read a good copy from another
    /// replica, rewrite ours, answer with it.
    fn repair_from_peers(
        &self,
        v: &ExtentView,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), ReplicaError> {
        let id = v.rec.id;
        for node in v.rec.replicas.iter().skip(1) {
            let Some(addr) = self.addr_of(node) else {
                continue;
            };
            let header = Header {
                op: Op::Read as u8,
                extent: id,
                generation: v.rec.generation,
                offset,
                aux: buf.len() as u32,
                flags: proto::FLAG_PEER_READ,
                ..Default::default()
            };
            match self.transport.call(
                &addr,
                Request {
                    header,
                    body: Vec::new(),
                    payload: &[],
                },
            ) {
                Ok(f) if f.header.status == Status::Ok as i32 && f.payload.len() == buf.len() => {
                    buf.copy_from_slice(&f.payload);
                    let _lock = self.local.lock_range(id, offset, buf.len() as u64);
                    self.local.write_locked(Self::target(v), offset, buf)?;
                    self.stats.repairs.fetch_add(1, Relaxed);
                    log::warn!("replica: extent {id}: repaired {} bytes at offset {offset} from node {node}", buf.len());
                    return Ok(());
                }
                Ok(f) => log::warn!(
                    "replica: extent {id}: node {node} could not serve a repair read: {}",
                    f.error_message()
                ),
                Err(e) => log::warn!("replica: extent {id}: repair read from {node}: {e}"),
            }
        }
        Err(ReplicaError::Io(IoError::Checksum {
            volume: v.volume.clone(),
            extent: id,
            offset: v.rec.index * v.extent_size + offset,
        }))
    }

    /// At the primary: push a good copy of a range back to `requester`.
    fn push_repair(
        &self,
        id: u64,
        gen: u64,
        offset: u64,
        len: u64,
        requester: &str,
    ) -> Result<(), ReplicaError> {
        let v = self.view_at(id, gen, None)?;
        if v.rec.primary() != Some(self.cfg.node_id.as_str()) {
            return Err(ReplicaError::Refused(
                Status::NotPrimary,
                format!("extent {id}: not the primary"),
            ));
        }
        let _lock = self.local.lock_range(id, offset, len);
        let mut buf = vec![0u8; len as usize];
        self.local.read_at(Self::target(&v), offset, &mut buf)?;
        let addr = self.addr_of(requester).ok_or_else(|| {
            ReplicaError::Refused(
                Status::BadRequest,
                format!("no address for node {requester}"),
            )
        })?;
        let ctx = ExtentCtx {
            volume: v.volume.clone(),
            extent_size: v.extent_size,
            index: v.rec.index,
            min_replicas: 0,
        }
        .encode_to_vec();
        let header = Header {
            op: Op::Replicate as u8,
            extent: id,
            generation: v.rec.generation,
            offset,
            ..Default::default()
        };
        match self.transport.call(
            &addr,
            Request {
                header,
                body: ctx,
                payload: &buf,
            },
        ) {
            Ok(f) if f.header.status == Status::Ok as i32 => {
                self.stats.repairs.fetch_add(1, Relaxed);
                log::warn!("replica: extent {id}: pushed {len} good bytes at offset {offset} to {requester}");
                Ok(())
            }
            Ok(f) => Err(ReplicaError::Refused(
                Status::from_i32(f.header.status),
                f.error_message(),
            )),
            Err(e) => Err(ReplicaError::Transport(e)),
        }
    }

    // ------------------------------------------------------------------
    // Background: the poll that confirms membership, resync, collection.

    /// Starts the background loop on reactor 0; it stops with [`Self::stop`].
    pub fn start_background(self: &Arc<Self>, handle: &rt::Handle) {
        let me = self.clone();
        handle.spawn_on(0, move || {
            while !me.stop.load(Relaxed) {
                me.poll_once();
                rt::sleep(me.cfg.poll_every);
            }
        });
    }

    pub fn stop(&self) {
        self.stop.store(true, Relaxed);
    }

    /// One round: confirm membership with meta, refresh addresses, start
    /// resyncs this node owes, collect extents meta moved away.
    pub fn poll_once(self: &Arc<Self>) {
        let t0 = Instant::now();
        let placed = match self.meta.list_node_extents(&self.cfg.node_id) {
            Ok(p) => p,
            Err(e) => {
                log::debug!("replica: cannot confirm extents with meta: {e}");
                return;
            }
        };
        let listed: HashSet<u64> = placed.iter().map(|p| p.record.id).collect();
        for p in &placed {
            self.remember(&p.record, Some(&p.volume), Some(p.extent_size), t0);
        }
        {
            let mut view = self.view.write().unwrap_or_else(|e| e.into_inner());
            view.retain(|id, v| listed.contains(id) || v.confirmed > t0);
        }
        *self.last_poll.lock().unwrap_or_else(|e| e.into_inner()) = Some(t0);
        if let Ok(a) = self.meta.replica_addresses() {
            *self.addrs.write().unwrap_or_else(|e| e.into_inner()) = a;
        }
        // Resyncs this node owes as primary.
        let owed: Vec<(ExtentView, String)> = {
            let view = self.view.read().unwrap_or_else(|e| e.into_inner());
            view.values()
                .filter(|v| v.rec.primary() == Some(self.cfg.node_id.as_str()))
                .flat_map(|v| v.rec.learners.iter().map(move |l| (v.clone(), l.clone())))
                .collect()
        };
        for (v, learner) in owed {
            let key = (v.rec.id, learner.clone());
            if !self
                .resyncing
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key.clone())
            {
                continue;
            }
            let me = self.clone();
            let spawned = rt::Builder::new().static_name("resync").spawn(move || {
                me.resync(v.rec.id, &learner);
                me.resyncing
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&key);
            });
            if let Err(e) = spawned {
                log::error!("replica: cannot start a resync: {e}");
            }
        }
        self.collect(&listed);
    }

    /// Deletes local extents meta has not listed for this node for several
    /// polls in a row (the node was dropped from them, or they were deleted).
    fn collect(&self, listed: &HashSet<u64>) {
        let local: Vec<u64> = self
            .local
            .store()
            .list_extents()
            .into_iter()
            .map(|e| e.id)
            .collect();
        let mut cand = self.gc_candidates.lock().unwrap_or_else(|e| e.into_inner());
        cand.retain(|id, _| !listed.contains(id));
        for id in local {
            if listed.contains(&id) {
                continue;
            }
            let n = cand.entry(id).or_insert(0);
            *n += 1;
            if *n >= self.cfg.gc_after_polls {
                match self.local.store().delete_extent(id) {
                    Ok(()) => {
                        self.stats.extents_collected.fetch_add(1, Relaxed);
                        log::info!(
                            "replica: deleted extent {id}: meta no longer places it on this node"
                        );
                    }
                    Err(e) => log::warn!("replica: deleting extent {id}: {e}"),
                }
                cand.remove(&id);
            }
        }
    }

    /// Copies extent `id` to `learner` chunk by chunk (each under the range
    /// lock, so forwarded writes and the copy cannot reorder), then asks
    /// meta to promote it.
    fn resync(&self, id: u64, learner: &str) {
        let started = Instant::now();
        let mut offset = 0u64;
        loop {
            let v = match self
                .view
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&id)
                .cloned()
            {
                Some(v) => v,
                None => return,
            };
            if v.rec.primary() != Some(self.cfg.node_id.as_str())
                || !v.rec.learners.iter().any(|l| l == learner)
            {
                return; // no longer ours to copy
            }
            if offset >= v.extent_size {
                match self.meta.complete_resync(id, v.rec.generation, learner) {
                    Ok(rec) => {
                        self.stats.resyncs_completed.fetch_add(1, Relaxed);
                        log::info!(
                            "replica: extent {id}: learner {learner} caught up in {:?}; replicas now {:?} (generation {})",
                            started.elapsed(),
                            rec.replicas,
                            rec.generation
                        );
                        self.remember(&rec, None, None, Instant::now());
                    }
                    Err(e) => {
                        log::warn!("replica: extent {id}: completing the resync of {learner}: {e}")
                    }
                }
                return;
            }
            let Some(addr) = self.addr_of(learner) else {
                rt::sleep(self.cfg.poll_every);
                continue;
            };
            let len = self.cfg.resync_chunk.min(v.extent_size - offset);
            let sent = {
                let _lock = self.local.lock_range(id, offset, len);
                let mut buf = vec![0u8; len as usize];
                match self.local.read_at(Self::target(&v), offset, &mut buf) {
                    Ok(()) => {}
                    Err(e) => {
                        log::error!("replica: extent {id}: resync read at {offset}: {e}");
                        rt::sleep(self.cfg.poll_every);
                        continue;
                    }
                }
                let ctx = ExtentCtx {
                    volume: v.volume.clone(),
                    extent_size: v.extent_size,
                    index: v.rec.index,
                    min_replicas: 0,
                }
                .encode_to_vec();
                let zero = buf.iter().all(|&b| b == 0);
                let header = Header {
                    op: if zero { Op::ZeroReplica } else { Op::Resync } as u8,
                    flags: if zero { FLAG_DEALLOCATE } else { 0 },
                    extent: id,
                    generation: v.rec.generation,
                    offset,
                    aux: len as u32,
                    ..Default::default()
                };
                let payload: &[u8] = if zero { &[] } else { &buf };
                self.transport.call(
                    &addr,
                    Request {
                        header,
                        body: ctx,
                        payload,
                    },
                )
            };
            match sent {
                Ok(f) if f.header.status == Status::Ok as i32 => {
                    offset += len;
                    if (offset / len) % 16 == 0 || offset >= v.extent_size {
                        self.meta
                            .report_progress(id, learner, offset, v.extent_size);
                    }
                }
                Ok(f) if f.header.status == Status::StaleGeneration as i32 => {
                    // Membership moved on; look again on the next round.
                    rt::sleep(self.cfg.poll_every);
                }
                Ok(f) => {
                    log::warn!(
                        "replica: extent {id}: learner {learner} refused a resync chunk: {}",
                        f.error_message()
                    );
                    let _ = self.report_failure(id, v.rec.generation, learner);
                    return;
                }
                Err(e) => {
                    log::warn!("replica: extent {id}: resync to {learner} failed: {e}");
                    let _ = self.report_failure(id, v.rec.generation, learner);
                    return;
                }
            }
        }
    }

    /// Resyncs in progress (extent, learner), for `volume_get`-style views.
    pub fn resyncs_in_progress(&self) -> Vec<(u64, String)> {
        self.resyncing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

fn ctx_min_replicas(ctx: &ExtentCtx, rec: &ExtentRecord) -> u32 {
    if ctx.min_replicas > 0 {
        ctx.min_replicas
    } else {
        // The pool default when the client did not say, as meta resolves
        // it (`default_min_replicas`): a majority of three, else one.
        // Learners are not counted: they are not yet members.
        if rec.replicas.len() >= 3 {
            2
        } else {
            1
        }
    }
}

fn answer_of(r: Result<(), ReplicaError>) -> Answer {
    match r {
        Ok(()) => Answer::ok(),
        Err(e) => error_answer(e),
    }
}

fn error_answer(e: ReplicaError) -> Answer {
    match e {
        ReplicaError::Refused(s, m) => Answer::error(s, m),
        ReplicaError::Io(e) => {
            let (s, aux) = io_status(&e);
            let mut a = Answer::error(s, e.to_string());
            a.aux = aux;
            a
        }
        ReplicaError::Transport(t) => Answer::error(Status::Unavailable, t.to_string()),
    }
}

impl Handler for ReplicaService {
    fn handle(&self, f: Frame) -> Answer {
        let h = f.header;
        let ctx = f.ctx();
        match Op::from_u8(h.op) {
            Some(Op::Write) => {
                let Some(ctx) = ctx else {
                    return Answer::error(Status::BadRequest, "a write needs its extent context");
                };
                answer_of(self.write_as_primary(
                    h.extent,
                    h.generation,
                    &ctx,
                    h.offset,
                    &f.payload,
                    None,
                ))
            }
            Some(Op::Zero) => {
                let Some(ctx) = ctx else {
                    return Answer::error(
                        Status::BadRequest,
                        "a zero request needs its extent context",
                    );
                };
                answer_of(self.zero_as_primary(
                    h.extent,
                    h.generation,
                    &ctx,
                    h.offset,
                    h.aux as u64,
                    h.flags & FLAG_DEALLOCATE != 0,
                ))
            }
            Some(Op::Replicate) | Some(Op::Resync) | Some(Op::ZeroReplica) => {
                answer_of(self.replicated_write(&f))
            }
            Some(Op::CompareWrite) => {
                let Some(ctx) = ctx else {
                    return Answer::error(
                        Status::BadRequest,
                        "compare-and-write needs its extent context",
                    );
                };
                if f.payload.len() % 2 != 0 {
                    return Answer::error(
                        Status::BadRequest,
                        "compare-and-write payload is not two equal halves",
                    );
                }
                let (c, w) = f.payload.split_at(f.payload.len() / 2);
                match self.compare_and_write_as_primary(
                    h.extent,
                    h.generation,
                    &ctx,
                    h.offset,
                    c,
                    w,
                ) {
                    // `aux` carries the first differing byte relative to the
                    // compared range (a volume offset would not fit 32 bits).
                    Err(ReplicaError::Io(IoError::CompareMismatch { offset, .. })) => {
                        let start = ctx.index * ctx.extent_size + h.offset;
                        let mut a = Answer::error(Status::CompareMismatch, "compare failed");
                        a.aux = offset.saturating_sub(start) as u32;
                        a
                    }
                    r => answer_of(r),
                }
            }
            Some(Op::Read) => {
                let mut buf = vec![0u8; h.aux as usize];
                let peer = h.flags & proto::FLAG_PEER_READ != 0;
                match self.read_local(
                    h.extent,
                    h.generation,
                    ctx.as_ref(),
                    h.offset,
                    &mut buf,
                    peer,
                ) {
                    Ok(()) => Answer::data(buf),
                    Err(e) => error_answer(e),
                }
            }
            Some(Op::Repair) => {
                let requester = String::from_utf8_lossy(&f.payload).to_string();
                answer_of(self.push_repair(
                    h.extent,
                    h.generation,
                    h.offset,
                    h.aux as u64,
                    &requester,
                ))
            }
            Some(Op::Ping) => Answer::ok(),
            None => Answer::error(Status::BadRequest, format!("unknown op {}", h.op)),
        }
    }
}
