//! A namespace as a [`BlockDevice`]: requests become NVMe commands on the
//! calling reactor's own I/O queue pair, completions are reaped by that
//! reactor's poller, and the submitting coroutine parks until its batch is
//! complete.
//!
//! - One I/O queue pair per reactor and controller, created on that reactor
//!   on first use (its queue id is taken from the controller's pool) and
//!   deleted when the reactor thread ends.
//! - Threads that are not reactors (format tools, tests, the worker pool)
//!   share one more queue pair under a lock and poll it themselves.
//! - Queue full: the submitter rings the doorbell and parks until a
//!   completion frees a command id (back-pressure, never an error).
//! - Timeouts: a parked submitter also wakes at its deadline; then it asks
//!   the controller to abort its commands, and if they still do not
//!   complete (or the controller reports fatal status), resets the
//!   controller. Requests lost in a reset fail with a timeout error; the
//!   queue pairs are re-created by their owners at the next request.

use super::cmd::{self, nvm, Command, Completion};
use super::controller::{lock_cooperative, on_reactor, pause, Controller, State};
use super::mem::DmaSlice;
use super::namespace::Namespace;
use super::prp;
use super::queue::{Queue, Slot};
use super::regs;
use crate::bdev::{check_op, BlockDevice, DeviceInfo, DeviceStats, IoDone, IoOp, BLOCK_SIZE};
use crate::rt;
use ferrite_sys::eventfd::EventFd;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

/// A namespace of an attached controller.
pub struct NvmeDevice {
    ctrl: Arc<Controller>,
    ctx: Arc<Ctx>,
    ns: Namespace,
    info: DeviceInfo,
    stats: DeviceStats,
}

/// One NVMe command of a request.
#[derive(Clone, Copy, Debug)]
struct Plan {
    opcode: u8,
    slba: u64,
    nlb: u32,
    fua: bool,
    /// Byte range of the request's data this command moves.
    data_off: usize,
    data_len: usize,
    /// Write zeroes without controller support: write a zeroed bounce buffer.
    zero_data: bool,
}

/// Data moved through driver memory (buffers outside the DMA arena, or
/// pieces neither PRPs nor SGLs can describe).
struct Bounce {
    slice: DmaSlice,
    data_off: usize,
    read: bool,
}

/// A request of a batch while its commands are in flight.
struct OpState {
    op: IoOp,
    left: usize,
    err: Option<io::Error>,
}

/// Calls `f(buffer index, offset in it, length, offset in the range)` for
/// the request's bytes `[off, off+len)`.
fn walk(op: &IoOp, off: usize, len: usize, mut f: impl FnMut(usize, usize, usize, usize)) {
    let mut pos = 0usize;
    for (i, (_, blen)) in op.buffers().into_iter().enumerate() {
        let (s, e) = (pos.max(off), (pos + blen).min(off + len));
        if s < e {
            f(i, s - pos, e - s, s - off);
        }
        pos += blen;
    }
}

fn copy_in(op: &IoOp, off: usize, len: usize, b: &DmaSlice) {
    let slices: Vec<&[u8]> = match op {
        IoOp::Write { buf, .. } => vec![buf.as_slice()],
        IoOp::Writev { bufs, .. } => bufs.iter().map(|b| b.as_slice()).collect(),
        _ => return,
    };
    walk(op, off, len, |i, o, n, at| {
        b.mem.write_bytes(b.off + at, &slices[i][o..o + n]);
    });
}

fn copy_out(op: &mut IoOp, off: usize, len: usize, b: &DmaSlice) {
    let mut spans = Vec::new();
    walk(op, off, len, |i, o, n, at| spans.push((i, o, n, at)));
    let mut bufs: Vec<&mut [u8]> = match op {
        IoOp::Read { buf, .. } => vec![buf.as_mut_slice()],
        IoOp::Readv { bufs, .. } => bufs.iter_mut().map(|b| b.as_mut_slice()).collect(),
        _ => return,
    };
    for (i, o, n, at) in spans {
        b.mem.read_bytes(b.off + at, &mut bufs[i][o..o + n]);
    }
}

/// What completing a command needs of its device (shared with the
/// commands in flight, which may outlive a cancelled submitter).
struct Ctx {
    ctrl: Arc<Controller>,
    nsid: u32,
}

impl Ctx {
    /// Describes a command for messages: `nvme 0000:00:03.0 ns1: read of 8
    /// blocks at LBA 16`.
    fn describe(&self, c: &Command) -> String {
        let op = cmd::io_opcode_name(c.opcode());
        match c.opcode() {
            nvm::READ | nvm::WRITE | nvm::WRITE_ZEROES => format!(
                "{} ns{}: {op} of {} blocks at LBA {}",
                self.ctrl.name,
                self.nsid,
                (c.dw[12] & 0xffff) + 1,
                c.starting_lba()
            ),
            _ => format!("{} ns{}: {op}", self.ctrl.name, self.nsid),
        }
    }

    fn status_error(&self, c: &Command, cpl: &Completion) -> io::Error {
        let kind = match (cpl.status.sct(), cpl.status.sc()) {
            (0, 0x80) | (0, 0x02) | (0, 0x0b) => io::ErrorKind::InvalidInput,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, format!("{} failed: {}", self.describe(c), cpl.status))
    }

    fn lost_error(&self, c: &Command, timed_out: bool) -> io::Error {
        if let Some(e) = self.ctrl.unusable() {
            return io::Error::new(e.kind(), format!("{}: {e}", self.describe(c)));
        }
        if timed_out {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{} timed out after {:?}; the controller was reset",
                    self.describe(c),
                    self.ctrl.opts.io_timeout
                ),
            )
        } else {
            io::Error::other(format!(
                "{} was lost in a controller reset",
                self.describe(c)
            ))
        }
    }

    /// Ends one command of a request.
    fn finish_cmd(&self, st: &mut OpState, bounce: Option<Bounce>, result: io::Result<()>) {
        if let Some(b) = bounce {
            if b.read && result.is_ok() {
                let len = b.slice.len;
                copy_out(&mut st.op, b.data_off, len, &b.slice);
            }
            self.ctrl.free_bounce(b.slice);
        }
        if let Err(e) = result {
            if st.err.is_none() {
                st.err = Some(e);
            }
        }
        st.left = st.left.saturating_sub(1);
    }
}

impl NvmeDevice {
    pub(super) fn new(ctrl: Arc<Controller>, ns: Namespace, name: String) -> NvmeDevice {
        let size = ns.bytes() / BLOCK_SIZE * BLOCK_SIZE;
        NvmeDevice {
            info: DeviceInfo {
                name,
                size,
                block_size: BLOCK_SIZE,
                backend: "nvme",
            },
            ctx: Arc::new(Ctx {
                ctrl: ctrl.clone(),
                nsid: ns.nsid,
            }),
            ctrl,
            ns,
            stats: DeviceStats::default(),
        }
    }

    /// The controller (for tests and tools).
    pub fn controller(&self) -> &Arc<Controller> {
        &self.ctrl
    }

    /// The namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.ns
    }

    /// The commands a request becomes.
    fn plan(&self, op: &IoOp) -> Vec<Plan> {
        let lba = self.ns.lba_size;
        let id = &self.ctrl.ident;
        let p = |opcode, off: u64, len: u64, data_off: usize, fua, zero_data| Plan {
            opcode,
            slba: off / lba,
            nlb: (len / lba) as u32,
            fua,
            data_off,
            data_len: if opcode == nvm::READ || opcode == nvm::WRITE {
                len as usize
            } else {
                0
            },
            zero_data,
        };
        let split = |opcode, offset: u64, len: u64, chunk: u64, fua, zero| {
            let mut v = Vec::new();
            let mut at = 0u64;
            while at < len {
                let n = (len - at).min(chunk);
                v.push(p(opcode, offset + at, n, at as usize, fua, zero));
                at += n;
            }
            v
        };
        let xfer = (self.ctrl.max_transfer as u64 / BLOCK_SIZE * BLOCK_SIZE).max(BLOCK_SIZE);
        match op {
            IoOp::Read { offset, .. } | IoOp::Readv { offset, .. } => {
                split(nvm::READ, *offset, op.transfer_len(), xfer, false, false)
            }
            IoOp::Write { offset, fua, .. } | IoOp::Writev { offset, fua, .. } => {
                split(nvm::WRITE, *offset, op.transfer_len(), xfer, *fua, false)
            }
            IoOp::Flush => {
                if id.vwc {
                    vec![p(nvm::FLUSH, 0, 0, 0, false, false)]
                } else {
                    Vec::new() // no volatile cache: every completed write is stable
                }
            }
            IoOp::WriteZeroes { offset, len } => {
                if id.supports_write_zeroes() {
                    split(nvm::WRITE_ZEROES, *offset, *len, 65536 * lba, false, false)
                } else {
                    split(nvm::WRITE, *offset, *len, xfer, false, true)
                }
            }
            IoOp::Unmap { offset, len } => {
                if id.supports_dsm() {
                    split(nvm::DSM, *offset, *len, (1u64 << 31) * lba, false, false)
                } else {
                    Vec::new() // advisory: nothing to tell a controller without DSM
                }
            }
        }
    }

    /// Builds the command for `plan` with command id `cid`'s list page.
    fn build(
        &self,
        plan: &Plan,
        op: &IoOp,
        list: &DmaSlice,
    ) -> io::Result<(Command, Option<Bounce>)> {
        let mut c = Command::new(plan.opcode, self.ns.nsid);
        let mut bounce = None;
        match plan.opcode {
            nvm::READ | nvm::WRITE => {
                c.set_slba(plan.slba);
                c.dw[12] = (plan.nlb - 1) | if plan.fua { 1 << 30 } else { 0 };
                let sgl = self.ctrl.ident.supports_sgl();
                let mut pieces = Vec::new();
                let direct = if plan.zero_data {
                    None
                } else {
                    self.ctrl.arena.as_ref().and_then(|a| {
                        let bufs = op.buffers();
                        let mut ok = true;
                        walk(op, plan.data_off, plan.data_len, |i, o, n, _| {
                            ok &= a.pieces(bufs[i].0 + o, n, &mut pieces);
                        });
                        if ok {
                            prp::set_data_pointer(&mut c, &pieces, list, sgl)
                        } else {
                            None
                        }
                    })
                };
                if let Some(kind) = direct {
                    self.ctrl.count_dptr(kind);
                }
                let direct = direct.is_some();
                if !direct {
                    let b = self.ctrl.alloc_bounce(plan.data_len)?;
                    if plan.opcode == nvm::WRITE && !plan.zero_data {
                        copy_in(op, plan.data_off, plan.data_len, &b);
                    }
                    self.ctrl.count_dptr_bounce();
                    if prp::set_data_pointer(&mut c, &[(b.iova, plan.data_len)], list, sgl)
                        .is_none()
                    {
                        self.ctrl.free_bounce(b);
                        return Err(io::Error::other(format!(
                            "{}: no data pointer for a {} byte bounce buffer",
                            self.ctrl.name, plan.data_len
                        )));
                    }
                    bounce = Some(Bounce {
                        slice: b,
                        data_off: plan.data_off,
                        read: plan.opcode == nvm::READ,
                    });
                }
            }
            nvm::WRITE_ZEROES => {
                c.set_slba(plan.slba);
                c.dw[12] = plan.nlb - 1;
            }
            nvm::DSM => {
                // One range: context attributes, length in blocks, start.
                list.mem.write_words(
                    list.off,
                    &[0, plan.nlb, plan.slba as u32, (plan.slba >> 32) as u32],
                );
                c.set_prp(list.iova, 0);
                c.dw[10] = 0; // one range (0-based)
                c.dw[11] = 1 << 2; // deallocate
            }
            _ => {}
        }
        Ok((c, bounce))
    }

    /// Checks and plans a batch.
    fn prepare(&self, ops: Vec<IoOp>) -> (Vec<OpState>, Vec<Vec<Plan>>) {
        let mut states = Vec::with_capacity(ops.len());
        let mut plans = Vec::with_capacity(ops.len());
        for op in ops {
            let (p, err) = match check_op(&self.info, &op) {
                Ok(()) => match self.ctrl.unusable() {
                    None => (self.plan(&op), None),
                    Some(e) => (Vec::new(), Some(e)),
                },
                Err(e) => (Vec::new(), Some(e)),
            };
            states.push(OpState {
                op,
                left: p.len(),
                err,
            });
            plans.push(p);
        }
        (states, plans)
    }

    fn done(&self, states: Vec<OpState>) -> Vec<IoDone> {
        states
            .into_iter()
            .map(|s| {
                let result = match s.err {
                    Some(e) => Err(e),
                    None => Ok(()),
                };
                self.stats.account(&s.op, result.is_ok());
                IoDone { op: s.op, result }
            })
            .collect()
    }
}

impl BlockDevice for NvmeDevice {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn stats(&self) -> &DeviceStats {
        &self.stats
    }

    fn submit(&self, ops: Vec<IoOp>) -> Vec<IoDone> {
        if on_reactor() {
            match reactor_queue(&self.ctrl) {
                Ok(rq) => return self.submit_reactor(&rq, ops),
                Err(e) => {
                    let (mut states, _) = self.prepare(ops);
                    for s in &mut states {
                        if s.err.is_none() {
                            s.err = Some(io::Error::new(e.kind(), e.to_string()));
                        }
                    }
                    return self.done(states);
                }
            }
        }
        self.submit_shared(ops)
    }
}

// ---------------------------------------------------------------- reactors

/// The completions of one `submit` call on a reactor.
struct Group {
    ops: RefCell<Vec<OpState>>,
    remaining: Cell<usize>,
    waker: RefCell<Option<Waker>>,
    timed_out: Cell<bool>,
    ctx: Arc<Ctx>,
}

/// What a reactor queue's command finishes.
struct Pending {
    group: Rc<Group>,
    op: usize,
    bounce: Option<Bounce>,
}

impl Group {
    fn finish(&self, op: usize, bounce: Option<Bounce>, result: io::Result<()>) {
        let finished = {
            let mut ops = self.ops.borrow_mut();
            let Some(st) = ops.get_mut(op) else { return };
            self.ctx.finish_cmd(st, bounce, result);
            st.left == 0
        };
        if finished {
            let left = self.remaining.get().saturating_sub(1);
            self.remaining.set(left);
            if left == 0 {
                if let Some(w) = self.waker.borrow_mut().take() {
                    w.wake();
                }
            }
        }
    }
}

/// One reactor's I/O queue pair on one controller.
struct ReactorQueue {
    ctrl: Arc<Controller>,
    qid: u16,
    q: RefCell<Queue<Pending>>,
    epoch: Cell<u64>,
    created: Cell<bool>,
    creating: Cell<bool>,
    irq: bool,
    efd: Arc<EventFd>,
    dirty: Cell<bool>,
    space: RefCell<VecDeque<Waker>>,
}

thread_local! {
    static QUEUES: RefCell<HashMap<u64, Rc<ReactorQueue>>> = RefCell::new(HashMap::new());
}

/// The calling reactor's queue pair on `ctrl`, set up on first use.
/// A completion reaped from the shared queue: the op's index in its batch
/// and the bounce buffer it used, if any.
type SharedDone = (Slot<(usize, Option<Bounce>)>, Completion);

fn reactor_queue(ctrl: &Arc<Controller>) -> io::Result<Rc<ReactorQueue>> {
    if let Some(q) = QUEUES.with(|m| m.borrow().get(&ctrl.id).cloned()) {
        return Ok(q);
    }
    let reactor = rt::current_reactor().unwrap_or(0);
    let qid = ctrl.alloc_qid().ok_or_else(|| {
        io::Error::other(
            format!(
                "{}: no I/O queue left for reactor {reactor}: the controller granted {} (one is shared by non-reactor threads); use fewer reactors or a controller with more queues",
                ctrl.name,
                ctrl.io_queues()
            ),
        )
    })?;
    let entries = (ctrl.opts.queue_depth as u32 + 1).min(ctrl.cap.mqes).max(2) as u16;
    let mem = match ctrl.queue_mem(entries) {
        Ok(m) => m,
        Err(e) => {
            ctrl.free_qid(qid);
            return Err(e);
        }
    };
    let mode = rt::current_handle().map(|h| h.config().poll_mode);
    let adaptive = mode != Some(rt::PollMode::Busy);
    let want_irq = ctrl.opts.interrupts.unwrap_or(adaptive);
    let (irq, efd) = match ctrl.irq_fd(qid) {
        Some(fd) if want_irq => (true, fd),
        _ => {
            let fd = Arc::new(EventFd::new()?);
            ctrl.add_kick(fd.clone());
            (false, fd)
        }
    };
    let rq = Rc::new(ReactorQueue {
        ctrl: ctrl.clone(),
        qid,
        q: RefCell::new(Queue::new(
            qid,
            entries,
            mem,
            ctrl.bar.clone(),
            ctrl.cap.dstrd,
        )),
        epoch: Cell::new(ctrl.epoch()),
        created: Cell::new(false),
        creating: Cell::new(false),
        irq,
        efd,
        dirty: Cell::new(false),
        space: RefCell::new(VecDeque::new()),
    });
    let wake = if irq || !adaptive {
        if irq {
            rt::PollerWake::Fd(rq.efd.as_raw_fd())
        } else {
            rt::PollerWake::ByOthers
        }
    } else {
        // No interrupts and a reactor that sleeps: look at the queue often.
        rt::PollerWake::Every(Duration::from_micros(200))
    };
    let p = rq.clone();
    rt::register_poller("bdev-nvme", wake, move || p.poll())?;
    QUEUES.with(|m| m.borrow_mut().insert(ctrl.id, rq.clone()));
    log::debug!(
        "{}: I/O queue {qid} ({entries} entries, {}) for reactor {reactor}",
        ctrl.name,
        if irq { "MSI-X" } else { "polled" }
    );
    Ok(rq)
}

struct ClearOnDrop<'a>(&'a Cell<bool>);
impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

impl ReactorQueue {
    /// Makes sure the queue exists on the device in the current epoch
    /// (creating it, or again after a reset). Parks.
    fn ready(&self) -> io::Result<()> {
        let mut resets = 0;
        loop {
            match self.ctrl.state() {
                State::Dead | State::ShutDown => {
                    self.fail_all();
                    return Err(self
                        .ctrl
                        .unusable()
                        .unwrap_or_else(|| io::Error::other("controller unusable")));
                }
                State::Resetting => {
                    rt::sleep(Duration::from_millis(1));
                    continue;
                }
                State::Ready => {}
            }
            if self.epoch.get() != self.ctrl.epoch() {
                self.resync();
            }
            if self.created.get() {
                return Ok(());
            }
            if self.creating.get() {
                rt::sleep(Duration::from_millis(1));
                continue;
            }
            self.creating.set(true);
            let guard = ClearOnDrop(&self.creating);
            let e = self.ctrl.epoch();
            let (mem, entries) = {
                let q = self.q.borrow();
                (q.mem.clone(), q.entries())
            };
            let r = self.ctrl.create_io_queue(self.qid, &mem, entries, self.irq);
            drop(guard);
            match r {
                Ok(()) if self.ctrl.epoch() == e && self.ctrl.state() == State::Ready => {
                    self.epoch.set(e);
                    self.created.set(true);
                    return Ok(());
                }
                Ok(()) => continue, // a reset raced the creation: the queue is gone again
                Err(_) if self.ctrl.epoch() != e || self.ctrl.state() == State::Resetting => {
                    continue
                }
                Err(err) => {
                    if !fatal_reset(&self.ctrl, &mut resets, &err) {
                        return Err(err);
                    }
                }
            }
        }
    }

    /// The device-side queue is gone (a reset): fail what was in flight and
    /// start the rings afresh; it is created again before the next command.
    fn resync(&self) {
        let slots = self.q.borrow_mut().reset();
        self.epoch.set(self.ctrl.epoch());
        self.created.set(false);
        self.fail_slots(slots);
    }

    /// The controller is dead or shut down (bus mastering is off): fail
    /// everything in flight.
    fn fail_all(&self) {
        let slots = self.q.borrow_mut().reset();
        self.created.set(false);
        self.fail_slots(slots);
    }

    fn fail_slots(&self, slots: Vec<Slot<Pending>>) {
        for s in slots {
            let Pending { group, op, bounce } = s.payload;
            let e = group.ctx.lost_error(&s.cmd, group.timed_out.get());
            group.finish(op, bounce, Err(e));
        }
        self.wake_space();
    }

    fn wake_space(&self) {
        let ws: Vec<Waker> = self.space.borrow_mut().drain(..).collect();
        for w in ws {
            w.wake();
        }
    }

    /// The poller: doorbell, completions, resets.
    fn poll(&self) -> bool {
        match self.ctrl.state() {
            State::Dead | State::ShutDown => {
                if self.q.borrow().inflight() > 0 {
                    self.fail_all();
                    return true;
                }
                return false;
            }
            _ => {}
        }
        if self.created.get() && self.epoch.get() != self.ctrl.epoch() {
            self.resync();
            return true;
        }
        let mut work = false;
        {
            let mut q = self.q.borrow_mut();
            if q.needs_ring() && self.created.get() {
                q.ring();
                work = true;
            }
            if q.inflight() == 0 && !self.dirty.get() {
                return work;
            }
        }
        let mut done = Vec::new();
        self.q.borrow_mut().reap(256, &mut done);
        if done.is_empty() && self.dirty.get() {
            // Nothing new: reset the eventfd, then look once more, so that
            // a completion racing the reset is seen now and any later one
            // makes the eventfd readable again.
            self.efd.drain();
            self.dirty.set(false);
            self.q.borrow_mut().reap(256, &mut done);
        }
        if done.is_empty() {
            return work;
        }
        self.dirty.set(true);
        for (slot, cpl) in done {
            let Pending { group, op, bounce } = slot.payload;
            let r = if cpl.status.ok() {
                Ok(())
            } else {
                Err(group.ctx.status_error(&slot.cmd, &cpl))
            };
            group.finish(op, bounce, r);
        }
        self.wake_space();
        true
    }

    /// Whether a command of `group` is still in flight here.
    fn outstanding(&self, group: &Rc<Group>) -> Vec<(u16, Command)> {
        self.q
            .borrow()
            .in_flight()
            .filter(|(_, s)| Rc::ptr_eq(&s.payload.group, group))
            .map(|(cid, s)| (cid, s.cmd))
            .collect()
    }

    /// A submitter's deadline passed with commands still in flight.
    fn on_timeout(&self, group: &Rc<Group>) {
        let cids = self.outstanding(group);
        if cids.is_empty() {
            return;
        }
        group.timed_out.set(true);
        let ctrl = &self.ctrl;
        ctrl.timeouts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        log::warn!(
            "{} on queue {} (command id {}) timed out after {:?}{}",
            group.ctx.describe(&cids[0].1),
            self.qid,
            cids[0].0,
            ctrl.opts.io_timeout,
            if cids.len() > 1 {
                format!(", with {} more", cids.len() - 1)
            } else {
                String::new()
            }
        );
        let outstanding = || !self.outstanding(group).is_empty();
        if abort_or_reset(ctrl, self.qid, &cids, || {
            let until = Instant::now() + abort_grace(ctrl);
            while outstanding() && Instant::now() < until {
                rt::sleep(Duration::from_millis(2));
            }
            outstanding()
        }) {
            let what = group.ctx.describe(&cids[0].1);
            let _ = ctrl.reset(&format!("{what} on queue {} timed out", self.qid));
        }
        // Whatever happened, fail what the reset took away now.
        match ctrl.state() {
            State::Dead | State::ShutDown => self.fail_all(),
            _ if self.epoch.get() != ctrl.epoch() => self.resync(),
            _ => {}
        }
    }
}

/// An admin command failed while the controller reports fatal status:
/// reset it (once per caller) and say whether to try again.
fn fatal_reset(ctrl: &Controller, resets: &mut u32, err: &io::Error) -> bool {
    let csts = ctrl.csts();
    if *resets > 0 || (csts != u32::MAX && csts & regs::CSTS_CFS == 0) {
        return false;
    }
    *resets += 1;
    ctrl.reset(&format!("fatal status: {err}")).is_ok()
}

fn abort_grace(ctrl: &Controller) -> Duration {
    (ctrl.opts.io_timeout / 2).clamp(Duration::from_millis(100), Duration::from_secs(2))
}

/// Tries Abort for each timed-out command (unless the controller reports
/// fatal status), then `still_stuck` waits a grace period; returns whether
/// the controller must be reset.
fn abort_or_reset(
    ctrl: &Controller,
    qid: u16,
    cids: &[(u16, Command)],
    still_stuck: impl FnOnce() -> bool,
) -> bool {
    let csts = ctrl.csts();
    if csts == u32::MAX || csts & regs::CSTS_CFS != 0 {
        log::warn!("{}: {}: no abort, reset", ctrl.name, regs::csts_text(csts));
        return true;
    }
    if ctrl.state() != State::Ready {
        return true;
    }
    for (cid, _) in cids {
        match ctrl.abort(qid, *cid) {
            Ok(true) => log::info!("{}: command {cid} of queue {qid} aborted", ctrl.name),
            Ok(false) => log::info!(
                "{}: Abort of command {cid} of queue {qid}: the controller did not abort it",
                ctrl.name
            ),
            Err(e) => {
                log::warn!("{}: Abort of command {cid} of queue {qid}: {e}", ctrl.name);
                return true;
            }
        }
    }
    still_stuck()
}

/// Registers a timer that wakes the running coroutine at `deadline` (the
/// reactor's timers: a spurious wake later is harmless).
fn wake_at(deadline: Instant) {
    let mut s = rt::sleep_async(deadline.saturating_duration_since(Instant::now()));
    let w = rt::current_waker();
    let mut cx = Context::from_waker(&w);
    let _ = Pin::new(&mut s).poll(&mut cx);
}

impl NvmeDevice {
    fn submit_reactor(&self, rq: &Rc<ReactorQueue>, ops: Vec<IoOp>) -> Vec<IoDone> {
        let (states, plans) = self.prepare(ops);
        let group = Rc::new(Group {
            remaining: Cell::new(states.iter().filter(|s| s.left > 0).count()),
            ops: RefCell::new(states),
            waker: RefCell::new(Some(rt::current_waker())),
            timed_out: Cell::new(false),
            ctx: self.ctx.clone(),
        });
        'ops: for (i, plans) in plans.iter().enumerate() {
            for (k, plan) in plans.iter().enumerate() {
                let cid = loop {
                    if let Err(e) = rq.ready() {
                        for _ in k..plans.len() {
                            group.finish(i, None, Err(io::Error::new(e.kind(), e.to_string())));
                        }
                        continue 'ops;
                    }
                    if let Some(cid) = rq.q.borrow_mut().alloc_cid() {
                        break cid;
                    }
                    // Queue full: let the device see what is queued, then
                    // wait for a completion to free a command id.
                    rq.q.borrow_mut().ring();
                    rq.space.borrow_mut().push_back(rt::current_waker());
                    rt::park();
                };
                let list = rq.q.borrow().list(cid).clone();
                let built = {
                    let ops = group.ops.borrow();
                    self.build(plan, &ops[i].op, &list)
                };
                match built {
                    Ok((c, bounce)) => rq.q.borrow_mut().push(
                        cid,
                        c,
                        Pending {
                            group: group.clone(),
                            op: i,
                            bounce,
                        },
                    ),
                    Err(e) => {
                        rq.q.borrow_mut().release_cid(cid);
                        group.finish(i, None, Err(e));
                    }
                }
            }
        }
        // The poller rings the doorbell once for every submitter of this
        // reactor loop; then completions wake us.
        let timeout = self.ctrl.opts.io_timeout;
        let mut deadline = Instant::now() + timeout;
        let mut armed = false;
        while group.remaining.get() > 0 {
            if !armed {
                wake_at(deadline);
                armed = true;
            }
            *group.waker.borrow_mut() = Some(rt::current_waker());
            rt::park();
            if group.remaining.get() > 0 && Instant::now() >= deadline {
                rq.on_timeout(&group);
                deadline = Instant::now() + timeout;
                armed = false;
            }
        }
        let states = std::mem::take(&mut *group.ops.borrow_mut());
        self.done(states)
    }
}

impl Drop for ReactorQueue {
    fn drop(&mut self) {
        // Runs when the reactor thread ends: no coroutine context, so the
        // admin commands below are polled with the thread blocked.
        let ctrl = self.ctrl.clone();
        let live = ctrl.state() == State::Ready && self.epoch.get() == ctrl.epoch();
        let safe = if live && self.created.get() {
            match ctrl.delete_io_queue(self.qid) {
                Ok(()) => true,
                Err(e) => {
                    log::error!("{}: deleting I/O queue {}: {e}", ctrl.name, self.qid);
                    false
                }
            }
        } else {
            // Never created, gone in a reset, or the controller stopped DMA.
            !(ctrl.state() == State::Resetting && self.created.get())
        };
        let q = self.q.get_mut();
        if !safe {
            // The device may still write these buffers: leak them.
            log::error!(
                "{}: I/O queue {} may still be in use by the device; leaking its memory",
                ctrl.name,
                self.qid
            );
            std::mem::forget(q.reset());
            return;
        }
        let slots = q.reset();
        // Dropping a group's payload here must not call into its device.
        drop(slots);
        ctrl.free_queue_mem(q.mem.clone());
        ctrl.free_qid(self.qid);
    }
}

// ------------------------------------------------------- non-reactor threads

/// The queue pair shared by threads that are not reactors.
pub(crate) struct SharedQueue {
    q: Queue<(usize, Option<Bounce>)>,
    epoch: u64,
    created: bool,
}

impl NvmeDevice {
    fn submit_shared(&self, ops: Vec<IoOp>) -> Vec<IoDone> {
        let (mut states, plans) = self.prepare(ops);
        if plans.iter().all(|p| p.is_empty()) {
            return self.done(states);
        }
        let ctrl = &self.ctrl;
        let mut guard = lock_cooperative(&ctrl.shared);
        if let Err(e) = self.shared_ready(&mut guard) {
            for s in states.iter_mut().filter(|s| s.left > 0) {
                s.left = 0;
                s.err
                    .get_or_insert_with(|| io::Error::new(e.kind(), e.to_string()));
            }
            return self.done(states);
        }
        let sq = guard.as_mut().expect("created by shared_ready");
        let mut out = Vec::new();
        let mut spins = 0;
        for (i, plans) in plans.iter().enumerate() {
            for plan in plans {
                let cid = loop {
                    if let Some(cid) = sq.q.alloc_cid() {
                        break Some(cid);
                    }
                    sq.q.ring();
                    out.clear();
                    sq.q.reap(256, &mut out);
                    self.shared_complete(&mut states, &mut out);
                    if ctrl.unusable().is_some() {
                        break None;
                    }
                    pause(&mut spins);
                };
                let Some(cid) = cid else {
                    self.ctx.finish_cmd(
                        &mut states[i],
                        None,
                        Err(ctrl
                            .unusable()
                            .unwrap_or_else(|| io::Error::other("controller unusable"))),
                    );
                    continue;
                };
                let list = sq.q.list(cid).clone();
                match self.build(plan, &states[i].op, &list) {
                    Ok((c, bounce)) => sq.q.push(cid, c, (i, bounce)),
                    Err(e) => {
                        sq.q.release_cid(cid);
                        self.ctx.finish_cmd(&mut states[i], None, Err(e));
                    }
                }
            }
        }
        sq.q.ring();
        let timeout = ctrl.opts.io_timeout;
        let mut deadline = Instant::now() + timeout;
        let mut timed_out = false;
        spins = 0;
        while sq.q.inflight() > 0 {
            out.clear();
            if sq.q.reap(256, &mut out) > 0 {
                self.shared_complete(&mut states, &mut out);
                spins = 0;
                continue;
            }
            if ctrl.unusable().is_some() {
                self.shared_fail(sq, &mut states, false);
                break;
            }
            if Instant::now() >= deadline {
                timed_out = true;
                ctrl.timeouts
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let cids: Vec<(u16, Command)> = sq.q.in_flight().map(|(c, s)| (c, s.cmd)).collect();
                log::warn!(
                    "{} on the shared queue {} timed out after {timeout:?}",
                    self.ctx.describe(&cids[0].1),
                    sq.q.qid
                );
                let qid = sq.q.qid;
                let reset = abort_or_reset(ctrl, qid, &cids, || {
                    let until = Instant::now() + abort_grace(ctrl);
                    let mut sp = 0;
                    while sq.q.inflight() > 0 && Instant::now() < until {
                        out.clear();
                        sq.q.reap(256, &mut out);
                        self.shared_complete(&mut states, &mut out);
                        pause(&mut sp);
                    }
                    sq.q.inflight() > 0
                });
                if reset {
                    let _ = ctrl.reset(&format!(
                        "{} on queue {qid} timed out",
                        self.ctx.describe(&cids[0].1)
                    ));
                    self.shared_fail(sq, &mut states, true);
                    break;
                }
                deadline = Instant::now() + timeout;
                continue;
            }
            pause(&mut spins);
        }
        let _ = timed_out;
        self.done(states)
    }

    fn shared_complete(&self, states: &mut [OpState], out: &mut Vec<SharedDone>) {
        for (slot, cpl) in out.drain(..) {
            let (i, bounce) = slot.payload;
            let r = if cpl.status.ok() {
                Ok(())
            } else {
                Err(self.ctx.status_error(&slot.cmd, &cpl))
            };
            if let Some(st) = states.get_mut(i) {
                self.ctx.finish_cmd(st, bounce, r);
            }
        }
    }

    /// After a reset (or death): the shared queue's device side is gone.
    fn shared_fail(&self, sq: &mut SharedQueue, states: &mut [OpState], timed_out: bool) {
        let slots = sq.q.reset();
        sq.created = false;
        sq.epoch = self.ctrl.epoch();
        for s in slots {
            let (i, bounce) = s.payload;
            let e = self.ctx.lost_error(&s.cmd, timed_out);
            if let Some(st) = states.get_mut(i) {
                self.ctx.finish_cmd(st, bounce, Err(e));
            }
        }
    }

    /// Creates the shared queue pair (again after a reset).
    fn shared_ready(&self, guard: &mut Option<SharedQueue>) -> io::Result<()> {
        let ctrl = &self.ctrl;
        let mut spins = 0;
        let mut resets = 0;
        loop {
            if let Some(e) = ctrl.unusable() {
                return Err(e);
            }
            if ctrl.state() == State::Resetting {
                pause(&mut spins);
                continue;
            }
            if guard.is_none() {
                let qid = ctrl.alloc_qid().ok_or_else(|| {
                    io::Error::other(format!(
                        "{}: no I/O queue left for non-reactor threads",
                        ctrl.name
                    ))
                })?;
                let entries = (ctrl.opts.queue_depth as u32 + 1).min(ctrl.cap.mqes).max(2) as u16;
                let mem = ctrl
                    .queue_mem(entries)
                    .inspect_err(|_| ctrl.free_qid(qid))?;
                *guard = Some(SharedQueue {
                    q: Queue::new(qid, entries, mem, ctrl.bar.clone(), ctrl.cap.dstrd),
                    epoch: ctrl.epoch(),
                    created: false,
                });
            }
            let sq = guard.as_mut().expect("just set");
            if sq.epoch != ctrl.epoch() {
                let _ = sq.q.reset();
                sq.created = false;
                sq.epoch = ctrl.epoch();
            }
            if sq.created {
                return Ok(());
            }
            let e = ctrl.epoch();
            match ctrl.create_io_queue(sq.q.qid, &sq.q.mem, sq.q.entries(), false) {
                Ok(()) if ctrl.epoch() == e => {
                    sq.created = true;
                    return Ok(());
                }
                Ok(()) => continue,
                Err(_) if ctrl.epoch() != e || ctrl.state() == State::Resetting => continue,
                Err(err) => {
                    if !fatal_reset(ctrl, &mut resets, &err) {
                        return Err(err);
                    }
                }
            }
        }
    }
}
