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
use std::cell::UnsafeCell;
use std::fmt;
use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::mem;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::ptr;
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
                RUNNING => match self.state.compare_exchange_weak(RUNNING, NOTIFIED, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => return,
                    Err(cur) => s = cur,
                },
                PARKED => match self.state.compare_exchange_weak(PARKED, RUNNING, Ordering::AcqRel, Ordering::Acquire) {
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
pub(crate) struct JoinSlot<T> {
    done: AtomicBool,
    value: UnsafeCell<Option<std::thread::Result<T>>>,
    waker: super::sync::AtomicWaker,
}

// SAFETY: `value` is written once by the finishing coroutine before `done` is
// released and read by the joiner only after acquiring `done`.
unsafe impl<T: Send> Sync for JoinSlot<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Send for JoinSlot<T> {}

impl<T> JoinSlot<T> {
    fn new() -> Self {
        Self { done: AtomicBool::new(false), value: UnsafeCell::new(None), waker: super::sync::AtomicWaker::new() }
    }

    fn complete(&self, v: std::thread::Result<T>) {
        // SAFETY: only the coroutine itself writes, once, before `done`.
        unsafe { *self.value.get() = Some(v) };
        self.done.store(true, Ordering::Release);
        self.waker.wake();
    }

    fn poll_take(&self, cx: &mut Context<'_>) -> Poll<Result<T, JoinError>> {
        if !self.done.load(Ordering::Acquire) {
            self.waker.register(cx.waker());
            if !self.done.load(Ordering::Acquire) {
                return Poll::Pending;
            }
        }
        // SAFETY: `done` was acquired, so the write happened-before; the
        // JoinHandle is consumed on success, so this runs at most once.
        let v = unsafe { (*self.value.get()).take() };
        match v {
            Some(Ok(v)) => Poll::Ready(Ok(v)),
            Some(Err(payload)) => Poll::Ready(Err(JoinError { payload })),
            None => panic!("coroutine result taken twice"),
        }
    }
}

/// A handle to a spawned coroutine's result. Dropping it detaches the
/// coroutine. It is also a `Future`, so async code can await a coroutine.
pub struct JoinHandle<T> {
    slot: Arc<JoinSlot<T>>,
}

impl<T> JoinHandle<T> {
    /// Waits for the coroutine to finish: parks the calling coroutine, or
    /// blocks the calling thread when called from outside the runtime.
    /// A panic in the coroutine comes back as `Err`.
    pub fn join(self) -> Result<T, JoinError> {
        super::future::block_on(self)
    }

    /// Whether the coroutine has finished.
    pub fn is_finished(&self) -> bool {
        self.slot.done.load(Ordering::Acquire)
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, JoinError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.slot.poll_take(cx)
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
            io::Error::new(io::ErrorKind::Unsupported, "rt::spawn called outside a reactor thread")
        })?;
        spawn_on_local(local, self.name.unwrap_or(Name::Static("coroutine")), self.stack_size, f)
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

/// What a new coroutine finds at the top of its stack.
struct Payload<F, T> {
    f: F,
    slot: Arc<JoinSlot<T>>,
}

pub(crate) fn spawn_on_local<F, T>(local: &Local, name: Name, stack_size: Option<usize>, f: F) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + 'static,
    T: 'static,
{
    let slot = Arc::new(JoinSlot::new());
    let stack = match stack_size {
        Some(n) if n != local.stacks.stack_size() => Stack::new(n)?,
        _ => local.stacks.get()?,
    };
    let top = stack.top() as usize;
    let size = mem::size_of::<Payload<F, T>>();
    let align = mem::align_of::<Payload<F, T>>().max(16);
    let payload_at = (top - size) & !(align - 1);
    // Leave room for the payload, the first frame, and some real work.
    if top - payload_at + 4096 > stack.usable_len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("coroutine closure of {size} bytes does not fit its {} byte stack", stack.usable_len()),
        ));
    }
    let header = local.take_header();
    // SAFETY: the payload slot lies inside the stack's usable memory (checked
    // above), is aligned for Payload<F, T>, and nothing else uses the stack.
    let sp = unsafe {
        ptr::write(payload_at as *mut Payload<F, T>, Payload { f, slot: slot.clone() });
        context::init_stack(payload_at as *mut u8, entry::<F, T>, payload_at as *mut u8)
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
    Ok(JoinHandle { slot })
}

/// The first function on every coroutine stack.
extern "C" fn entry<F, T>(arg: *mut u8) -> !
where
    F: FnOnce() -> T + 'static,
    T: 'static,
{
    // SAFETY: `arg` points at the Payload written by `spawn_on_local`, read
    // exactly once here.
    let Payload { f, slot } = unsafe { ptr::read(arg as *mut Payload<F, T>) };
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    if let Err(e) = &result {
        if !e.is::<Cancelled>() {
            log::debug!("coroutine '{}' panicked", current_name().unwrap_or_default());
        }
    }
    slot.complete(result);
    drop(slot);
    finish()
}

/// Ends the running coroutine: its stack goes back to the pool once the
/// scheduler has switched off it.
fn finish() -> ! {
    let host = reactor::current_host().expect("a coroutine always runs on a host");
    let me = host.current.get();
    // SAFETY: `me` is the running coroutine, alive until released below.
    unsafe { (*me).state.store(DONE, Ordering::Release) };
    host.switch_to_main(me, reactor::After::Release(me));
    unreachable!("a finished coroutine was resumed");
}

/// Whether the caller runs inside a coroutine.
pub fn in_coroutine() -> bool {
    reactor::current_host().map(|h| !h.current.get().is_null()).unwrap_or(false)
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
    // SAFETY: `me` is the running coroutine.
    let header = unsafe { &*me };
    if header.state.compare_exchange(NOTIFIED, RUNNING, Ordering::AcqRel, Ordering::Acquire).is_ok() {
        check_cancel(header);
        return;
    }
    match host.reactor() {
        Some(local) => {
            // Wakers on other threads only *send* to this reactor's queue,
            // which this thread drains after we have switched out, so the
            // state may change before the switch.
            if header.state.compare_exchange(RUNNING, PARKED, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                host.switch_away(me, local);
            } else {
                header.state.store(RUNNING, Ordering::Release);
            }
        }
        None => {
            // On the worker pool any worker may resume us once PARKED, so the
            // state changes only after the switch, in the worker's context.
            host.switch_to_main(me, reactor::After::Park(me));
        }
    }
    // Re-read: a migrated coroutine may resume on another thread.
    let me = reactor::current_host().expect("resumed on a host").current.get();
    // SAFETY: we are the running coroutine again.
    check_cancel(unsafe { &*me });
}

fn check_cancel(header: &CoHeader) {
    if header.cancel.load(Ordering::Acquire) && !std::thread::panicking() {
        panic::resume_unwind(Box::new(Cancelled));
    }
}

/// A marker making a type `!Send` and `!Sync`.
pub(crate) type NotSend = PhantomData<*const ()>;
