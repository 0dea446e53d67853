//! A Ferrite cluster of real processes on loopback for integration tests:
//! etcd, ferrite-meta and ferrited, each on ports of its own and data in a
//! temp dir of its own. Everything is killed and removed on drop.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../../../../meta/tests/common/ports.rs"]
mod ports;
pub use ports::free_port;

/// Whether `ready` holds within 10 s (checked every 100 ms).
pub fn eventually(ready: impl FnMut() -> bool) -> bool {
    eventually_within(Duration::from_secs(10), ready)
}

/// Whether `ready` holds within `limit` (checked every 100 ms).
pub fn eventually_within(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    (0..limit.as_millis().div_ceil(100)).any(|_| {
        let ok = ready();
        if !ok {
            std::thread::sleep(Duration::from_millis(100));
        }
        ok
    })
}

pub fn bin_dir() -> PathBuf {
    // ferrited is this package's binary; ferrite-meta is built beside it by
    // `make test` (cargo build --workspace --bins) in the same target dir.
    PathBuf::from(env!("CARGO_BIN_EXE_ferrited"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what} did not happen within {timeout:?}");
}

fn tcp_up(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// A child process killed on drop.
pub struct Proc {
    pub name: String,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command, log: PathBuf) -> Self {
        let f = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({cmd:?}): {e}"));
        Self {
            name: name.into(),
            child: Some(child),
            log,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (bounded); returns whether it exited by itself.
    pub fn stop(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            if let Ok(Some(_)) = c.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// etcd + metas + nodes.
pub struct Cluster {
    pub dir: PathBuf,
    pub etcd: Proc,
    pub etcd_port: u16,
    pub metas: Vec<(Proc, u16)>,
    pub nodes: Vec<Node>,
    keep: bool,
}

/// One ferrited and what it listens on.
pub struct Node {
    pub id: String,
    pub proc: Proc,
    pub sock: PathBuf,
    pub nbd: u16,
    pub metrics: u16,
    pub replica: u16,
    pub device: PathBuf,
    pub args: Vec<String>,
}

impl Node {
    pub fn nbd_uri(&self, export: &str) -> String {
        format!("nbd://127.0.0.1:{}/{}", self.nbd, export)
    }

    /// One JSON-RPC call over the node's socket.
    pub fn rpc(&self, method: &str, params: Value) -> Result<Value, (i64, String)> {
        rpc_call(&self.sock, method, params)
    }

    pub fn rpc_ok(&self, method: &str, params: Value) -> Value {
        self.rpc(method, params)
            .unwrap_or_else(|e| panic!("{method} failed: {e:?}\nlog:\n{}", self.proc.log_text()))
    }

    /// The string field `key` of every entry a listing method returns.
    pub fn listed(&self, method: &str, key: &str) -> Vec<String> {
        self.rpc_ok(method, Value::Null)
            .as_array()
            .unwrap_or_else(|| panic!("{method} did not return a list"))
            .iter()
            .map(|x| x[key].as_str().unwrap().to_string())
            .collect()
    }

    /// Makes NVMe/TCP subsystem `nqn` with SPDK's methods and adds a
    /// namespace for each of `bdevs`.
    pub fn nvmf_subsystem_with(&self, nqn: &str, bdevs: &[&str]) {
        self.rpc_ok(
            "nvmf_create_subsystem",
            json!({"nqn": nqn, "allow_any_host": true}),
        );
        for bdev in bdevs {
            self.rpc_ok(
                "nvmf_subsystem_add_ns",
                json!({"nqn": nqn, "namespace": {"bdev_name": bdev}}),
            );
        }
    }

    /// The bdev names of subsystem `nqn`'s namespaces; `None` if it is not
    /// listed.
    pub fn subsystem_bdevs(&self, nqn: &str) -> Option<Vec<String>> {
        let subs = self.rpc_ok("nvmf_get_subsystems", Value::Null);
        let sub = subs.as_array()?.iter().find(|s| s["nqn"] == nqn)?;
        Some(
            sub["namespaces"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|ns| ns["bdev_name"].as_str().unwrap_or_default().to_string())
                        .collect()
                })
                .unwrap_or_default(),
        )
    }
}

pub fn rpc_call(sock: &Path, method: &str, params: Value) -> Result<Value, (i64, String)> {
    let mut s =
        UnixStream::connect(sock).map_err(|e| (0, format!("connect {}: {e}", sock.display())))?;
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = json!({"jsonrpc": "2.0", "id": 1, "method": method});
    if !params.is_null() {
        req["params"] = params;
    }
    s.write_all(req.to_string().as_bytes()).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        let n = s.read(&mut chunk).map_err(|e| (0, e.to_string()))?;
        if n == 0 {
            return Err((0, "connection closed".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
            if let Some(e) = v.get("error") {
                return Err((
                    e["code"].as_i64().unwrap_or(0),
                    e["message"].as_str().unwrap_or("").to_string(),
                ));
            }
            return Ok(v["result"].clone());
        }
    }
}

impl Cluster {
    /// etcd and `metas` ferrite-meta processes; no node yet.
    pub fn start(name: &str, metas: usize) -> Self {
        let dir = std::env::temp_dir().join(format!("ferrite-it-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (cp, pp) = (free_port(), free_port());
        let etcd = Proc::spawn(
            "etcd",
            Command::new("etcd").args([
                "--name",
                "it",
                "--data-dir",
                dir.join("etcd").to_str().unwrap(),
                "--listen-client-urls",
                &format!("http://127.0.0.1:{cp}"),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{cp}"),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{pp}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{pp}"),
                "--initial-cluster",
                &format!("it=http://127.0.0.1:{pp}"),
            ]),
            dir.join("etcd.log"),
        );
        wait_until("etcd answering", Duration::from_secs(30), || tcp_up(cp));
        let mut c = Self {
            dir,
            etcd,
            etcd_port: cp,
            metas: Vec::new(),
            nodes: Vec::new(),
            keep: std::env::var_os("FERRITE_KEEP_TEST_DIRS").is_some(),
        };
        for _ in 0..metas {
            c.add_meta();
        }
        c
    }

    pub fn add_meta(&mut self) {
        let i = self.metas.len() + 1;
        let port = free_port();
        let p = Proc::spawn(
            &format!("meta{i}"),
            Command::new(bin_dir().join("ferrite-meta")).args([
                "--etcd",
                &format!("http://127.0.0.1:{}", self.etcd_port),
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--name",
                &format!("meta{i}"),
                "--node-ttl-secs",
                "3",
                "--node-grace-secs",
                "1",
                "--leader-ttl-secs",
                "2",
            ]),
            self.dir.join(format!("meta{i}.log")),
        );
        wait_until("ferrite-meta listening", Duration::from_secs(30), || {
            tcp_up(port)
        });
        self.metas.push((p, port));
    }

    pub fn meta_endpoints(&self) -> String {
        self.metas
            .iter()
            .map(|(_, p)| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts node `nodeN` with a 2 GiB sparse device file.
    pub fn add_node(&mut self) -> usize {
        self.add_node_with(&[])
    }

    /// Like [`Self::add_node`], with more ferrited arguments.
    pub fn add_node_with(&mut self, extra: &[&str]) -> usize {
        let i = self.nodes.len() + 1;
        let id = format!("node{i}");
        let ndir = self.dir.join(&id);
        std::fs::create_dir_all(&ndir).unwrap();
        let (nbd, metrics, replica) = (free_port(), free_port(), free_port());
        let sock = ndir.join("rpc.sock");
        let device = ndir.join("dev0.img");
        let args: Vec<String> = vec![
            "--cores".into(),
            "0-1".into(),
            "--no-pin".into(),
            "--poll-mode".into(),
            "adaptive".into(),
            "--node-id".into(),
            id.clone(),
            "--device".into(),
            device.to_str().unwrap().into(),
            "--device-size".into(),
            "2G".into(),
            "--meta".into(),
            self.meta_endpoints(),
            "-r".into(),
            sock.to_str().unwrap().into(),
            "--nbd".into(),
            format!("127.0.0.1:{nbd}"),
            "--metrics".into(),
            format!("127.0.0.1:{metrics}"),
            "--replica".into(),
            format!("127.0.0.1:{replica}"),
            "--zone".into(),
            format!("zone{i}"),
            "--iscsi".into(),
            format!("127.0.0.1:{}", free_port()),
            "--nvmf".into(),
            format!("127.0.0.1:{}", free_port()),
            "--nvmf-discovery".into(),
            format!("127.0.0.1:{}", free_port()),
        ];
        let args: Vec<String> = args
            .into_iter()
            .chain(extra.iter().map(|s| s.to_string()))
            .collect();
        let proc = Self::spawn_node(&id, &args, &ndir);
        let node = Node {
            id,
            proc,
            sock,
            nbd,
            metrics,
            replica,
            device,
            args,
        };
        Self::wait_node(&node);
        self.nodes.push(node);
        i - 1
    }

    fn spawn_node(id: &str, args: &[String], ndir: &Path) -> Proc {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let log = ndir.join(format!("ferrited-{stamp}.log"));
        let mut cmd = Command::new(bin_dir().join("ferrited"));
        cmd.args(args).env("RUST_LOG", "info");
        Proc::spawn(id, &mut cmd, log)
    }

    fn wait_node(node: &Node) {
        let end = Instant::now() + Duration::from_secs(60);
        while Instant::now() < end {
            if rpc_call(&node.sock, "spdk_get_version", Value::Null).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "{} did not come up; log:\n{}",
            node.id,
            node.proc.log_text()
        );
    }

    /// Starts node `i` again with the same arguments (after a kill or stop).
    pub fn restart_node(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.proc.kill9();
        let ndir = n.device.parent().unwrap().to_path_buf();
        n.proc = Self::spawn_node(&n.id, &n.args, &ndir);
        Self::wait_node(&self.nodes[i]);
    }

    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    /// A pool and a volume through node 0, exported over NBD there.
    pub fn volume(&self, pool: &str, replicas: u32, vol: &str, size: u64) {
        let n = self.node(0);
        if n.rpc("pool_list", Value::Null)
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["name"] != pool)
        {
            n.rpc_ok(
                "pool_create",
                json!({"name": pool, "replica_count": replicas}),
            );
        }
        n.rpc_ok(
            "volume_create",
            json!({"name": vol, "pool": pool, "size": size}),
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.proc.kill9();
        }
        for (m, _) in &mut self.metas {
            m.kill9();
        }
        self.etcd.kill9();
        if !self.keep && !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else if std::thread::panicking() {
            eprintln!("test dir kept for inspection: {}", self.dir.display());
        }
    }
}

/// Runs a command; returns (success, stdout+stderr).
pub fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e} (scripts/install-deps.sh installs it)"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// fio with its nbd engine and crc32c verification.
pub fn fio_verify(uri: &str, bs: &str, size: &str, extra: &[&str]) -> (bool, String) {
    let mut args = vec![
        "--name=verify".to_string(),
        "--ioengine=nbd".into(),
        format!("--uri={uri}"),
        "--rw=randrw".into(),
        format!("--bs={bs}"),
        "--iodepth=16".into(),
        format!("--size={size}"),
        "--verify=crc32c".into(),
        "--verify_fatal=1".into(),
        "--do_verify=1".into(),
        "--verify_state_save=0".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    run(Command::new("fio").args(&args))
}
