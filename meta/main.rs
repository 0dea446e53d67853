//! `ferrite-meta`: one member of the meta service. Several may run against
//! the same etcd; one leads and serves, the others redirect to it and take
//! over when it dies.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use ferrite_meta::server::{self, Config};

/// Ferrite's meta service: pools, volumes, extent placement and node
/// leases, stored in etcd.
#[derive(Debug, Parser)]
#[command(name = "ferrite-meta", version)]
struct Args {
    /// etcd client URLs, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    etcd: Vec<String>,
    /// Address the gRPC server listens on.
    #[arg(long, default_value = "127.0.0.1:7000")]
    listen: SocketAddr,
    /// Address clients should dial (default: --listen; required when that
    /// is a wildcard).
    #[arg(long)]
    advertise: Option<String>,
    /// This process's name in the election (default: meta-<listen port>).
    #[arg(long)]
    name: Option<String>,
    /// Seconds a node's lease must stay expired before it is marked down.
    #[arg(long, default_value_t = 5)]
    node_grace_secs: u64,
    /// TTL of the leases granted to nodes, in seconds.
    #[arg(long, default_value_t = 10)]
    node_ttl_secs: i64,
    /// TTL of this process's election lease, in seconds: how long a dead
    /// leader is waited for (etcd rounds it up to at least 2).
    #[arg(long, default_value_t = 3)]
    leader_ttl_secs: i64,
    /// Operations per etcd transaction at most: etcd's --max-txn-ops.
    #[arg(long, default_value_t = 128)]
    etcd_max_txn_ops: usize,
    /// Longest wait for one etcd request, in seconds.
    #[arg(long, default_value_t = 5)]
    etcd_timeout_secs: u64,
    /// Pause between rounds of the re-replication scheduler, in ms.
    #[arg(long, default_value_t = 500)]
    repair_interval_ms: u64,
    /// Most learners one node is filled as at once.
    #[arg(long, default_value_t = 8)]
    max_learners_per_node: usize,
    /// Most extents the scheduler changes per round.
    #[arg(long, default_value_t = 64)]
    repair_extents_per_round: usize,
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                log::warn!("cannot watch SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => log::info!("SIGINT received"),
        _ = term => log::info!("SIGTERM received"),
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    let name = args
        .name
        .unwrap_or_else(|| format!("meta-{}", args.listen.port()));
    if let Err(e) = ferrite_meta::validate::name("--name", &name) {
        eprintln!("ferrite-meta: {e}");
        return ExitCode::from(2);
    }
    let config = Config {
        etcd_endpoints: args.etcd,
        listen: args.listen,
        advertise: args.advertise,
        name,
        node_grace: Duration::from_secs(args.node_grace_secs),
        node_ttl_secs: args.node_ttl_secs.max(1),
        leader_ttl_secs: args.leader_ttl_secs.max(1),
        max_txn_ops: args.etcd_max_txn_ops,
        etcd_timeout: Duration::from_secs(args.etcd_timeout_secs.max(1)),
        repair: ferrite_meta::replication::RepairConfig {
            interval: Duration::from_millis(args.repair_interval_ms.max(10)),
            max_learners_per_node: args.max_learners_per_node.max(1),
            extents_per_round: args.repair_extents_per_round.max(1),
        },
    };
    // Meta is control plane: two workers are plenty and leave the cores to
    // the data path when it shares the machine.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("ferrite-meta")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferrite-meta: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(server::run(config, shutdown_signal())) {
        Ok(()) => {
            log::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            log::error!("{e}");
            eprintln!("ferrite-meta: {e}");
            ExitCode::FAILURE
        }
    }
}
