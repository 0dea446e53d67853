//! A counting semaphore whose waiters park as coroutines.

use super::WaitQueue;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

pub struct Semaphore {
    permits: AtomicUsize,
    waiters: WaitQueue,
}

impl Semaphore {
    pub fn new(permits: usize) -> Self {
        Self {
            permits: AtomicUsize::new(permits),
            waiters: WaitQueue::new(),
        }
    }

    pub fn available(&self) -> usize {
        self.permits.load(Ordering::Acquire)
    }

    pub fn try_acquire(&self, n: usize) -> Option<SemaphorePermit<'_>> {
        let mut cur = self.permits.load(Ordering::Acquire);
        while cur >= n {
            match self.permits.compare_exchange_weak(
                cur,
                cur - n,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(SemaphorePermit { sem: self, n }),
                Err(c) => cur = c,
            }
        }
        None
    }

    /// Takes `n` permits, parking until they are available.
    pub fn acquire(&self, n: usize) -> SemaphorePermit<'_> {
        super::super::future::block_on(self.acquire_async(n))
    }

    pub fn acquire_async(&self, n: usize) -> Acquire<'_> {
        Acquire {
            sem: self,
            n,
            ticket: None,
        }
    }

    /// Returns `n` permits (also done by dropping a [`SemaphorePermit`]).
    pub fn release(&self, n: usize) {
        self.permits.fetch_add(n, Ordering::AcqRel);
        // Waiters may want different counts: let each re-check.
        self.waiters.wake_all();
    }
}

pub struct Acquire<'a> {
    sem: &'a Semaphore,
    n: usize,
    ticket: Option<u64>,
}

impl<'a> Future for Acquire<'a> {
    type Output = SemaphorePermit<'a>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (sem, n) = (self.sem, self.n);
        if let Some(p) = sem.try_acquire(n) {
            sem.waiters.remove(&mut self.ticket);
            return Poll::Ready(p);
        }
        sem.waiters.register(&mut self.ticket, cx.waker());
        if let Some(p) = sem.try_acquire(n) {
            sem.waiters.remove(&mut self.ticket);
            return Poll::Ready(p);
        }
        Poll::Pending
    }
}

impl Drop for Acquire<'_> {
    fn drop(&mut self) {
        self.sem.waiters.remove(&mut self.ticket);
    }
}

/// Permits held; returned on drop.
pub struct SemaphorePermit<'a> {
    sem: &'a Semaphore,
    n: usize,
}

impl SemaphorePermit<'_> {
    /// Keeps the permits taken (they are not returned on drop).
    pub fn forget(mut self) {
        self.n = 0;
    }
}

impl Drop for SemaphorePermit<'_> {
    fn drop(&mut self) {
        if self.n > 0 {
            self.sem.release(self.n);
        }
    }
}
