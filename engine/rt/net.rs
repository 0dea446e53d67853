//! Sockets for coroutines: non-blocking descriptors registered with the
//! reactor's epoll; an operation that would block parks the coroutine until
//! the reactor sees readiness. Reads and writes look like blocking calls.
//!
//! A socket belongs to the reactor it was created or adopted on (it is
//! `!Send`). To serve a connection on another reactor, accept it with
//! [`TcpListener::accept_std`], send the `std` socket there and adopt it
//! with [`TcpStream::from_std`].
//!
//! One coroutine may read while another writes; two concurrent readers (or
//! writers) of one socket must serialise themselves (e.g. with a `Mutex`).

use super::coro::{self, NotSend};
use super::io::{IoSource, READ_READY, WRITE_READY};
use super::reactor;
use std::io::{self, IoSlice, Read, Write};
use std::marker::PhantomData;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net as unix;
use std::path::Path;
use std::rc::Rc;
use std::time::Instant;

/// A non-blocking descriptor registered with the current reactor.
pub struct Async<T: AsRawFd> {
    io: Option<T>,
    src: Rc<IoSource>,
    _not_send: NotSend,
}

impl<T: AsRawFd> Async<T> {
    /// Registers `io` (already non-blocking) with the current reactor.
    pub fn new(io: T) -> io::Result<Self> {
        let local = reactor::current_local().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                "rt::net sockets need a reactor thread",
            )
        })?;
        let src = local.io.register(io.as_raw_fd(), local.id)?;
        Ok(Self {
            io: Some(io),
            src,
            _not_send: PhantomData,
        })
    }

    pub fn get_ref(&self) -> &T {
        self.io.as_ref().expect("present until drop")
    }

    /// Deregisters and gives the descriptor back (still non-blocking).
    pub fn into_inner(mut self) -> T {
        self.deregister();
        self.io.take().expect("present until drop")
    }

    fn deregister(&self) {
        match reactor::current_local() {
            Some(local) if local.id == self.src.reactor() => local.io.deregister(&self.src),
            // Another reactor's socket: a misuse (sockets are !Send, so only
            // unsafe code could get here).
            Some(local) => log::error!(
                "socket fd {} of reactor {} dropped on reactor {}",
                self.src.fd,
                self.src.reactor(),
                local.id
            ),
            // The reactor has stopped (thread-local clean-up at thread exit):
            // its epoll set is gone with it.
            None => {}
        }
    }

    /// Runs `op` until it does not return `WouldBlock`, parking on the
    /// readiness in `interest` in between; gives up at `deadline`.
    pub fn io_with_deadline<R>(
        &self,
        write: bool,
        deadline: Option<Instant>,
        mut op: impl FnMut(&T) -> io::Result<R>,
    ) -> io::Result<R> {
        let interest = if write { WRITE_READY } else { READ_READY };
        let mut timer_set = false;
        loop {
            if self.src.ready.get() & interest != 0 {
                match op(self.get_ref()) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.src.ready.set(self.src.ready.get() & !interest);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    r => return r,
                }
            }
            if let Some(d) = deadline {
                if Instant::now() >= d {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "socket operation timed out",
                    ));
                }
            }
            if !coro::in_coroutine() {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "socket not ready and not in a coroutine",
                ));
            }
            let waker = coro::current_waker();
            if let (Some(d), false) = (deadline, timer_set) {
                if let Some(local) = reactor::current_local() {
                    local.timers.borrow_mut().add(d, waker.clone());
                    timer_set = true;
                }
            }
            let slot = if write {
                &self.src.writer
            } else {
                &self.src.reader
            };
            *slot.borrow_mut() = Some(waker);
            coro::park();
        }
    }

    pub fn read_with(&self, op: impl FnMut(&T) -> io::Result<usize>) -> io::Result<usize> {
        self.io_with_deadline(false, None, op)
    }

    pub fn write_with(&self, op: impl FnMut(&T) -> io::Result<usize>) -> io::Result<usize> {
        self.io_with_deadline(true, None, op)
    }

    pub fn raw_fd(&self) -> RawFd {
        self.src.fd
    }
}

impl<T: AsRawFd> Drop for Async<T> {
    fn drop(&mut self) {
        if self.io.is_some() {
            self.deregister();
        }
    }
}

/// Helpers shared by the stream types.
macro_rules! stream_methods {
    ($std:ty) => {
        /// Reads what is available (at least one byte), parking until then.
        /// `Ok(0)` means the peer closed.
        pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
            self.inner.read_with(|mut s: &$std| s.read(buf))
        }

        /// Like [`Self::read`] but gives up with `TimedOut` at `deadline`.
        pub fn read_until(&self, buf: &mut [u8], deadline: Option<Instant>) -> io::Result<usize> {
            self.inner
                .io_with_deadline(false, deadline, |mut s: &$std| s.read(buf))
        }

        /// Fills `buf` completely; `UnexpectedEof` if the peer closes first.
        pub fn read_exact(&self, mut buf: &mut [u8]) -> io::Result<()> {
            while !buf.is_empty() {
                let n = self.read(buf)?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "peer closed the connection",
                    ));
                }
                buf = &mut buf[n..];
            }
            Ok(())
        }

        /// Fills `buf` completely or fails with `TimedOut` at `deadline`.
        pub fn read_exact_until(
            &self,
            mut buf: &mut [u8],
            deadline: Option<Instant>,
        ) -> io::Result<()> {
            while !buf.is_empty() {
                let n = self.read_until(buf, deadline)?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "peer closed the connection",
                    ));
                }
                buf = &mut buf[n..];
            }
            Ok(())
        }

        pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
            self.inner.write_with(|mut s: &$std| s.write(buf))
        }

        pub fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
            while !buf.is_empty() {
                let n = self.write(buf)?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "socket accepted no bytes",
                    ));
                }
                buf = &buf[n..];
            }
            Ok(())
        }

        /// Writes every byte of every slice, with as few system calls as the
        /// socket buffer allows (one `writev` when it has room).
        pub fn write_all_vectored(&self, bufs: &[&[u8]]) -> io::Result<()> {
            let total: usize = bufs.iter().map(|b| b.len()).sum();
            let mut done = 0usize;
            while done < total {
                let mut skip = done;
                let mut slices: smallvec::SmallVec<[IoSlice<'_>; 8]> = smallvec::SmallVec::new();
                for b in bufs {
                    if skip >= b.len() {
                        skip -= b.len();
                        continue;
                    }
                    slices.push(IoSlice::new(&b[skip..]));
                    skip = 0;
                }
                let n = self
                    .inner
                    .write_with(|mut s: &$std| s.write_vectored(&slices))?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "socket accepted no bytes",
                    ));
                }
                done += n;
            }
            Ok(())
        }
    };
}

/// A TCP connection served by a coroutine.
pub struct TcpStream {
    inner: Async<std::net::TcpStream>,
}

impl TcpStream {
    /// Connects, parking until the connection is established.
    pub fn connect(addr: impl ToSocketAddrs) -> io::Result<Self> {
        let mut last = None;
        for a in addr.to_socket_addrs()? {
            match Self::connect_one(a, None) {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "no address to connect to")
        }))
    }

    /// Connects to one address, giving up at `deadline`.
    pub fn connect_until(addr: SocketAddr, deadline: Option<Instant>) -> io::Result<Self> {
        Self::connect_one(addr, deadline)
    }

    fn connect_one(addr: SocketAddr, deadline: Option<Instant>) -> io::Result<Self> {
        let fd = ferrite_sys::net::tcp_connect_nonblocking(addr)?;
        let s = Self {
            inner: Async::new(fd)?,
        };
        // Wait for the connection to complete (writable), then check SO_ERROR.
        s.inner
            .io_with_deadline(true, deadline, |s| match s.take_error()? {
                Some(e) => Err(e),
                None => match s.peer_addr() {
                    Ok(_) => Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                        Err(io::ErrorKind::WouldBlock.into())
                    }
                    Err(e) => Err(e),
                },
            })?;
        Ok(s)
    }

    /// Adopts a connected std socket on the current reactor.
    pub fn from_std(s: std::net::TcpStream) -> io::Result<Self> {
        s.set_nonblocking(true)?;
        Ok(Self {
            inner: Async::new(s)?,
        })
    }

    /// Gives the socket back as a std socket (non-blocking), e.g. to move it
    /// to another reactor.
    pub fn into_std(self) -> std::net::TcpStream {
        self.inner.into_inner()
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.get_ref().peer_addr()
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.get_ref().local_addr()
    }

    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.inner.get_ref().set_nodelay(on)
    }

    pub fn shutdown(&self, how: std::net::Shutdown) -> io::Result<()> {
        self.inner.get_ref().shutdown(how)
    }

    pub fn std(&self) -> &std::net::TcpStream {
        self.inner.get_ref()
    }

    stream_methods!(std::net::TcpStream);
}

impl Read for &TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        TcpStream::read(self, buf)
    }
}
impl Write for &TcpStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        TcpStream::write(self, buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A TCP listening socket whose `accept` parks the coroutine.
pub struct TcpListener {
    inner: Async<std::net::TcpListener>,
}

impl TcpListener {
    /// Binds (std sets `SO_REUSEADDR`, so a restarted server gets its port back).
    pub fn bind(addr: impl ToSocketAddrs) -> io::Result<Self> {
        let mut last = None;
        for a in addr.to_socket_addrs()? {
            match std::net::TcpListener::bind(a) {
                Ok(l) => return Self::from_std(l),
                Err(e) => last = Some(io::Error::new(e.kind(), format!("binding {a}: {e}"))),
            }
        }
        Err(last
            .unwrap_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address to bind")))
    }

    pub fn from_std(l: std::net::TcpListener) -> io::Result<Self> {
        l.set_nonblocking(true)?;
        Ok(Self {
            inner: Async::new(l)?,
        })
    }

    /// Accepts a connection and adopts it on this reactor.
    pub fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let (s, a) = self.accept_std()?;
        Ok((TcpStream::from_std(s)?, a))
    }

    /// Accepts a connection as a std socket, to serve it elsewhere.
    pub fn accept_std(&self) -> io::Result<(std::net::TcpStream, SocketAddr)> {
        self.inner.io_with_deadline(false, None, |l| l.accept())
    }

    /// Like [`Self::accept_std`], giving up with `TimedOut` at `deadline`.
    pub fn accept_std_until(
        &self,
        deadline: Option<Instant>,
    ) -> io::Result<(std::net::TcpStream, SocketAddr)> {
        self.inner.io_with_deadline(false, deadline, |l| l.accept())
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.get_ref().local_addr()
    }
}

/// A Unix stream socket served by a coroutine.
pub struct UnixStream {
    inner: Async<unix::UnixStream>,
}

impl UnixStream {
    pub fn from_std(s: unix::UnixStream) -> io::Result<Self> {
        s.set_nonblocking(true)?;
        Ok(Self {
            inner: Async::new(s)?,
        })
    }

    pub fn into_std(self) -> unix::UnixStream {
        self.inner.into_inner()
    }

    stream_methods!(unix::UnixStream);
}

/// A Unix listening socket whose `accept` parks the coroutine.
pub struct UnixListener {
    inner: Async<unix::UnixListener>,
}

impl UnixListener {
    /// Binds `path`, replacing a stale socket file left by a dead process.
    pub fn bind(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref();
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if meta.file_type().is_socket() {
                if unix::UnixStream::connect(path).is_ok() {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!("{} is in use by a running process", path.display()),
                    ));
                }
                std::fs::remove_file(path)?;
            }
        }
        let l = unix::UnixListener::bind(path)
            .map_err(|e| io::Error::new(e.kind(), format!("binding {}: {e}", path.display())))?;
        Self::from_std(l)
    }

    pub fn from_std(l: unix::UnixListener) -> io::Result<Self> {
        l.set_nonblocking(true)?;
        Ok(Self {
            inner: Async::new(l)?,
        })
    }

    pub fn accept(&self) -> io::Result<UnixStream> {
        let (s, _) = self.inner.io_with_deadline(false, None, |l| l.accept())?;
        UnixStream::from_std(s)
    }

    pub fn accept_until(&self, deadline: Option<Instant>) -> io::Result<UnixStream> {
        let (s, _) = self
            .inner
            .io_with_deadline(false, deadline, |l| l.accept())?;
        UnixStream::from_std(s)
    }
}
