//! The replica server: reads frames from peers and runs each request in a
//! coroutine of its own (bounded per connection), answering in whatever
//! order requests finish. A malformed frame closes that connection only.

use super::proto::{self, Frame, Header, Status, FLAG_RESPONSE};
use super::transport::read_frame;
use crate::rt::server::TcpServer;
use crate::rt::{self, sync, Handle};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Connections this process's TCP replica servers accepted, and requests
/// they served (what shows that a node on DPDK carried none over TCP).
pub static TCP_CONNECTIONS: AtomicU64 = AtomicU64::new(0);
pub static TCP_REQUESTS_SERVED: AtomicU64 = AtomicU64::new(0);

/// What a request is answered with.
pub struct Answer {
    pub status: Status,
    pub aux: u32,
    pub body: Vec<u8>,
    pub payload: Vec<u8>,
}

impl Answer {
    pub fn ok() -> Self {
        Self {
            status: Status::Ok,
            aux: 0,
            body: Vec::new(),
            payload: Vec::new(),
        }
    }

    pub fn data(payload: Vec<u8>) -> Self {
        Self {
            status: Status::Ok,
            aux: 0,
            body: Vec::new(),
            payload,
        }
    }

    pub fn error(status: Status, message: impl Into<String>) -> Self {
        use prost::Message;
        let body = proto::ErrorBody {
            message: message.into(),
        }
        .encode_to_vec();
        Self {
            status,
            aux: 0,
            body,
            payload: Vec::new(),
        }
    }
}

/// Serves requests (runs in a coroutine, may park).
pub trait Handler: Send + Sync {
    fn handle(&self, req: Frame) -> Answer;
}

/// Requests in flight per connection.
const MAX_IN_FLIGHT: usize = 256;

/// Starts the replica server on `addr`.
pub fn start(
    handle: &Handle,
    addr: SocketAddr,
    handler: Arc<dyn Handler>,
) -> io::Result<TcpServer> {
    TcpServer::start(
        handle,
        "replica",
        addr,
        Arc::new(move |s, peer| serve(s, peer, handler.clone())),
    )
}

struct Conn {
    stream: rt::net::TcpStream,
    writer: sync::Mutex<()>,
    in_flight: sync::Semaphore,
}

fn serve(stream: rt::net::TcpStream, peer: SocketAddr, handler: Arc<dyn Handler>) {
    TCP_CONNECTIONS.fetch_add(1, Relaxed);
    let conn = Rc::new(Conn {
        stream,
        writer: sync::Mutex::new(()),
        in_flight: sync::Semaphore::new(MAX_IN_FLIGHT),
    });
    loop {
        let frame = match read_frame(&conn.stream) {
            Ok(f) => f,
            Err(e) => {
                if e.kind() != io::ErrorKind::UnexpectedEof {
                    log::warn!("replica: closing the connection from {peer}: {e}");
                }
                break;
            }
        };
        if frame.header.is_response() {
            log::warn!("replica: {peer} sent a response as a request; closing");
            break;
        }
        conn.in_flight.acquire(1).forget();
        TCP_REQUESTS_SERVED.fetch_add(1, Relaxed);
        let (c, h) = (conn.clone(), handler.clone());
        let spawned = rt::Builder::new()
            .static_name("replica-req")
            .spawn(move || {
                let req = frame.header;
                let ans = h.handle(frame);
                let resp = Header {
                    op: req.op,
                    flags: FLAG_RESPONSE,
                    request_id: req.request_id,
                    extent: req.extent,
                    generation: req.generation,
                    offset: req.offset,
                    status: ans.status as i32,
                    aux: ans.aux,
                    ..Default::default()
                };
                let head = proto::encode_head(resp, &ans.body, &ans.payload);
                let sent = {
                    let _w = c.writer.lock();
                    c.stream.write_all_vectored(&[&head, &ans.payload])
                };
                if let Err(e) = sent {
                    log::debug!("replica: answering {peer}: {e}");
                }
                c.in_flight.release(1);
            });
        if let Err(e) = spawned {
            log::error!("replica: cannot serve a request from {peer}: {e}");
            conn.in_flight.release(1);
        }
    }
    // Requests in flight finish before the socket goes.
    conn.in_flight.acquire(MAX_IN_FLIGHT).forget();
}
