//! The reactor: one thread pinned to one core, looping over
//! 1. messages from other threads (a lock-free queue, drained in batches),
//! 2. expired timers,
//! 3. socket readiness (epoll, only while sockets are registered),
//! 4. registered pollers (device completions, NIC queues),
//! 5. ready coroutines and async tasks.
//!
//! In `busy` mode it never sleeps. In `adaptive` mode it yields the CPU
//! (`sched_yield`) on every idle iteration, so that a spinning reactor never
//! keeps a runnable thread off a shared core, and after
//! `adaptive_spin` without work it sleeps in `epoll_wait` on one descriptor
//! set holding an eventfd (messages), a timerfd (the next timer), the
//! sockets, and the wake descriptors of pollers. Senders only write the
//! eventfd when the reactor has announced it is going to sleep.

use super::coro::{CoHeader, HOST_WORKERS};
use super::io::IoDriver;
use super::runtime::RuntimeShared;
use super::stack::StackPool;
use super::timer::Timers;
use super::PollMode;
use crossbeam_queue::SegQueue;
use ferrite_sys::eventfd::EventFd;
use ferrite_sys::timerfd::TimerFd;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A raw coroutine pointer crossing threads inside a message.
pub(crate) struct SendPtr(pub(crate) *const CoHeader);
// SAFETY: the pointee is Sync, kept alive by its home registry while the
// coroutine lives, and the message queue orders the hand-off.
unsafe impl Send for SendPtr {}

/// Work sent to a reactor from elsewhere.
pub(crate) enum Msg {
    /// Make this coroutine ready here (a wake, or a coroutine arriving).
    Resume(SendPtr),
    /// Run an async task's next poll here.
    Task(async_task::Runnable),
    /// Run a closure on the reactor's scheduler context (it must not block).
    Call(Box<dyn FnOnce() + Send>),
}

/// An entry of a reactor's run queue.
pub(crate) enum Ready {
    Coro(*const CoHeader),
    Task(async_task::Runnable),
}

/// What the scheduler context does right after a coroutine switched to it.
#[derive(Clone, Copy)]
pub(crate) enum After {
    Nothing,
    /// The coroutine finished: return its stack and header.
    Release(*const CoHeader),
    /// (Worker pool) mark it parked, now that it is off the stack.
    Park(*const CoHeader),
    /// (Worker pool) put it back in the pool's queue.
    Requeue(*const CoHeader),
    /// Send it to another host.
    Migrate(*const CoHeader, usize),
}

/// Counters a user can read (`framework_get_reactors`, Prometheus).
#[derive(Default, Debug)]
pub struct ReactorStats {
    /// Nanoseconds spent in loop iterations that did work.
    pub busy_ns: AtomicU64,
    /// Nanoseconds spent in loop iterations that found nothing to do
    /// (spinning or asleep).
    pub idle_ns: AtomicU64,
    pub loops: AtomicU64,
    pub sleeps: AtomicU64,
    pub coroutines_spawned: AtomicU64,
    pub messages: AtomicU64,
}

/// The part of a reactor other threads may touch.
pub struct ReactorShared {
    pub(crate) id: usize,
    pub(crate) core: Option<usize>,
    queue: SegQueue<Msg>,
    wake_fd: EventFd,
    sleeping: AtomicBool,
    pub(crate) stop: AtomicBool,
    pub(crate) stats: ReactorStats,
    pub(crate) tid: std::sync::atomic::AtomicI32,
}

impl ReactorShared {
    pub(crate) fn new(id: usize, core: Option<usize>) -> std::io::Result<Self> {
        Ok(Self {
            id,
            core,
            queue: SegQueue::new(),
            wake_fd: EventFd::new()?,
            sleeping: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            stats: ReactorStats::default(),
            tid: std::sync::atomic::AtomicI32::new(0),
        })
    }

    pub fn id(&self) -> usize {
        self.id
    }

    pub fn core(&self) -> Option<usize> {
        self.core
    }

    pub fn stats(&self) -> &ReactorStats {
        &self.stats
    }

    /// The kernel thread id of the reactor thread (0 before it started).
    pub fn tid(&self) -> i32 {
        self.tid.load(Ordering::Relaxed)
    }

    /// Queues a message and wakes the reactor if it sleeps.
    pub(crate) fn send(&self, msg: Msg) {
        self.queue.push(msg);
        // Pairs with the fence in `Local::sleep`: either the reactor sees the
        // message before sleeping, or we see its `sleeping` flag.
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) {
            self.wake_fd.notify();
        }
    }

    /// Wakes the reactor without a message (used by stop).
    pub(crate) fn kick(&self) {
        self.wake_fd.notify();
    }
}

/// Per-thread scheduling state of whatever hosts coroutines on this thread:
/// a reactor, or a worker of the pool.
pub(crate) struct Host {
    /// The scheduler context's saved stack pointer while a coroutine runs.
    pub(crate) main_sp: Cell<*mut u8>,
    /// The running coroutine, null on the scheduler context.
    pub(crate) current: Cell<*const CoHeader>,
    after: Cell<After>,
    /// How many more coroutines may be switched to directly before the
    /// scheduler gets the thread back (pollers and messages need it).
    budget: Cell<u32>,
    reactor: *const Local,
}

const DIRECT_SWITCH_BUDGET: u32 = 64;

thread_local! {
    static HOST: Cell<*const Host> = const { Cell::new(std::ptr::null()) };
}

/// The host of the calling thread. Never inlined: after a switch a migrated
/// coroutine may be on another thread, and the thread-local's address must
/// be computed afresh.
#[inline(never)]
pub(crate) fn current_host() -> Option<&'static Host> {
    let p = HOST.with(|h| h.get());
    // SAFETY: HOST is set by a host thread to a Host that outlives every
    // coroutine it runs, and cleared before the Host is dropped.
    unsafe { p.as_ref() }
}

/// The reactor of the calling thread, if it is a reactor thread.
#[inline(never)]
pub(crate) fn current_local() -> Option<&'static Local> {
    current_host().and_then(|h| h.reactor())
}

/// Raw access for the stack-overflow signal handler (no allocation, no locks).
pub(crate) fn current_host_raw() -> *const Host {
    HOST.with(|h| h.get())
}

impl Host {
    pub(crate) fn new(reactor: *const Local) -> Self {
        Self {
            main_sp: Cell::new(std::ptr::null_mut()),
            current: Cell::new(std::ptr::null()),
            after: Cell::new(After::Nothing),
            budget: Cell::new(0),
            reactor,
        }
    }

    /// Makes this the calling thread's host until [`Host::uninstall`].
    pub(crate) fn install(&self) {
        HOST.with(|h| h.set(self as *const Host));
    }

    pub(crate) fn uninstall(&self) {
        HOST.with(|h| h.set(std::ptr::null()));
    }

    pub(crate) fn reactor(&self) -> Option<&'static Local> {
        // SAFETY: a reactor's Local outlives its Host and every coroutine
        // that runs on it (both live in the reactor thread's main frame).
        unsafe { self.reactor.as_ref() }
    }

    /// From the scheduler context: run `co` until it switches back here,
    /// then return what it asked the scheduler to do.
    pub(crate) fn resume(&self, co: *const CoHeader) -> After {
        self.current.set(co);
        self.budget.set(DIRECT_SWITCH_BUDGET);
        // SAFETY: `co` is a live coroutine that is not running anywhere (it
        // came out of a run queue); its saved sp is valid.
        unsafe {
            let sp = (*co).local().sp;
            super::context::switch(self.main_sp.as_ptr(), sp);
        }
        self.after.replace(After::Nothing)
    }

    /// From coroutine `me`: switch to the scheduler context, leaving it
    /// `after` to act on.
    pub(crate) fn switch_to_main(&self, me: *const CoHeader, after: After) {
        self.after.set(after);
        self.current.set(std::ptr::null());
        // SAFETY: `me` is the running coroutine; its `sp` slot receives its
        // stack pointer; `main_sp` holds the scheduler's saved context.
        unsafe { super::context::switch(&mut (*me).local().sp, self.main_sp.get()) };
    }

    /// From a finished coroutine `me`: hand the thread to the next ready
    /// coroutine (its stack is recycled on the way, on the next one's stack),
    /// or to the scheduler, which recycles it.
    pub(crate) fn finish(&self, me: *const CoHeader) -> ! {
        if let Some(local) = self.reactor() {
            let budget = self.budget.get();
            let next = if budget > 0 {
                let mut q = local.ready.borrow_mut();
                match q.front() {
                    Some(Ready::Coro(p)) => {
                        let p = *p;
                        q.pop_front();
                        Some(p)
                    }
                    _ => None,
                }
            } else {
                None
            };
            if let Some(next) = next {
                self.budget.set(budget - 1);
                self.current.set(next);
                local.finished.set(me);
                // SAFETY: `next` is a live, switched-out coroutine from the
                // run queue; `me` is DONE and never resumed; `release_on_next`
                // does not unwind (it only recycles memory).
                unsafe {
                    super::context::finish_switch(
                        (*next).local().sp,
                        release_on_next,
                        local as *const Local as *const u8,
                    )
                };
            }
        }
        self.switch_to_main(me, After::Release(me));
        unreachable!("a finished coroutine was resumed");
    }

    /// From coroutine `me` on a reactor, which has already recorded why it
    /// stops (requeued itself, or parked): hand the thread directly to the
    /// next ready coroutine, or to the scheduler.
    pub(crate) fn switch_away(&self, me: *const CoHeader, local: &Local) {
        let budget = self.budget.get();
        if budget > 0 {
            let next = {
                let mut q = local.ready.borrow_mut();
                match q.front() {
                    Some(Ready::Coro(p)) => {
                        let p = *p;
                        q.pop_front();
                        Some(p)
                    }
                    _ => None,
                }
            };
            if let Some(next) = next {
                if next == me {
                    return; // we were the only one ready
                }
                self.budget.set(budget - 1);
                self.current.set(next);
                // SAFETY: `me` is running, `next` is a live, switched-out
                // coroutine just taken from the run queue.
                unsafe { super::context::switch(&mut (*me).local().sp, (*next).local().sp) };
                return;
            }
        }
        self.switch_to_main(me, After::Nothing);
    }
}

struct PollerEntry {
    name: &'static str,
    f: Option<Box<dyn FnMut() -> bool>>,
    max_sleep: Option<Duration>,
}

/// How a poller lets a sleeping reactor know it has work.
pub enum PollerWake {
    /// Something else wakes the reactor (the poller only has work after a
    /// coroutine, message or timer on this reactor gave it some).
    ByOthers,
    /// This descriptor becomes readable when the poller has work.
    Fd(RawFd),
    /// The poller has no wake-up source: sleep at most this long.
    Every(Duration),
}

/// Identifies a registered poller on its reactor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PollerId(usize);

/// Token values of the reactor's own descriptors in its epoll set.
pub(crate) const TOKEN_WAKE: u64 = u64::MAX;
pub(crate) const TOKEN_TIMER: u64 = u64::MAX - 1;
pub(crate) const TOKEN_POLLER: u64 = u64::MAX - 2;

/// A reactor's thread-local state.
pub(crate) struct Local {
    pub(crate) id: usize,
    pub(crate) shared: Arc<ReactorShared>,
    pub(crate) rt: Arc<RuntimeShared>,
    pub(crate) ready: RefCell<VecDeque<Ready>>,
    pub(crate) stacks: StackPool,
    headers: RefCell<Vec<Arc<CoHeader>>>,
    registry: RefCell<slab::Slab<Arc<CoHeader>>>,
    pub(crate) timers: RefCell<Timers>,
    pollers: RefCell<slab::Slab<PollerEntry>>,
    pub(crate) io: IoDriver,
    /// A finished coroutine whose stack `release_on_next` recycles.
    finished: Cell<*const CoHeader>,
    timer_fd: TimerFd,
    poll_mode: PollMode,
    adaptive_spin: Duration,
}

impl Local {
    pub(crate) fn new(shared: Arc<ReactorShared>, rt: Arc<RuntimeShared>) -> std::io::Result<Self> {
        let cfg = &rt.config;
        let io = IoDriver::new()?;
        let timer_fd = TimerFd::new()?;
        io.epoll_add_raw(shared.wake_fd.as_raw_fd(), TOKEN_WAKE)?;
        io.epoll_add_raw(timer_fd.as_raw_fd(), TOKEN_TIMER)?;
        let stacks = StackPool::new(cfg.stack_size, cfg.stack_cache);
        stacks.prefill(cfg.stack_prefill)?;
        Ok(Self {
            id: shared.id,
            shared,
            poll_mode: cfg.poll_mode,
            adaptive_spin: cfg.adaptive_spin,
            rt,
            ready: RefCell::new(VecDeque::with_capacity(1024)),
            stacks,
            headers: RefCell::new(Vec::new()),
            registry: RefCell::new(slab::Slab::with_capacity(1024)),
            timers: RefCell::new(Timers::new()),
            pollers: RefCell::new(slab::Slab::new()),
            io,
            finished: Cell::new(std::ptr::null()),
            timer_fd,
        })
    }

    pub(crate) fn push_ready(&self, r: Ready) {
        self.ready.borrow_mut().push_back(r);
    }

    /// A header for a new coroutine: recycled when no waker still holds it.
    pub(crate) fn take_header(&self) -> Arc<CoHeader> {
        if let Some(h) = self.headers.borrow_mut().pop() {
            return h;
        }
        Arc::new(CoHeader::new(self.id, self.rt.clone()))
    }

    /// Enters a new coroutine into this reactor's registry (which owns it
    /// until it finishes) and returns the pointer run queues carry.
    pub(crate) fn register(&self, header: Arc<CoHeader>) -> *const CoHeader {
        let ptr = Arc::as_ptr(&header);
        let mut reg = self.registry.borrow_mut();
        let entry = reg.vacant_entry();
        // SAFETY: the header is not shared with any other thread yet.
        unsafe { header.local() }.registry_key = entry.key();
        header.state.store(super::coro::RUNNING, Ordering::Relaxed);
        header
            .cancel
            .store(self.shared.stop.load(Ordering::Relaxed), Ordering::Relaxed);
        header.host.store(self.id, Ordering::Relaxed);
        entry.insert(header);
        bump(&self.shared.stats.coroutines_spawned, 1);
        ptr
    }

    /// A coroutine finished and switched off its stack: recycle both.
    fn release(&self, co: *const CoHeader) {
        // SAFETY: the coroutine is DONE and off its stack; the registry still
        // holds it, so the pointer is valid.
        let key = unsafe { (*co).local() }.registry_key;
        let header = self.registry.borrow_mut().remove(key);
        // SAFETY: DONE and off its stack; no thread hosts it any more.
        let l = unsafe { header.local() };
        if let Some(stack) = l.stack.take() {
            self.stacks.put(stack);
        }
        // Headers are never shared through `Weak`, so a strong count of one
        // means no waker refers to it any more and it can be reused. When a
        // waker still holds it, it stays with that waker (waking a DONE
        // coroutine is a no-op) and is freed with it.
        if Arc::strong_count(&header) == 1 {
            l.name = super::coro::Name::Static("coroutine");
            self.headers.borrow_mut().push(header);
        }
    }

    /// Runs the loop until the runtime stops and the reactor has drained.
    pub(crate) fn run(&self, host: &Host) {
        // The clock is read only after an iteration that did work, and every
        // CLOCK_EVERY idle iterations: on a busy-polling reactor an idle
        // iteration is a handful of loads, and a clock read would dominate it.
        const CLOCK_EVERY: u32 = 16;
        let mut last_clock = Instant::now();
        let mut last_work = last_clock;
        let mut worked_since_clock = false;
        let mut idle_iters = 0u32;
        let mut stop_deadline: Option<Instant> = None;
        let stats = &self.shared.stats;
        loop {
            let mut work = self.drain_messages();
            work += self.fire_timers();
            if self.io.has_sources() {
                work += self.io.poll(Some(Duration::ZERO), self);
            }
            work += self.run_pollers();
            work += self.run_ready(host);
            bump(&stats.loops, 1);

            if work > 0 {
                worked_since_clock = true;
                idle_iters = 0;
            } else {
                idle_iters += 1;
                if self.poll_mode == PollMode::Adaptive {
                    // Spinning in adaptive mode shares its core: give it to
                    // any other runnable thread (a client, the kernel's
                    // work, another reactor with work), and come straight
                    // back when there is none. Without this a spinning
                    // reactor holds the CPU for a whole scheduler slice while
                    // those wait, which on a small shared box multiplied
                    // 4 KiB NBD read latency (see the commit message).
                    std::thread::yield_now();
                }
                if idle_iters % CLOCK_EVERY != 0 && !self.shared.stop.load(Ordering::Relaxed) {
                    continue;
                }
            }
            // Account the time since the last clock read as busy if any
            // iteration in it did work, idle otherwise.
            let now = Instant::now();
            let elapsed = now.duration_since(last_clock).as_nanos() as u64;
            last_clock = now;
            if worked_since_clock {
                bump(&stats.busy_ns, elapsed);
                last_work = now;
                worked_since_clock = false;
            } else {
                bump(&stats.idle_ns, elapsed);
            }

            if self.shared.stop.load(Ordering::Acquire) {
                let deadline = *stop_deadline.get_or_insert_with(|| {
                    self.cancel_all();
                    now + self.rt.config.shutdown_grace
                });
                if self.drained() {
                    break;
                }
                if now >= deadline {
                    log::warn!(
                        "reactor {}: {} coroutines did not finish within the shutdown grace period; abandoning them",
                        self.id,
                        self.registry.borrow().len()
                    );
                    break;
                }
                if work == 0 {
                    // Sleep briefly: the last coroutines may wait on timers or I/O.
                    self.sleep(Some(Duration::from_millis(1)));
                }
                continue;
            }

            if work == 0
                && self.poll_mode == PollMode::Adaptive
                && now.duration_since(last_work) >= self.adaptive_spin
            {
                let t = self.sleep_timeout(now);
                self.sleep(t);
                let woke = Instant::now();
                bump(&stats.idle_ns, woke.duration_since(now).as_nanos() as u64);
                last_clock = woke;
                last_work = woke;
                bump(&stats.sleeps, 1);
            }
        }
        // Drop whatever is still queued (abandoned tasks are cancelled by
        // dropping their Runnable).
        self.ready.borrow_mut().clear();
        while self.shared.queue.pop().is_some() {}
    }

    fn drained(&self) -> bool {
        self.registry.borrow().is_empty()
            && self.ready.borrow().is_empty()
            && self.shared.queue.is_empty()
    }

    /// Asks every live coroutine born here to unwind at its next park.
    fn cancel_all(&self) {
        let all: Vec<Arc<CoHeader>> = self
            .registry
            .borrow()
            .iter()
            .map(|(_, h)| h.clone())
            .collect();
        for h in all {
            h.cancel.store(true, Ordering::Release);
            h.wake();
        }
    }

    fn drain_messages(&self) -> usize {
        // `is_empty` is two plain loads; `pop` on an empty queue costs a
        // SeqCst fence, which the idle loop would pay on every iteration.
        if self.shared.queue.is_empty() {
            return 0;
        }
        let mut n = 0;
        while n < 256 {
            let Some(msg) = self.shared.queue.pop() else {
                break;
            };
            n += 1;
            match msg {
                Msg::Resume(SendPtr(co)) => self.push_ready(Ready::Coro(co)),
                Msg::Task(r) => self.push_ready(Ready::Task(r)),
                Msg::Call(f) => {
                    if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
                        log::error!(
                            "reactor {}: a cross-reactor call panicked: {}",
                            self.id,
                            panic_message(&e)
                        );
                    }
                }
            }
        }
        if n > 0 {
            bump(&self.shared.stats.messages, n as u64);
        }
        n
    }

    fn fire_timers(&self) -> usize {
        let mut timers = self.timers.borrow_mut();
        if timers.is_empty() {
            return 0;
        }
        let now = Instant::now();
        let mut fired = 0;
        while let Some(w) = timers.pop_expired(now) {
            fired += 1;
            // Waking only queues work; it never re-enters the timer heap.
            w.wake();
        }
        fired
    }

    fn run_pollers(&self) -> usize {
        let n = self.pollers.borrow().capacity();
        if self.pollers.borrow().is_empty() {
            return 0;
        }
        let mut work = 0;
        for key in 0..n {
            let f = match self.pollers.borrow_mut().get_mut(key) {
                Some(p) => p.f.take(),
                None => None,
            };
            let Some(mut f) = f else { continue };
            let did = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(&mut f)) {
                Ok(d) => d,
                Err(e) => {
                    let name = self
                        .pollers
                        .borrow()
                        .get(key)
                        .map(|p| p.name)
                        .unwrap_or("?");
                    log::error!(
                        "reactor {}: poller '{}' panicked and was removed: {}",
                        self.id,
                        name,
                        panic_message(&e)
                    );
                    self.pollers.borrow_mut().try_remove(key);
                    continue;
                }
            };
            if did {
                work += 1;
            }
            if let Some(p) = self.pollers.borrow_mut().get_mut(key) {
                if p.f.is_none() {
                    p.f = Some(f);
                }
            }
        }
        work
    }

    fn run_ready(&self, host: &Host) -> usize {
        // Run what is ready, including what becomes ready meanwhile, up to a
        // budget: messages, timers and pollers need the thread back too.
        let mut ran = 0;
        while ran < 256 {
            let Some(r) = self.ready.borrow_mut().pop_front() else {
                break;
            };
            ran += 1;
            match r {
                Ready::Coro(co) => {
                    let after = host.resume(co);
                    self.after_switch(after);
                }
                Ready::Task(runnable) => {
                    runnable.run();
                }
            }
        }
        ran
    }

    fn after_switch(&self, after: After) {
        match after {
            After::Nothing => {}
            After::Release(co) => self.release(co),
            After::Migrate(co, target) => {
                // SAFETY: the coroutine switched off its stack; it is alive
                // (its registry entry is at home) and no thread runs it.
                unsafe { (*co).host.store(target, Ordering::Release) };
                route(&self.rt, co, target);
            }
            After::Park(_) | After::Requeue(_) => {
                unreachable!("worker-only scheduling request on a reactor")
            }
        }
    }

    /// How long the reactor may sleep: until the next timer, or the shortest
    /// interval a poller without a wake descriptor asked for.
    fn sleep_timeout(&self, now: Instant) -> Option<Duration> {
        let mut t = self
            .timers
            .borrow()
            .next_deadline()
            .map(|d| d.saturating_duration_since(now));
        for (_, p) in self.pollers.borrow().iter() {
            if let Some(m) = p.max_sleep {
                t = Some(t.map_or(m, |t| t.min(m)));
            }
        }
        t
    }

    fn sleep(&self, timeout: Option<Duration>) {
        self.shared.sleeping.store(true, Ordering::Relaxed);
        // Pairs with the fence in `ReactorShared::send`.
        fence(Ordering::SeqCst);
        if self.shared.queue.is_empty() && self.ready.borrow().is_empty() {
            let precise = timeout.filter(|t| !t.is_zero() && t.as_nanos() % 1_000_000 != 0);
            if precise.is_some() {
                let _ = self.timer_fd.set(precise);
            }
            let wait = if precise.is_some() { None } else { timeout };
            self.io.poll(wait, self);
            if precise.is_some() {
                let _ = self.timer_fd.set(None);
            }
        }
        self.shared.sleeping.store(false, Ordering::Relaxed);
        self.shared.wake_fd.drain();
    }

    pub(crate) fn drain_timer_fd(&self) {
        self.timer_fd.drain();
    }

    pub(crate) fn add_poller(
        &self,
        name: &'static str,
        f: Box<dyn FnMut() -> bool>,
        wake: PollerWake,
    ) -> std::io::Result<PollerId> {
        let max_sleep = match wake {
            PollerWake::Every(d) => Some(d),
            _ => None,
        };
        let key = self.pollers.borrow_mut().insert(PollerEntry {
            name,
            f: Some(f),
            max_sleep,
        });
        if let PollerWake::Fd(fd) = wake {
            if let Err(e) = self.io.epoll_add_raw(fd, TOKEN_POLLER) {
                self.pollers.borrow_mut().remove(key);
                return Err(e);
            }
        }
        Ok(PollerId(key))
    }

    pub(crate) fn remove_poller(&self, id: PollerId) -> bool {
        self.pollers.borrow_mut().try_remove(id.0).is_some()
    }

    pub(crate) fn live_coroutines(&self) -> usize {
        self.registry.borrow().len()
    }
}

/// Recycles a finished coroutine's stack and header; runs on the stack of
/// the coroutine that is being resumed in its place.
extern "C" fn release_on_next(local: *const u8) {
    // SAFETY: `Host::finish` passes its reactor's Local, which outlives every
    // coroutine that runs on it.
    let local = unsafe { &*(local as *const Local) };
    local.release(local.finished.replace(std::ptr::null()));
}

/// Adds to a counter that only its reactor thread writes: a plain load and
/// store, not an atomic read-modify-write (readers on other threads see a
/// value at most one update old).
#[inline]
fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

/// Sends coroutine `co` to host `target` (a reactor index or the workers).
pub(crate) fn route(rt: &RuntimeShared, co: *const CoHeader, target: usize) {
    if target == HOST_WORKERS {
        rt.workers.submit(SendPtr(co));
    } else {
        rt.reactors[target].send(Msg::Resume(SendPtr(co)));
    }
}

/// Puts a coroutine that a waker just moved from PARKED to RUNNING on the
/// run queue of the host it is parked on.
pub(crate) fn schedule_coro(co: &CoHeader) {
    let target = co.host.load(Ordering::Acquire);
    if let Some(local) = current_local() {
        if local.id == target {
            local.push_ready(Ready::Coro(co as *const CoHeader));
            return;
        }
        route(&local.rt, co, target);
        return;
    }
    // From a worker or a foreign thread.
    route(&co.rt, co, target);
}

pub(crate) fn panic_message(e: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = e.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = e.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".into()
    }
}
