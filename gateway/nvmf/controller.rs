//! A controller: what one host's association with one subsystem holds
//! (dynamic model: created by an admin queue Connect, gone when its admin
//! queue goes or its keep-alive timer expires). Its registers (CC, CSTS),
//! features, asynchronous event requests and the queues that belong to it.
//!
//! Each controller has a watcher coroutine on its admin queue's reactor: it
//! enforces KATO and notices namespace changes (a resize, an added or
//! removed namespace) and ANA changes (a volume's `access_state`), which
//! it reports through asynchronous events so that Linux rescans or moves
//! its I/O to another path.

use super::outbox::{Completion, Outbox};
use super::spec::{aen, prop, status, with_dnr, NVME_VERSION};
use super::subsystem::{ListenAddress, Subsystem};
use super::target::TransportOpts;
use ferrite_engine::rt;
use ferrite_engine::volume::AccessState;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// AERL: asynchronous event requests a host may have outstanding, 0's based.
pub const AERL: u8 = 3;
/// KAS: keep-alive granularity, in 100 ms units.
pub const KAS: u16 = 10;
/// The events this controller can report (OAES).
pub const OAES: u32 = aen::CFG_NS_ATTR | aen::CFG_ANA_CHANGE;
/// The changed namespace list holds at most this many ids.
const CHANGED_NS_MAX: usize = 1024;

/// CC / CSTS bits.
mod cc {
    pub const EN: u32 = 1;
    pub const SHN_MASK: u32 = 0x3 << 14;
    pub const IOSQES_SHIFT: u32 = 16;
    pub const IOCQES_SHIFT: u32 = 20;
    pub const CSS_MASK: u32 = 0x7 << 4;
    pub const MPS_MASK: u32 = 0xf << 7;
    pub const AMS_MASK: u32 = 0x7 << 11;
}
mod csts {
    pub const RDY: u32 = 1;
    pub const CFS: u32 = 1 << 1;
    pub const SHST_COMPLETE: u32 = 0x2 << 2;
    pub const SHST_MASK: u32 = 0x3 << 2;
}

struct State {
    cc: u32,
    csts: u32,
    /// Asynchronous event configuration (Set Features 0x0B).
    aec: u32,
    /// I/O queues granted (Set Features Number of Queues).
    io_queues: u16,
    /// Outstanding AER command ids, answered when an event comes.
    aers: Vec<u16>,
    admin: Option<Outbox>,
    /// Events that came while no AER was outstanding.
    pending: VecDeque<u32>,
    /// Event kinds reported and not yet cleared by reading their log page.
    masked: u32,
    changed_ns: BTreeSet<u32>,
    changed_overflow: bool,
    ana_chgcnt: u64,
    /// What the watcher last saw of each namespace: size, ANA state.
    seen: BTreeMap<u32, (u64, AccessState)>,
    /// Socket duplicates of this controller's queues, to close them.
    queues: BTreeMap<u16, std::net::TcpStream>,
}

pub struct Controller {
    pub id: u16,
    pub subsys: Arc<Subsystem>,
    pub hostnqn: String,
    pub hostid: [u8; 16],
    /// The listener the admin queue came in on.
    pub listener: ListenAddress,
    pub(crate) opts: TransportOpts,
    kato_ms: AtomicU32,
    born: Instant,
    last_seen_ms: AtomicU64,
    dead: AtomicBool,
    state: Mutex<State>,
}

impl Controller {
    pub(crate) fn new(
        id: u16,
        subsys: Arc<Subsystem>,
        hostnqn: String,
        hostid: [u8; 16],
        listener: ListenAddress,
        opts: TransportOpts,
        kato_ms: u32,
    ) -> Arc<Self> {
        let seen = subsys
            .namespaces()
            .iter()
            .map(|ns| (ns.nsid, (ns.volume.info().size, ns.volume.access_state())))
            .collect();
        Arc::new(Self {
            id,
            hostnqn,
            hostid,
            listener,
            kato_ms: AtomicU32::new(kato_ms),
            born: Instant::now(),
            last_seen_ms: AtomicU64::new(0),
            dead: AtomicBool::new(false),
            state: Mutex::new(State {
                cc: 0,
                csts: 0,
                aec: 0,
                io_queues: opts.max_io_qpairs_per_ctrlr,
                aers: Vec::new(),
                admin: None,
                pending: VecDeque::new(),
                masked: 0,
                changed_ns: BTreeSet::new(),
                changed_overflow: false,
                ana_chgcnt: 1,
                seen,
                queues: BTreeMap::new(),
            }),
            opts,
            subsys,
        })
    }

    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Any command on any of its queues counts as host activity.
    pub fn touch(&self) {
        self.last_seen_ms
            .store(self.born.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    pub fn kato_ms(&self) -> u32 {
        self.kato_ms.load(Ordering::Relaxed)
    }

    pub fn set_kato_ms(&self, ms: u32) {
        self.kato_ms.store(ms, Ordering::Relaxed);
        self.touch();
    }

    pub fn is_ready(&self) -> bool {
        let s = self.st();
        s.cc & cc::EN != 0 && s.csts & csts::RDY != 0
    }

    pub fn io_queues(&self) -> u16 {
        self.st().io_queues
    }

    /// Set Features Number of Queues: grants up to the transport's limit.
    pub fn grant_io_queues(&self, requested: u32) -> u16 {
        let n = requested
            .min(self.opts.max_io_qpairs_per_ctrlr as u32)
            .max(1) as u16;
        self.st().io_queues = n;
        n
    }

    pub fn aec(&self) -> u32 {
        self.st().aec
    }

    pub fn set_aec(&self, v: u32) {
        self.st().aec = v & OAES;
    }

    /// The CAP property: queue size, timeout, NVM command set, 4 KiB pages.
    pub fn cap(&self) -> u64 {
        let mqes = (self.opts.max_queue_depth - 1) as u64;
        let cqr = 1u64 << 16;
        let to = 15u64 << 24; // 7.5 s, in 500 ms units
        let css_nvm = 1u64 << 37;
        mqes | cqr | to | css_nvm
    }

    /// Property Get.
    pub fn property_get(&self, offset: u32, eight: bool) -> Result<u64, u16> {
        let s = self.st();
        match (offset, eight) {
            (prop::CAP, true) => Ok(self.cap()),
            (prop::CAP, false) => Ok(self.cap() & 0xffff_ffff),
            (o, _) if o == prop::CAP + 4 => Ok(self.cap() >> 32),
            (prop::VS, false) => Ok(NVME_VERSION as u64),
            (prop::CC, false) => Ok(s.cc as u64),
            (prop::CSTS, false) => Ok(s.csts as u64),
            _ => Err(with_dnr(status::INVALID_FIELD)),
        }
    }

    /// Property Set: only CC is writable. Enabling checks the queue entry
    /// sizes and command set (CFS when wrong, as nvmet does); a shutdown
    /// request completes at once (every write is already durable).
    pub fn property_set(&self, offset: u32, eight: bool, value: u64) -> Result<(), u16> {
        if offset != prop::CC || eight {
            return Err(with_dnr(status::INVALID_FIELD));
        }
        let new = value as u32;
        let mut s = self.st();
        let old = s.cc;
        s.cc = new;
        if new & cc::EN != 0 && old & cc::EN == 0 {
            let ok = (new >> cc::IOSQES_SHIFT) & 0xf == 6
                && (new >> cc::IOCQES_SHIFT) & 0xf == 4
                && new & cc::CSS_MASK == 0
                && new & cc::MPS_MASK == 0
                && new & cc::AMS_MASK == 0;
            if ok {
                s.csts |= csts::RDY;
            } else {
                log::warn!(
                    "nvmf: controller {} of {}: CC {new:#x} asks for what we do not support",
                    self.id,
                    self.subsys.nqn
                );
                s.csts |= csts::CFS;
            }
        }
        if new & cc::EN == 0 && old & cc::EN != 0 {
            s.csts &= !(csts::RDY | csts::CFS);
        }
        if new & cc::SHN_MASK != 0 && old & cc::SHN_MASK == 0 {
            s.csts = (s.csts & !csts::SHST_MASK) | csts::SHST_COMPLETE;
        }
        if new & cc::SHN_MASK == 0 {
            s.csts &= !csts::SHST_MASK;
        }
        Ok(())
    }

    /// Registers a connected queue. False if the qid is taken.
    pub(crate) fn add_queue(
        &self,
        qid: u16,
        sock: std::net::TcpStream,
        out: Option<Outbox>,
    ) -> bool {
        let mut s = self.st();
        // Checked under the lock: `teardown` marks the controller dead
        // before it takes the queues, so a queue joining now is either
        // refused here or closed there.
        if self.is_dead() || s.queues.contains_key(&qid) {
            return false;
        }
        s.queues.insert(qid, sock);
        if qid == 0 {
            s.admin = out;
        }
        true
    }

    pub(crate) fn has_queue(&self, qid: u16) -> bool {
        self.st().queues.contains_key(&qid)
    }

    /// A queue ended. The admin queue's end ends the controller.
    pub(crate) fn remove_queue(&self, qid: u16) {
        self.st().queues.remove(&qid);
        if qid == 0 {
            self.teardown("its admin queue closed");
        }
    }

    /// Ends the association: closes every queue's connection and frees the
    /// controller id. Outstanding AERs are simply dropped with the queue.
    pub fn teardown(&self, why: &str) {
        if self.dead.swap(true, Ordering::AcqRel) {
            return;
        }
        let queues = {
            let mut s = self.st();
            s.aers.clear();
            s.admin = None;
            std::mem::take(&mut s.queues)
        };
        log::info!(
            "nvmf: controller {} of {} (host {}) ends: {why}",
            self.id,
            self.subsys.nqn,
            self.hostnqn
        );
        for (_, q) in queues {
            let _ = q.shutdown(std::net::Shutdown::Both);
        }
        self.subsys.unregister_controller(self.id);
    }

    /// Asynchronous Event Request: held until an event, or answered now
    /// with one that is pending. `None`: the command stays outstanding.
    pub(crate) fn push_aer(&self, cid: u16) -> Option<Completion> {
        let mut s = self.st();
        if let Some(ev) = s.pending.pop_front() {
            return Some(Completion::dw0(ev));
        }
        if s.aers.len() > AERL as usize {
            return Some(Completion::status(with_dnr(status::AER_LIMIT_EXCEEDED)));
        }
        s.aers.push(cid);
        None
    }

    /// Reports an event if the host enabled it and has read the log page of
    /// the previous one of its kind.
    fn raise(&self, s: &mut State, kind: u32, event: u32) {
        if s.aec & kind == 0 || s.masked & kind != 0 {
            return;
        }
        s.masked |= kind;
        match (s.aers.pop(), s.admin.clone()) {
            (Some(cid), Some(out)) => {
                log::debug!("nvmf: controller {}: async event {event:#x}", self.id);
                // Sending may park on a full channel: not under the lock.
                let c = Completion::dw0(event);
                rt_complete_later(out, cid, c);
            }
            _ => s.pending.push_back(event),
        }
    }

    /// The host read log page `lid` (without RAE): events of its kind may
    /// be reported again.
    pub(crate) fn log_read(&self, lid: u8, retain: bool) {
        if retain {
            return;
        }
        let mut s = self.st();
        match lid {
            super::spec::lid::CHANGED_NS_LIST => {
                s.masked &= !aen::CFG_NS_ATTR;
                s.changed_ns.clear();
                s.changed_overflow = false;
            }
            super::spec::lid::ANA => s.masked &= !aen::CFG_ANA_CHANGE,
            _ => {}
        }
    }

    /// The Changed Namespace List log page (4096 bytes).
    pub(crate) fn changed_ns_log(&self) -> Vec<u8> {
        let s = self.st();
        let mut b = vec![0u8; 4096];
        if s.changed_overflow {
            b[0..4].copy_from_slice(&0xffff_ffffu32.to_le_bytes());
        } else {
            for (i, ns) in s.changed_ns.iter().enumerate() {
                b[i * 4..i * 4 + 4].copy_from_slice(&ns.to_le_bytes());
            }
        }
        b
    }

    pub(crate) fn ana_change_count(&self) -> u64 {
        self.st().ana_chgcnt
    }

    /// Compares the subsystem's namespaces with what was last seen and
    /// raises the events the differences call for.
    pub(crate) fn check_namespaces(&self) {
        let now: BTreeMap<u32, (u64, AccessState)> = self
            .subsys
            .namespaces()
            .iter()
            .map(|ns| (ns.nsid, (ns.volume.info().size, ns.volume.access_state())))
            .collect();
        let mut s = self.st();
        if now == s.seen {
            return;
        }
        let mut ns_changed = false;
        let mut ana_changed = false;
        let ids: BTreeSet<u32> = now.keys().chain(s.seen.keys()).copied().collect();
        for id in ids {
            match (s.seen.get(&id).copied(), now.get(&id).copied()) {
                (Some(a), Some(b)) if a == b => {}
                (Some(a), Some(b)) => {
                    if a.0 != b.0 {
                        log::info!(
                            "nvmf: controller {}: namespace {id} size {} -> {} bytes",
                            self.id,
                            a.0,
                            b.0
                        );
                        ns_changed = true;
                        note_changed(&mut s, id);
                    }
                    if a.1 != b.1 {
                        log::info!(
                            "nvmf: controller {}: namespace {id} ANA state {} -> {}",
                            self.id,
                            a.1,
                            b.1
                        );
                        ana_changed = true;
                    }
                }
                _ => {
                    ns_changed = true;
                    ana_changed = true;
                    note_changed(&mut s, id);
                }
            }
        }
        s.seen = now;
        if ana_changed && self.subsys.ana_reporting {
            s.ana_chgcnt += 1;
            self.raise(&mut s, aen::CFG_ANA_CHANGE, aen::ANA_CHANGE);
        }
        if ns_changed {
            self.raise(&mut s, aen::CFG_NS_ATTR, aen::NS_ATTR_CHANGED);
        }
    }

    /// Whether the keep-alive timer has expired. The host sends Keep Alive
    /// every KATO/2; any command counts as a sign of life too.
    pub(crate) fn keep_alive_expired(&self) -> bool {
        let kato = self.kato_ms() as u64;
        if kato == 0 {
            return false;
        }
        let idle =
            self.born.elapsed().as_millis() as u64 - self.last_seen_ms.load(Ordering::Relaxed);
        idle > kato
    }

    /// Starts the watcher on the calling reactor.
    pub(crate) fn spawn_watcher(self: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(self);
        let name = format!("nvmf-ctrl-{}", self.id);
        let spawned = rt::Builder::new().name(name).spawn(move || loop {
            rt::sleep(every);
            let Some(c) = weak.upgrade() else { return };
            if c.is_dead() {
                return;
            }
            if c.keep_alive_expired() {
                log::warn!(
                    "nvmf: controller {} of {} (host {}): keep-alive timeout of {} ms expired",
                    c.id,
                    c.subsys.nqn,
                    c.hostnqn,
                    c.kato_ms()
                );
                c.teardown("keep-alive timeout");
                return;
            }
            if !c.subsys.is_discovery() {
                c.check_namespaces();
            }
        });
        if let Err(e) = spawned {
            log::error!(
                "nvmf: controller {}: cannot start its watcher: {e}",
                self.id
            );
        }
    }
}

fn note_changed(s: &mut State, id: u32) {
    if s.changed_ns.len() >= CHANGED_NS_MAX {
        s.changed_overflow = true;
    } else {
        s.changed_ns.insert(id);
    }
}

/// Completes an AER from outside the controller's lock, in a coroutine of
/// its own (a send may park on a full channel). Events are raised by the
/// watcher, which runs on a reactor.
fn rt_complete_later(out: Outbox, cid: u16, c: Completion) {
    if let Err(e) = rt::Builder::new()
        .static_name("nvmf-aen")
        .spawn(move || out.complete(cid, c, 0))
    {
        log::error!("nvmf: cannot deliver an asynchronous event: {e}");
    }
}
