//! Futures on the reactors: async tasks (async-task) are scheduled on the
//! same run queues as coroutines, and a coroutine can block on a future
//! without blocking its thread.

use super::reactor::{self, Msg, ReactorShared, Ready};
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;

/// Drives `fut` to completion.
/// - In a coroutine: polls it, parking the coroutine (not the thread)
///   between wake-ups.
/// - On a plain thread (or a worker without a coroutine): parks the thread.
///
/// # Panics
/// On a reactor's scheduler context (inside a poller or a cross-reactor
/// call): blocking there would stall every coroutine of the reactor.
pub fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    if super::coro::in_coroutine() {
        let waker = super::coro::current_waker();
        let mut cx = Context::from_waker(&waker);
        loop {
            if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
                return v;
            }
            super::coro::park();
        }
    }
    if reactor::current_local().is_some() {
        panic!("block_on on a reactor's scheduler context would stall the reactor; call it from a coroutine");
    }
    let tw = Arc::new(ThreadWaker {
        thread: std::thread::current(),
        notified: AtomicBool::new(false),
    });
    let waker = Waker::from(tw.clone());
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        while !tw.notified.swap(false, Ordering::Acquire) {
            std::thread::park();
        }
    }
}

struct ThreadWaker {
    thread: Thread,
    notified: AtomicBool,
}

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.notified.store(true, Ordering::Release);
        self.thread.unpark();
    }
}

fn schedule_fn(
    target: Arc<ReactorShared>,
) -> impl Fn(async_task::Runnable) + Send + Sync + 'static {
    move |runnable| {
        if let Some(local) = reactor::current_local() {
            if Arc::ptr_eq(&local.shared, &target) {
                local.push_ready(Ready::Task(runnable));
                return;
            }
        }
        target.send(Msg::Task(runnable));
    }
}

/// Spawns a future as an async task on the current reactor. The future
/// need not be `Send`: it is only ever polled on this reactor.
///
/// # Panics
/// Outside a reactor thread.
pub fn spawn_task<F>(fut: F) -> async_task::Task<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    let local = reactor::current_local().expect("rt::spawn_task outside a reactor thread");
    let (runnable, task) = async_task::spawn_local(fut, schedule_fn(local.shared.clone()));
    runnable.schedule();
    task
}

pub(crate) fn spawn_task_on_shared<F>(
    target: Arc<ReactorShared>,
    fut: F,
) -> async_task::Task<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (runnable, task) = async_task::spawn(fut, schedule_fn(target));
    runnable.schedule();
    task
}
