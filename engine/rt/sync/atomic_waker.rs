//! A slot for one waker that a waker-side and a registering side may use
//! concurrently without a lock.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Waker;

const IDLE: usize = 0;
const REGISTERING: usize = 1;
const WAKING: usize = 2;

pub struct AtomicWaker {
    state: AtomicUsize,
    waker: UnsafeCell<Option<Waker>>,
}

// SAFETY: `waker` is only accessed by the side that moved `state` out of IDLE
// (REGISTERING or WAKING), which excludes the other side.
unsafe impl Send for AtomicWaker {}
// SAFETY: as above.
unsafe impl Sync for AtomicWaker {}

impl Default for AtomicWaker {
    fn default() -> Self {
        Self::new()
    }
}

impl AtomicWaker {
    pub const fn new() -> Self {
        Self {
            state: AtomicUsize::new(IDLE),
            waker: UnsafeCell::new(None),
        }
    }

    /// Stores `w` to be woken by the next [`AtomicWaker::wake`]. If a wake
    /// races with the registration, `w` is woken at once.
    pub fn register(&self, w: &Waker) {
        match self
            .state
            .compare_exchange(IDLE, REGISTERING, Ordering::Acquire, Ordering::Acquire)
        {
            Ok(_) => {
                // SAFETY: REGISTERING gives us exclusive access to `waker`.
                unsafe {
                    let slot = &mut *self.waker.get();
                    match slot {
                        Some(old) if old.will_wake(w) => {}
                        _ => *slot = Some(w.clone()),
                    }
                }
                if let Err(_actual) = self.state.compare_exchange(
                    REGISTERING,
                    IDLE,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    // A wake arrived while we registered (state is
                    // REGISTERING|WAKING): it left the waking to us.
                    // SAFETY: still exclusive until we store IDLE below.
                    let w = unsafe { (*self.waker.get()).take() };
                    self.state.swap(IDLE, Ordering::AcqRel);
                    if let Some(w) = w {
                        w.wake();
                    }
                }
            }
            Err(WAKING) => w.wake_by_ref(),
            Err(_) => {
                // Another registration is in progress (two registrants: a
                // misuse); wake ours so it polls again rather than hangs.
                w.wake_by_ref();
            }
        }
    }

    /// Wakes the registered waker, if any.
    pub fn wake(&self) {
        if let Some(w) = self.take() {
            w.wake();
        }
    }

    fn take(&self) -> Option<Waker> {
        match self.state.fetch_or(WAKING, Ordering::AcqRel) {
            IDLE => {
                // SAFETY: WAKING gives us exclusive access to `waker`.
                let w = unsafe { (*self.waker.get()).take() };
                self.state.fetch_and(!WAKING, Ordering::Release);
                w
            }
            _ => None,
        }
    }
}
