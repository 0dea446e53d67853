//! One submission/completion queue pair in driver memory: the rings, the
//! command slots (a command id is a slot index), doorbells, and reaping.
//!
//! The queue is a plain single-owner structure: the reactor that owns an
//! I/O queue pair, or whoever holds the lock of the admin or shared queue,
//! drives it. Slot payloads `T` say what a completion finishes.
//!
//! Ordering: an entry is written to the ring, then [`wmb`] makes it
//! visible before the tail doorbell write; a completion's phase bit is read
//! first and [`rmb`] keeps the rest of the entry from being read earlier.
//! Doorbells are written once per batch ([`Queue::ring`]), not per command:
//! a doorbell is an MMIO write, which costs a VM exit under virtualization.

use super::cmd::{Command, Completion, Status};
use super::mem::DmaSlice;
use super::regs;
use ferrite_sys::mmio::{rmb, wmb, Mmio};
use std::sync::Arc;
use std::time::Instant;

/// Size of a submission queue entry.
pub const SQE: usize = 64;
/// Size of a completion queue entry.
pub const CQE: usize = 16;
/// Each command id owns one 4 KiB page for its PRP list or SGL segment.
pub const LIST_PAGE: usize = 4096;

/// The memory of a queue pair: rings and per-command list pages.
#[derive(Clone, Debug)]
pub struct QueueMem {
    pub sq: DmaSlice,
    pub cq: DmaSlice,
    pub lists: Vec<DmaSlice>,
}

/// A command in flight.
pub struct Slot<T> {
    pub payload: T,
    pub cmd: Command,
    pub submitted: Instant,
}

/// A queue pair.
pub struct Queue<T> {
    pub qid: u16,
    entries: u16,
    pub mem: QueueMem,
    bar: Arc<Mmio>,
    sq_db: usize,
    cq_db: usize,
    sq_tail: u16,
    cq_head: u16,
    phase: bool,
    slots: Vec<Option<Slot<T>>>,
    free: Vec<u16>,
    unrung: u32,
    inflight: usize,
}

impl<T> Queue<T> {
    /// A queue of `entries` ring entries (at most `entries - 1` commands in
    /// flight, so the submission ring can never overflow).
    pub fn new(qid: u16, entries: u16, mem: QueueMem, bar: Arc<Mmio>, dstrd: u32) -> Queue<T> {
        let depth = (entries - 1) as usize;
        Queue {
            qid,
            entries,
            mem,
            bar,
            sq_db: regs::sq_doorbell(qid, dstrd),
            cq_db: regs::cq_doorbell(qid, dstrd),
            sq_tail: 0,
            cq_head: 0,
            phase: true,
            slots: (0..depth).map(|_| None).collect(),
            free: (0..depth as u16).rev().collect(),
            unrung: 0,
            inflight: 0,
        }
    }

    /// Ring entries.
    pub fn entries(&self) -> u16 {
        self.entries
    }

    /// Commands in flight.
    pub fn inflight(&self) -> usize {
        self.inflight
    }

    /// Whether a command id is free.
    pub fn has_space(&self) -> bool {
        !self.free.is_empty()
    }

    /// Takes a command id (its list page is [`Queue::list`]).
    pub fn alloc_cid(&mut self) -> Option<u16> {
        self.free.pop()
    }

    /// Returns an unused command id.
    pub fn release_cid(&mut self, cid: u16) {
        if (cid as usize) < self.slots.len() && self.slots[cid as usize].is_none() {
            self.free.push(cid);
        }
    }

    /// The list page of command id `cid`.
    pub fn list(&self, cid: u16) -> &DmaSlice {
        &self.mem.lists[cid as usize]
    }

    /// Writes the command into the ring under id `cid` (from
    /// [`Queue::alloc_cid`]); the device learns of it at the next
    /// [`Queue::ring`].
    pub fn push(&mut self, cid: u16, mut cmd: Command, payload: T) {
        cmd.set_cid(cid);
        let off = self.mem.sq.off + self.sq_tail as usize * SQE;
        self.mem.sq.mem.write_words(off, &cmd.dw);
        self.sq_tail = (self.sq_tail + 1) % self.entries;
        self.slots[cid as usize] = Some(Slot {
            payload,
            cmd,
            submitted: Instant::now(),
        });
        self.unrung += 1;
        self.inflight += 1;
    }

    /// Whether commands were pushed since the last doorbell.
    pub fn needs_ring(&self) -> bool {
        self.unrung > 0
    }

    /// Tells the device about pushed commands (one doorbell write).
    pub fn ring(&mut self) -> bool {
        if self.unrung == 0 {
            return false;
        }
        wmb();
        self.bar.write32(self.sq_db, self.sq_tail as u32);
        self.unrung = 0;
        true
    }

    /// Reaps up to `max` completions into `out`; writes the head doorbell
    /// once. Returns how many were reaped.
    pub fn reap(&mut self, max: usize, out: &mut Vec<(Slot<T>, Completion)>) -> usize {
        let mut n = 0;
        let cq = &self.mem.cq;
        while n < max {
            let off = cq.off + self.cq_head as usize * CQE;
            let Some(dw3) = cq.mem.read32(off + 12) else {
                break;
            };
            if (dw3 >> 16 & 1 == 1) != self.phase {
                break;
            }
            rmb();
            let dw0 = cq.mem.read32(off).unwrap_or(0);
            let dw2 = cq.mem.read32(off + 8).unwrap_or(0);
            self.cq_head += 1;
            if self.cq_head == self.entries {
                self.cq_head = 0;
                self.phase = !self.phase;
            }
            n += 1;
            let c = Completion {
                result: dw0,
                sq_head: dw2 as u16,
                cid: dw3 as u16,
                status: Status::from_dw3(dw3),
            };
            match self
                .slots
                .get_mut(c.cid as usize)
                .and_then(|s| s.take())
            {
                Some(slot) => {
                    self.free.push(c.cid);
                    self.inflight -= 1;
                    out.push((slot, c));
                }
                None => log::error!(
                    "nvme queue {}: completion for command id {} that is not in flight (status {}); ignored",
                    self.qid,
                    c.cid,
                    c.status
                ),
            }
        }
        if n > 0 {
            self.bar.write32(self.cq_db, self.cq_head as u32);
        }
        n
    }

    /// The commands in flight, by id.
    pub fn in_flight(&self) -> impl Iterator<Item = (u16, &Slot<T>)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i as u16, s)))
    }

    /// After the device-side queue is gone (controller reset or disabled):
    /// takes every command in flight, and starts the rings afresh.
    pub fn reset(&mut self) -> Vec<Slot<T>> {
        let mut out = Vec::new();
        for (i, s) in self.slots.iter_mut().enumerate() {
            if let Some(slot) = s.take() {
                out.push(slot);
                self.free.push(i as u16);
            }
        }
        self.inflight = 0;
        self.sq_tail = 0;
        self.cq_head = 0;
        self.phase = true;
        self.unrung = 0;
        self.mem.cq.mem.zero(self.mem.cq.off, self.mem.cq.len);
        out
    }
}
