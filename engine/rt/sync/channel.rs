//! A bounded multi-producer, multi-consumer channel: `send` parks while it
//! is full, `recv` parks while it is empty.

use super::WaitQueue;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

struct Inner<T> {
    cap: usize,
    state: Mutex<State<T>>,
    senders_waiting: WaitQueue,
    receivers_waiting: WaitQueue,
}

struct State<T> {
    queue: VecDeque<T>,
    senders: usize,
    receivers: usize,
}

pub struct Sender<T> {
    inner: Arc<Inner<T>>,
}

pub struct Receiver<T> {
    inner: Arc<Inner<T>>,
}

/// A channel holding at most `cap` values (at least 1).
pub fn channel<T>(cap: usize) -> (Sender<T>, Receiver<T>) {
    let inner = Arc::new(Inner {
        cap: cap.max(1),
        state: Mutex::new(State {
            queue: VecDeque::with_capacity(cap.clamp(1, 4096)),
            senders: 1,
            receivers: 1,
        }),
        senders_waiting: WaitQueue::new(),
        receivers_waiting: WaitQueue::new(),
    });
    (
        Sender {
            inner: inner.clone(),
        },
        Receiver { inner },
    )
}

/// Every receiver is gone; the value comes back.
pub struct SendError<T>(pub T);

impl<T> fmt::Debug for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SendError(..)")
    }
}
impl<T> fmt::Display for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the channel has no receiver")
    }
}
impl<T> std::error::Error for SendError<T> {}

#[derive(Debug)]
pub enum TrySendError<T> {
    Full(T),
    Closed(T),
}

/// Every sender is gone and the channel is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvError;

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the channel is empty and has no sender")
    }
}
impl std::error::Error for RecvError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryRecvError {
    Empty,
    Closed,
}

impl<T> Inner<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<T> Sender<T> {
    pub fn try_send(&self, v: T) -> Result<(), TrySendError<T>> {
        let mut st = self.inner.lock();
        if st.receivers == 0 {
            return Err(TrySendError::Closed(v));
        }
        if st.queue.len() >= self.inner.cap {
            return Err(TrySendError::Full(v));
        }
        st.queue.push_back(v);
        drop(st);
        self.inner.receivers_waiting.wake_one();
        Ok(())
    }

    /// Sends, parking while the channel is full.
    pub fn send(&self, v: T) -> Result<(), SendError<T>> {
        super::super::future::block_on(self.send_async(v))
    }

    pub fn send_async(&self, v: T) -> Send<'_, T> {
        Send {
            tx: self,
            value: Some(v),
            ticket: None,
        }
    }
}

pub struct Send<'a, T> {
    tx: &'a Sender<T>,
    value: Option<T>,
    ticket: Option<u64>,
}

impl<T> Unpin for Send<'_, T> {}

impl<T> Future for Send<'_, T> {
    type Output = Result<(), SendError<T>>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.tx.inner.clone();
        for attempt in 0..2 {
            let v = self.value.take().expect("polled after completion");
            match self.tx.try_send(v) {
                Ok(()) => {
                    inner.senders_waiting.remove(&mut self.ticket);
                    return Poll::Ready(Ok(()));
                }
                Err(TrySendError::Closed(v)) => {
                    inner.senders_waiting.remove(&mut self.ticket);
                    return Poll::Ready(Err(SendError(v)));
                }
                Err(TrySendError::Full(v)) => {
                    self.value = Some(v);
                    if attempt == 0 {
                        let mut t = self.ticket.take();
                        inner.senders_waiting.register(&mut t, cx.waker());
                        self.ticket = t;
                    }
                }
            }
        }
        Poll::Pending
    }
}

impl<T> Drop for Send<'_, T> {
    fn drop(&mut self) {
        if self.ticket.is_some() && !self.tx.inner.senders_waiting.remove(&mut self.ticket) {
            self.tx.inner.senders_waiting.wake_one();
        }
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.inner.lock().senders += 1;
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let last = {
            let mut st = self.inner.lock();
            st.senders -= 1;
            st.senders == 0
        };
        if last {
            self.inner.receivers_waiting.wake_all();
        }
    }
}

impl<T> Receiver<T> {
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        let mut st = self.inner.lock();
        match st.queue.pop_front() {
            Some(v) => {
                drop(st);
                self.inner.senders_waiting.wake_one();
                Ok(v)
            }
            None if st.senders == 0 => Err(TryRecvError::Closed),
            None => Err(TryRecvError::Empty),
        }
    }

    /// Receives, parking while the channel is empty.
    pub fn recv(&self) -> Result<T, RecvError> {
        super::super::future::block_on(self.recv_async())
    }

    pub fn recv_async(&self) -> Recv<'_, T> {
        Recv {
            rx: self,
            ticket: None,
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub struct Recv<'a, T> {
    rx: &'a Receiver<T>,
    ticket: Option<u64>,
}

impl<T> Future for Recv<'_, T> {
    type Output = Result<T, RecvError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.rx.inner.clone();
        for attempt in 0..2 {
            match self.rx.try_recv() {
                Ok(v) => {
                    inner.receivers_waiting.remove(&mut self.ticket);
                    return Poll::Ready(Ok(v));
                }
                Err(TryRecvError::Closed) => {
                    inner.receivers_waiting.remove(&mut self.ticket);
                    return Poll::Ready(Err(RecvError));
                }
                Err(TryRecvError::Empty) => {
                    if attempt == 0 {
                        let mut t = self.ticket.take();
                        inner.receivers_waiting.register(&mut t, cx.waker());
                        self.ticket = t;
                    }
                }
            }
        }
        Poll::Pending
    }
}

impl<T> Drop for Recv<'_, T> {
    fn drop(&mut self) {
        if self.ticket.is_some() && !self.rx.inner.receivers_waiting.remove(&mut self.ticket) {
            self.rx.inner.receivers_waiting.wake_one();
        }
    }
}

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        self.inner.lock().receivers += 1;
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let last = {
            let mut st = self.inner.lock();
            st.receivers -= 1;
            st.receivers == 0
        };
        if last {
            self.inner.senders_waiting.wake_all();
        }
    }
}
