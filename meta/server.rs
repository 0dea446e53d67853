//! Wiring of one `ferrite-meta` process: etcd clients, the election, the
//! leader's monitor and the gRPC server, and their orderly shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tokio::sync::watch;

use crate::election::{Election, LeaderInfo};
use crate::monitor;
use crate::proto::meta_server::MetaServer;
use crate::replication::RepairConfig;
use crate::service::{MetaService, ServiceConfig};

/// Settings of a `ferrite-meta` process (the binary's flags).
#[derive(Debug, Clone)]
pub struct Config {
    /// etcd client URLs.
    pub etcd_endpoints: Vec<String>,
    /// Where the gRPC server listens.
    pub listen: SocketAddr,
    /// The address others reach this process at (default: `listen`).
    pub advertise: Option<String>,
    /// This process's name in the election.
    pub name: String,
    /// How long a node's lease must stay expired before it is marked down.
    pub node_grace: Duration,
    /// TTL of node leases.
    pub node_ttl_secs: i64,
    /// TTL of this process's election lease: how long a dead leader is
    /// waited for before another takes over.
    pub leader_ttl_secs: i64,
    /// Most operations per etcd transaction (etcd's `--max-txn-ops`).
    pub max_txn_ops: usize,
    /// Longest wait for one etcd request.
    pub etcd_timeout: Duration,
    /// The re-replication scheduler's settings.
    pub repair: RepairConfig,
}

/// Why the process could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is unusable.
    #[error("{0}")]
    Config(String),
    /// The gRPC server failed (e.g. the port is taken).
    #[error("gRPC server on {addr}: {source}")]
    Serve {
        /// The listen address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: tonic::transport::Error,
    },
}

/// Longest wait for in-flight calls and the election to end at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

async fn connect(
    endpoints: &[String],
    opts: ConnectOptions,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Client> {
    let mut backoff = Duration::from_millis(100);
    loop {
        match Client::connect(endpoints, Some(opts.clone())).await {
            Ok(c) => return Some(c),
            Err(e) => log::warn!("etcd {endpoints:?}: {e}; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return None,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Runs the process until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
    let advertise = match &config.advertise {
        Some(a) => a.clone(),
        None if config.listen.ip().is_unspecified() => {
            return Err(ServerError::Config(format!(
            "--listen {} is a wildcard address: give --advertise HOST:PORT that others can dial",
            config.listen
        )))
        }
        None => config.listen.to_string(),
    };
    if config.etcd_endpoints.is_empty() {
        return Err(ServerError::Config("no --etcd endpoint given".into()));
    }
    let (stop_tx, mut stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);

    let base = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
        .with_keep_alive_while_idle(true);
    let (kv, campaign) = tokio::select! {
        kv = connect(&config.etcd_endpoints, base.clone().with_timeout(config.etcd_timeout), &mut stop_rx) => {
            // Campaigns block while another process leads: no timeout.
            let campaign = connect(&config.etcd_endpoints, base.clone(), &mut stop_rx).await;
            (kv, campaign)
        }
        _ = &mut shutdown => return Ok(()),
    };
    let (Some(kv), Some(campaign)) = (kv, campaign) else {
        return Ok(());
    };

    let (election, leadership) = Election::new(
        campaign,
        LeaderInfo {
            name: config.name.clone(),
            address: advertise.clone(),
        },
        config.leader_ttl_secs,
    );
    let service = MetaService::new(
        kv,
        ServiceConfig {
            name: config.name.clone(),
            address: advertise.clone(),
            node_ttl_secs: config.node_ttl_secs,
            max_txn_ops: config.max_txn_ops,
        },
        leadership,
    );
    let election_task = tokio::spawn(election.run(stop_rx.clone()));
    let monitor_task = tokio::spawn(monitor::run(
        service.clone(),
        config.node_grace,
        stop_rx.clone(),
    ));
    let repair_task = tokio::spawn(monitor::run_repair(
        service.clone(),
        config.repair.clone(),
        stop_rx.clone(),
    ));

    log::info!(
        "ferrite-meta '{}' serving on {} (advertised as {advertise}), etcd {:?}",
        config.name,
        config.listen,
        config.etcd_endpoints
    );
    let mut stopped = stop_rx.clone();
    let serve = tonic::transport::Server::builder()
        .add_service(MetaServer::new(service))
        .serve_with_shutdown(config.listen, async move {
            let _ = stopped.wait_for(|s| *s).await;
        });
    tokio::pin!(serve);
    let result = tokio::select! {
        r = &mut serve => r,
        _ = &mut shutdown => {
            log::info!("shutting down");
            let _ = stop_tx.send(true);
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut serve).await {
                Ok(r) => r,
                Err(_) => {
                    log::warn!("calls still in flight after {SHUTDOWN_GRACE:?}; closing anyway");
                    Ok(())
                }
            }
        }
    };
    // Whatever ended serving, stop the election (resigning if leading) and
    // the monitor.
    if let Err(e) = &result {
        log::error!("gRPC server on {}: {e}", config.listen);
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        let _ = election_task.await;
        let _ = monitor_task.await;
        let _ = repair_task.await;
    })
    .await;
    result.map_err(|source| ServerError::Serve {
        addr: config.listen,
        source,
    })
}
