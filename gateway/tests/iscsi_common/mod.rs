//! What the iSCSI integration tests share: a target to test (today the
//! `ferrite-iscsi-testd` binary serving RAM volumes; the tests only see its
//! portal addresses and JSON-RPC socket, so `ferrited` can take its place),
//! a small SPDK-framed JSON-RPC client, and running external tools with a
//! time bound.

#![allow(dead_code)]

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub const NODE_BASE: &str = "iqn.2026-11.io.ferrite";

/// A running iSCSI target.
pub struct Target {
    child: Child,
    pub portals: Vec<SocketAddr>,
    pub rpc: PathBuf,
    pub dir: PathBuf,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A fresh scratch directory for one test.
pub fn scratch_dir(tag: &str) -> PathBuf {
    let base = option_env!("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let d = base.join(format!(
        "iscsi-{tag}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

impl Target {
    /// Starts a target with RAM `volumes` ("name:size[:block size]"), one
    /// portal group per portal (all on 127.0.0.1, free ports). With
    /// `export`, each volume is LUN 0 of `NODE_BASE:<name>` for any
    /// initiator; otherwise the test configures it over JSON-RPC.
    pub fn start(
        tag: &str,
        volumes: &[&str],
        portals: usize,
        export: bool,
        extra: &[&str],
    ) -> Self {
        let dir = scratch_dir(tag);
        let rpc = dir.join("rpc.sock");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferrite-iscsi-testd"));
        cmd.arg("--reactors").arg("2").arg("--rpc-socket").arg(&rpc);
        for v in volumes {
            cmd.arg("--volume").arg(v);
        }
        for _ in 0..portals {
            cmd.arg("--portal").arg("127.0.0.1:0");
        }
        if export {
            cmd.arg("--export");
        }
        cmd.args(extra);
        cmd.stdout(Stdio::piped()).stderr(Stdio::from(
            std::fs::File::create(dir.join("target.log")).expect("log file"),
        ));
        let mut child = cmd.spawn().expect("starting ferrite-iscsi-testd");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("reading READY");
        assert!(
            line.starts_with("READY"),
            "target did not start: {line:?}; log: {}",
            std::fs::read_to_string(dir.join("target.log")).unwrap_or_default()
        );
        let portals = line
            .split_whitespace()
            .filter_map(|w| w.strip_prefix("portal="))
            .map(|a| a.parse().expect("portal address"))
            .collect();
        Self {
            child,
            portals,
            rpc,
            dir,
        }
    }

    /// `iscsi://[user%secret@]host:port/<iqn>/<lun>` for a volume's node.
    pub fn url(&self, portal: usize, volume: &str, lun: u32) -> String {
        format!(
            "iscsi://{}/{NODE_BASE}:{volume}/{lun}",
            self.portals[portal]
        )
    }

    pub fn url_with(&self, portal: usize, creds: &str, iqn: &str, lun: u32) -> String {
        format!("iscsi://{creds}@{}/{iqn}/{lun}", self.portals[portal])
    }

    /// Calls a JSON-RPC method; `Err` carries the error object.
    pub fn rpc(&self, method: &str, params: Value) -> Result<Value, Value> {
        rpc_call(&self.rpc, method, params)
    }

    /// The target's log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("target.log")).unwrap_or_default()
    }

    /// Whether the target process still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        // SIGTERM first so it shuts down cleanly; then make sure.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..50 {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One JSON-RPC 2.0 call over a Unix socket, SPDK framing (a JSON value,
/// read back until a whole value has arrived).
pub fn rpc_call(path: &Path, method: &str, params: Value) -> Result<Value, Value> {
    let mut s = UnixStream::connect(path)
        .unwrap_or_else(|e| panic!("connecting to {}: {e}", path.display()));
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut req = json!({"jsonrpc": "2.0", "id": 1, "method": method});
    if !params.is_null() {
        req["params"] = params;
    }
    s.write_all(req.to_string().as_bytes()).expect("rpc write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).expect("rpc read");
        assert!(
            n > 0,
            "rpc server closed the connection before answering {method}"
        );
        buf.extend_from_slice(&chunk[..n]);
        let mut it = serde_json::Deserializer::from_slice(&buf).into_iter::<Value>();
        if let Some(Ok(v)) = it.next() {
            return match v.get("error") {
                Some(e) => Err(e.clone()),
                None => Ok(v["result"].clone()),
            };
        }
    }
}

/// Panics with a hint when a tool the test drives is not installed.
pub fn require(tool: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "{tool} is not installed; run scripts/install-deps.sh");
}

/// Runs a command with a time limit (coreutils `timeout`); returns
/// (success, stdout+stderr).
pub fn run(limit_s: u32, cmd: &str, args: &[&str]) -> (bool, String) {
    run_env(limit_s, cmd, args, &[])
}

pub fn run_env(limit_s: u32, cmd: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut c = Command::new("timeout");
    c.arg("--kill-after=5")
        .arg(limit_s.to_string())
        .arg(cmd)
        .args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}
