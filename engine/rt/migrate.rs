//! Moving the running coroutine to another reactor or to the worker pool and
//! back: Ferrite's form of ZBS's `ThreadContextGuard`.
//!
//! ```ignore
//! let crc = rt::migrate::run_on(Target::Workers, || crc32c::crc32c(&big_buffer));
//! ```
//!
//! The coroutine itself moves (its stack and registers), so the code reads as
//! straight-line code: before `run_on` it runs on its reactor, inside the
//! closure on the target, after `run_on` on its reactor again. If the closure
//! panics, the coroutine is moved home before the panic continues.
//!
//! # What may be held across a move (the Send rules)
//! While the closure runs on another thread, the values it touches are used
//! from that thread. So the closure must be `Send` (everything it captures
//! is `Send`, and everything it borrows is `Sync`) and so must its result.
//! Reactor-local values (`Rc`, `RefCell`, sockets of `rt::net`, pollers) are
//! `!Send`/`!Sync` and cannot be captured: the compiler rejects it. Values
//! of the enclosing function that the closure does not capture stay on the
//! stack untouched, so holding an `Rc` across `run_on` is fine. The rule
//! that cannot be expressed as a guard object in Rust (the borrow checker
//! cannot see which locals a guard's scope uses) is why the move is a
//! closure: its capture list *is* the scope of the guard.
//!
//! On the worker pool, code runs on a plain thread: it may block that thread
//! (that is what the pool is for), and the `rt` primitives that park
//! (locks, channels, events, joins) park the coroutine there too; spawning
//! and `rt::net` sockets need a reactor and are refused.

use super::coro::{CoHeader, HOST_WORKERS, PARKED, RUNNING};
use super::reactor::{self, After, Host, SendPtr};
use super::runtime::RuntimeShared;
use crossbeam_channel::{Receiver, Sender};
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;

/// Where to move the running coroutine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Reactor `n` of the same runtime.
    Reactor(usize),
    /// The runtime's worker pool (for CPU-heavy work: checksums, compression).
    Workers,
}

/// The runtime's worker threads and their shared queue.
pub(crate) struct WorkerPool {
    tx: Sender<Option<SendPtr>>,
    count: usize,
}

impl WorkerPool {
    pub(crate) fn new(count: usize) -> (Self, Receiver<Option<SendPtr>>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        (Self { tx, count }, rx)
    }

    pub(crate) fn submit(&self, co: SendPtr) {
        if self.tx.send(Some(co)).is_err() {
            log::error!("worker pool is stopped; a migrated coroutine cannot run");
        }
    }

    pub(crate) fn stop(&self) {
        for _ in 0..self.count {
            let _ = self.tx.send(None);
        }
    }
}

pub(crate) fn start_workers(
    rt: &Arc<RuntimeShared>,
    rx: Receiver<Option<SendPtr>>,
) -> io::Result<Vec<thread::JoinHandle<()>>> {
    let mut v = Vec::new();
    for i in 0..rt.workers.count {
        let rx = rx.clone();
        let rt = rt.clone();
        let name = format!("{}-worker-{i}", rt.config.name);
        v.push(
            thread::Builder::new()
                .name(name)
                .spawn(move || worker_thread(rt, rx))?,
        );
    }
    Ok(v)
}

fn worker_thread(rt: Arc<RuntimeShared>, rx: Receiver<Option<SendPtr>>) {
    let _alt = ferrite_sys::segv::AltStack::ensure();
    let host = Host::new(std::ptr::null());
    host.install();
    while let Ok(Some(SendPtr(co))) = rx.recv() {
        match host.resume(co) {
            After::Nothing => {}
            After::Park(co) => {
                // SAFETY: the coroutine is off its stack and alive (its home
                // registry owns it).
                let h = unsafe { &*co };
                if h.state
                    .compare_exchange(RUNNING, PARKED, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
                {
                    // Woken while switching out: run it again.
                    h.state.store(RUNNING, Ordering::Release);
                    rt.workers.submit(SendPtr(co));
                }
            }
            After::Requeue(co) => rt.workers.submit(SendPtr(co)),
            After::Migrate(co, target) => {
                // SAFETY: as above.
                unsafe { (*co).host.store(target, Ordering::Release) };
                reactor::route(&rt, co, target);
            }
            After::Release(_) => {
                unreachable!("a coroutine cannot finish while migrated: run_on moves it home first")
            }
        }
    }
    host.uninstall();
}

/// Runs `f` with the running coroutine moved to `target`, then moves it back
/// to where it was. Outside a coroutine, `f` just runs here.
///
/// # Panics
/// If `target` names a reactor that does not exist. A panic in `f` is
/// propagated after the coroutine is home again.
pub fn run_on<F, R>(target: Target, f: F) -> R
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    let Some(origin) = here() else {
        return f();
    };
    let dest = match target {
        Target::Workers => HOST_WORKERS,
        Target::Reactor(n) => {
            let count = reactor::current_host()
                .and_then(|h| h.reactor())
                .map(|l| l.rt.reactors.len())
                .unwrap_or(usize::MAX);
            assert!(n < count, "rt::migrate: reactor {n} does not exist");
            n
        }
    };
    if dest == origin {
        return f();
    }
    move_to(dest);
    // Moves home on drop, also while a panic unwinds out of `f`.
    struct Home(usize);
    impl Drop for Home {
        fn drop(&mut self) {
            move_to(self.0);
        }
    }
    let _home = Home(origin);
    f()
}

/// The host index of the running coroutine, or `None` outside a coroutine.
fn here() -> Option<usize> {
    let host = reactor::current_host()?;
    let me = host.current.get();
    if me.is_null() {
        return None;
    }
    // SAFETY: `me` is the running coroutine.
    Some(unsafe { (*me).host.load(Ordering::Acquire) })
}

/// Switches the running coroutine off this thread; the scheduler context
/// sends it to `dest`, where it resumes and this function returns.
#[inline(never)]
fn move_to(dest: usize) {
    let host: &Host = reactor::current_host().expect("move_to in a coroutine");
    let me: *const CoHeader = host.current.get();
    host.switch_to_main(me, After::Migrate(me, dest));
}
