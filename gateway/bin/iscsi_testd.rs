//! `ferrite-iscsi-testd`: Ferrite's iSCSI target serving RAM volumes, for
//! the iSCSI tests and `bench-iscsi` until `ferrited` hosts the target.
//!
//! It creates the volumes, one portal group per `--portal` (tags 1, 2, ...),
//! and with `--export` an initiator group 1 (ANY) and a target node
//! `iqn.2026-11.io.ferrite:<volume>` per volume on every portal group. The
//! rest (CHAP, ACLs, more nodes) is configured over JSON-RPC on
//! `--rpc-socket` with SPDK's method names. When listening it prints one
//! line: `READY rpc=<path> portal=<addr> [portal=<addr>...]`.

use clap::Parser;
use ferrite_engine::rpc::server::RpcServer;
use ferrite_engine::rpc::Registry;
use ferrite_engine::rt::{Config, CoreSet, Runtime};
use ferrite_engine::volume::mem::{MemProvider, MemVolume};
use ferrite_gateway::iscsi::{self, IscsiTarget, Portal, TargetOptions};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "ferrite-iscsi-testd",
    about = "Ferrite's iSCSI target on RAM volumes (tests, benchmarks)"
)]
struct Args {
    /// Reactors (adaptive polling, unpinned).
    #[arg(long, default_value_t = 2)]
    reactors: usize,
    /// A RAM volume: NAME:SIZE[:BLOCK_SIZE], SIZE with an optional K/M/G suffix.
    #[arg(long = "volume")]
    volumes: Vec<String>,
    /// A portal (HOST:PORT, port 0 = any free port); each becomes a portal group.
    #[arg(long = "portal")]
    portals: Vec<String>,
    /// Export every volume as LUN 0 of iqn.2026-11.io.ferrite:<volume> to any initiator.
    #[arg(long)]
    export: bool,
    /// Queue depth of exported target nodes.
    #[arg(long, default_value_t = 128)]
    queue_depth: u32,
    /// JSON-RPC socket (SPDK framing).
    #[arg(long)]
    rpc_socket: Option<PathBuf>,
    /// Idle time before a NOP-In ping, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    nop_in_interval_ms: u64,
    /// Command data one connection may hold, in MiB.
    #[arg(long, default_value_t = 256)]
    max_buffered_mib: usize,
    /// Unanswered ping time before the connection is dropped, in milliseconds.
    #[arg(long, default_value_t = 60_000)]
    nop_timeout_ms: u64,
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

fn run(args: Args) -> Result<(), String> {
    ferrite_sys::signals::block_termination_signals()
        .map_err(|e| format!("blocking signals: {e}"))?;
    let config = Config {
        cores: CoreSet::from_list((0..args.reactors.max(1)).collect()),
        pin: false,
        ..Config::default()
    };
    let runtime = Runtime::new(config).map_err(|e| format!("starting reactors: {e}"))?;
    let provider = MemProvider::new();
    let mut names = Vec::new();
    for v in &args.volumes {
        let parts: Vec<&str> = v.split(':').collect();
        if parts.len() < 2 || parts.len() > 3 {
            return Err(format!("--volume {v:?}: want NAME:SIZE[:BLOCK_SIZE]"));
        }
        let size = parse_size(parts[1])?;
        let bs: u32 = parts
            .get(2)
            .map(|b| b.parse().map_err(|e| format!("block size {b:?}: {e}")))
            .transpose()?
            .unwrap_or(512);
        if (bs != 512 && bs != 4096) || size == 0 || size % bs as u64 != 0 {
            return Err(format!(
                "--volume {v:?}: block size must be 512 or 4096 and divide the size"
            ));
        }
        provider.add(MemVolume::new(parts[0], size, bs));
        names.push(parts[0].to_string());
    }
    let opts = TargetOptions {
        nop_in_interval: Duration::from_millis(args.nop_in_interval_ms),
        nop_timeout: Duration::from_millis(args.nop_timeout_ms),
        max_buffered_per_connection: args.max_buffered_mib << 20,
        ..TargetOptions::default()
    };
    let target = IscsiTarget::new(runtime.handle(), provider, opts);
    let mut bound = Vec::new();
    for (i, p) in args.portals.iter().enumerate() {
        let (host, port) = p
            .rsplit_once(':')
            .ok_or_else(|| format!("--portal {p:?}: want HOST:PORT"))?;
        let addrs = target
            .create_portal_group(
                i as u16 + 1,
                vec![Portal {
                    host: host.to_string(),
                    port: port.to_string(),
                }],
                false,
            )
            .map_err(|e| e.to_string())?;
        bound.extend(addrs);
    }
    if args.export {
        target
            .create_initiator_group(
                1,
                vec!["ANY".into()],
                vec!["ANY".into()],
                Default::default(),
            )
            .map_err(|e| e.to_string())?;
        for n in &names {
            let maps = (1..=args.portals.len() as u16).map(|pg| (pg, 1)).collect();
            target
                .create_target_node(iscsi::NodeSpec {
                    name: n.clone(),
                    alias: n.clone(),
                    pg_ig_maps: maps,
                    luns: vec![(0, n.clone())],
                    queue_depth: args.queue_depth,
                    chap: Default::default(),
                    header_digest: false,
                    data_digest: false,
                })
                .map_err(|e| e.to_string())?;
        }
    }
    let registry = Registry::new();
    iscsi::register_rpc(&registry, target.clone());
    let _rpc = match &args.rpc_socket {
        Some(p) => Some(
            RpcServer::start(&runtime.handle(), 0, p, registry)
                .map_err(|e| format!("rpc socket {}: {e}", p.display()))?,
        ),
        None => None,
    };
    let mut line = String::from("READY");
    if let Some(p) = &args.rpc_socket {
        line.push_str(&format!(" rpc={}", p.display()));
    }
    for a in &bound {
        line.push_str(&format!(" portal={a}"));
    }
    println!("{line}");
    let _ = std::io::stdout().flush();
    let sig = ferrite_sys::signals::wait_termination_signal();
    log::info!("{sig}: shutting down");
    target.shutdown();
    drop(_rpc);
    runtime.shutdown();
    Ok(())
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_millis()
        .init();
    if let Err(e) = run(Args::parse()) {
        eprintln!("ferrite-iscsi-testd: {e}");
        std::process::exit(1);
    }
}
