//! Test harness: a real etcd and real `ferrite-meta` processes on
//! 127.0.0.1, each on free ports with its own temporary directory; all
//! killed and removed on drop. Every wait is bounded.

#![allow(dead_code)]

mod ports;
pub mod scan;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ferrite_meta::client::{ClientConfig, MetaClient};
use ferrite_meta::proto;

pub use ports::free_port;

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "ferrite-meta-test-{}-{}-{}",
            std::process::id(),
            tag,
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Proc {
    pub child: Option<Child>,
    pub what: String,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `signal` (e.g. "TERM") and waits up to `timeout` for the exit
    /// status; SIGKILL after that.
    pub fn signal_and_wait(
        &mut self,
        signal: &str,
        timeout: Duration,
    ) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A one-member etcd.
pub struct Etcd {
    pub url: String,
    proc_: Proc,
    dir: TempDir,
}

impl Etcd {
    pub fn start() -> Etcd {
        assert!(
            Command::new("etcd")
                .arg("--version")
                .stdout(Stdio::null())
                .status()
                .is_ok(),
            "etcd is missing: run scripts/install-deps.sh"
        );
        let dir = TempDir::new("etcd");
        // A taken port (a race with another test) fails the start: try a
        // few port pairs.
        for _ in 0..5 {
            let (cp, pp) = (free_port(), free_port());
            let url = format!("http://127.0.0.1:{cp}");
            let peer = format!("http://127.0.0.1:{pp}");
            let log = std::fs::File::create(dir.path().join("etcd.log")).expect("etcd log");
            let child = Command::new("etcd")
                .arg("--name")
                .arg("t")
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .arg("--listen-client-urls")
                .arg(&url)
                .arg("--advertise-client-urls")
                .arg(&url)
                .arg("--listen-peer-urls")
                .arg(&peer)
                .arg("--initial-advertise-peer-urls")
                .arg(&peer)
                .arg("--initial-cluster")
                .arg(format!("t={peer}"))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn etcd");
            let mut p = Proc {
                child: Some(child),
                what: "etcd".into(),
            };
            if wait_etcd(&url, &mut p) {
                return Etcd { url, proc_: p, dir };
            }
            p.kill9();
            let _ = std::fs::remove_dir_all(dir.path().join("data"));
        }
        let log = std::fs::read_to_string(dir.path().join("etcd.log")).unwrap_or_default();
        panic!("etcd did not start; log tail:\n{}", tail(&log, 2000));
    }
}

fn tail(s: &str, n: usize) -> &str {
    let mut i = s.len().saturating_sub(n);
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

/// Runs `f` to completion on a runtime of its own, on a thread of its own
/// (the harness is sync and is called from async tests, where a nested
/// `block_on` is not allowed).
fn block_on_fresh<F: std::future::Future + Send>(f: F) -> F::Output
where
    F::Output: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(f)
        })
        .join()
        .expect("harness thread panicked")
    })
}

fn wait_etcd(url: &str, p: &mut Proc) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Some(Ok(Some(_))) = p.child.as_mut().map(|c| c.try_wait()) {
            return false; // exited
        }
        let ok = block_on_fresh(async {
            let opts = etcd_client::ConnectOptions::new()
                .with_connect_timeout(Duration::from_millis(500))
                .with_timeout(Duration::from_secs(1));
            match etcd_client::Client::connect([url], Some(opts)).await {
                Ok(mut c) => c.get("/ferrite-test-probe", None).await.is_ok(),
                Err(_) => false,
            }
        });
        if ok {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// A `ferrite-meta` process.
pub struct Meta {
    pub addr: String,
    pub name: String,
    pub proc_: Proc,
    pub log: PathBuf,
    _dir: Option<TempDir>,
}

/// Options for a meta process.
#[derive(Clone)]
pub struct MetaOpts {
    pub node_ttl_secs: u32,
    pub node_grace_secs: u32,
    pub leader_ttl_secs: u32,
    pub max_txn_ops: u32,
    /// Pause between re-replication rounds; 0 turns the scheduler off
    /// (one round an hour).
    pub repair_interval_ms: u32,
    pub max_learners_per_node: u32,
    pub repair_extents_per_round: u32,
}

impl Default for MetaOpts {
    fn default() -> Self {
        MetaOpts {
            node_ttl_secs: 10,
            node_grace_secs: 5,
            leader_ttl_secs: 2,
            max_txn_ops: 128,
            repair_interval_ms: 200,
            max_learners_per_node: 8,
            repair_extents_per_round: 64,
        }
    }
}

impl Meta {
    /// Starts a meta named `name` and waits (bounded) until it answers.
    pub fn start(etcd: &Etcd, name: &str, opts: &MetaOpts) -> Meta {
        let dir = TempDir::new(name);
        for _ in 0..5 {
            let port = free_port();
            let addr = format!("127.0.0.1:{port}");
            let log = dir.path().join("meta.log");
            let child = Command::new(env!("CARGO_BIN_EXE_ferrite-meta"))
                .args(["--etcd", &etcd.url, "--listen", &addr, "--name", name])
                .args(["--node-ttl-secs", &opts.node_ttl_secs.to_string()])
                .args(["--node-grace-secs", &opts.node_grace_secs.to_string()])
                .args(["--leader-ttl-secs", &opts.leader_ttl_secs.to_string()])
                .args(["--etcd-max-txn-ops", &opts.max_txn_ops.to_string()])
                .args([
                    "--repair-interval-ms",
                    &match opts.repair_interval_ms {
                        0 => 3_600_000,
                        ms => ms,
                    }
                    .to_string(),
                ])
                .args([
                    "--max-learners-per-node",
                    &opts.max_learners_per_node.to_string(),
                ])
                .args([
                    "--repair-extents-per-round",
                    &opts.repair_extents_per_round.to_string(),
                ])
                .env(
                    "RUST_LOG",
                    "info,ferrite_meta=debug,h2=info,tower=info,hyper=info",
                )
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("meta log"))
                .spawn()
                .expect("spawn ferrite-meta");
            let mut m = Meta {
                addr,
                name: name.to_string(),
                proc_: Proc {
                    child: Some(child),
                    what: format!("ferrite-meta {name}"),
                },
                log,
                _dir: None,
            };
            if m.wait_answering(Duration::from_secs(15)) {
                m._dir = Some(dir);
                return m;
            }
            eprintln!("meta {name} did not come up:\n{}", m.log_tail());
            m.proc_.kill9();
        }
        panic!("ferrite-meta {name} did not start");
    }

    fn wait_answering(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.proc_.child.as_mut().map(|c| c.try_wait()) {
                return false;
            }
            let addr = self.addr.clone();
            let ok = block_on_fresh(async move {
                let url = format!("http://{addr}");
                match proto::meta_client::MetaClient::connect(url).await {
                    Ok(mut c) => c.get_leader(proto::GetLeaderRequest {}).await.is_ok(),
                    Err(_) => false,
                }
            });
            if ok {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        tail(&s, 4000).to_string()
    }

    /// A client of this meta alone.
    pub fn client(&self) -> MetaClient {
        MetaClient::with_config([self.addr.as_str()], test_client_config()).expect("client")
    }
}

/// Client settings for tests: retries bounded well inside a test's time.
pub fn test_client_config() -> ClientConfig {
    ClientConfig {
        retry_for: Duration::from_secs(20),
        ..ClientConfig::default()
    }
}

/// Waits, bounded, until some meta of `client` leads.
pub async fn wait_leader(client: &MetaClient, timeout: Duration) -> proto::GetLeaderResponse {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(l) = client.get_leader().await {
            if !l.leader_address.is_empty() {
                return l;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no leader elected within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `f` every 100 ms until it returns Some, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A registration of a fake node.
pub fn node(id: &str, zone: &str, capacity: u64) -> proto::RegisterNodeRequest {
    proto::RegisterNodeRequest {
        id: id.into(),
        addresses: Some(proto::NodeAddresses {
            gateway: "127.0.0.1:10809".into(),
            replica: "127.0.0.1:7100".into(),
        }),
        zone: zone.into(),
        capacity_total: capacity,
        capacity_free: capacity,
    }
}

/// A pool request.
pub fn pool(
    name: &str,
    rf: u32,
    thick: bool,
    extent_size: u64,
    zone: bool,
) -> proto::CreatePoolRequest {
    proto::CreatePoolRequest {
        min_replicas: 0,
        name: name.into(),
        replica_count: rf,
        provisioning: if thick {
            proto::Provisioning::Thick
        } else {
            proto::Provisioning::Thin
        } as i32,
        extent_size,
        failure_domain: if zone {
            proto::FailureDomain::Zone
        } else {
            proto::FailureDomain::Node
        } as i32,
    }
}

/// A volume request.
pub fn volume(name: &str, pool: &str, size: u64, block_size: u32) -> proto::CreateVolumeRequest {
    proto::CreateVolumeRequest {
        name: name.into(),
        pool: pool.into(),
        size,
        block_size,
    }
}

/// Asserts that `r` failed with `code` and a message containing `needle`.
#[track_caller]
pub fn assert_err<T: std::fmt::Debug>(
    r: Result<T, ferrite_meta::client::Status>,
    code: ferrite_meta::client::Code,
    needle: &str,
) {
    match r {
        Ok(v) => panic!("expected {code:?} containing '{needle}', got Ok({v:?})"),
        Err(s) => {
            assert_eq!(s.code(), code, "wrong code; message: {}", s.message());
            assert!(
                s.message().contains(needle),
                "message '{}' lacks '{needle}'",
                s.message()
            );
        }
    }
}

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;
