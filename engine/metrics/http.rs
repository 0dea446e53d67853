//! The Prometheus endpoint: a minimal HTTP/1.1 responder for `GET /metrics`
//! on a coroutine. Requests are small and the answer is one text body, so
//! this is all the HTTP it needs; anything else gets 404 or 400.

use super::Metrics;
use crate::rt::{self, Handle};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A running endpoint; dropping it stops accepting.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    acceptor: Option<rt::RemoteJoinHandle<()>>,
}

impl MetricsServer {
    pub fn start(handle: &Handle, addr: SocketAddr, metrics: Arc<Metrics>) -> io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let acceptor = handle.spawn_on(0, move || {
            let l = match rt::net::TcpListener::bind(addr) {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let _ = tx.send(l.local_addr());
            while !stop2.load(Ordering::Acquire) {
                match l.accept_std_until(Some(Instant::now() + Duration::from_millis(100))) {
                    Ok((s, _)) => {
                        let m = metrics.clone();
                        let _ = rt::Builder::new()
                            .static_name("metrics-http")
                            .spawn(move || {
                                if let Ok(s) = rt::net::TcpStream::from_std(s) {
                                    let _ = serve(&s, &m);
                                }
                            });
                    }
                    Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
                    Err(_) => rt::sleep(Duration::from_millis(50)),
                }
            }
        });
        let bound = rx
            .recv()
            .map_err(|_| io::Error::other("metrics endpoint died before binding"))??;
        log::info!("metrics: Prometheus endpoint on http://{bound}/metrics");
        Ok(Self {
            addr: bound,
            stop,
            acceptor: Some(acceptor),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

fn serve(s: &rt::net::TcpStream, metrics: &Metrics) -> io::Result<()> {
    let deadline = Some(Instant::now() + Duration::from_secs(10));
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() > 16 * 1024 {
            return respond(
                s,
                "431 Request Header Fields Too Large",
                "text/plain",
                "request too large\n",
            );
        }
        let n = s.read_until(&mut chunk, deadline)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf[..buf.iter().position(|&b| b == b'\r').unwrap_or(0)])
        .to_string();
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some("GET"), Some(path)) if path == "/metrics" || path.starts_with("/metrics?") => {
            respond(
                s,
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                &metrics.render_prometheus(),
            )
        }
        (Some("GET"), Some(_)) => respond(s, "404 Not Found", "text/plain", "try /metrics\n"),
        _ => respond(
            s,
            "400 Bad Request",
            "text/plain",
            "only GET /metrics is served\n",
        ),
    }
}

fn respond(s: &rt::net::TcpStream, status: &str, ctype: &str, body: &str) -> io::Result<()> {
    let head = format!("HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    s.write_all_vectored(&[head.as_bytes(), body.as_bytes()])
}
