//! Reliable delivery between two endpoints: a session per (local endpoint,
//! peer endpoint), carrying messages both ways.
//!
//! - Every DATA packet has a sequence number; the receiver acknowledges
//!   cumulatively (`ack`: everything below arrived) and selectively (a
//!   bitmap of what arrived beyond), suppresses duplicates by sequence
//!   number, and grants credit (`window`): the sender keeps its sequence
//!   numbers below `ack + window` and below its own window, so at most a
//!   window of packets is in flight and buffered per direction.
//! - The sender keeps each packet (a shared reference, not a copy) until
//!   it is acknowledged, retransmits it when its timer expires (RFC 6298
//!   estimate, doubling per retry) or when three later packets were
//!   acknowledged before it (fast retransmit), and declares the peer dead
//!   after `max_retries`, or when nothing at all was heard from it for
//!   `dead_after` while something was expected (probes ask for an ACK in
//!   between) — what a broken TCP connection is to the TCP transport.
//! - Epochs: each side names its incarnation of the session with a random
//!   epoch and stamps it on every packet, with the peer's epoch as it knows
//!   it. A new epoch from the peer means it restarted (or gave up on us):
//!   the session resets — everything in flight fails, sequence numbers
//!   start again — and packets of retired epochs are ignored. A packet sent
//!   to an epoch we do not have is answered by RESET, so a peer that still
//!   talks to our previous incarnation learns it at once.
//!
//! Pure state: no clock, no buffers of its own beyond the kept packets
//! (type `P`: an mbuf in production, bytes in tests), no I/O.

use super::frag::{Added, Message, Reassembly};
use super::wire::{Kind, WireHeader, FLAG_ACK_REQ};
use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

/// The largest window (the selective-ack bitmap covers it).
pub const MAX_WINDOW: u32 = 512;
const SACK_BYTES: usize = (MAX_WINDOW / 8) as usize;

/// Another reference to a kept packet, to hand to the driver again.
pub trait Retain {
    fn retain(&self) -> Self;
}

impl Retain for Vec<u8> {
    fn retain(&self) -> Self {
        self.clone()
    }
}

#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Packets in flight per direction (at most [`MAX_WINDOW`]).
    pub window: u32,
    pub rto_initial: Duration,
    pub rto_min: Duration,
    pub rto_max: Duration,
    /// Retransmissions of one packet before the peer is declared dead.
    pub max_retries: u32,
    /// Silence while waiting for the peer that means it is dead.
    pub dead_after: Duration,
    /// How often to probe a silent peer we wait for.
    pub probe_every: Duration,
    /// Bytes of partially received messages held at most.
    pub reassembly_limit: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            window: 256,
            rto_initial: Duration::from_millis(50),
            // Above the idle poll interval of an adaptive reactor, so that
            // an asleep peer is not taken for a lossy one.
            rto_min: Duration::from_millis(20),
            rto_max: Duration::from_secs(1),
            max_retries: 10,
            dead_after: Duration::from_secs(3),
            probe_every: Duration::from_millis(250),
            reassembly_limit: 256 << 20,
        }
    }
}

struct Slot<P> {
    pkt: Option<P>,
    sent_at: Instant,
    retries: u32,
    sacked: bool,
    fast_done: bool,
}

/// What a received packet did.
pub struct Rx<P> {
    /// A message completed.
    pub delivered: Option<Message>,
    /// The session was reset (why): everything in flight on it failed.
    pub reset: Option<&'static str>,
    /// Send this RESET back.
    pub send_reset: Option<WireHeader>,
    /// The peer asked for an ACK now.
    pub ack_now: bool,
    pub duplicate: bool,
    pub stale: bool,
    /// Why the packet was refused, if it was malformed.
    pub malformed: Option<&'static str>,
    /// Packets were acknowledged or credit granted: blocked senders may go.
    pub opened: bool,
    /// Packets to transmit again now (fast retransmit).
    pub retransmit: Vec<P>,
}

impl<P> Default for Rx<P> {
    fn default() -> Self {
        Self {
            delivered: None,
            reset: None,
            send_reset: None,
            ack_now: false,
            duplicate: false,
            stale: false,
            malformed: None,
            opened: false,
            retransmit: Vec::new(),
        }
    }
}

/// What the timers did.
pub struct Tick<P> {
    pub retransmit: Vec<P>,
    /// Send a probe (an ACK asking for an ACK).
    pub probe: bool,
    /// The peer is dead (why); the caller resets the session.
    pub dead: Option<String>,
}

fn lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// A fresh random epoch (never 0).
pub fn new_epoch() -> u64 {
    loop {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        h.write_u32(std::process::id());
        let e = h.finish();
        if e != 0 {
            return e;
        }
    }
}

pub struct Session<P> {
    cfg: SessionConfig,
    pub local_epoch: u64,
    pub peer_epoch: u64,
    retired: VecDeque<u64>,
    /// Bumped by every reset: work of an older generation is void.
    pub generation: u64,
    // Sending.
    snd_una: u32,
    snd_nxt: u32,
    slots: VecDeque<Slot<P>>,
    peer_limit: u32,
    last_ack: u32,
    next_msg: u64,
    srtt: Option<Duration>,
    rttvar: Duration,
    rto: Duration,
    // Receiving.
    rcv_nxt: u32,
    seen: Vec<u64>,
    reasm: Reassembly,
    /// An ACK is owed to the peer.
    pub ack_due: bool,
    /// Grant no credit (the receiver is backed up).
    pub hold: bool,
    // Liveness.
    last_heard: Instant,
    quiet_from: Instant,
    last_probe: Instant,
    /// Calls waiting for an answer over this session (kept by the caller).
    pub awaiting: usize,
    /// Senders waiting for credit (kept by the caller).
    pub blocked: usize,
}

impl<P: Retain> Session<P> {
    pub fn new(cfg: SessionConfig, now: Instant) -> Self {
        let window = cfg.window.clamp(1, MAX_WINDOW);
        let cfg = SessionConfig { window, ..cfg };
        Self {
            rto: cfg.rto_initial,
            reasm: Reassembly::new(cfg.reassembly_limit),
            cfg,
            local_epoch: new_epoch(),
            peer_epoch: 0,
            retired: VecDeque::new(),
            generation: 0,
            snd_una: 1,
            snd_nxt: 1,
            slots: VecDeque::new(),
            peer_limit: 1 + window,
            last_ack: 1,
            next_msg: 1,
            srtt: None,
            rttvar: Duration::ZERO,
            rcv_nxt: 1,
            seen: vec![0; (MAX_WINDOW / 64) as usize],
            ack_due: false,
            hold: false,
            last_heard: now,
            quiet_from: now,
            last_probe: now,
            awaiting: 0,
            blocked: 0,
        }
    }

    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    /// Forgets everything in flight both ways and starts a new epoch.
    pub fn reset(&mut self, now: Instant) {
        if self.peer_epoch != 0 {
            self.retired.push_back(self.peer_epoch);
            if self.retired.len() > 8 {
                self.retired.pop_front();
            }
        }
        self.peer_epoch = 0;
        self.local_epoch = new_epoch();
        self.generation += 1;
        self.snd_una = 1;
        self.snd_nxt = 1;
        self.slots.clear();
        self.peer_limit = 1 + self.cfg.window;
        self.last_ack = 1;
        self.srtt = None;
        self.rto = self.cfg.rto_initial;
        self.rcv_nxt = 1;
        self.seen.iter_mut().for_each(|w| *w = 0);
        self.reasm.clear();
        self.ack_due = false;
        self.last_heard = now;
        self.quiet_from = now;
    }

    /// Packets sent and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.slots.len()
    }

    /// Whether a DATA packet may be sent now (window and credit).
    pub fn can_send(&self) -> bool {
        self.snd_nxt.wrapping_sub(self.snd_una) < self.cfg.window
            && lt(self.snd_nxt, self.peer_limit)
    }

    pub fn next_msg_id(&mut self) -> u64 {
        let id = self.next_msg;
        self.next_msg += 1;
        id
    }

    pub fn rto(&self) -> Duration {
        self.rto
    }

    fn stamp(&self, kind: Kind) -> WireHeader {
        let mut h = WireHeader::new(kind);
        h.src_epoch = self.local_epoch;
        h.dst_epoch = self.peer_epoch;
        h.ack = self.rcv_nxt;
        h.window = if self.hold { 0 } else { self.cfg.window };
        h
    }

    /// Sends one piece: `build` makes the packet from its header (or gives
    /// `None`: out of buffers, nothing is consumed). The session keeps a
    /// reference for retransmission and returns the packet to transmit.
    /// Only when [`Self::can_send`].
    #[allow(clippy::too_many_arguments)]
    pub fn send_piece(
        &mut self,
        msg_id: u64,
        msg_len: u32,
        split: u32,
        frag_off: u32,
        len: u16,
        now: Instant,
        build: impl FnOnce(&WireHeader) -> Option<P>,
    ) -> Option<P> {
        let mut h = self.stamp(Kind::Data);
        h.seq = self.snd_nxt;
        h.msg_id = msg_id;
        h.msg_len = msg_len;
        h.split = split;
        h.frag_off = frag_off;
        h.len = len;
        let p = build(&h)?;
        self.snd_nxt = self.snd_nxt.wrapping_add(1);
        self.slots.push_back(Slot {
            pkt: Some(p.retain()),
            sent_at: now,
            retries: 0,
            sacked: false,
            fast_done: false,
        });
        // The piggybacked ack covers what we owed.
        self.ack_due = false;
        Some(p)
    }

    /// An ACK (with the selective bitmap) to send now; `probe` asks the
    /// peer to answer with one.
    pub fn ack(&mut self, probe: bool) -> (WireHeader, Vec<u8>) {
        let mut h = self.stamp(Kind::Ack);
        if probe {
            h.flags |= FLAG_ACK_REQ;
        }
        let mut sack = [0u8; SACK_BYTES];
        let mut used = 0;
        for i in 0..(MAX_WINDOW - 1) as usize {
            if self.bit(self.rcv_nxt.wrapping_add(1 + i as u32)) {
                sack[i / 8] |= 1 << (i % 8);
                used = i / 8 + 1;
            }
        }
        h.len = used as u16;
        self.ack_due = false;
        (h, sack[..used].to_vec())
    }

    /// The RESET answering a packet sent to an epoch we do not have.
    pub fn reset_reply(local_epoch: u64, offending: &WireHeader) -> WireHeader {
        let mut h = WireHeader::new(Kind::Reset);
        h.src_epoch = local_epoch;
        h.dst_epoch = offending.src_epoch;
        h.msg_id = offending.dst_epoch;
        h
    }

    fn bit(&self, seq: u32) -> bool {
        let i = (seq % MAX_WINDOW) as usize;
        self.seen[i / 64] & (1 << (i % 64)) != 0
    }

    fn set_bit(&mut self, seq: u32, v: bool) {
        let i = (seq % MAX_WINDOW) as usize;
        if v {
            self.seen[i / 64] |= 1 << (i % 64);
        } else {
            self.seen[i / 64] &= !(1 << (i % 64));
        }
    }

    fn mark(&mut self, seq: u32) {
        self.set_bit(seq, true);
        while self.bit(self.rcv_nxt) {
            self.set_bit(self.rcv_nxt, false);
            self.rcv_nxt = self.rcv_nxt.wrapping_add(1);
        }
    }

    /// Handles a received packet (`data`: what follows its header).
    pub fn on_packet(&mut self, h: &WireHeader, data: &[u8], now: Instant) -> Rx<P> {
        self.on_packet_parts(h, &[data], now)
    }

    /// [`Self::on_packet`] for a packet whose data arrived in several
    /// parts (the segments of a chained mbuf), in order: a DATA piece is
    /// copied from each part straight into its message.
    pub fn on_packet_parts(&mut self, h: &WireHeader, parts: &[&[u8]], now: Instant) -> Rx<P> {
        let mut rx = Rx::default();
        if h.kind == Kind::Reset {
            if h.dst_epoch == self.local_epoch
                && self.peer_epoch != 0
                && h.msg_id == self.peer_epoch
            {
                self.reset(now);
                rx.reset = Some("the peer does not know this session (it restarted)");
            } else {
                rx.stale = true;
            }
            return rx;
        }
        if h.dst_epoch != 0 && h.dst_epoch != self.local_epoch {
            rx.send_reset = Some(Self::reset_reply(self.local_epoch, h));
            rx.stale = true;
            return rx;
        }
        if self.retired.contains(&h.src_epoch) {
            rx.stale = true;
            return rx;
        }
        if self.peer_epoch == 0 {
            self.peer_epoch = h.src_epoch;
        } else if h.src_epoch != self.peer_epoch {
            self.reset(now);
            rx.reset = Some("the peer restarted its side of the session");
            self.peer_epoch = h.src_epoch;
        }
        self.last_heard = now;
        if h.dst_epoch == self.local_epoch {
            // The selective-ack bitmap is small: gathered when in parts.
            let mut buf = [0u8; SACK_BYTES];
            let sack: &[u8] = match (h.kind, parts) {
                (Kind::Ack, [one]) => one,
                (Kind::Ack, _) => {
                    let mut n = 0;
                    for p in parts {
                        let k = p.len().min(SACK_BYTES - n);
                        buf[n..n + k].copy_from_slice(&p[..k]);
                        n += k;
                    }
                    &buf[..n]
                }
                _ => &[],
            };
            self.on_ack(h.ack, h.window, sack, now, &mut rx);
        }
        match h.kind {
            Kind::Ack => {
                rx.ack_now = h.flags & FLAG_ACK_REQ != 0;
            }
            Kind::Data => self.on_data(h, parts, &mut rx),
            Kind::Reset => {}
        }
        rx
    }

    fn on_data(&mut self, h: &WireHeader, parts: &[&[u8]], rx: &mut Rx<P>) {
        self.ack_due = true;
        let d = h.seq.wrapping_sub(self.rcv_nxt);
        if (d as i32) < 0 || self.bit(h.seq) {
            rx.duplicate = true;
            return;
        }
        if d >= MAX_WINDOW {
            rx.malformed = Some("sequence number beyond the window");
            return;
        }
        match self
            .reasm
            .add_parts(h.msg_id, h.msg_len, h.split, h.frag_off, parts)
        {
            Ok(Added::NoRoom) => return,
            Ok(Added::Incomplete) => {}
            Ok(Added::Complete(m)) => rx.delivered = Some(m),
            Err(_) => {
                // Taken (so the stream moves on) but its message is void;
                // whoever waits for it times out.
                rx.malformed = Some("fragment inconsistent with its message");
                self.reasm.discard(h.msg_id);
            }
        }
        self.mark(h.seq);
    }

    fn on_ack(&mut self, ack: u32, window: u32, sack: &[u8], now: Instant, rx: &mut Rx<P>) {
        if lt(self.snd_nxt, ack) {
            return; // acknowledges what we never sent
        }
        if lt(self.snd_una, ack) {
            let mut sample = None;
            while lt(self.snd_una, ack) {
                if let Some(s) = self.slots.pop_front() {
                    if s.retries == 0 {
                        sample = Some(now.saturating_duration_since(s.sent_at));
                    }
                }
                self.snd_una = self.snd_una.wrapping_add(1);
            }
            if let Some(r) = sample {
                self.rtt_sample(r);
            }
            rx.opened = true;
        }
        if !lt(ack, self.last_ack) {
            self.last_ack = ack;
            let limit = ack.wrapping_add(window.min(MAX_WINDOW));
            if lt(self.peer_limit, limit) {
                rx.opened = true;
            }
            self.peer_limit = limit;
        }
        let mut highest = None;
        for (byte, &b) in sack.iter().enumerate() {
            if b == 0 {
                continue;
            }
            for bit in 0..8 {
                if b & (1 << bit) == 0 {
                    continue;
                }
                let seq = ack.wrapping_add(1 + (byte * 8 + bit) as u32);
                let i = seq.wrapping_sub(self.snd_una) as usize;
                if let Some(s) = self.slots.get_mut(i) {
                    s.sacked = true;
                    s.pkt = None;
                    highest = Some(i);
                }
            }
        }
        // Fast retransmit: three later packets arrived before this one.
        if let Some(hi) = highest {
            let min_age = self.srtt.unwrap_or(self.cfg.rto_min) / 2;
            for s in self.slots.iter_mut().take(hi.saturating_sub(2)) {
                if s.sacked || s.fast_done || now.saturating_duration_since(s.sent_at) < min_age {
                    continue;
                }
                if let Some(p) = &s.pkt {
                    s.fast_done = true;
                    s.sent_at = now;
                    s.retries += 1;
                    rx.retransmit.push(p.retain());
                }
            }
        }
    }

    fn rtt_sample(&mut self, r: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(s) => {
                let diff = s.abs_diff(r);
                self.rttvar = (self.rttvar * 3 + diff) / 4;
                self.srtt = Some((s * 7 + r) / 8);
            }
        }
        let s = self.srtt.unwrap_or(r);
        self.rto = (s + (self.rttvar * 4).max(Duration::from_millis(1)))
            .clamp(self.cfg.rto_min, self.cfg.rto_max);
    }

    /// Runs the timers: retransmissions, probes, death.
    pub fn on_tick(&mut self, now: Instant) -> Tick<P> {
        let mut t = Tick {
            retransmit: Vec::new(),
            probe: false,
            dead: None,
        };
        let base = self.rto;
        for (i, s) in self.slots.iter_mut().enumerate() {
            if s.sacked {
                continue;
            }
            let Some(p) = &s.pkt else { continue };
            let timeout = (base * (1u32 << s.retries.min(6))).min(self.cfg.rto_max);
            if now.saturating_duration_since(s.sent_at) < timeout {
                continue;
            }
            if s.retries >= self.cfg.max_retries {
                t.dead = Some(format!(
                    "packet {} not acknowledged after {} retransmissions",
                    self.snd_una.wrapping_add(i as u32),
                    s.retries
                ));
                return t;
            }
            s.retries += 1;
            s.sent_at = now;
            t.retransmit.push(p.retain());
        }
        let expecting = !self.slots.is_empty() || self.awaiting > 0 || self.blocked > 0;
        if !expecting {
            self.quiet_from = now;
            return t;
        }
        let silent = now.saturating_duration_since(self.last_heard.max(self.quiet_from));
        if silent >= self.cfg.dead_after {
            t.dead = Some(format!("nothing heard from the peer for {silent:?}"));
        } else if silent >= self.cfg.probe_every
            && now.saturating_duration_since(self.last_probe) >= self.cfg.probe_every
        {
            self.last_probe = now;
            t.probe = true;
        }
        t
    }

    /// Whether timers have anything to watch.
    pub fn needs_tick(&self) -> bool {
        !self.slots.is_empty() || self.awaiting > 0 || self.blocked > 0
    }
}

#[cfg(test)]
mod tests {
    use super::super::frag::{copy_piece, pieces};
    use super::super::wire::HDR_LEN;
    use super::*;

    /// Packets on the simulated wire: header bytes + data.
    type Pkt = Vec<u8>;

    fn send_msg(s: &mut Session<Pkt>, msg: &[u8], now: Instant, out: &mut Vec<Pkt>) -> bool {
        let id = s.next_msg_id();
        for (off, len) in pieces(msg.len(), 100) {
            if !s.can_send() {
                return false;
            }
            let p = s
                .send_piece(id, msg.len() as u32, 64, off as u32, len as u16, now, |h| {
                    let mut b = vec![0u8; HDR_LEN + len];
                    h.encode(&mut b);
                    copy_piece(msg, &[], off, &mut b[HDR_LEN..]);
                    Some(b)
                })
                .unwrap();
            out.push(p);
        }
        true
    }

    fn recv(
        s: &mut Session<Pkt>,
        p: &[u8],
        now: Instant,
        got: &mut Vec<Vec<u8>>,
        out: &mut Vec<Pkt>,
    ) {
        let h = WireHeader::decode(p, p.len() - HDR_LEN).unwrap();
        let data = &p[HDR_LEN..HDR_LEN + h.len as usize];
        // Every third packet in three parts, as a chained mbuf gives it.
        let rx = if h.seq % 3 == 0 || (h.kind == Kind::Ack && h.ack % 3 == 0) {
            let (a, b) = (data.len() / 3, 2 * data.len() / 3);
            s.on_packet_parts(&h, &[&data[..a], &data[a..b], &data[b..]], now)
        } else {
            s.on_packet(&h, data, now)
        };
        if let Some(m) = rx.delivered {
            got.push([m.head, m.payload].concat());
        }
        out.extend(rx.retransmit);
        if s.ack_due || rx.ack_now {
            let (h, sack) = s.ack(false);
            let mut b = vec![0u8; HDR_LEN];
            h.encode(&mut b);
            b.extend_from_slice(&sack);
            out.push(b);
        }
    }

    /// Two sessions over a wire that drops, duplicates and reorders: every
    /// message arrives exactly once, intact.
    #[test]
    fn lossy_wire_delivers_each_message_once() {
        let t0 = Instant::now();
        let cfg = SessionConfig {
            window: 32,
            ..Default::default()
        };
        let (mut a, mut b) = (Session::new(cfg.clone(), t0), Session::new(cfg, t0));
        let msgs: Vec<Vec<u8>> = (0..40u32)
            .map(|i| {
                (0..(64 + i * 37) as usize)
                    .map(|j| (i as usize * 31 + j) as u8)
                    .collect()
            })
            .collect();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % 100
        };
        let (mut to_b, mut to_a): (Vec<Pkt>, Vec<Pkt>) = (Vec::new(), Vec::new());
        let (mut got_b, mut got_a) = (Vec::new(), Vec::new());
        let mut next = 0;
        let mut now = t0;
        for _round in 0..20_000 {
            now += Duration::from_millis(1);
            while next < msgs.len() && send_msg(&mut a, &msgs[next], now, &mut to_b) {
                next += 1;
            }
            // The wire: 10 % lost, 5 % duplicated, order shuffled a little.
            let mut wire: Vec<Pkt> = Vec::new();
            for p in to_b.drain(..) {
                match rand() {
                    0..=9 => {}
                    10..=14 => {
                        wire.push(p.clone());
                        wire.push(p);
                    }
                    _ => wire.push(p),
                }
            }
            if wire.len() > 2 && rand() < 30 {
                wire.swap(0, 1);
            }
            for p in wire {
                recv(&mut b, &p, now, &mut got_b, &mut to_a);
            }
            for p in std::mem::take(&mut to_a) {
                if rand() >= 10 {
                    recv(&mut a, &p, now, &mut got_a, &mut to_b);
                }
            }
            let t = a.on_tick(now);
            assert!(t.dead.is_none(), "{:?}", t.dead);
            to_b.extend(t.retransmit);
            if got_b.len() == msgs.len() && a.in_flight() == 0 {
                break;
            }
        }
        // Messages may complete out of order; each exactly once.
        got_b.sort();
        let mut want = msgs.clone();
        want.sort();
        assert_eq!(got_b, want);
        assert_eq!(a.in_flight(), 0);
    }

    /// Messages both ways at once, a small window (credit runs out), and a
    /// wire that loses 15 %, duplicates 20 % and delivers each round's
    /// packets in reverse half the time: each side gets every message of
    /// the other exactly once, intact, and nobody is declared dead.
    #[test]
    fn both_ways_with_a_small_window_and_heavy_reordering() {
        let t0 = Instant::now();
        let cfg = SessionConfig {
            window: 8,
            ..Default::default()
        };
        let mut s = [Session::new(cfg.clone(), t0), Session::new(cfg, t0)];
        let msgs: [Vec<Vec<u8>>; 2] = [0u8, 1].map(|side| {
            (0..30u32)
                .map(|i| {
                    (0..(64 + i * 53) as usize)
                        .map(|j| (i as usize * 7 + j + side as usize * 101) as u8)
                        .collect()
                })
                .collect()
        });
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut rand = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % 100
        };
        let mut wire: [Vec<Pkt>; 2] = [Vec::new(), Vec::new()]; // to side i
        let mut got: [Vec<Vec<u8>>; 2] = [Vec::new(), Vec::new()];
        // Per side: (message, next piece's offset, its msg_id). A message
        // larger than the window goes out over several rounds.
        let mut next: [(usize, usize, Option<u64>); 2] = [(0, 0, None); 2];
        let mut now = t0;
        let mut rounds = 0;
        while rounds < 50_000 {
            rounds += 1;
            now += Duration::from_millis(1);
            for i in 0..2 {
                'msgs: while next[i].0 < msgs[i].len() {
                    let msg = &msgs[i][next[i].0];
                    let id = *next[i].2.get_or_insert_with(|| s[i].next_msg_id());
                    let from = next[i].1;
                    for (off, len) in pieces(msg.len(), 100).skip_while(|(o, _)| *o < from) {
                        if !s[i].can_send() {
                            break 'msgs;
                        }
                        let p = s[i]
                            .send_piece(
                                id,
                                msg.len() as u32,
                                64,
                                off as u32,
                                len as u16,
                                now,
                                |h| {
                                    let mut b = vec![0u8; HDR_LEN + len];
                                    h.encode(&mut b);
                                    copy_piece(msg, &[], off, &mut b[HDR_LEN..]);
                                    Some(b)
                                },
                            )
                            .unwrap();
                        wire[1 - i].push(p);
                        next[i].1 = off + len;
                    }
                    next[i] = (next[i].0 + 1, 0, None);
                }
            }
            for i in 0..2 {
                let mut batch: Vec<Pkt> = Vec::new();
                for p in wire[i].drain(..) {
                    match rand() {
                        0..=14 => {}
                        15..=34 => {
                            batch.push(p.clone());
                            batch.push(p);
                        }
                        _ => batch.push(p),
                    }
                }
                if rand() < 50 {
                    batch.reverse();
                }
                let mut back = Vec::new();
                let [a, b] = &mut s;
                let me = if i == 0 { a } else { b };
                for p in batch {
                    recv(me, &p, now, &mut got[i], &mut back);
                }
                wire[1 - i].extend(back);
            }
            for i in 0..2 {
                let t = s[i].on_tick(now);
                assert!(t.dead.is_none(), "side {i}: {:?}", t.dead);
                assert!(s[i].in_flight() <= 8, "the window was overrun");
                wire[1 - i].extend(t.retransmit);
            }
            if (0..2).all(|i| got[i].len() == msgs[1 - i].len() && s[i].in_flight() == 0) {
                break;
            }
        }
        for i in 0..2 {
            let mut g = got[i].clone();
            g.sort();
            let mut want = msgs[1 - i].clone();
            want.sort();
            assert_eq!(
                g.len(),
                want.len(),
                "side {i}: {} of {} messages after {rounds} rounds",
                g.len(),
                want.len()
            );
            assert!(g == want, "side {i}: a message arrived damaged");
        }
    }

    #[test]
    fn a_silent_peer_is_declared_dead_and_a_restart_resets() {
        let t0 = Instant::now();
        let mut a: Session<Pkt> = Session::new(SessionConfig::default(), t0);
        let mut out = Vec::new();
        assert!(send_msg(&mut a, &[7u8; 200], t0, &mut out));
        let mut now = t0;
        let mut dead = None;
        for _ in 0..10_000 {
            now += Duration::from_millis(10);
            let t = a.on_tick(now);
            if t.dead.is_some() {
                dead = t.dead;
                break;
            }
        }
        let dead = dead.expect("declared dead");
        assert!(
            now - t0 <= Duration::from_secs(8),
            "{dead} after {:?}",
            now - t0
        );

        // B talks to A's epoch; A restarts (new session): B is told by RESET.
        let mut b: Session<Pkt> = Session::new(SessionConfig::default(), t0);
        let mut a: Session<Pkt> = Session::new(SessionConfig::default(), t0);
        let (mut to_a, mut to_b, mut got) = (Vec::new(), Vec::new(), Vec::new());
        send_msg(&mut b, &[1u8; 100], t0, &mut to_a);
        for p in to_a.drain(..) {
            recv(&mut a, &p, t0, &mut got, &mut to_b);
        }
        for p in to_b.drain(..) {
            recv(&mut b, &p, t0, &mut got, &mut to_a);
        }
        assert_eq!(b.peer_epoch, a.local_epoch);
        let mut a2: Session<Pkt> = Session::new(SessionConfig::default(), t0);
        send_msg(&mut b, &[2u8; 100], t0, &mut to_a);
        let p = to_a.pop().unwrap();
        let h = WireHeader::decode(&p, p.len() - HDR_LEN).unwrap();
        let rx = a2.on_packet(&h, &p[HDR_LEN..], t0);
        let reset = rx.send_reset.expect("RESET");
        let rx = b.on_packet(&reset, &[], t0);
        assert!(rx.reset.is_some());
        assert_eq!(b.in_flight(), 0);
        assert_eq!(b.generation, 1);
        // A stale RESET (about an epoch B no longer uses) changes nothing.
        let rx = b.on_packet(&reset, &[], t0);
        assert!(rx.reset.is_none() && rx.stale);
    }
}
