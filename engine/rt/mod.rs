//! Ferrite's runtime: one pinned reactor per core, stackful coroutines of
//! our own, pollers, timers, cross-reactor messages, and futures on the same
//! reactors.
//!
//! ```no_run
//! use ferrite_engine::rt::{self, Config, Runtime};
//! let runtime = Runtime::new(Config::for_tests(2)).unwrap();
//! let sum = runtime.block_on(|| {
//!     let h = rt::spawn(|| 40 + 2);
//!     h.join().unwrap()
//! });
//! assert_eq!(sum, 42);
//! ```
//!
//! # Where code runs
//! - *Coroutines* run on a reactor thread, switched symmetrically, and may
//!   park (sleep, lock, join, socket I/O) without blocking the thread.
//! - A reactor's *scheduler context* runs pollers, messages and async task
//!   polls between coroutines; code there must never block.
//! - The *worker pool* runs coroutines moved there with
//!   [`migrate::run_on`], for CPU-heavy work.
//!
//! # Unsafe code
//! Confined to `context` (the switch), `stack` (through `ferrite-sys`),
//! `coro` (raw coroutine pointers across switches) and `reactor` (the
//! scheduler side of those switches); each block says why it is sound, and
//! the invariants are written at the top of `coro`.

mod context;
mod coro;
pub mod cpuset;
mod future;
mod io;
pub mod migrate;
pub mod net;
mod overflow;
mod reactor;
mod runtime;
pub mod server;
mod stack;
pub mod sync;
mod timer;

pub use coro::{
    current_name, current_waker, in_coroutine, park, spawn, yield_now, Builder, Cancelled,
    JoinError, JoinHandle, RemoteJoinHandle,
};
pub use cpuset::CoreSet;
pub use future::{block_on, spawn_task};
pub use reactor::{PollerId, PollerWake, ReactorShared, ReactorStats};
pub use runtime::{current_handle, Config, Handle, Runtime};
pub use stack::DEFAULT_STACK_SIZE;
pub use timer::{sleep, sleep_async, sleep_until, Sleep};

/// How a reactor waits for work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollMode {
    /// Never sleep: lowest latency, one core always at 100 %.
    Busy,
    /// Spin for `adaptive_spin` after the last work, yielding the core to
    /// any other runnable thread on every idle iteration, then sleep until a
    /// message, timer, socket or poller wakes the reactor.
    Adaptive,
}

impl std::str::FromStr for PollMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "busy" => Ok(Self::Busy),
            "adaptive" => Ok(Self::Adaptive),
            _ => Err(format!("poll mode '{s}' is neither 'busy' nor 'adaptive'")),
        }
    }
}

/// Registers a poller on the current reactor: `f` runs on every loop and
/// returns whether it found work. It runs on the scheduler context, so it
/// must not block; it may spawn coroutines or wake them.
///
/// # Errors
/// Outside a reactor thread, or if the wake descriptor cannot be added.
pub fn register_poller(
    name: &'static str,
    wake: PollerWake,
    f: impl FnMut() -> bool + 'static,
) -> std::io::Result<PollerId> {
    let local = reactor::current_local().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "register_poller outside a reactor thread",
        )
    })?;
    local.add_poller(name, Box::new(f), wake)
}

/// Removes a poller of the current reactor; returns whether it existed.
pub fn unregister_poller(id: PollerId) -> bool {
    reactor::current_local()
        .map(|l| l.remove_poller(id))
        .unwrap_or(false)
}

/// The index of the reactor the caller runs on.
pub fn current_reactor() -> Option<usize> {
    reactor::current_local().map(|l| l.id)
}

/// Live coroutines born on the current reactor (for tests and metrics).
pub fn live_coroutines() -> usize {
    reactor::current_local()
        .map(|l| l.live_coroutines())
        .unwrap_or(0)
}
