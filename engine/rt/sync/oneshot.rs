//! A channel for exactly one value, e.g. a cross-reactor call's result.

use super::AtomicWaker;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

const EMPTY: u8 = 0;
const FULL: u8 = 1;
const CLOSED: u8 = 2;

struct Inner<T> {
    state: AtomicU8,
    value: Mutex<Option<T>>,
    waker: AtomicWaker,
}

pub struct OneshotSender<T> {
    inner: Option<Arc<Inner<T>>>,
}

pub struct OneshotReceiver<T> {
    inner: Arc<Inner<T>>,
}

/// The sender was dropped without sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvError;

impl std::fmt::Display for RecvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the sending side was dropped without a value")
    }
}
impl std::error::Error for RecvError {}

pub fn oneshot<T>() -> (OneshotSender<T>, OneshotReceiver<T>) {
    let inner = Arc::new(Inner {
        state: AtomicU8::new(EMPTY),
        value: Mutex::new(None),
        waker: AtomicWaker::new(),
    });
    (
        OneshotSender {
            inner: Some(inner.clone()),
        },
        OneshotReceiver { inner },
    )
}

impl<T> OneshotSender<T> {
    /// Delivers the value; gives it back if the receiver is gone.
    pub fn send(mut self, v: T) -> Result<(), T> {
        let inner = self.inner.take().expect("send consumes the sender");
        if Arc::strong_count(&inner) == 1 {
            return Err(v);
        }
        *inner.value.lock().unwrap_or_else(|e| e.into_inner()) = Some(v);
        inner.state.store(FULL, Ordering::Release);
        inner.waker.wake();
        Ok(())
    }
}

impl<T> Drop for OneshotSender<T> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            inner.state.store(CLOSED, Ordering::Release);
            inner.waker.wake();
        }
    }
}

impl<T> OneshotReceiver<T> {
    /// Parks until the value arrives.
    pub fn recv(self) -> Result<T, RecvError> {
        super::super::future::block_on(self)
    }

    pub fn try_recv(&self) -> Option<T> {
        if self.inner.state.load(Ordering::Acquire) == FULL {
            return self
                .inner
                .value
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
        }
        None
    }
}

impl<T> Future for OneshotReceiver<T> {
    type Output = Result<T, RecvError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let check = |inner: &Inner<T>| match inner.state.load(Ordering::Acquire) {
            FULL => Some(
                inner
                    .value
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take()
                    .ok_or(RecvError),
            ),
            CLOSED => Some(Err(RecvError)),
            _ => None,
        };
        if let Some(r) = check(&self.inner) {
            return Poll::Ready(r);
        }
        self.inner.waker.register(cx.waker());
        match check(&self.inner) {
            Some(r) => Poll::Ready(r),
            None => Poll::Pending,
        }
    }
}
