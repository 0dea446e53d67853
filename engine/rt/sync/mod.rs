//! Synchronisation that parks the coroutine, never the thread.
//!
//! Every primitive is a set of futures underneath (so async tasks can await
//! them) with blocking methods for coroutines built on
//! [`super::future::block_on`]. They are `Send + Sync` and work across
//! reactors, the worker pool and plain threads. Internally each keeps its
//! waiters in a short `std::sync::Mutex`-guarded list that is held for a
//! few instructions at a time and never across a park.

mod atomic_waker;
mod channel;
mod event;
mod mutex;
mod oneshot;
mod semaphore;
mod wait_queue;

pub use atomic_waker::AtomicWaker;
pub use channel::{channel, Receiver, RecvError, SendError, Sender, TryRecvError, TrySendError};
pub use event::Event;
pub use mutex::{Mutex, MutexGuard};
pub use oneshot::{oneshot, OneshotReceiver, OneshotSender, RecvError as OneshotRecvError};
pub use semaphore::{Semaphore, SemaphorePermit};
pub(crate) use wait_queue::WaitQueue;
