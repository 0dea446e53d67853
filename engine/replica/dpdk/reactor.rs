//! One reactor's share of the DPDK transport: its RX/TX queue pair on each
//! port, its mbuf pool, its sessions, and the poller that drives them.
//!
//! Everything here lives in a thread local of its reactor and is touched
//! only there: coroutines (callers sending requests, handlers sending
//! answers) and the poller (receiving, acknowledging, retransmitting)
//! take turns on one thread, so there are no locks.
//!
//! Polling is adaptive-friendly: the poller reports work only when packets
//! moved, and asks to be polled every `poll_active` while traffic flows;
//! after `idle_after` of quiet a small governor coroutine re-registers it
//! with `poll_idle`, so an idle reactor sleeps (the drivers used here have
//! no receive interrupt to wake it), and switches back on the first packet
//! or send.

use super::super::proto::{self, Frame, Header, FLAG_RESPONSE, MAX_FRAME};
use super::super::server::{Answer, Handler};
use super::super::transport::{Request, TransportError};
use super::arp;
use super::config::{is_dpdk_addr, parse_peer_addr, PORT_SPAN};
use super::frag::{self, Message};
use super::loss::{Fate, Injector};
use super::session::Session;
use super::stats::Stats;
use super::udp::{self, write_udp_headers, Endpoint, Mac, BROADCAST, L2, L2_L4};
use super::wire::{Kind, WireHeader, HDR_LEN};
use super::Shared;
use crate::replica::proto::Status;
use crate::rt::{self, sync, PollerId, PollerWake};
use ferrite_sys::dpdk::{Mbuf, Mempool, QueuePair};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::rc::{Rc, Weak};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl super::session::Retain for Mbuf {
    fn retain(&self) -> Self {
        self.share()
    }
}

/// Requests a session serves at once; beyond, it grants no credit.
const MAX_SERVING: usize = 256;
/// Sessions a reactor keeps at most (peers talk to us unasked).
const MAX_SESSIONS: usize = 4096;
const BURST: usize = 32;

thread_local! {
    static NET: RefCell<Option<Rc<ReactorNet>>> = const { RefCell::new(None) };
}

/// This reactor's DPDK state, if the transport is attached to it.
pub fn current() -> Option<Rc<ReactorNet>> {
    NET.with(|n| n.borrow().clone())
}

struct Reply {
    result: RefCell<Option<Result<Frame, String>>>,
    done: sync::Event,
}

/// A session with one peer endpoint, and the calls and requests on it.
pub struct PeerSession {
    /// (our UDP port, the peer's endpoint).
    key: (u16, Endpoint),
    port: usize,
    mac: Cell<Mac>,
    s: RefCell<Session<Mbuf>>,
    pending: RefCell<HashMap<u64, Rc<Reply>>>,
    next_req: Cell<u64>,
    credit: sync::Event,
    serving: Cell<usize>,
    queued: RefCell<VecDeque<Frame>>,
    ack_listed: Cell<bool>,
    last_reset: RefCell<String>,
}

pub struct ReactorNet {
    shared: Arc<Shared>,
    reactor: usize,
    queues: RefCell<Vec<QueuePair>>,
    pool: RefCell<Option<Mempool>>,
    txq: Vec<RefCell<Vec<Mbuf>>>,
    injectors: Vec<RefCell<Injector>>,
    delayed: Vec<RefCell<Option<(Mbuf, Instant)>>>,
    sessions: RefCell<HashMap<(u16, Endpoint), Rc<PeerSession>>>,
    ack_dirty: RefCell<Vec<Rc<PeerSession>>>,
    arp_waiters: RefCell<HashMap<Ipv4Addr, Rc<sync::Event>>>,
    ip_id: Cell<u16>,
    next_tick: Cell<Instant>,
    last_activity: Cell<Instant>,
    activity: sync::Event,
    poller: Cell<Option<PollerId>>,
    active: Cell<bool>,
    link_changes: Cell<u64>,
    rx: RefCell<Vec<Mbuf>>,
}

fn stats(s: &Arc<Shared>) -> &Stats {
    &s.stats
}

fn bump(c: &std::sync::atomic::AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl ReactorNet {
    /// Installs the state on the calling reactor and starts polling.
    pub(super) fn install(
        shared: Arc<Shared>,
        reactor: usize,
        queues: Vec<QueuePair>,
        pool: Mempool,
    ) -> Result<(), String> {
        let n = shared.ports.len();
        let now = Instant::now();
        let net = Rc::new(ReactorNet {
            reactor,
            queues: RefCell::new(queues),
            pool: RefCell::new(Some(pool)),
            txq: (0..n).map(|_| RefCell::new(Vec::new())).collect(),
            injectors: (0..n)
                .map(|p| {
                    RefCell::new(Injector::new(
                        shared.cfg.loss,
                        (reactor * 64 + p) as u64 + 1,
                    ))
                })
                .collect(),
            delayed: (0..n).map(|_| RefCell::new(None)).collect(),
            sessions: RefCell::new(HashMap::new()),
            ack_dirty: RefCell::new(Vec::new()),
            arp_waiters: RefCell::new(HashMap::new()),
            ip_id: Cell::new(reactor as u16 * 8192),
            next_tick: Cell::new(now),
            last_activity: Cell::new(now),
            activity: sync::Event::new(),
            poller: Cell::new(None),
            active: Cell::new(false),
            link_changes: Cell::new(shared.links.changes.load(Ordering::Acquire)),
            rx: RefCell::new(Vec::with_capacity(BURST)),
            shared,
        });
        net.set_mode(true)?;
        NET.with(|s| *s.borrow_mut() = Some(net.clone()));
        let g = net.clone();
        rt::Builder::new()
            .static_name("dpdk-poll-governor")
            .spawn(move || governor(g))
            .map_err(|e| format!("reactor {reactor}: starting the DPDK poll governor: {e}"))?;
        Ok(())
    }

    /// Detaches the calling reactor: stops polling, fails everything in
    /// flight, and gives the queues, pool and mbufs back.
    pub(super) fn uninstall() {
        let Some(net) = NET.with(|s| s.borrow_mut().take()) else {
            return;
        };
        if let Some(id) = net.poller.take() {
            rt::unregister_poller(id);
        }
        net.activity.set();
        let sessions: Vec<_> = net.sessions.borrow_mut().drain().map(|(_, s)| s).collect();
        for ps in sessions {
            net.fail_session(&ps, "the DPDK transport is shutting down", false);
        }
        net.ack_dirty.borrow_mut().clear();
        for q in &net.txq {
            q.borrow_mut().clear();
        }
        for d in &net.delayed {
            d.borrow_mut().take();
        }
        net.queues.borrow_mut().clear();
        net.pool.borrow_mut().take();
        net.rx.borrow_mut().clear();
    }

    fn set_mode(self: &Rc<Self>, active: bool) -> Result<(), String> {
        let every = if active {
            self.shared.cfg.poll_active
        } else {
            self.shared.cfg.poll_idle
        };
        if let Some(id) = self.poller.take() {
            rt::unregister_poller(id);
        }
        let w: Weak<ReactorNet> = Rc::downgrade(self);
        let id = rt::register_poller("dpdk-queues", PollerWake::Every(every), move || {
            w.upgrade().map(|n| n.poll()).unwrap_or(false)
        })
        .map_err(|e| format!("reactor {}: registering the DPDK poller: {e}", self.reactor))?;
        self.poller.set(Some(id));
        self.active.set(active);
        log::debug!(
            "dpdk: reactor {} polls every {every:?} ({})",
            self.reactor,
            if active { "active" } else { "idle" }
        );
        Ok(())
    }

    fn mark_active(&self, now: Instant) {
        self.last_activity.set(now);
        if !self.active.get() {
            self.activity.set();
        }
    }

    fn busy(&self) -> bool {
        self.sessions
            .borrow()
            .values()
            .any(|s| s.s.borrow().needs_tick())
            || self.txq.iter().any(|q| !q.borrow().is_empty())
    }

    // ---- transmit -------------------------------------------------------

    /// A packet to `dst` from our port `src_port`, with header `h` and
    /// `h.len` bytes written by `body`.
    #[allow(clippy::too_many_arguments)]
    fn build(
        &self,
        port: usize,
        src_port: u16,
        dst: Endpoint,
        dst_mac: &Mac,
        h: &WireHeader,
        body: impl FnOnce(&mut [u8]),
    ) -> Option<Mbuf> {
        let pool = self.pool.borrow();
        let mut m = Mbuf::alloc(pool.as_ref()?)?;
        let len = h.len as usize;
        let buf = m.append(L2_L4 + HDR_LEN + len)?;
        let id = self.ip_id.get();
        self.ip_id.set(id.wrapping_add(1));
        let src = Endpoint {
            ip: self.shared.cfg.ip,
            port: src_port,
        };
        write_udp_headers(
            buf,
            &self.shared.ports[port].mac,
            dst_mac,
            src,
            dst,
            HDR_LEN + len,
            id,
        );
        h.encode(&mut buf[L2_L4..L2_L4 + HDR_LEN]);
        body(&mut buf[L2_L4 + HDR_LEN..]);
        Some(m)
    }

    fn raw_frame(&self, port: usize, bytes: &[u8]) {
        let m = {
            let pool = self.pool.borrow();
            let Some(pool) = pool.as_ref() else { return };
            Mbuf::alloc(pool)
        };
        let Some(mut m) = m else {
            bump(&stats(&self.shared).no_mbufs);
            return;
        };
        if let Some(b) = m.append(bytes.len()) {
            b.copy_from_slice(bytes);
            self.transmit(port, m);
        }
    }

    /// Queues a packet for the driver, through the loss injector.
    fn transmit(&self, port: usize, m: Mbuf) {
        let st = stats(&self.shared);
        Stats::add(&st.tx_packets, 1);
        Stats::add(&st.tx_bytes, m.len() as u64);
        let mut q = self.txq[port].borrow_mut();
        match self.injectors[port].borrow_mut().fate() {
            Fate::Send => {
                q.push(m);
                if let Some((d, _)) = self.delayed[port].borrow_mut().take() {
                    q.push(d);
                }
            }
            Fate::Drop => bump(&st.loss_dropped),
            Fate::Duplicate => {
                bump(&st.loss_duplicated);
                q.push(m.share());
                q.push(m);
            }
            Fate::Delay => {
                bump(&st.loss_reordered);
                if let Some((d, _)) = self.delayed[port].borrow_mut().replace((m, Instant::now())) {
                    q.push(d);
                }
            }
        }
        // A dead link must not grow the queue without bound: the sessions
        // retransmit what matters.
        let cap = 2 * self.shared.cfg.tx_descs as usize;
        if q.len() > cap {
            let excess = q.len() - cap;
            q.drain(..excess);
            Stats::add(&st.tx_ring_full, excess as u64);
        }
    }

    /// Hands queued packets to the drivers; returns how many went.
    fn flush(&self) -> usize {
        let mut sent = 0;
        let mut queues = self.queues.borrow_mut();
        for (p, qp) in queues.iter_mut().enumerate() {
            let mut q = self.txq[p].borrow_mut();
            while !q.is_empty() {
                let n = qp.tx_burst(&mut q);
                sent += n;
                if n == 0 {
                    bump(&stats(&self.shared).tx_ring_full);
                    break;
                }
            }
        }
        sent
    }

    fn send_ack(&self, ps: &PeerSession, probe: bool) {
        let (h, sack) = ps.s.borrow_mut().ack(probe);
        let m = self.build(ps.port, ps.key.0, ps.key.1, &ps.mac.get(), &h, |b| {
            b.copy_from_slice(&sack)
        });
        match m {
            Some(m) => {
                bump(&stats(&self.shared).acks_sent);
                self.transmit(ps.port, m);
            }
            None => bump(&stats(&self.shared).no_mbufs),
        }
    }

    /// Sends one message (a frame without its length prefix: `head` is
    /// header and body) on a session, waiting for window and credit as
    /// needed. Runs in a coroutine.
    fn send_message(&self, ps: &PeerSession, head: &[u8], payload: &[u8]) -> Result<(), String> {
        let msg_len = head.len() + payload.len();
        if msg_len > MAX_FRAME as usize {
            return Err(format!("a frame of {msg_len} bytes is too large"));
        }
        let st = stats(&self.shared);
        let gen = ps.s.borrow().generation;
        let cap = self.shared.ports[ps.port].data_cap;
        let msg_id = ps.s.borrow_mut().next_msg_id();
        let n = msg_len.div_ceil(cap).max(1);
        let mut i = 0;
        while i < n {
            if self.shared.stopping.load(Ordering::Acquire) {
                return Err("the DPDK transport is shutting down".into());
            }
            if ps.s.borrow().generation != gen {
                return Err(ps.last_reset.borrow().clone());
            }
            if !ps.s.borrow().can_send() {
                self.flush();
                bump(&st.credit_waits);
                ps.s.borrow_mut().blocked += 1;
                ps.credit.reset();
                ps.credit
                    .wait_until(Instant::now() + Duration::from_millis(20));
                ps.s.borrow_mut().blocked -= 1;
                continue;
            }
            let off = i * cap;
            let len = cap.min(msg_len - off);
            let now = Instant::now();
            let mac = ps.mac.get();
            let m = ps.s.borrow_mut().send_piece(
                msg_id,
                msg_len as u32,
                head.len() as u32,
                off as u32,
                len as u16,
                now,
                |h| {
                    self.build(ps.port, ps.key.0, ps.key.1, &mac, h, |b| {
                        frag::copy_piece(head, payload, off, b)
                    })
                },
            );
            match m {
                Some(m) => {
                    bump(&st.data_packets);
                    self.transmit(ps.port, m);
                    if self.txq[ps.port].borrow().len() >= BURST {
                        self.flush();
                    }
                    i += 1;
                }
                None => {
                    // Out of mbufs (they come back as the driver sends and
                    // peers acknowledge).
                    bump(&st.no_mbufs);
                    self.flush();
                    rt::sleep(Duration::from_micros(200));
                }
            }
        }
        self.flush();
        bump(&st.frames_sent);
        self.mark_active(Instant::now());
        Ok(())
    }

    // ---- sessions -------------------------------------------------------

    fn session(&self, key: (u16, Endpoint), port: usize, mac: Mac) -> Option<Rc<PeerSession>> {
        if let Some(s) = self.sessions.borrow().get(&key) {
            return Some(s.clone());
        }
        if self.sessions.borrow().len() >= MAX_SESSIONS {
            return None;
        }
        let ps = Rc::new(PeerSession {
            key,
            port,
            mac: Cell::new(mac),
            s: RefCell::new(Session::new(
                self.shared.cfg.session.clone(),
                Instant::now(),
            )),
            pending: RefCell::new(HashMap::new()),
            next_req: Cell::new(1),
            credit: sync::Event::new(),
            serving: Cell::new(0),
            queued: RefCell::new(VecDeque::new()),
            ack_listed: Cell::new(false),
            last_reset: RefCell::new(String::new()),
        });
        log::debug!(
            "dpdk: reactor {}: session {}:{} <-> {} on port {port}",
            self.reactor,
            self.shared.cfg.ip,
            key.0,
            key.1
        );
        self.sessions.borrow_mut().insert(key, ps.clone());
        Some(ps)
    }

    /// Fails everything in flight on a session and resets it.
    fn fail_session(&self, ps: &PeerSession, why: &str, already_reset: bool) {
        if !already_reset {
            ps.s.borrow_mut().reset(Instant::now());
        }
        bump(&stats(&self.shared).session_resets);
        *ps.last_reset.borrow_mut() = why.to_string();
        let pending: Vec<_> = ps.pending.borrow_mut().drain().map(|(_, r)| r).collect();
        for r in pending {
            *r.result.borrow_mut() = Some(Err(why.to_string()));
            r.done.set();
        }
        ps.queued.borrow_mut().clear();
        ps.s.borrow_mut().hold = false;
        ps.credit.set();
    }

    // ---- receive --------------------------------------------------------

    /// The poller: receive, acknowledge, run timers, transmit.
    fn poll(self: &Rc<Self>) -> bool {
        let mut work = 0;
        let changes = self.shared.links.changes.load(Ordering::Acquire);
        if changes != self.link_changes.get() {
            self.link_changes.set(changes);
            self.on_link_change();
        }
        let nports = self.queues.borrow().len();
        let mut now = None;
        for p in 0..nports {
            let mut pkts = std::mem::take(&mut *self.rx.borrow_mut());
            let n = self.queues.borrow_mut()[p].rx_burst(&mut pkts, BURST);
            if n > 0 {
                work += n;
                let t = *now.get_or_insert_with(Instant::now);
                for m in pkts.drain(..) {
                    self.on_frame(p, m, t);
                }
            }
            *self.rx.borrow_mut() = pkts;
        }
        let dirty = std::mem::take(&mut *self.ack_dirty.borrow_mut());
        for ps in dirty {
            ps.ack_listed.set(false);
            if ps.s.borrow().ack_due {
                self.send_ack(&ps, false);
            }
        }
        let t = now.unwrap_or_else(Instant::now);
        if t >= self.next_tick.get() {
            self.next_tick.set(t + Duration::from_millis(1));
            work += self.tick(t);
        }
        work += self.flush();
        if work > 0 {
            self.mark_active(t);
        }
        work > 0
    }

    fn on_link_change(&self) {
        let st = stats(&self.shared);
        let sessions: Vec<_> = self.sessions.borrow().values().cloned().collect();
        for (p, up) in self.shared.links.up.iter().enumerate() {
            if up.load(Ordering::Acquire) {
                continue;
            }
            bump(&st.link_downs);
            let why = format!("link down on DPDK {}", self.shared.ports[p].describe());
            for ps in sessions.iter().filter(|s| s.port == p) {
                if ps.s.borrow().needs_tick() || !ps.pending.borrow().is_empty() {
                    self.fail_session(ps, &why, false);
                }
            }
        }
    }

    fn tick(&self, now: Instant) -> usize {
        let st = stats(&self.shared);
        let mut work = 0;
        let sessions: Vec<_> = self
            .sessions
            .borrow()
            .values()
            .filter(|s| s.s.borrow().needs_tick())
            .cloned()
            .collect();
        for ps in sessions {
            let t = ps.s.borrow_mut().on_tick(now);
            if let Some(why) = t.dead {
                bump(&st.peers_dead);
                let why = format!(
                    "peer {} on DPDK {} is dead: {why}",
                    ps.key.1,
                    self.shared.ports[ps.port].describe()
                );
                log::warn!("dpdk: {why}");
                self.fail_session(&ps, &why, false);
                work += 1;
                continue;
            }
            for p in t.retransmit {
                bump(&st.retransmits);
                self.transmit(ps.port, p);
                work += 1;
            }
            if t.probe {
                bump(&st.probes);
                self.send_ack(&ps, true);
            }
        }
        // A packet held back by reorder injection goes after a while even
        // if nothing follows it.
        for (p, d) in self.delayed.iter().enumerate() {
            let due = matches!(&*d.borrow(), Some((_, at)) if now.duration_since(*at) >= Duration::from_millis(1));
            if due {
                if let Some((m, _)) = d.borrow_mut().take() {
                    self.txq[p].borrow_mut().push(m);
                }
            }
        }
        work
    }

    fn on_frame(self: &Rc<Self>, port: usize, m: Mbuf, now: Instant) {
        let st = stats(&self.shared);
        Stats::add(&st.rx_packets, 1);
        Stats::add(&st.rx_bytes, m.len() as u64);
        if m.segment_count() > 1 {
            bump(&st.rx_chained);
        }
        self.on_mbuf(port, m, now);
    }

    /// A received Ethernet frame (from our queue, or steered to us). A
    /// chained mbuf is not linearised: its headers are read from the first
    /// segment (or gathered, when they straddle segments, into a small
    /// buffer on the stack), and a DATA piece is copied from each segment
    /// straight into its message, so every payload byte is copied once.
    fn on_mbuf(self: &Rc<Self>, port: usize, m: Mbuf, now: Instant) {
        const HEAD: usize = L2_L4 + HDR_LEN;
        let st = stats(&self.shared);
        let mut gathered = [0u8; HEAD];
        let first = m.data();
        let chained = m.segment_count() > 1;
        let head: &[u8] = if !chained || first.len() >= HEAD {
            first
        } else {
            let n = m.read_at(0, &mut gathered);
            &gathered[..n]
        };
        let meta = match udp::parse_head(head, m.len()) {
            Err(udp::Drop::OtherEthertype) => return bump(&st.ignored),
            Err(_) => return bump(&st.malformed),
            Ok(L2::Arp { off, .. }) => return self.on_arp(port, &head[off..]),
            Ok(L2::Udp(meta)) => meta,
        };
        let our_mac = self.shared.ports[port].mac;
        if meta.dst.ip != self.shared.cfg.ip
            || (meta.dst_mac != our_mac && meta.dst_mac != BROADCAST)
        {
            bump(&st.ignored);
            return;
        }
        let Some(owner) = self.shared.cfg.owner(meta.dst.port, self.shared.reactors) else {
            bump(&st.ignored);
            return;
        };
        if owner != self.reactor {
            // Another reactor's session: hand the mbuf over (not a copy).
            bump(&st.steered);
            self.shared.handle.post(owner, move || {
                if let Some(n) = current() {
                    n.on_mbuf(port, m, Instant::now());
                    n.poll_after_steer();
                }
            });
            return;
        }
        // The wire header (from `head`); the UDP payload may be longer
        // than `head` holds, never shorter than what is read of it.
        let end = (meta.payload_off + meta.payload_len).min(head.len());
        let payload = &head[meta.payload_off.min(end)..end];
        let h = match WireHeader::decode(payload, meta.payload_len.saturating_sub(HDR_LEN)) {
            Ok(h) => h,
            Err(_) => {
                bump(&st.malformed);
                return;
            }
        };
        let off = meta.payload_off + HDR_LEN;
        let len = h.len as usize;
        if !chained {
            let data = &first[off..off + len];
            self.on_udp(
                port,
                meta.src_mac,
                meta.dst.port,
                meta.src,
                &h,
                &[data],
                now,
            );
        } else {
            let parts = byte_range(&m, off, len);
            if parts.iter().map(|p| p.len()).sum::<usize>() != len {
                // Segments shorter than the packet length says.
                bump(&st.malformed);
                return;
            }
            self.on_udp(port, meta.src_mac, meta.dst.port, meta.src, &h, &parts, now);
        }
    }

    fn poll_after_steer(self: &Rc<Self>) {
        let dirty = std::mem::take(&mut *self.ack_dirty.borrow_mut());
        for ps in dirty {
            ps.ack_listed.set(false);
            if ps.s.borrow().ack_due {
                self.send_ack(&ps, false);
            }
        }
        self.flush();
        self.mark_active(Instant::now());
    }

    fn on_arp(&self, port: usize, bytes: &[u8]) {
        let st = stats(&self.shared);
        let Some(a) = arp::parse(bytes) else {
            bump(&st.malformed);
            return;
        };
        if !a.sender_ip.is_unspecified() {
            self.shared
                .arp
                .learn(a.sender_ip, a.sender_mac, port as u16);
            if let Some(ev) = self.arp_waiters.borrow().get(&a.sender_ip) {
                ev.set();
            }
        }
        if let Some(reply) = arp::reply(&self.shared.ports[port].mac, self.shared.cfg.ip, &a) {
            bump(&st.arp_replies);
            self.raw_frame(port, &reply);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_udp(
        self: &Rc<Self>,
        port: usize,
        src_mac: Mac,
        local_port: u16,
        src: Endpoint,
        h: &WireHeader,
        data: &[&[u8]],
        now: Instant,
    ) {
        let st = stats(&self.shared);
        let key = (local_port, src);
        // (Not in the match's scrutinee: the borrow would live through the
        // arms, and `session` inserts.)
        let known = self.sessions.borrow().get(&key).cloned();
        let ps = match known {
            Some(ps) => ps,
            None if h.kind == Kind::Reset => {
                bump(&st.stale);
                return;
            }
            None => match self.session(key, port, src_mac) {
                Some(ps) => ps,
                None => {
                    bump(&st.ignored);
                    return;
                }
            },
        };
        // The peer's NIC may change (a replaced node keeps its IP).
        ps.mac.set(src_mac);
        let rx = ps.s.borrow_mut().on_packet_parts(h, data, now);
        if rx.duplicate {
            bump(&st.duplicates);
        }
        if rx.stale {
            bump(&st.stale);
        }
        if rx.malformed.is_some() {
            bump(&st.malformed);
        }
        if let Some(r) = rx.send_reset {
            bump(&st.resets_sent);
            if let Some(m) = self.build(port, local_port, src, &src_mac, &r, |_| {}) {
                self.transmit(port, m);
            }
        }
        if let Some(why) = rx.reset {
            log::info!("dpdk: session with {src}: {why}");
            self.fail_session(&ps, &format!("peer {src}: {why}"), true);
        }
        for p in rx.retransmit {
            bump(&st.fast_retransmits);
            self.transmit(port, p);
        }
        if rx.opened {
            ps.credit.set();
        }
        if let Some(m) = rx.delivered {
            self.deliver(&ps, m);
        }
        if rx.ack_now {
            self.send_ack(&ps, false);
        } else if ps.s.borrow().ack_due && !ps.ack_listed.replace(true) {
            self.ack_dirty.borrow_mut().push(ps);
        }
    }

    fn deliver(self: &Rc<Self>, ps: &Rc<PeerSession>, m: Message) {
        let st = stats(&self.shared);
        let f = match frag::frame(m) {
            Ok(f) => f,
            Err(e) => {
                bump(&st.bad_frames);
                log::debug!("dpdk: a frame from {} failed its checks: {e}", ps.key.1);
                return;
            }
        };
        bump(&st.frames_received);
        if f.header.is_response() {
            let waiting = ps.pending.borrow_mut().remove(&f.header.request_id);
            if let Some(r) = waiting {
                *r.result.borrow_mut() = Some(Ok(f));
                r.done.set();
            }
            return;
        }
        if ps.serving.get() < MAX_SERVING {
            self.serve(ps, f);
        } else {
            ps.queued.borrow_mut().push_back(f);
            ps.s.borrow_mut().hold = true;
        }
    }

    /// Runs a request through the replica service in a coroutine of its
    /// own and sends the answer back on the same session.
    fn serve(self: &Rc<Self>, ps: &Rc<PeerSession>, f: Frame) {
        bump(&stats(&self.shared).requests_served);
        ps.serving.set(ps.serving.get() + 1);
        let gen = ps.s.borrow().generation;
        let (net, ps2) = (self.clone(), ps.clone());
        let spawned = rt::Builder::new()
            .static_name("replica-dpdk-req")
            .spawn(move || {
                let req = f.header;
                let handler: Option<Arc<dyn Handler>> = net
                    .shared
                    .handler
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                let ans = match handler {
                    Some(h) => h.handle(f),
                    None => {
                        Answer::error(Status::Unavailable, "the replica service is not running")
                    }
                };
                let resp = Header {
                    op: req.op,
                    flags: FLAG_RESPONSE,
                    request_id: req.request_id,
                    extent: req.extent,
                    generation: req.generation,
                    offset: req.offset,
                    status: ans.status as i32,
                    aux: ans.aux,
                    ..Default::default()
                };
                let head = proto::encode_head(resp, &ans.body, &ans.payload);
                // Coroutines come home after migrating, so this is still the
                // session's reactor; an answer to a reset session is void.
                if rt::current_reactor() == Some(net.reactor) && ps2.s.borrow().generation == gen {
                    if let Err(e) = net.send_message(&ps2, &head[4..], &ans.payload) {
                        log::debug!("dpdk: answering {}: {e}", ps2.key.1);
                    }
                }
                net.served(&ps2);
            });
        if let Err(e) = spawned {
            log::error!("dpdk: cannot serve a request from {}: {e}", ps.key.1);
            self.served(ps);
        }
    }

    fn served(self: &Rc<Self>, ps: &Rc<PeerSession>) {
        ps.serving.set(ps.serving.get().saturating_sub(1));
        let next = ps.queued.borrow_mut().pop_front();
        if let Some(f) = next {
            self.serve(ps, f);
        }
        if ps.queued.borrow().is_empty() && ps.s.borrow().hold {
            // Credit again: tell the peer at once.
            ps.s.borrow_mut().hold = false;
            self.send_ack(ps, false);
            self.flush();
        }
    }

    // ---- calls ----------------------------------------------------------

    /// The MAC and port of `ip`: static entry, ARP cache, or ARP now.
    fn resolve(&self, ip: Ipv4Addr) -> Result<(Mac, usize), String> {
        if let Some((mac, port)) = self.shared.arp.lookup(ip) {
            return Ok((mac, port as usize));
        }
        let port = self.shared.arp.port_hint(ip).unwrap_or(0) as usize;
        let Some(p) = self.shared.ports.get(port) else {
            return Err(format!("no DPDK port {port} to reach {ip}"));
        };
        let ev = self
            .arp_waiters
            .borrow_mut()
            .entry(ip)
            .or_insert_with(|| Rc::new(sync::Event::new()))
            .clone();
        for _ in 0..4 {
            ev.reset();
            bump(&stats(&self.shared).arp_requests);
            self.raw_frame(port, &arp::request(&p.mac, self.shared.cfg.ip, ip));
            self.flush();
            self.mark_active(Instant::now());
            ev.wait_until(Instant::now() + Duration::from_millis(250));
            if let Some((mac, port)) = self.shared.arp.lookup(ip) {
                self.arp_waiters.borrow_mut().remove(&ip);
                return Ok((mac, port as usize));
            }
        }
        self.arp_waiters.borrow_mut().remove(&ip);
        Err(format!("no ARP reply from {ip} on DPDK {}", p.describe()))
    }

    /// One request to `peer` (`dpdk://IP:PORT`) and its answer.
    pub fn call(&self, peer: &str, req: Request<'_>) -> Result<Frame, TransportError> {
        let unreachable = |reason: String| TransportError::Unreachable {
            peer: peer.into(),
            reason,
        };
        let lost = |reason: String| TransportError::Lost {
            peer: peer.into(),
            reason,
        };
        if !is_dpdk_addr(peer) {
            return Err(unreachable("not a dpdk:// address".into()));
        }
        let Some(mut dst) = parse_peer_addr(peer) else {
            return Err(unreachable("not dpdk://IPv4:PORT".into()));
        };
        if self.shared.stopping.load(Ordering::Acquire) {
            return Err(unreachable("the DPDK transport is shutting down".into()));
        }
        let (mac, port) = self.resolve(dst.ip).map_err(unreachable)?;
        if !self.shared.links.up[port].load(Ordering::Acquire) {
            return Err(unreachable(format!(
                "link down on DPDK {}",
                self.shared.ports[port].describe()
            )));
        }
        let r = (self.reactor % PORT_SPAN as usize) as u16;
        dst.port = dst.port.wrapping_add(r);
        let local = self.shared.cfg.local(self.reactor).port;
        let ps = self
            .session((local, dst), port, mac)
            .ok_or_else(|| unreachable("too many sessions".into()))?;
        let id = ps.next_req.get();
        ps.next_req.set(id + 1);
        let mut header = req.header;
        header.request_id = id;
        let head = proto::encode_head(header, &req.body, req.payload);
        let reply = Rc::new(Reply {
            result: RefCell::new(None),
            done: sync::Event::new(),
        });
        ps.pending.borrow_mut().insert(id, reply.clone());
        ps.s.borrow_mut().awaiting += 1;
        let done = |ps: &PeerSession| {
            ps.pending.borrow_mut().remove(&id);
            let mut s = ps.s.borrow_mut();
            s.awaiting = s.awaiting.saturating_sub(1);
        };
        if let Err(e) = self.send_message(&ps, &head[4..], req.payload) {
            done(&ps);
            return Err(lost(e));
        }
        let timeout = self.shared.cfg.request_timeout;
        let answered = reply.done.wait_until(Instant::now() + timeout);
        done(&ps);
        if !answered {
            // As over TCP: a peer that does not answer in time is taken
            // for failed, and everything in flight to it fails.
            self.fail_session(&ps, &format!("a request to {peer} timed out"), false);
            return Err(TransportError::Timeout {
                peer: peer.into(),
                timeout,
            });
        }
        self.mark_active(Instant::now());
        let result = reply.result.borrow_mut().take();
        match result {
            Some(Ok(f)) => Ok(f),
            Some(Err(reason)) => Err(lost(reason)),
            None => Err(lost("no answer".into())),
        }
    }
}

/// Switches the poller between active and idle polling.
fn governor(net: Rc<ReactorNet>) {
    let cfg = &net.shared.cfg;
    loop {
        if net.shared.stopping.load(Ordering::Acquire) || net.poller.get().is_none() {
            return;
        }
        if net.active.get() {
            rt::sleep(cfg.idle_after / 2);
            let quiet = net.last_activity.get().elapsed() >= cfg.idle_after && !net.busy();
            if quiet && net.poller.get().is_some() {
                if let Err(e) = net.set_mode(false) {
                    log::error!("dpdk: {e}");
                }
            }
        } else {
            net.activity.reset();
            if net.last_activity.get().elapsed() >= cfg.idle_after {
                net.activity
                    .wait_until(Instant::now() + Duration::from_millis(500));
            }
            if net.last_activity.get().elapsed() < cfg.idle_after && net.poller.get().is_some() {
                if let Err(e) = net.set_mode(true) {
                    log::error!("dpdk: {e}");
                }
            }
        }
    }
}

/// Bytes `[off, off + len)` of a packet, as slices of its segments (no
/// copy, and no allocation for chains of up to 8 segments); fewer bytes if
/// the packet is shorter.
fn byte_range(m: &Mbuf, mut off: usize, len: usize) -> smallvec::SmallVec<[&[u8]; 8]> {
    let mut out = smallvec::SmallVec::new();
    let mut left = len;
    for s in m.segments() {
        if left == 0 {
            break;
        }
        if off >= s.len() {
            off -= s.len();
            continue;
        }
        let n = (s.len() - off).min(left);
        out.push(&s[off..off + n]);
        left -= n;
        off = 0;
    }
    out
}
