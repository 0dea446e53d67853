//! The transmission phase: a reader coroutine takes requests off the
//! connection; every I/O runs in a coroutine of its own so that many are in
//! flight at once. Replies are appended whole to the connection's output
//! buffer, so frames never interleave, and the replies that complete in the
//! same reactor round leave in one write.

use super::handshake::{discard, Negotiated, MAX_REQUEST_LEN};
use super::proto::*;
use super::ExportStats;
use ferrite_engine::bdev::DmaBuf;
use ferrite_engine::rt::{self, sync};
use ferrite_engine::volume::{BlockVolume, IoError};
use std::cell::{Cell, RefCell};
use std::io;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Requests in flight per connection: bounds the memory one client can pin.
const MAX_IN_FLIGHT: usize = 128;

/// A reply at least this long is written straight from its buffer when
/// nothing else is queued, rather than copied into the output queue.
const DIRECT_REPLY: usize = 64 << 10;

struct Conn {
    sock: rt::net::TcpStream,
    /// Reply frames not written yet.
    out: RefCell<Vec<u8>>,
    /// A coroutine is writing `out`: later replies ride along with it.
    writing: Cell<bool>,
    structured: bool,
    volume: Arc<dyn BlockVolume>,
    stats: Arc<ExportStats>,
    in_flight: sync::Semaphore,
}

impl Conn {
    /// Sends one reply frame (`parts` in order). Replies that become ready
    /// in the same reactor round go out in one system call: at 32 reads in
    /// flight, a write per reply was a fifth of the node's CPU. A frame is
    /// queued whole while another coroutine is writing, and that coroutine
    /// writes it too; it is then reported sent, and if the socket fails,
    /// the request loop sees the broken connection.
    fn send(&self, parts: &[&[u8]]) -> io::Result<()> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if !self.writing.get() && self.out.borrow().is_empty() && len >= DIRECT_REPLY {
            // A large payload alone: written from where it is, not copied.
            self.writing.set(true);
            let r = self.sock.write_all_vectored(parts);
            let rest = self.write_queued();
            self.writing.set(false);
            return r.and(rest);
        }
        {
            let mut out = self.out.borrow_mut();
            parts.iter().for_each(|p| out.extend_from_slice(p));
        }
        if self.writing.replace(true) {
            return Ok(());
        }
        // With other requests in flight, let those whose I/O finished in
        // this round queue their replies first. A lone request's reply
        // goes at once: a yield costs it a reactor round.
        if MAX_IN_FLIGHT - self.in_flight.available() > 1 {
            rt::yield_now();
        }
        let r = self.write_queued();
        self.writing.set(false);
        r
    }

    /// Writes queued frames until none are left (more may be queued while a
    /// write is parked on a full socket).
    fn write_queued(&self) -> io::Result<()> {
        let mut spare = Vec::new();
        loop {
            let buf = std::mem::replace(&mut *self.out.borrow_mut(), spare);
            if buf.is_empty() {
                return Ok(());
            }
            if let Err(e) = self.sock.write_all(&buf) {
                self.out.borrow_mut().clear();
                return Err(e);
            }
            // Keep a modest buffer for the next round, not a huge one.
            spare = if buf.capacity() <= DIRECT_REPLY * 16 {
                let mut b = buf;
                b.clear();
                b
            } else {
                Vec::new()
            };
        }
    }

    /// Answers a request that failed, with a message when the client
    /// negotiated structured replies.
    fn send_error(&self, cookie: u64, errno: u32, msg: &str) -> io::Result<()> {
        if self.structured {
            let m = &msg.as_bytes()[..msg.len().min(4096)];
            let mut payload = Vec::with_capacity(6 + m.len());
            payload.extend_from_slice(&errno.to_be_bytes());
            payload.extend_from_slice(&(m.len() as u16).to_be_bytes());
            payload.extend_from_slice(m);
            let h = structured_header(
                REPLY_FLAG_DONE,
                REPLY_TYPE_ERROR,
                cookie,
                payload.len() as u32,
            );
            self.send(&[&h, &payload])
        } else {
            self.send(&[&simple_reply(errno, cookie)])
        }
    }

    fn send_ok(&self, cookie: u64) -> io::Result<()> {
        if self.structured {
            self.send(&[&structured_header(
                REPLY_FLAG_DONE,
                REPLY_TYPE_NONE,
                cookie,
                0,
            )])
        } else {
            self.send(&[&simple_reply(0, cookie)])
        }
    }

    fn send_data(&self, cookie: u64, offset: u64, data: &[u8]) -> io::Result<()> {
        if self.structured {
            let h = structured_header(
                REPLY_FLAG_DONE,
                REPLY_TYPE_OFFSET_DATA,
                cookie,
                8 + data.len() as u32,
            );
            self.send(&[&h, &offset.to_be_bytes(), data])
        } else {
            self.send(&[&simple_reply(0, cookie), data])
        }
    }

    fn reply(&self, cookie: u64, r: Result<(), IoError>, is_write: bool) {
        let sent = match r {
            Ok(()) => self.send_ok(cookie),
            Err(e) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                self.send_error(cookie, errno_of(&e, is_write), &e.to_string())
            }
        };
        if let Err(e) = sent {
            log::debug!("nbd: reply failed: {e}");
        }
    }
}

/// The protocol's error number for a volume error.
pub fn errno_of(e: &IoError, is_write: bool) -> u32 {
    match e {
        // The protocol asks for ENOSPC on writes past the end, EINVAL on reads.
        IoError::OutOfRange { .. } if is_write => ENOSPC,
        IoError::OutOfRange { .. } | IoError::Misaligned { .. } => EINVAL,
        IoError::NoSpace { .. } => ENOSPC,
        IoError::Gone { .. } => ESHUTDOWN,
        IoError::Checksum { .. }
        | IoError::Device { .. }
        | IoError::Unavailable { .. }
        | IoError::CompareMismatch { .. } => EIO,
    }
}

/// Serves requests until the client disconnects (NBD_CMD_DISC or EOF), a
/// protocol error, or the export is stopped (the socket is shut down).
pub fn serve(sock: rt::net::TcpStream, neg: Negotiated, stats: Arc<ExportStats>) {
    let conn = Rc::new(Conn {
        sock,
        out: RefCell::new(Vec::new()),
        writing: Cell::new(false),
        structured: neg.structured,
        volume: neg.volume,
        stats,
        in_flight: sync::Semaphore::new(MAX_IN_FLIGHT),
    });
    if let Err(e) = request_loop(&conn) {
        if e.kind() != io::ErrorKind::UnexpectedEof {
            log::info!("nbd: closing a connection to export '{}': {e}", neg.export);
        }
    }
    // Let requests in flight finish before the socket goes away.
    conn.in_flight.acquire(MAX_IN_FLIGHT).forget();
}

fn request_loop(conn: &Rc<Conn>) -> io::Result<()> {
    let mut hdr = [0u8; REQUEST_LEN];
    loop {
        conn.sock.read_exact(&mut hdr)?;
        let req = parse_request(&hdr).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let size = conn.volume.info().size;
        match req.kind {
            CMD_READ | CMD_WRITE if req.len > MAX_REQUEST_LEN => {
                if req.kind == CMD_WRITE {
                    discard(&conn.sock, req.len as u64, None)?;
                }
                let msg = format!(
                    "request of {} bytes exceeds the maximum of {} bytes",
                    req.len, MAX_REQUEST_LEN
                );
                conn.send_error(req.cookie, EOVERFLOW, &msg)?;
            }
            CMD_READ => {
                if let Some(msg) = out_of_range(req.offset, req.len as u64, size) {
                    conn.send_error(req.cookie, EINVAL, &msg)?;
                    continue;
                }
                spawn_io(conn, move |c| {
                    let mut buf = vec![0u8; req.len as usize];
                    match c.volume.read(req.offset, &mut buf) {
                        Ok(()) => {
                            c.stats.reads.fetch_add(1, Ordering::Relaxed);
                            c.stats
                                .read_bytes
                                .fetch_add(req.len as u64, Ordering::Relaxed);
                            if let Err(e) = c.send_data(req.cookie, req.offset, &buf) {
                                log::debug!("nbd: read reply failed: {e}");
                            }
                        }
                        Err(e) => c.reply(req.cookie, Err(e), false),
                    }
                });
            }
            CMD_WRITE => {
                // The payload must come off the socket before the next
                // header. It goes into a DMA buffer, which the store can
                // keep as it is (`BlockVolume::write_shared`).
                let mut buf = DmaBuf::new(req.len as usize);
                conn.sock.read_exact(buf.as_mut_slice())?;
                if let Some(msg) = out_of_range(req.offset, req.len as u64, size) {
                    conn.send_error(req.cookie, ENOSPC, &msg)?;
                    continue;
                }
                spawn_io(conn, move |c| {
                    // Writes are durable when they return, FUA or not.
                    let r = c.volume.write_shared(req.offset, Arc::new(buf));
                    if r.is_ok() {
                        c.stats.writes.fetch_add(1, Ordering::Relaxed);
                        c.stats
                            .write_bytes
                            .fetch_add(req.len as u64, Ordering::Relaxed);
                    }
                    c.reply(req.cookie, r, true);
                });
            }
            CMD_DISC => return Ok(()),
            CMD_FLUSH => spawn_io(conn, move |c| c.reply(req.cookie, c.volume.flush(), true)),
            CMD_TRIM => {
                if let Some(msg) = out_of_range(req.offset, req.len as u64, size) {
                    conn.send_error(req.cookie, EINVAL, &msg)?;
                    continue;
                }
                spawn_io(conn, move |c| {
                    c.reply(req.cookie, c.volume.unmap(req.offset, req.len as u64), true)
                });
            }
            CMD_WRITE_ZEROES => {
                if let Some(msg) = out_of_range(req.offset, req.len as u64, size) {
                    conn.send_error(req.cookie, ENOSPC, &msg)?;
                    continue;
                }
                let deallocate = req.flags & CMD_FLAG_NO_HOLE == 0;
                if !deallocate && req.flags & CMD_FLAG_FAST_ZERO != 0 {
                    // Zeroes that must stay allocated are written block by
                    // block: not fast, so the client asked us to refuse.
                    conn.send_error(
                        req.cookie,
                        ENOTSUP,
                        "allocated zeroes are not fast on this export",
                    )?;
                    continue;
                }
                spawn_io(conn, move |c| {
                    c.reply(
                        req.cookie,
                        c.volume
                            .write_zeroes(req.offset, req.len as u64, deallocate),
                        true,
                    )
                });
            }
            CMD_CACHE => conn.send_ok(req.cookie)?,
            other => {
                conn.send_error(
                    req.cookie,
                    EINVAL,
                    &format!("command {other} is not supported"),
                )?;
            }
        }
    }
}

fn out_of_range(offset: u64, len: u64, size: u64) -> Option<String> {
    match offset.checked_add(len) {
        Some(end) if end <= size => None,
        _ => Some(format!(
            "range {offset}+{len} is beyond the end of the export ({size} bytes)"
        )),
    }
}

/// Runs one request in a coroutine of its own, bounded by the in-flight limit.
fn spawn_io(conn: &Rc<Conn>, f: impl FnOnce(&Conn) + 'static) {
    conn.in_flight.acquire(1).forget();
    let c = conn.clone();
    let spawned = rt::Builder::new().static_name("nbd-io").spawn(move || {
        f(&c);
        c.in_flight.release(1);
    });
    if let Err(e) = spawned {
        log::error!("nbd: cannot start a request coroutine: {e}");
        conn.in_flight.release(1);
    }
}
