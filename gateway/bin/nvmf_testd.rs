//! `ferrite-nvmf-testd`: Ferrite's NVMe/TCP target alone, serving RAM or
//! file volumes without etcd, meta or a store: for quick experiments with
//! the target. The VM tests and `bench-nvmf` run against real `ferrited`
//! nodes (hw-tests/nvmf/cluster.sh).
//!
//! Volumes: `--mem NAME:SIZE[:BS]` (RAM) and `--file NAME:PATH:SIZE[:BS]`
//! (a file shared between processes: the multipath test's stand-in for a
//! replicated volume, see `nvmf::testing`). `--export` exports each as
//! subsystem `nqn.2026-11.io.ferrite:<volume>` on every `--listen`
//! address, to `--allow-host` hosts (any host when none is given).
//! `--discovery` adds discovery-only listeners. A listener may advertise
//! another address in discovery: `--listen 127.0.0.1:14420=10.0.2.100:4420`.
//!
//! Besides SPDK's `nvmf_*` methods, `--rpc-socket` serves two test hooks:
//! `test_volume_resize {name, size}` and `test_volume_set_access_state
//! {name, state}` (optimized, non-optimized, inaccessible).
//!
//! For side-by-side benchmarks, `--iscsi-portal HOST:PORT` also serves
//! every volume over Ferrite's iSCSI target (`iqn.2026-11.io.ferrite:<volume>`,
//! LUN 0, any initiator): the same volume objects behind both protocols.
//!
//! When listening it prints one line:
//! `READY discovery=<addr> listen=<addr>... iscsi=<addr> rpc=<path>`.

use clap::Parser;
use ferrite_engine::rpc::server::RpcServer;
use ferrite_engine::rpc::{parse_params, Registry, RpcError};
use ferrite_engine::rt::{Config, CoreSet, Runtime};
use ferrite_engine::volume::mem::MemVolume;
use ferrite_gateway::iscsi;
use ferrite_gateway::nvmf::testing::{parse_access_state, FileVolume, TestProvider};
use ferrite_gateway::nvmf::{
    self, ExportOpts, ListenAddress, NvmfTarget, TargetConfig, TransportOpts,
};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "ferrite-nvmf-testd",
    about = "Ferrite's NVMe/TCP target on test volumes (tests, benchmarks)"
)]
struct Args {
    /// Reactors (adaptive polling, unpinned).
    #[arg(long, default_value_t = 2)]
    reactors: usize,
    /// A RAM volume: NAME:SIZE[:BLOCK_SIZE], SIZE with an optional K/M/G suffix.
    #[arg(long = "mem")]
    mem: Vec<String>,
    /// A file volume: NAME:PATH:SIZE[:BLOCK_SIZE] (created or grown to SIZE).
    #[arg(long = "file")]
    files: Vec<String>,
    /// A listener for exported subsystems: HOST:PORT[=ADV_HOST:ADV_PORT]
    /// (port 0: any free port; ADV: what discovery advertises).
    #[arg(long = "listen")]
    listen: Vec<String>,
    /// A discovery-only listener, same form.
    #[arg(long = "discovery")]
    discovery: Vec<String>,
    /// Export every volume as nqn.2026-11.io.ferrite:<volume> on every --listen.
    #[arg(long)]
    export: bool,
    /// A host NQN allowed to connect (repeatable); none: any host.
    #[arg(long = "allow-host")]
    allow_host: Vec<String>,
    /// Initial ANA state of every volume: optimized, non-optimized, inaccessible.
    #[arg(long, default_value = "optimized")]
    ana: String,
    /// This gateway's controller ids, MIN-MAX (disjoint per gateway of a volume).
    #[arg(long, default_value = "1-65519")]
    cntlid_range: String,
    /// JSON-RPC socket (SPDK framing).
    #[arg(long)]
    rpc_socket: Option<PathBuf>,
    /// How often controllers look at keep-alive, sizes and ANA states (ms).
    #[arg(long, default_value_t = 200)]
    poll_ms: u64,
    /// In-capsule data size of I/O queues.
    #[arg(long, default_value_t = 8192)]
    in_capsule_data_size: u32,
    /// Largest transfer (MDTS) and MAXH2CDATA.
    #[arg(long, default_value_t = 131072)]
    max_io_size: u32,
    /// Also serve every volume over iSCSI on this portal (HOST:PORT).
    #[arg(long)]
    iscsi_portal: Option<String>,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.chars().last() {
        Some('K') | Some('k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M') | Some('m') => (&s[..s.len() - 1], 1 << 20),
        Some('G') | Some('g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .map(|n| n * mult)
        .map_err(|e| format!("size {s:?}: {e}"))
}

fn parse_bs(s: Option<&&str>) -> Result<u32, String> {
    s.map(|b| b.parse().map_err(|e| format!("block size {b:?}: {e}")))
        .transpose()
        .map(|b| b.unwrap_or(512))
}

/// HOST:PORT[=ADV_HOST:ADV_PORT]
fn parse_listen(s: &str) -> Result<(ListenAddress, Option<ListenAddress>), String> {
    let one = |a: &str| -> Result<ListenAddress, String> {
        let (h, p) = a
            .rsplit_once(':')
            .ok_or_else(|| format!("{a:?}: want HOST:PORT"))?;
        p.parse::<u16>().map_err(|e| format!("{a:?}: port: {e}"))?;
        Ok(ListenAddress::tcp(
            h.trim_start_matches('[').trim_end_matches(']'),
            p,
        ))
    };
    match s.split_once('=') {
        Some((l, a)) => Ok((one(l)?, Some(one(a)?))),
        None => Ok((one(s)?, None)),
    }
}

#[derive(serde::Deserialize)]
struct ResizeParams {
    name: String,
    size: u64,
}

#[derive(serde::Deserialize)]
struct AccessParams {
    name: String,
    state: String,
}

fn run(args: Args) -> Result<(), String> {
    ferrite_sys::signals::block_termination_signals()
        .map_err(|e| format!("blocking signals: {e}"))?;
    let config = Config {
        cores: CoreSet::from_list((0..args.reactors.max(1)).collect()),
        pin: false,
        ..Config::default()
    };
    let runtime = Runtime::new(config).map_err(|e| format!("starting reactors: {e}"))?;
    let provider = TestProvider::new();
    let ana = parse_access_state(&args.ana).ok_or_else(|| {
        format!(
            "--ana {:?}: want optimized, non-optimized or inaccessible",
            args.ana
        )
    })?;
    let mut names = Vec::new();
    for v in &args.mem {
        let p: Vec<&str> = v.split(':').collect();
        if !(2..=3).contains(&p.len()) {
            return Err(format!("--mem {v:?}: want NAME:SIZE[:BLOCK_SIZE]"));
        }
        let (size, bs) = (parse_size(p[1])?, parse_bs(p.get(2))?);
        if (bs != 512 && bs != 4096) || size == 0 || size % bs as u64 != 0 {
            return Err(format!(
                "--mem {v:?}: block size must be 512 or 4096 and divide the size"
            ));
        }
        let vol = MemVolume::new(p[0], size, bs);
        vol.set_access_state(ana);
        provider.add(vol);
        names.push(p[0].to_string());
    }
    for v in &args.files {
        let p: Vec<&str> = v.split(':').collect();
        if !(3..=4).contains(&p.len()) {
            return Err(format!("--file {v:?}: want NAME:PATH:SIZE[:BLOCK_SIZE]"));
        }
        let vol = FileVolume::open(p[0], p[1].as_ref(), parse_size(p[2])?, parse_bs(p.get(3))?)
            .map_err(|e| format!("--file {v:?}: {e}"))?;
        nvmf::testing::Adjustable::set_access_state(&*vol, ana);
        provider.add(vol);
        names.push(p[0].to_string());
    }
    let (lo, hi) = args
        .cntlid_range
        .split_once('-')
        .ok_or("--cntlid-range: want MIN-MAX")?;
    let range = (
        lo.parse::<u16>().map_err(|e| e.to_string())?,
        hi.parse::<u16>().map_err(|e| e.to_string())?,
    );

    let cfg = TargetConfig {
        poll_interval: Duration::from_millis(args.poll_ms.max(10)),
        ..TargetConfig::default()
    };
    let target = NvmfTarget::with_config(runtime.handle(), provider.clone(), cfg);
    let topts = TransportOpts {
        in_capsule_data_size: args.in_capsule_data_size,
        max_io_size: args.max_io_size,
        io_unit_size: args.max_io_size,
        ..TransportOpts::default()
    };
    target.create_transport(topts).map_err(|e| e.to_string())?;
    let mut line = String::from("READY");
    let mut listeners = Vec::new();
    for l in &args.listen {
        let (addr, adv) = parse_listen(l)?;
        listeners.push((addr, adv));
    }
    for d in &args.discovery {
        let (addr, adv) = parse_listen(d)?;
        let b = target
            .add_discovery_listener(&addr, adv)
            .map_err(|e| e.to_string())?;
        line.push_str(&format!(" discovery={}:{}", b.traddr, b.trsvcid));
    }
    if args.export {
        for n in &names {
            let o = ExportOpts {
                hosts: args.allow_host.clone(),
                allow_any_host: args.allow_host.is_empty(),
                listeners: Vec::new(),
                cntlid_range: range,
            };
            let nqn = target.export_volume(n, &o).map_err(|e| e.to_string())?;
            for l in listeners.iter_mut() {
                // Port 0 binds once; later exports name the bound port.
                l.0 = target
                    .add_listener(&nqn, &l.0, l.1.clone())
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    for (a, _) in &listeners {
        line.push_str(&format!(" listen={}:{}", a.traddr, a.trsvcid));
    }

    let iscsi = match &args.iscsi_portal {
        Some(p) => {
            let (host, port) = p
                .rsplit_once(':')
                .ok_or_else(|| format!("--iscsi-portal {p:?}: want HOST:PORT"))?;
            let t = iscsi::IscsiTarget::new(
                runtime.handle(),
                provider.clone(),
                iscsi::TargetOptions::default(),
            );
            let portal = iscsi::Portal {
                host: host.to_string(),
                port: port.to_string(),
            };
            let bound = t
                .create_portal_group(1, vec![portal], false)
                .map_err(|e| e.to_string())?;
            t.create_initiator_group(
                1,
                vec!["ANY".into()],
                vec!["ANY".into()],
                Default::default(),
            )
            .map_err(|e| e.to_string())?;
            for n in &names {
                let spec = iscsi::NodeSpec {
                    name: n.clone(),
                    alias: n.clone(),
                    pg_ig_maps: vec![(1, 1)],
                    luns: vec![(0, n.clone())],
                    queue_depth: 128,
                    chap: Default::default(),
                    header_digest: false,
                    data_digest: false,
                };
                t.create_target_node(spec).map_err(|e| e.to_string())?;
            }
            for a in bound {
                line.push_str(&format!(" iscsi={a}"));
            }
            Some(t)
        }
        None => None,
    };

    let registry = Registry::new();
    nvmf::register_rpc(&registry, target.clone());
    let p = provider.clone();
    registry.register("test_volume_resize", move |params| {
        let r: ResizeParams = parse_params(params)?;
        let v = p
            .adjustable(&r.name)
            .ok_or_else(|| RpcError::errno(2, format!("no volume {}", r.name)))?;
        v.resize(r.size);
        Ok(serde_json::Value::Bool(true))
    });
    let p = provider.clone();
    registry.register("test_volume_set_access_state", move |params| {
        let r: AccessParams = parse_params(params)?;
        let s = parse_access_state(&r.state)
            .ok_or_else(|| RpcError::invalid_params(format!("state {:?}", r.state)))?;
        let v = p
            .adjustable(&r.name)
            .ok_or_else(|| RpcError::errno(2, format!("no volume {}", r.name)))?;
        v.set_access_state(s);
        Ok(serde_json::Value::Bool(true))
    });
    let rpc = match &args.rpc_socket {
        Some(path) => {
            line.push_str(&format!(" rpc={}", path.display()));
            Some(
                RpcServer::start(
                    &runtime.handle(),
                    runtime.reactor_count() - 1,
                    path,
                    registry,
                )
                .map_err(|e| format!("rpc socket {}: {e}", path.display()))?,
            )
        }
        None => None,
    };
    println!("{line}");
    let _ = std::io::stdout().flush();
    let sig = ferrite_sys::signals::wait_termination_signal();
    log::info!("{sig}: shutting down");
    target.shutdown();
    if let Some(t) = iscsi {
        t.shutdown();
    }
    drop(rpc);
    drop::<Arc<NvmfTarget>>(target);
    runtime.shutdown();
    Ok(())
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    if let Err(e) = run(Args::parse()) {
        eprintln!("ferrite-nvmf-testd: {e}");
        std::process::exit(1);
    }
}
