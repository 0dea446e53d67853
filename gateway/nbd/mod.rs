//! The NBD front end (port 10809, export name = volume name): fixed newstyle
//! handshake with NBD_OPT_GO/INFO/LIST, block size constraints, structured
//! replies, FLUSH, FUA, TRIM, WRITE_ZEROES, CACHE, and several connections
//! per export. Works with fio's nbd engine, qemu-img/qemu-io, nbdinfo and
//! nbd-client.

pub mod handshake;
pub mod proto;
pub mod transmission;

use crate::server::TcpServer;
use ferrite_engine::rpc::{parse_params, Registry, RpcError};
use ferrite_engine::rt::{self, Handle};
use ferrite_engine::volume::{BlockVolume, VolumeProvider};
use handshake::ExportLookup;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// The default NBD port.
pub const DEFAULT_PORT: u16 = 10809;
/// A client has this long to finish the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// A byte stream the handshake runs over (a socket, or bytes in a fuzzer).
pub trait Wire {
    fn read_exact_until(&self, buf: &mut [u8], deadline: Option<Instant>) -> io::Result<()>;
    fn write_all(&self, buf: &[u8]) -> io::Result<()>;
}

impl Wire for rt::net::TcpStream {
    fn read_exact_until(&self, buf: &mut [u8], deadline: Option<Instant>) -> io::Result<()> {
        rt::net::TcpStream::read_exact_until(self, buf, deadline)
    }
    fn write_all(&self, buf: &[u8]) -> io::Result<()> {
        rt::net::TcpStream::write_all(self, buf)
    }
}

/// Counters per export, readable over JSON-RPC.
#[derive(Default, Debug)]
pub struct ExportStats {
    pub connections: AtomicU64,
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub read_bytes: AtomicU64,
    pub write_bytes: AtomicU64,
    pub errors: AtomicU64,
}

struct Export {
    volume_name: String,
    volume: Arc<dyn BlockVolume>,
    stats: Arc<ExportStats>,
    /// Duplicates of the connections' sockets, to shut them down on stop.
    conns: Mutex<BTreeMap<u64, std::net::TcpStream>>,
}

/// The NBD server of a node: its exports and its listening port.
pub struct NbdServer {
    handle: Handle,
    provider: Arc<dyn VolumeProvider>,
    exports: RwLock<BTreeMap<String, Arc<Export>>>,
    listener: Mutex<Option<TcpServer>>,
    next_conn: AtomicU64,
}

/// What `nbd_export_list` shows of an export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    pub name: String,
    pub volume: String,
    pub size: u64,
    pub block_size: u32,
    pub connections: usize,
}

impl NbdServer {
    pub fn new(handle: Handle, provider: Arc<dyn VolumeProvider>) -> Arc<Self> {
        Arc::new(Self {
            handle,
            provider,
            exports: RwLock::new(BTreeMap::new()),
            listener: Mutex::new(None),
            next_conn: AtomicU64::new(1),
        })
    }

    /// Starts listening (once); returns the bound address.
    pub fn listen(self: &Arc<Self>, addr: SocketAddr) -> io::Result<SocketAddr> {
        let mut l = self.listener.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = l.as_ref() {
            return Ok(s.local_addr());
        }
        let me = Arc::downgrade(self);
        let server = TcpServer::start(
            &self.handle,
            "nbd",
            addr,
            Arc::new(move |sock, peer| {
                if let Some(me) = me.upgrade() {
                    me.serve_connection(sock, peer);
                }
            }),
        )?;
        let bound = server.local_addr();
        *l = Some(server);
        Ok(bound)
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|s| s.local_addr())
    }

    /// Exports `volume` under `name` (default: the volume's name).
    pub fn export_start(&self, volume: &str, name: Option<&str>) -> Result<ExportInfo, RpcError> {
        let name = name.unwrap_or(volume).to_string();
        if name.len() > proto::MAX_NAME_LEN {
            return Err(RpcError::invalid_params(
                "export name longer than 4096 bytes",
            ));
        }
        let vol = self
            .provider
            .open(volume)
            .map_err(|e| RpcError::errno(libc_enoent(), e.to_string()))?;
        let mut exports = self.exports.write().unwrap_or_else(|e| e.into_inner());
        if exports.contains_key(&name) {
            return Err(RpcError::errno(
                17,
                format!("NBD export '{name}' already exists"),
            ));
        }
        let e = Arc::new(Export {
            volume_name: volume.to_string(),
            volume: vol,
            stats: Default::default(),
            conns: Mutex::new(BTreeMap::new()),
        });
        let info = export_info(&name, &e);
        exports.insert(name.clone(), e);
        log::info!("nbd: exporting volume '{volume}' as '{name}'");
        Ok(info)
    }

    /// Stops an export and closes its connections.
    pub fn export_stop(&self, name: &str) -> Result<(), RpcError> {
        let e = self
            .exports
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        let Some(e) = e else {
            return Err(RpcError::errno(
                libc_enoent(),
                format!("no NBD export named '{name}'"),
            ));
        };
        for s in e.conns.lock().unwrap_or_else(|e| e.into_inner()).values() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        log::info!("nbd: stopped export '{name}'");
        Ok(())
    }

    pub fn export_list(&self) -> Vec<ExportInfo> {
        self.exports
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(n, e)| export_info(n, e))
            .collect()
    }

    pub fn export_stats(&self, name: &str) -> Option<Arc<ExportStats>> {
        self.exports
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .map(|e| e.stats.clone())
    }

    fn serve_connection(&self, sock: rt::net::TcpStream, peer: SocketAddr) {
        let deadline = Some(Instant::now() + HANDSHAKE_TIMEOUT);
        let neg = match handshake::handshake(&sock, self, deadline) {
            Ok(Some(n)) => n,
            Ok(None) => return,
            Err(e) => {
                log::info!("nbd: handshake with {peer} failed: {e}");
                return;
            }
        };
        let Some(export) = self
            .exports
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&neg.export)
            .cloned()
        else {
            return; // stopped during the handshake
        };
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        if let Ok(dup) = sock.std().try_clone() {
            export
                .conns
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, dup);
        }
        export.stats.connections.fetch_add(1, Ordering::Relaxed);
        log::debug!("nbd: {peer} attached to export '{}'", neg.export);
        transmission::serve(sock, neg, export.stats.clone());
        export
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }
}

impl ExportLookup for NbdServer {
    fn lookup(&self, name: &str) -> Option<(String, Arc<dyn BlockVolume>)> {
        let exports = self.exports.read().unwrap_or_else(|e| e.into_inner());
        // The empty name is the default export when there is just one.
        if name.is_empty() && exports.len() == 1 {
            return exports
                .iter()
                .next()
                .map(|(n, e)| (n.clone(), e.volume.clone()));
        }
        exports
            .get(name)
            .map(|e| (name.to_string(), e.volume.clone()))
    }

    fn names(&self) -> Vec<String> {
        self.exports
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }
}

fn export_info(name: &str, e: &Export) -> ExportInfo {
    let info = e.volume.info();
    ExportInfo {
        name: name.to_string(),
        volume: e.volume_name.clone(),
        size: info.size,
        block_size: info.block_size,
        connections: e.conns.lock().unwrap_or_else(|e| e.into_inner()).len(),
    }
}

fn libc_enoent() -> i32 {
    2
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StartParams {
    /// The volume to export (`bdev_name` is accepted too, SPDK style).
    #[serde(alias = "bdev_name")]
    volume: String,
    /// The export name clients ask for; defaults to the volume name.
    #[serde(default)]
    name: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StopParams {
    name: String,
}

/// Registers `nbd_export_start`, `nbd_export_stop` and `nbd_export_list`.
pub fn register_rpc(registry: &Registry, server: Arc<NbdServer>) {
    let s = server.clone();
    registry.register("nbd_export_start", move |p| {
        let p: StartParams = parse_params(p)?;
        let info = s.export_start(&p.volume, p.name.as_deref())?;
        Ok(json!({"name": info.name, "volume": info.volume, "size": info.size, "block_size": info.block_size,
                  "address": s.local_addr().map(|a| a.to_string())}))
    });
    let s = server.clone();
    registry.register("nbd_export_stop", move |p| {
        let p: StopParams = parse_params(p)?;
        s.export_stop(&p.name)?;
        Ok(Value::Bool(true))
    });
    let s = server;
    registry.register("nbd_export_list", move |_| {
        let addr = s.local_addr().map(|a| a.to_string());
        Ok(Value::Array(
            s.export_list()
                .into_iter()
                .map(|e| {
                    let st = s.export_stats(&e.name);
                    let get = |f: fn(&ExportStats) -> &AtomicU64| st.as_ref().map(|s| f(s).load(Ordering::Relaxed)).unwrap_or(0);
                    json!({"name": e.name, "volume": e.volume, "size": e.size, "block_size": e.block_size,
                           "connections": e.connections, "address": addr,
                           "reads": get(|s| &s.reads), "writes": get(|s| &s.writes),
                           "read_bytes": get(|s| &s.read_bytes), "write_bytes": get(|s| &s.write_bytes),
                           "errors": get(|s| &s.errors)})
                })
                .collect(),
        ))
    });
}
