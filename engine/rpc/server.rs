//! The JSON-RPC server on a Unix socket, framed as SPDK frames it.
//!
//! A client writes JSON values back to back, with or without whitespace
//! between them; each complete request is answered in order, followed by a
//! newline. A half-written value waits for the rest. Malformed JSON gets a
//! `-32700 Parse error` answer and the connection is closed (SPDK does the
//! same: after garbage the stream cannot be re-synchronised). A value that
//! is not a request gets `-32600 Invalid request` and the connection goes on.
//!
//! Each connection is served by a coroutine; a method runs in that coroutine
//! and may park. Other connections are never disturbed by one client.

use super::{codes, Registry, RpcError};
use crate::rt::{self, Handle};
use serde_json::{json, Value};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The largest request the server buffers (SPDK's own limit is of this order).
pub const MAX_REQUEST: usize = 32 * 1024 * 1024;

/// A running server. Dropping it (or `stop`) closes the socket and removes
/// its file; connections in progress finish their current request.
pub struct RpcServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    acceptor: Option<rt::RemoteJoinHandle<()>>,
}

impl RpcServer {
    /// Binds `path` (replacing a stale socket file of a dead process) and
    /// serves `registry` from reactor `reactor`.
    pub fn start(
        handle: &Handle,
        reactor: usize,
        path: &Path,
        registry: Arc<Registry>,
    ) -> io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<io::Result<()>>();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let p = path.to_path_buf();
        let acceptor = handle.spawn_on(reactor, move || {
            let listener = match rt::net::UnixListener::bind(&p) {
                Ok(l) => {
                    let _ = tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            while !stop2.load(Ordering::Acquire) {
                match listener.accept_until(Some(Instant::now() + Duration::from_millis(100))) {
                    Ok(conn) => {
                        let registry = registry.clone();
                        if let Err(e) = rt::Builder::new()
                            .static_name("rpc-conn")
                            .spawn(move || serve_connection(conn, &registry))
                        {
                            log::error!("rpc: cannot serve a connection: {e}");
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
                    Err(e) => {
                        log::warn!("rpc: accept failed: {e}");
                        rt::sleep(Duration::from_millis(50));
                    }
                }
            }
        });
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(io::Error::other("rpc: the acceptor died before binding")),
        }
        log::info!("rpc: listening on {}", path.display());
        Ok(Self {
            path: path.to_path_buf(),
            stop,
            acceptor: Some(acceptor),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// What the framing layer found at the front of the buffer.
#[derive(Debug, PartialEq)]
pub enum Frame {
    /// A complete JSON value and the number of bytes it took (with any
    /// whitespace before it).
    Value(Value, usize),
    /// Only whitespace, or the start of a value: read more.
    Incomplete,
    /// Not JSON.
    Garbage(String),
}

/// Splits the next JSON value off the front of `buf`.
pub fn next_frame(buf: &[u8]) -> Frame {
    let mut it = serde_json::Deserializer::from_slice(buf).into_iter::<Value>();
    match it.next() {
        None => Frame::Incomplete,
        Some(Ok(v)) => Frame::Value(v, it.byte_offset()),
        Some(Err(e)) if e.is_eof() => Frame::Incomplete,
        Some(Err(e)) => Frame::Garbage(e.to_string()),
    }
}

/// Answers one decoded value; `None` for a notification (no id).
pub fn handle_value(registry: &Registry, v: Value) -> Option<Value> {
    let Value::Object(mut req) = v else {
        return Some(error_response(
            Value::Null,
            RpcError::new(codes::INVALID_REQUEST, "Invalid request: not a JSON object"),
        ));
    };
    let id = req.remove("id");
    let reply_id = id.clone().unwrap_or(Value::Null);
    if req.get("jsonrpc") != Some(&Value::String("2.0".into())) {
        return Some(error_response(
            reply_id,
            RpcError::new(
                codes::INVALID_REQUEST,
                "Invalid request: \"jsonrpc\" must be \"2.0\"",
            ),
        ));
    }
    if let Some(id) = &id {
        if !(id.is_number() || id.is_string() || id.is_null()) {
            return Some(error_response(
                Value::Null,
                RpcError::new(codes::INVALID_REQUEST, "Invalid request: bad \"id\""),
            ));
        }
    }
    let method = match req.remove("method") {
        Some(Value::String(m)) => m,
        _ => {
            return Some(error_response(
                reply_id,
                RpcError::new(
                    codes::INVALID_REQUEST,
                    "Invalid request: \"method\" must be a string",
                ),
            ))
        }
    };
    let params = req.remove("params");
    if let Some(p) = &params {
        if !(p.is_object() || p.is_array()) {
            return Some(error_response(
                reply_id,
                RpcError::invalid_params(
                    "Invalid parameters: \"params\" must be an object or an array",
                ),
            ));
        }
    }
    let result = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        registry.call(&method, params)
    })) {
        Ok(r) => r,
        Err(e) => {
            if e.is::<rt::Cancelled>() {
                std::panic::resume_unwind(e);
            }
            log::error!("rpc: method {method} panicked");
            Err(RpcError::internal(format!("internal error in {method}")))
        }
    };
    id.as_ref()?;
    Some(match result {
        Ok(v) => json!({"jsonrpc": "2.0", "id": reply_id, "result": v}),
        Err(e) => {
            log::debug!("rpc: {method} failed: {e}");
            error_response(reply_id, e)
        }
    })
}

fn error_response(id: Value, e: RpcError) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": e.code, "message": e.message}})
}

fn serve_connection(conn: rt::net::UnixStream, registry: &Registry) {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        // Answer every complete value already buffered.
        loop {
            match next_frame(&buf) {
                Frame::Value(v, used) => {
                    buf.drain(..used);
                    if let Some(resp) = handle_value(registry, v) {
                        if send(&conn, &resp).is_err() {
                            return;
                        }
                    }
                }
                Frame::Incomplete => break,
                Frame::Garbage(why) => {
                    let resp = error_response(
                        Value::Null,
                        RpcError::new(codes::PARSE_ERROR, format!("Parse error: {why}")),
                    );
                    let _ = send(&conn, &resp);
                    return;
                }
            }
        }
        if buf.len() > MAX_REQUEST {
            let resp = error_response(
                Value::Null,
                RpcError::new(
                    codes::PARSE_ERROR,
                    format!("Parse error: request larger than {MAX_REQUEST} bytes"),
                ),
            );
            let _ = send(&conn, &resp);
            return;
        }
        match conn.read(&mut chunk) {
            Ok(0) => return, // client closed; a half-written value is dropped
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => {
                log::debug!("rpc: connection read failed: {e}");
                return;
            }
        }
    }
}

fn send(conn: &rt::net::UnixStream, v: &Value) -> io::Result<()> {
    let mut out = serde_json::to_vec(v).map_err(io::Error::other)?;
    out.push(b'\n');
    conn.write_all(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_back_to_back_values() {
        let b = br#"  {"a":1}{"b":2} {"c""#;
        let Frame::Value(v, n) = next_frame(b) else {
            panic!()
        };
        assert_eq!(v, json!({"a":1}));
        let Frame::Value(v2, n2) = next_frame(&b[n..]) else {
            panic!()
        };
        assert_eq!(v2, json!({"b":2}));
        assert_eq!(next_frame(&b[n + n2..]), Frame::Incomplete);
        assert_eq!(next_frame(b"   "), Frame::Incomplete);
        assert!(matches!(next_frame(b"}{"), Frame::Garbage(_)));
    }

    #[test]
    fn requests_errors_and_notifications() {
        let r = Registry::new();
        r.register("echo", |p| Ok(p.unwrap_or(Value::Null)));
        r.register("fail", |_| Err(RpcError::errno(2, "no such thing")));
        let ok = handle_value(
            &r,
            json!({"jsonrpc":"2.0","id":1,"method":"echo","params":{"x":1}}),
        )
        .unwrap();
        assert_eq!(ok, json!({"jsonrpc":"2.0","id":1,"result":{"x":1}}));
        let nf = handle_value(&r, json!({"jsonrpc":"2.0","id":"a","method":"nope"})).unwrap();
        assert_eq!(nf["error"]["code"], -32601);
        let fail = handle_value(&r, json!({"jsonrpc":"2.0","id":2,"method":"fail"})).unwrap();
        assert_eq!(fail["error"]["code"], -2);
        assert_eq!(
            handle_value(&r, json!({"jsonrpc":"2.0","method":"echo"})),
            None
        );
        let bad = handle_value(&r, json!([1, 2])).unwrap();
        assert_eq!(bad["error"]["code"], -32600);
        let bad = handle_value(&r, json!({"jsonrpc":"1.0","id":3,"method":"echo"})).unwrap();
        assert_eq!(bad["error"]["code"], -32600);
        let bad = handle_value(
            &r,
            json!({"jsonrpc":"2.0","id":3,"method":"echo","params":5}),
        )
        .unwrap();
        assert_eq!(bad["error"]["code"], -32602);
        let methods = handle_value(
            &r,
            json!({"jsonrpc":"2.0","id":4,"method":"rpc_get_methods"}),
        )
        .unwrap();
        assert!(methods["result"]
            .as_array()
            .unwrap()
            .contains(&json!("echo")));
    }
}
