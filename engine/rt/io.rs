//! Socket readiness for coroutines: each reactor owns an epoll set; a
//! non-blocking descriptor is registered once, edge-triggered, and the
//! coroutine that hits `EAGAIN` parks until epoll reports the edge.
//!
//! Readiness bits are cleared by the coroutine when an operation returns
//! `EAGAIN`, and set by the reactor when epoll reports an event. Both happen
//! on the reactor thread, so no edge is lost between them.

use super::reactor::{Local, TOKEN_POLLER, TOKEN_TIMER, TOKEN_WAKE};
use ferrite_sys::epoll::{self, Epoll};
use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::task::Waker;
use std::time::Duration;

/// One registered descriptor.
pub(crate) struct IoSource {
    pub(crate) fd: RawFd,
    pub(crate) ready: Cell<u32>,
    pub(crate) reader: RefCell<Option<Waker>>,
    pub(crate) writer: RefCell<Option<Waker>>,
    key: Cell<usize>,
    reactor: usize,
}

impl IoSource {
    pub(crate) fn reactor(&self) -> usize {
        self.reactor
    }
}

pub(crate) struct IoDriver {
    epoll: RefCell<Epoll>,
    sources: RefCell<slab::Slab<Rc<IoSource>>>,
}

pub(crate) const READ_READY: u32 = epoll::READABLE | epoll::HANGUP | epoll::ERROR;
pub(crate) const WRITE_READY: u32 = epoll::WRITABLE | epoll::HANGUP | epoll::ERROR;

impl IoDriver {
    pub(crate) fn new() -> io::Result<Self> {
        Ok(Self {
            epoll: RefCell::new(Epoll::new()?),
            sources: RefCell::new(slab::Slab::new()),
        })
    }

    pub(crate) fn has_sources(&self) -> bool {
        !self.sources.borrow().is_empty()
    }

    pub(crate) fn epoll_add_raw(&self, fd: RawFd, token: u64) -> io::Result<()> {
        self.epoll.borrow().add(fd, epoll::READABLE, token)
    }

    pub(crate) fn register(&self, fd: RawFd, reactor: usize) -> io::Result<Rc<IoSource>> {
        let src = Rc::new(IoSource {
            fd,
            // Assume ready: the first operation finds out, and an edge that
            // happened before registration is not lost.
            ready: Cell::new(READ_READY | WRITE_READY),
            reader: RefCell::new(None),
            writer: RefCell::new(None),
            key: Cell::new(0),
            reactor,
        });
        let key = self.sources.borrow_mut().insert(src.clone());
        src.key.set(key);
        let ev = epoll::READABLE | epoll::WRITABLE | epoll::HANGUP | epoll::EDGE;
        if let Err(e) = self.epoll.borrow().add(fd, ev, key as u64) {
            self.sources.borrow_mut().remove(key);
            return Err(e);
        }
        Ok(src)
    }

    pub(crate) fn deregister(&self, src: &IoSource) {
        let _ = self.epoll.borrow().delete(src.fd);
        self.sources.borrow_mut().try_remove(src.key.get());
    }

    /// Polls epoll and dispatches events; returns how many socket events it saw.
    pub(crate) fn poll(&self, timeout: Option<Duration>, local: &Local) -> usize {
        let mut events: smallvec::SmallVec<[(u64, u32); 64]> = smallvec::SmallVec::new();
        {
            let mut ep = self.epoll.borrow_mut();
            if let Err(e) = ep.wait(timeout, |ev| events.push((ev.token, ev.events))) {
                log::error!("reactor {}: epoll_wait failed: {e}", local.id);
                return 0;
            }
        }
        let mut n = 0;
        for (token, bits) in events {
            match token {
                TOKEN_WAKE | TOKEN_POLLER => {}
                TOKEN_TIMER => local.drain_timer_fd(),
                key => {
                    let src = self.sources.borrow().get(key as usize).cloned();
                    let Some(src) = src else { continue };
                    n += 1;
                    src.ready.set(src.ready.get() | bits);
                    if bits & READ_READY != 0 {
                        if let Some(w) = src.reader.borrow_mut().take() {
                            w.wake();
                        }
                    }
                    if bits & WRITE_READY != 0 {
                        if let Some(w) = src.writer.borrow_mut().take() {
                            w.wake();
                        }
                    }
                }
            }
        }
        n
    }
}
