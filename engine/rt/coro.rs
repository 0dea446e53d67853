//! Stackful coroutines: spawn, join, yield, park and wake.
//!
//! # Model
//! A coroutine is a closure running on a stack of its own. It runs on the
//! thread of its *host*: the reactor it was spawned on, or for a while
//! another reactor or the worker pool (see [`super::migrate`]). Switching
//! between coroutines of one host is symmetric: a coroutine that yields or
//! parks hands the thread straight to the next ready coroutine, and only
//! falls back to the host's scheduler loop when its budget is spent or no
//! coroutine is ready.
//!
//! # Invariants
//! - A live coroutine is owned by the registry of its home reactor (one
//!   strong `Arc<CoHeader>`), so raw `*const CoHeader` in run queues and in
//!   the host's `current` are valid until the coroutine finishes. A finished
//!   coroutine is never in a run queue: it is DONE, and waking a DONE
//!   coroutine does nothing.
//! - `CoHeader::local` is touched only by the thread that hosts the
//!   coroutine at that moment. A coroutine changes thread only through a
//!   message queue (release/acquire), and only after it has switched out
//!   completely: the hand-off is done by the old host's scheduler context,
//!   on the scheduler's own stack.
//! - The wake state (`RUNNING`, `PARKED`, `NOTIFIED`, `DONE`) is atomic:
//!   exactly one waker moves a PARKED coroutine back to RUNNING and schedules
//!   it; a wake that arrives while it runs is remembered (NOTIFIED) and makes
//!   the next park return at once.
//! - Thread-local state is read through non-inlined accessors after every
//!   switch, because a migrated coroutine may resume on another thread and a
//!   cached thread-local address would then be another thread's.

use super::context;
use super::reactor::{self, Local, Ready};
use super::stack::Stack;
use std::any::Any;
use std::cell::{RefCell, UnsafeCell};
use std::fmt;
use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::mem;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::ptr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

pub(crate) const RUNNING: u8 = 0;
pub(crate) const PARKED: u8 = 1;
pub(crate) const NOTIFIED: u8 = 2;
pub(crate) const DONE: u8 = 3;

/// `CoHeader::host` value for a coroutine running on the worker pool.
pub(crate) const HOST_WORKERS: usize = usize::MAX;

/// A coroutine's name, kept cheap for the common unnamed case.
#[derive(Clone, Debug)]
pub(crate) enum Name {
    Static(&'static str),
    Owned(Arc<str>),
}

impl Name {
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Name::Static(s) => s,
            Name::Owned(s) => s,
        }
    }
}

/// State only the hosting thread touches.
pub(crate) struct CoLocal {
    /// Saved stack pointer while switched out.
    pub(crate) sp: *mut u8,
    pub(crate) stack: Option<Stack>,
    pub(crate) name: Name,
    /// The reactor whose registry owns this coroutine and whose stack pool
    /// gets the stack back.
    pub(crate) home: usize,
    pub(crate) registry_key: usize,
    /// The guard page range, for the overflow report.
    pub(crate) guard: (usize, usize),
    pub(crate) stack_size: usize,
}

/// The shared part of a coroutine: what wakers and other threads may touch.
pub(crate) struct CoHeader {
    pub(crate) state: AtomicU8,
    /// Reactor index, or [`HOST_WORKERS`].
    pub(crate) host: AtomicUsize,
    /// Set on runtime shutdown: the next park unwinds the coroutine.
    pub(crate) cancel: AtomicBool,
    /// The runtime, so that a waker on any thread can route a wake.
    pub(crate) rt: Arc<super::runtime::RuntimeShared>,
    pub(crate) local: UnsafeCell<CoLocal>,
}

// SAFETY: the atomics are Sync; `local` is only accessed by the thread hosting
// the coroutine, and hosting passes between threads only through queues that
// order the accesses (see the module invariants).
unsafe impl Sync for CoHeader {}
// SAFETY: as above; the raw stack pointer and stack are plain memory.
unsafe impl Send for CoHeader {}

impl CoHeader {
    pub(crate) fn new(home: usize, rt: Arc<super::runtime::RuntimeShared>) -> Self {
        Self {
            state: AtomicU8::new(RUNNING),
            host: AtomicUsize::new(home),
            cancel: AtomicBool::new(false),
            rt,
            local: UnsafeCell::new(CoLocal {
                sp: ptr::null_mut(),
                stack: None,
                name: Name::Static("coroutine"),
                home,
                registry_key: usize::MAX,
                guard: (0, 0),
                stack_size: 0,
            }),
        }
    }

    /// # Safety
    /// The caller must be the thread hosting this coroutine (or the thread
    /// about to start it), with no other reference to `local` alive.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn local(&self) -> &mut CoLocal {
        // SAFETY: forwarded from the caller's contract.
        unsafe { &mut *self.local.get() }
    }

    /// Makes the coroutine runnable if it is parked, or remembers the wake
    /// if it is running. Callable from any thread.
    pub(crate) fn wake(&self) {
        let mut s = self.state.load(Ordering::Acquire);
        loop {
            match s {
                RUNNING => match self.state.compare_exchange_weak(
                    RUNNING,
                    NOTIFIED,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return,
                    Err(cur) => s = cur,
                },
                PARKED => match self.state.compare_exchange_weak(
                    PARKED,
                    RUNNING,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => {
                        reactor::schedule_coro(self);
                        return;
                    }
                    Err(cur) => s = cur,
                },
                _ => return, // NOTIFIED already, or DONE
            }
        }
    }
}

impl Wake for CoHeader {
    fn wake(self: Arc<Self>) {
        CoHeader::wake(&self)
    }
    fn wake_by_ref(self: &Arc<Self>) {
        CoHeader::wake(self)
    }
}

/// The payload a panic is unwound with when the runtime cancels a parked
/// coroutine at shutdown.
#[derive(Debug)]
pub struct Cancelled;

/// Why a coroutine did not return a value.
pub struct JoinError {
    payload: Box<dyn Any + Send + 'static>,
}

impl JoinError {
    /// Whether the coroutine was cancelled by runtime shutdown.
    pub fn is_cancelled(&self) -> bool {
        self.payload.is::<Cancelled>()
    }

    /// The panic message, where the payload was a string.
    pub fn message(&self) -> String {
        if self.is_cancelled() {
            return "cancelled by runtime shutdown".into();
        }
        if let Some(s) = self.payload.downcast_ref::<&str>() {
            return (*s).to_string();
        }
        if let Some(s) = self.payload.downcast_ref::<String>() {
            return s.clone();
        }
        "coroutine panicked with a non-string payload".into()
    }

    /// The original panic payload, to re-raise it with `resume_unwind`.
    pub fn into_panic(self) -> Box<dyn Any + Send + 'static> {
        self.payload
    }
}

impl fmt::Debug for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinError({:?})", self.message())
    }
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "coroutine failed: {}", self.message())
    }
}

impl std::error::Error for JoinError {}

/// Where a finished coroutine leaves its result for whoever joins it.
///
/// One atomic word orders everything: the joiner stores its waker only while
/// the state is EMPTY (or after taking it back from WAITING), and the
/// finishing coroutine takes the waker only after swapping in DONE.
pub(crate) struct JoinSlot<T> {
    state: AtomicU8,
    value: UnsafeCell<Option<std::thread::Result<T>>>,
    waker: UnsafeCell<Option<Waker>>,
}

const SLOT_EMPTY: u8 = 0;
const SLOT_WAITING: u8 = 1;
const SLOT_DONE: u8 = 2;

// SAFETY: `value` is written once before DONE is released and read only after
// DONE is acquired; `waker` is owned by the joiner in EMPTY and by the
// finisher once it swapped in DONE over WAITING (see `complete`/`poll_take`).
unsafe impl<T: Send> Sync for JoinSlot<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Send for JoinSlot<T> {}

impl<T> JoinSlot<T> {
    fn new() -> Self {
        Self {
            state: AtomicU8::new(SLOT_EMPTY),
            value: UnsafeCell::new(None),
            waker: UnsafeCell::new(None),
        }
    }

    fn complete(&self, v: std::thread::Result<T>) {
        // SAFETY: only the coroutine itself writes `value`, once, before DONE.
        unsafe { *self.value.get() = Some(v) };
        if self.state.swap(SLOT_DONE, Ordering::AcqRel) == SLOT_WAITING {
            // SAFETY: the joiner stored its waker before publishing WAITING
            // and does not touch it again once the state is DONE.
            if let Some(w) = unsafe { (*self.waker.get()).take() } {
                w.wake();
            }
        }
    }

    fn is_done(&self) -> bool {
        self.state.load(Ordering::Acquire) == SLOT_DONE
    }

    fn take(&self) -> Result<T, JoinError> {
        // SAFETY: DONE was acquired, so the write to `value` happened-before;
        // the handle is consumed (or polled to completion) only once.
        match unsafe { (*self.value.get()).take() } {
            Some(Ok(v)) => Ok(v),
            Some(Err(payload)) => Err(JoinError { payload }),
            None => panic!("coroutine result taken twice"),
        }
    }

    /// Registers `w` (moved in, no clone) unless the result is there.
    // The compare-exchange reads better as a statement than as a match guard.
    #[allow(clippy::collapsible_match)]
    fn poll_with(&self, w: impl FnOnce() -> Waker) -> Poll<Result<T, JoinError>> {
        match self.state.load(Ordering::Acquire) {
            SLOT_DONE => return Poll::Ready(self.take()),
            // Take the slot back to replace the waker.
            SLOT_WAITING => {
                if self
                    .state
                    .compare_exchange(
                        SLOT_WAITING,
                        SLOT_EMPTY,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    )
                    .is_err()
                {
                    return Poll::Ready(self.take());
                }
            }
            _ => {}
        }
        // SAFETY: state is EMPTY: only the joiner (us) touches `waker`.
        unsafe { *self.waker.get() = Some(w()) };
        match self.state.compare_exchange(
            SLOT_EMPTY,
            SLOT_WAITING,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => Poll::Pending,
            Err(_) => Poll::Ready(self.take()),
        }
    }
}

/// A handle to the result of a coroutine spawned on the caller's reactor
/// ([`spawn`]). Dropping it detaches the coroutine. It is also a `Future`,
/// so an async task on the same reactor can await a coroutine.
///
/// It is `!Send`: the coroutine finishes on its home reactor, which is the
/// joiner's, so handing over the result needs no atomic operation.
pub struct JoinHandle<T> {
    slot: Rc<LocalSlot<T>>,
}

/// Where a coroutine spawned with [`spawn`] leaves its result.
pub(crate) struct LocalSlot<T> {
    value: RefCell<Option<std::thread::Result<T>>>,
    joiner: RefCell<Joiner>,
}

enum Joiner {
    None,
    /// A parked coroutine of this reactor; valid while the handle lives
    /// (the handle clears it when dropped).
    Coro(*const CoHeader),
    Waker(Waker),
}

impl<T> LocalSlot<T> {
    fn new() -> Self {
        Self {
            value: RefCell::new(None),
            joiner: RefCell::new(Joiner::None),
        }
    }

    fn is_done(&self) -> bool {
        self.value.borrow().is_some()
    }

    fn take(&self) -> Result<T, JoinError> {
        match self.value.borrow_mut().take() {
            Some(Ok(v)) => Ok(v),
            Some(Err(payload)) => Err(JoinError { payload }),
            None => panic!("coroutine result taken twice"),
        }
    }
}

impl<T> JoinHandle<T> {
    /// Waits for the coroutine to finish, parking the calling coroutine.
    /// A panic in the coroutine comes back as `Err`.
    pub fn join(self) -> Result<T, JoinError> {
        if self.slot.is_done() {
            return self.slot.take();
        }
        let Some(host) = reactor::current_host() else {
            unreachable!("a JoinHandle is !Send and lives on its reactor");
        };
        let me = host.current.get();
        if me.is_null() {
            // On the scheduler context (a poller): cannot park.
            return super::future::block_on(self);
        }
        *self.slot.joiner.borrow_mut() = Joiner::Coro(me);
        while !self.slot.is_done() {
            // The handle is !Send, so this coroutine joins on its home
            // reactor and resumes there: `host` stays this thread's.
            park_on(host, me);
        }
        *self.slot.joiner.borrow_mut() = Joiner::None;
        self.slot.take()
    }

    /// Whether the coroutine has finished.
    pub fn is_finished(&self) -> bool {
        self.slot.is_done()
    }
}

impl<T> Drop for JoinHandle<T> {
    fn drop(&mut self) {
        // A cancelled joiner unwinds out of `join`: forget its pointer.
        *self.slot.joiner.borrow_mut() = Joiner::None;
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, JoinError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.slot.is_done() {
            return Poll::Ready(self.slot.take());
        }
        *self.slot.joiner.borrow_mut() = Joiner::Waker(cx.waker().clone());
        Poll::Pending
    }
}

/// How a finished coroutine hands over its result.
pub(crate) trait ResultSink<T>: 'static {
    fn complete(self, r: std::thread::Result<T>);
}

impl<T: 'static> ResultSink<T> for Rc<LocalSlot<T>> {
    fn complete(self, r: std::thread::Result<T>) {
        *self.value.borrow_mut() = Some(r);
        let joiner = std::mem::replace(&mut *self.joiner.borrow_mut(), Joiner::None);
        match joiner {
            Joiner::None => {}
            // SAFETY: the handle clears this pointer before it is dropped,
            // and the joiner coroutine lives while it waits in `join`.
            Joiner::Coro(p) => unsafe { (*p).wake() },
            Joiner::Waker(w) => w.wake(),
        }
    }
}

impl<T: 'static> ResultSink<T> for Arc<JoinSlot<T>> {
    fn complete(self, r: std::thread::Result<T>) {
        JoinSlot::complete(&self, r)
    }
}

/// A `Send` handle to the result of a coroutine spawned on a reactor from
/// anywhere ([`super::Handle::spawn_on`]). Dropping it detaches the
/// coroutine. It is also a `Future`.
pub struct RemoteJoinHandle<T> {
    slot: Arc<JoinSlot<T>>,
}

impl<T> RemoteJoinHandle<T> {
    /// Waits for the coroutine to finish: parks the calling coroutine, or
    /// blocks the calling thread when called from outside the runtime.
    /// A panic in the coroutine comes back as `Err`.
    pub fn join(self) -> Result<T, JoinError> {
        if self.slot.is_done() {
            return self.slot.take();
        }
        if in_coroutine() {
            // The common case, kept lean: one waker, moved into the slot.
            if let Poll::Ready(r) = self.slot.poll_with(current_waker) {
                return r;
            }
            loop {
                park();
                if self.slot.is_done() {
                    return self.slot.take();
                }
            }
        }
        super::future::block_on(self)
    }

    /// Whether the coroutine has finished.
    pub fn is_finished(&self) -> bool {
        self.slot.is_done()
    }
}

impl<T> Future for RemoteJoinHandle<T> {
    type Output = Result<T, JoinError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.slot.is_done() {
            return Poll::Ready(self.slot.take());
        }
        self.slot.poll_with(|| cx.waker().clone())
    }
}

/// Options for spawning a coroutine.
#[derive(Default)]
pub struct Builder {
    name: Option<Name>,
    stack_size: Option<usize>,
}

impl Builder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The name shown in logs and in a stack overflow report.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(Name::Owned(Arc::from(name.into().into_boxed_str())));
        self
    }

    /// A name without an allocation.
    pub fn static_name(mut self, name: &'static str) -> Self {
        self.name = Some(Name::Static(name));
        self
    }

    /// A stack of another size than the reactor's pool gives (not pooled).
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.stack_size = Some(bytes);
        self
    }

    /// Spawns on the current reactor. Fails when called outside a reactor
    /// or when no stack can be mapped.
    pub fn spawn<F, T>(self, f: F) -> io::Result<JoinHandle<T>>
    where
        F: FnOnce() -> T + 'static,
        T: 'static,
    {
        let local = reactor::current_local().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                "rt::spawn called outside a reactor thread",
            )
        })?;
        let slot = Rc::new(LocalSlot::new());
        spawn_on_local(
            local,
            self.name.unwrap_or(Name::Static("coroutine")),
            self.stack_size,
            f,
            slot.clone(),
        )?;
        Ok(JoinHandle { slot })
    }
}

/// Spawns a coroutine on the current reactor.
///
/// # Panics
/// Outside a reactor thread, or when no stack can be mapped.
pub fn spawn<F, T>(f: F) -> JoinHandle<T>
where
    F: FnOnce() -> T + 'static,
    T: 'static,
{
    match Builder::new().spawn(f) {
        Ok(h) => h,
        Err(e) => panic!("rt::spawn: {e}"),
    }
}

/// Spawns on the current reactor with a `Send` handle (for
/// [`super::Handle::spawn_on`]).
pub(crate) fn spawn_remote_on_local<F, T>(local: &Local, f: F) -> io::Result<RemoteJoinHandle<T>>
where
    F: FnOnce() -> T + 'static,
    T: Send + 'static,
{
    let slot = Arc::new(JoinSlot::new());
    spawn_on_local(local, Name::Static("coroutine"), None, f, slot.clone())?;
    Ok(RemoteJoinHandle { slot })
}

/// What a new coroutine finds at the top of its stack.
struct Payload<F, S> {
    f: F,
    sink: S,
}

pub(crate) fn spawn_on_local<F, T, S>(
    local: &Local,
    name: Name,
    stack_size: Option<usize>,
    f: F,
    sink: S,
) -> io::Result<()>
where
    F: FnOnce() -> T + 'static,
    T: 'static,
    S: ResultSink<T>,
{
    let stack = match stack_size {
        Some(n) if n != local.stacks.stack_size() => Stack::new(n)?,
        _ => local.stacks.get()?,
    };
    let top = stack.top() as usize;
    let size = mem::size_of::<Payload<F, S>>();
    let align = mem::align_of::<Payload<F, S>>().max(16);
    let payload_at = (top - size) & !(align - 1);
    // Leave room for the payload, the first frame, and some real work.
    if top - payload_at + 4096 > stack.usable_len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "coroutine closure of {size} bytes does not fit its {} byte stack",
                stack.usable_len()
            ),
        ));
    }
    let header = local.take_header();
    // SAFETY: the payload slot lies inside the stack's usable memory (checked
    // above), is aligned for Payload<F, S>, and nothing else uses the stack.
    let sp = unsafe {
        ptr::write(payload_at as *mut Payload<F, S>, Payload { f, sink });
        context::init_stack(
            payload_at as *mut u8,
            entry::<F, T, S>,
            payload_at as *mut u8,
        )
    };
    // SAFETY: the header came from this reactor's pool (or was just made) and
    // no other thread knows it yet.
    let l = unsafe { header.local() };
    l.sp = sp;
    l.guard = stack.guard_range();
    l.stack_size = stack.usable_len();
    l.stack = Some(stack);
    l.name = name;
    l.home = local.id;
    let ptr = local.register(header);
    local.push_ready(Ready::Coro(ptr));
    Ok(())
}

/// The first function on every coroutine stack.
extern "C" fn entry<F, T, S>(arg: *mut u8) -> !
where
    F: FnOnce() -> T + 'static,
    T: 'static,
    S: ResultSink<T>,
{
    // SAFETY: `arg` points at the Payload written by `spawn_on_local`, read
    // exactly once here.
    let Payload { f, sink } = unsafe { ptr::read(arg as *mut Payload<F, S>) };

    let result = panic::catch_unwind(AssertUnwindSafe(f));
    if let Err(e) = &result {
        if !e.is::<Cancelled>() {
            log::debug!(
                "coroutine '{}' panicked",
                current_name().unwrap_or_default()
            );
        }
    }
    sink.complete(result);
    finish()
}

/// Ends the running coroutine: its stack goes back to the pool once the
/// scheduler has switched off it.
fn finish() -> ! {
    let host = reactor::current_host().expect("a coroutine always runs on a host");
    let me = host.current.get();
    // SAFETY: `me` is the running coroutine, alive until released.
    unsafe { (*me).state.store(DONE, Ordering::Release) };
    host.finish(me)
}

/// Whether the caller runs inside a coroutine.
pub fn in_coroutine() -> bool {
    reactor::current_host()
        .map(|h| !h.current.get().is_null())
        .unwrap_or(false)
}

/// The running coroutine's name.
pub fn current_name() -> Option<String> {
    let host = reactor::current_host()?;
    let me = host.current.get();
    if me.is_null() {
        return None;
    }
    // SAFETY: `me` is the running coroutine on this thread.
    Some(unsafe { (*me).local() }.name.as_str().to_string())
}

/// A waker for the running coroutine.
///
/// # Panics
/// Outside a coroutine.
pub fn current_waker() -> Waker {
    let host = reactor::current_host().expect("current_waker outside the runtime");
    let me = host.current.get();
    assert!(!me.is_null(), "current_waker outside a coroutine");
    // SAFETY: `me` came from Arc::as_ptr of the header the registry holds,
    // alive while the coroutine runs; we add one strong count for the Waker.
    let arc = unsafe {
        Arc::increment_strong_count(me);
        Arc::from_raw(me)
    };
    Waker::from(arc)
}

/// Lets other ready coroutines run, then continues.
pub fn yield_now() {
    let Some(host) = reactor::current_host() else {
        std::thread::yield_now();
        return;
    };
    let me = host.current.get();
    if me.is_null() {
        return;
    }
    match host.reactor() {
        Some(local) => {
            local.push_ready(Ready::Coro(me));
            host.switch_away(me, local);
        }
        None => {
            // On the worker pool: requeue behind other migrated coroutines.
            host.switch_to_main(me, reactor::After::Requeue(me));
        }
    }
}

/// Suspends the running coroutine until [`Waker::wake`] is called on one of
/// its wakers (or returns at once if that already happened since the last
/// park). Spurious returns are possible: callers re-check their condition.
///
/// # Panics
/// Unwinds with [`Cancelled`] when the runtime shuts down; outside a
/// coroutine, it panics.
pub fn park() {
    let host = reactor::current_host().expect("park outside the runtime");
    let me = host.current.get();
    assert!(!me.is_null(), "park outside a coroutine");
    park_on(host, me);
}

/// [`park`] for a caller that already knows its host and coroutine.
pub(crate) fn park_on(host: &reactor::Host, me: *const CoHeader) {
    // SAFETY: `me` is the running coroutine.
    let header = unsafe { &*me };
    // A plain load first: a failed compare-exchange costs as much as a
    // successful one, and NOTIFIED is the rare case.
    if header.state.load(Ordering::Acquire) == NOTIFIED
        && header
            .state
            .compare_exchange(NOTIFIED, RUNNING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    {
        check_cancel(header);
        return;
    }
    match host.reactor() {
        Some(local) => {
            // Wakers on other threads only *send* to this reactor's queue,
            // which this thread drains after we have switched out, so the
            // state may change before the switch. A coroutine parked on a
            // reactor is resumed on that reactor, so `host` stays valid.
            if header
                .state
                .compare_exchange(RUNNING, PARKED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                host.switch_away(me, local);
            } else {
                header.state.store(RUNNING, Ordering::Release);
            }
            check_cancel(header);
        }
        None => {
            // On the worker pool any worker may resume us once PARKED, so the
            // state changes only after the switch, in the worker's context.
            host.switch_to_main(me, reactor::After::Park(me));
            check_cancel(header);
        }
    }
}

fn check_cancel(header: &CoHeader) {
    if header.cancel.load(Ordering::Acquire) && !std::thread::panicking() {
        panic::resume_unwind(Box::new(Cancelled));
    }
}

/// A marker making a type `!Send` and `!Sync`.
pub(crate) type NotSend = PhantomData<*const ()>;
