//! A manual-reset event: `wait` parks until `set`; it stays set until `reset`.

use super::WaitQueue;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

#[derive(Default)]
pub struct Event {
    set: AtomicBool,
    waiters: WaitQueue,
}

impl Event {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set(&self) {
        self.set.store(true, Ordering::Release);
        self.waiters.wake_all();
    }

    pub fn reset(&self) {
        self.set.store(false, Ordering::Release);
    }

    pub fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    /// Parks until the event is set.
    pub fn wait(&self) {
        super::super::future::block_on(self.wait_async())
    }

    /// Parks until the event is set or `deadline` passes; returns whether it
    /// was set.
    pub fn wait_until(&self, deadline: Instant) -> bool {
        if self.is_set() {
            return true;
        }
        if super::super::coro::in_coroutine() && super::super::reactor::current_local().is_some() {
            let local = super::super::reactor::current_local().expect("checked");
            let waker = super::super::coro::current_waker();
            local.timers.borrow_mut().add(deadline, waker.clone());
            let mut ticket = None;
            loop {
                self.waiters.register(&mut ticket, &waker);
                if self.is_set() || Instant::now() >= deadline {
                    self.waiters.remove(&mut ticket);
                    return self.is_set();
                }
                super::super::coro::park();
            }
        }
        // Plain threads and workers: poll with short sleeps.
        while !self.is_set() && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        self.is_set()
    }

    pub fn wait_async(&self) -> Wait<'_> {
        Wait {
            ev: self,
            ticket: None,
        }
    }
}

pub struct Wait<'a> {
    ev: &'a Event,
    ticket: Option<u64>,
}

impl Future for Wait<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let ev = self.ev;
        if ev.is_set() {
            ev.waiters.remove(&mut self.ticket);
            return Poll::Ready(());
        }
        ev.waiters.register(&mut self.ticket, cx.waker());
        if ev.is_set() {
            ev.waiters.remove(&mut self.ticket);
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        self.ev.waiters.remove(&mut self.ticket);
    }
}

#[cfg(test)]
mod tests {
    use super::Event;
    use std::sync::Arc;
    use std::time::Duration;

    /// Two threads hand a turn back and forth through two events, as fast
    /// as they can, a fixed number of times. A wake-up lost between `set`
    /// and a waiter registering (the setter's flag store not yet visible
    /// when the waiter checks it, and the waiter's registration not yet
    /// visible when the setter looks for waiters) leaves both threads parked
    /// for good; the watchdog then fails the test.
    #[test]
    fn no_wake_up_is_lost_between_threads() {
        const ROUNDS: u64 = 50_000;
        let (ping, pong) = (Arc::new(Event::new()), Arc::new(Event::new()));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let (a, b) = (ping.clone(), pong.clone());
        let first = std::thread::spawn(move || {
            for _ in 0..ROUNDS {
                a.wait();
                a.reset();
                b.set();
            }
            let _ = done_tx.send(());
        });
        // Strict alternation: each side resets its event before it lets the
        // other side set it again.
        let second = std::thread::spawn(move || {
            for _ in 0..ROUNDS {
                ping.set();
                pong.wait();
                pong.reset();
            }
        });
        done_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("a wake-up was lost: both threads are parked");
        first.join().unwrap();
        second.join().unwrap();
    }
}
