//! How replica frames travel between nodes. The replica layer sees only
//! [`Transport`]: send a request to a node, park until its answer or a
//! failure. Kernel TCP ([`TcpTransport`]) is the default; DPDK implements the
//! same trait.
//!
//! TCP: each reactor keeps its own connection to each peer ("connections
//! per reactor pair"), so a request never crosses threads on its way out.
//! Requests are multiplexed on it by request id; a reader coroutine hands
//! answers to the waiting coroutines. A failed connection fails every
//! request in flight on it, and the next request reconnects after a
//! backoff that doubles up to a second.

use super::proto::{self, Frame, Header, HEADER_LEN, MAX_FRAME};
use crate::rt::{self, sync};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("peer {peer} is unreachable: {reason}")]
    Unreachable { peer: String, reason: String },
    #[error("connection to {peer} was lost: {reason}")]
    Lost { peer: String, reason: String },
    #[error("peer {peer} did not answer within {timeout:?}")]
    Timeout { peer: String, timeout: Duration },
}

/// A request: the header's routing fields, a prost body and a payload.
pub struct Request<'a> {
    pub header: Header,
    pub body: Vec<u8>,
    pub payload: &'a [u8],
}

/// Sends replica requests to peers by address.
pub trait Transport: Send + Sync {
    fn call(&self, peer: &str, req: Request<'_>) -> Result<Frame, TransportError>;
}

/// Settings of the TCP transport.
#[derive(Clone, Debug)]
pub struct TcpConfig {
    pub connect_timeout: Duration,
    /// Longest wait for one answer (a write waits on the peer's device flush).
    pub request_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl Default for TcpConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
        }
    }
}

/// Replica frames over kernel TCP.
pub struct TcpTransport {
    config: TcpConfig,
}

impl TcpTransport {
    pub fn new(config: TcpConfig) -> Arc<Self> {
        Arc::new(Self { config })
    }
}

struct Reply {
    result: RefCell<Option<Result<Frame, String>>>,
    done: sync::Event,
}

struct PeerConn {
    stream: rt::net::TcpStream,
    writer: sync::Mutex<()>,
    pending: RefCell<HashMap<u64, Rc<Reply>>>,
    next_id: Cell<u64>,
    dead: Cell<bool>,
}

enum PeerState {
    Up(Rc<PeerConn>),
    /// Not before this instant; the delay doubles on each failure.
    Backoff {
        until: Instant,
        delay: Duration,
    },
}

thread_local! {
    /// This reactor's connections, by peer address.
    static PEERS: RefCell<HashMap<String, PeerState>> = RefCell::new(HashMap::new());
}

impl TcpTransport {
    fn connection(&self, peer: &str) -> Result<Rc<PeerConn>, TransportError> {
        let state = PEERS.with(|p| match p.borrow().get(peer) {
            Some(PeerState::Up(c)) if !c.dead.get() => Some(Ok(c.clone())),
            Some(PeerState::Backoff { until, delay }) if Instant::now() < *until => {
                Some(Err(*delay))
            }
            _ => None,
        });
        match state {
            Some(Ok(c)) => return Ok(c),
            Some(Err(delay)) => {
                return Err(TransportError::Unreachable {
                    peer: peer.into(),
                    reason: format!("reconnecting after a failure (backoff {delay:?})"),
                });
            }
            None => {}
        }
        let addr: SocketAddr = peer.parse().map_err(|_| TransportError::Unreachable {
            peer: peer.into(),
            reason: "not a host:port".into(),
        })?;
        match rt::net::TcpStream::connect_until(
            addr,
            Some(Instant::now() + self.config.connect_timeout),
        ) {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                let conn = Rc::new(PeerConn {
                    stream,
                    writer: sync::Mutex::new(()),
                    pending: RefCell::new(HashMap::new()),
                    next_id: Cell::new(1),
                    dead: Cell::new(false),
                });
                let reader = conn.clone();
                let peer_name = peer.to_string();
                rt::Builder::new()
                    .static_name("replica-client-reader")
                    .spawn(move || read_answers(&reader, &peer_name))
                    .map_err(|e| TransportError::Unreachable {
                        peer: peer.into(),
                        reason: e.to_string(),
                    })?;
                PEERS.with(|p| {
                    p.borrow_mut()
                        .insert(peer.to_string(), PeerState::Up(conn.clone()))
                });
                Ok(conn)
            }
            Err(e) => {
                let delay = PEERS.with(|p| {
                    let mut p = p.borrow_mut();
                    let delay = match p.get(peer) {
                        Some(PeerState::Backoff { delay, .. }) => {
                            (*delay * 2).min(self.config.backoff_max)
                        }
                        _ => self.config.backoff_initial,
                    };
                    p.insert(
                        peer.to_string(),
                        PeerState::Backoff {
                            until: Instant::now() + delay,
                            delay,
                        },
                    );
                    delay
                });
                log::debug!("replica: connecting to {peer} failed ({e}); next try in {delay:?}");
                Err(TransportError::Unreachable {
                    peer: peer.into(),
                    reason: e.to_string(),
                })
            }
        }
    }
}

impl Transport for TcpTransport {
    fn call(&self, peer: &str, req: Request<'_>) -> Result<Frame, TransportError> {
        let conn = self.connection(peer)?;
        let id = conn.next_id.get();
        conn.next_id.set(id + 1);
        let mut header = req.header;
        header.request_id = id;
        let head = proto::encode_head(header, &req.body, req.payload);
        let reply = Rc::new(Reply {
            result: RefCell::new(None),
            done: sync::Event::new(),
        });
        conn.pending.borrow_mut().insert(id, reply.clone());
        let sent = {
            let _w = conn.writer.lock();
            conn.stream.write_all_vectored(&[&head, req.payload])
        };
        if let Err(e) = sent {
            conn.pending.borrow_mut().remove(&id);
            fail_connection(&conn, peer, &e.to_string());
            return Err(TransportError::Lost {
                peer: peer.into(),
                reason: e.to_string(),
            });
        }
        let answered = reply
            .done
            .wait_until(Instant::now() + self.config.request_timeout);
        conn.pending.borrow_mut().remove(&id);
        if !answered {
            // A peer that does not answer a request in time is treated as
            // failed: its connection goes, and everything on it fails.
            fail_connection(&conn, peer, "request timed out");
            return Err(TransportError::Timeout {
                peer: peer.into(),
                timeout: self.config.request_timeout,
            });
        }
        let result = reply.result.borrow_mut().take();
        match result {
            Some(Ok(f)) => Ok(f),
            Some(Err(reason)) => Err(TransportError::Lost {
                peer: peer.into(),
                reason,
            }),
            None => Err(TransportError::Lost {
                peer: peer.into(),
                reason: "no answer".into(),
            }),
        }
    }
}

fn fail_connection(conn: &PeerConn, peer: &str, reason: &str) {
    if conn.dead.replace(true) {
        return;
    }
    let _ = conn.stream.shutdown(std::net::Shutdown::Both);
    let pending: Vec<Rc<Reply>> = conn.pending.borrow_mut().drain().map(|(_, r)| r).collect();
    for r in pending {
        *r.result.borrow_mut() = Some(Err(reason.to_string()));
        r.done.set();
    }
    PEERS.with(|p| {
        let mut p = p.borrow_mut();
        if matches!(p.get(peer), Some(PeerState::Up(c)) if c.dead.get()) {
            p.remove(peer);
        }
    });
}

fn read_answers(conn: &Rc<PeerConn>, peer: &str) {
    loop {
        match read_frame(&conn.stream) {
            Ok(f) => {
                let r = conn.pending.borrow_mut().remove(&f.header.request_id);
                if let Some(r) = r {
                    *r.result.borrow_mut() = Some(Ok(f));
                    r.done.set();
                }
            }
            Err(e) => {
                if !conn.dead.get() {
                    log::info!("replica: connection to {peer} closed: {e}");
                }
                fail_connection(conn, peer, &e.to_string());
                return;
            }
        }
    }
}

/// Reads one frame (u32 length prefix included) from a stream.
pub fn read_frame(s: &rt::net::TcpStream) -> io::Result<Frame> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len);
    if (len as usize) < HEADER_LEN || len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame length {len} out of bounds"),
        ));
    }
    let mut buf = vec![0u8; len as usize];
    s.read_exact(&mut buf)?;
    Frame::parse(&buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}
