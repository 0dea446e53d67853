//! Per-reactor timers: a min-heap of deadlines and the wakers to call.
//!
//! A timer is never cancelled explicitly: when its sleeper went away early,
//! it fires a spurious wake, which every parking site tolerates. That keeps
//! the heap a plain heap, with O(log n) insert and pop.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

struct Entry {
    deadline: Instant,
    seq: u64,
    waker: Waker,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        self.deadline == o.deadline && self.seq == o.seq
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    // Reversed: BinaryHeap is a max-heap and we want the earliest first.
    fn cmp(&self, o: &Self) -> CmpOrdering {
        o.deadline.cmp(&self.deadline).then(o.seq.cmp(&self.seq))
    }
}

pub(crate) struct Timers {
    heap: BinaryHeap<Entry>,
    seq: u64,
}

impl Timers {
    pub(crate) fn new() -> Self {
        Self {
            heap: BinaryHeap::new(),
            seq: 0,
        }
    }

    pub(crate) fn add(&mut self, deadline: Instant, waker: Waker) {
        self.seq += 1;
        self.heap.push(Entry {
            deadline,
            seq: self.seq,
            waker,
        });
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|e| e.deadline)
    }

    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<Waker> {
        if self.heap.peek()?.deadline <= now {
            return self.heap.pop().map(|e| e.waker);
        }
        None
    }
}

/// Suspends the running coroutine for `d`. Outside a reactor (on a worker
/// or a plain thread) it sleeps the thread.
pub fn sleep(d: Duration) {
    sleep_until(Instant::now() + d)
}

/// Suspends the running coroutine until `deadline`.
pub fn sleep_until(deadline: Instant) {
    let Some(local) = super::reactor::current_local() else {
        std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
        return;
    };
    if !super::coro::in_coroutine() {
        panic!("rt::sleep on a reactor's scheduler context would stall the reactor; use sleep_async or a coroutine");
    }
    local
        .timers
        .borrow_mut()
        .add(deadline, super::coro::current_waker());
    while Instant::now() < deadline {
        super::coro::park();
    }
}

/// A future that completes at `deadline`; polled on a reactor it uses the
/// reactor's timers.
pub struct Sleep {
    deadline: Instant,
    registered: bool,
}

/// A future that completes after `d` (for async tasks on the reactors).
pub fn sleep_async(d: Duration) -> Sleep {
    Sleep {
        deadline: Instant::now() + d,
        registered: false,
    }
}

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            return Poll::Ready(());
        }
        // Register on every poll from a different waker context; once is
        // enough for the common case of one task polling it.
        if !self.registered {
            match super::reactor::current_local() {
                Some(local) => local
                    .timers
                    .borrow_mut()
                    .add(self.deadline, cx.waker().clone()),
                None => {
                    let w = cx.waker().clone();
                    let d = self.deadline;
                    std::thread::spawn(move || {
                        std::thread::sleep(d.saturating_duration_since(Instant::now()));
                        w.wake();
                    });
                }
            }
            self.registered = true;
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::task::Wake;

    struct Noop;
    impl Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }

    #[test]
    fn pops_in_deadline_order() {
        let mut t = Timers::new();
        let now = Instant::now();
        let w = Waker::from(Arc::new(Noop));
        t.add(now + Duration::from_millis(30), w.clone());
        t.add(now + Duration::from_millis(10), w.clone());
        t.add(now + Duration::from_millis(20), w);
        assert_eq!(t.next_deadline(), Some(now + Duration::from_millis(10)));
        assert!(t.pop_expired(now).is_none());
        assert!(t.pop_expired(now + Duration::from_millis(25)).is_some());
        assert!(t.pop_expired(now + Duration::from_millis(25)).is_some());
        assert!(t.pop_expired(now + Duration::from_millis(25)).is_none());
        assert_eq!(t.next_deadline(), Some(now + Duration::from_millis(30)));
    }
}
