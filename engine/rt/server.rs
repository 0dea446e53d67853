//! Serving a TCP port from the reactors: one acceptor coroutine takes
//! connections and hands each to a reactor in turn, where a coroutine of the
//! front end or of the replica server serves it.

use crate::rt::{self, Handle};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Serves one connection on a reactor; runs in a coroutine of its own.
pub type ConnHandler = Arc<dyn Fn(rt::net::TcpStream, SocketAddr) + Send + Sync>;

/// A listening port. Dropping it (or [`TcpServer::stop`]) stops accepting;
/// connections already served go on until their handlers return.
pub struct TcpServer {
    name: &'static str,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    acceptor: Option<rt::RemoteJoinHandle<()>>,
}

/// How often the acceptor looks at its stop flag while no client connects.
const STOP_POLL: Duration = Duration::from_millis(100);

impl TcpServer {
    /// Binds `addr` on reactor 0 and starts accepting. Connections are
    /// spread over the runtime's reactors round robin.
    pub fn start(
        handle: &Handle,
        name: &'static str,
        addr: SocketAddr,
        on_conn: ConnHandler,
    ) -> io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<io::Result<SocketAddr>>();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let (stop2, accepted2, h2) = (stop.clone(), accepted.clone(), handle.clone());
        let acceptor = handle.spawn_on(0, move || {
            let listener = match rt::net::TcpListener::bind(addr) {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.send(Err(io::Error::new(e.kind(), format!("{name}: {e}"))));
                    return;
                }
            };
            let _ = tx.send(listener.local_addr());
            let next = AtomicUsize::new(0);
            while !stop2.load(Ordering::Acquire) {
                match listener.accept_std_until(Some(Instant::now() + STOP_POLL)) {
                    Ok((sock, peer)) => {
                        accepted2.fetch_add(1, Ordering::Relaxed);
                        let _ = sock.set_nodelay(true);
                        let r = next.fetch_add(1, Ordering::Relaxed) % h2.reactor_count();
                        let on_conn = on_conn.clone();
                        h2.post(r, move || {
                            let spawned = rt::Builder::new().static_name(name).spawn(move || {
                                match rt::net::TcpStream::from_std(sock) {
                                    Ok(s) => on_conn(s, peer),
                                    Err(e) => {
                                        log::warn!("{name}: adopting a connection from {peer}: {e}")
                                    }
                                }
                            });
                            if let Err(e) = spawned {
                                log::error!("{name}: cannot serve a connection from {peer}: {e}");
                            }
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        log::warn!("{name}: accept failed: {e}");
                        rt::sleep(Duration::from_millis(50));
                    }
                }
            }
        });
        let bound = match rx.recv() {
            Ok(r) => r?,
            Err(_) => {
                return Err(io::Error::other(format!(
                    "{name}: the acceptor died before binding"
                )))
            }
        };
        log::info!("{name}: listening on {bound}");
        Ok(Self {
            name,
            addr: bound,
            stop,
            accepted,
            acceptor: Some(acceptor),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Stops accepting and waits until the port is closed.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop_inner();
    }
}
