//! A FIFO of parked waiters, each identified by a ticket so that a waiter
//! that gives up (its future dropped, its coroutine cancelled) can take
//! itself out, and pass on a wake it received but did not use.

use std::collections::VecDeque;
use std::sync::atomic::{fence, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::task::Waker;

#[derive(Default)]
pub(crate) struct WaitQueue {
    len: AtomicUsize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    queue: VecDeque<(u64, Waker)>,
}

impl WaitQueue {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock can only come from a waker's code;
        // the queue itself is always consistent, so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Enqueues the waker under `ticket`, or refreshes it if still queued.
    pub(crate) fn register(&self, ticket: &mut Option<u64>, w: &Waker) {
        let mut q = self.lock();
        if let Some(t) = *ticket {
            if let Some(e) = q.queue.iter_mut().find(|e| e.0 == t) {
                if !e.1.will_wake(w) {
                    e.1 = w.clone();
                }
                return;
            }
        }
        let t = q.next;
        q.next += 1;
        q.queue.push_back((t, w.clone()));
        self.len.store(q.queue.len(), Ordering::Release);
        *ticket = Some(t);
        drop(q);
        // Pairs with the fence in `wake_*`. A waiter registers and then
        // checks its condition; a waker changes the condition and then looks
        // at `len`. Without a total order between the two, the waiter can
        // miss the new condition while the waker still reads `len == 0`,
        // and the wake-up is lost (a store followed by a load of another
        // location may be reordered, even on x86).
        fence(Ordering::SeqCst);
    }

    /// Takes the waiter out; returns `true` if it was still queued (not woken).
    pub(crate) fn remove(&self, ticket: &mut Option<u64>) -> bool {
        let Some(t) = ticket.take() else { return false };
        if self.len.load(Ordering::Acquire) == 0 {
            return false;
        }
        let mut q = self.lock();
        let before = q.queue.len();
        q.queue.retain(|e| e.0 != t);
        let removed = q.queue.len() != before;
        self.len.store(q.queue.len(), Ordering::Release);
        removed
    }

    pub(crate) fn wake_one(&self) -> bool {
        fence(Ordering::SeqCst); // see `register`
        if self.len.load(Ordering::Acquire) == 0 {
            return false;
        }
        let w = {
            let mut q = self.lock();
            let w = q.queue.pop_front();
            self.len.store(q.queue.len(), Ordering::Release);
            w
        };
        match w {
            Some((_, w)) => {
                w.wake();
                true
            }
            None => false,
        }
    }

    pub(crate) fn wake_all(&self) {
        fence(Ordering::SeqCst); // see `register`
        if self.len.load(Ordering::Acquire) == 0 {
            return;
        }
        let all: Vec<_> = {
            let mut q = self.lock();
            let v = q.queue.drain(..).collect();
            self.len.store(0, Ordering::Release);
            v
        };
        for (_, w) in all {
            w.wake();
        }
    }
}
