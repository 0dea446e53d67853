//! `ferrited`: the Ferrite node daemon: chunk server and access gateway on
//! one set of pinned reactors.

mod exports;
mod node;

use clap::Parser;
use ferrite_engine::rt::{Config, CoreSet, PollMode, Runtime};
use node::{Node, NodeConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "ferrited",
    version,
    about = "Ferrite node daemon: chunk server and access gateway"
)]
struct Args {
    /// Core mask, SPDK style: one reactor per set bit (e.g. 0x3).
    #[arg(short = 'm', long = "cpumask", conflicts_with = "cores")]
    cpumask: Option<String>,
    /// Core list instead of a mask (e.g. 0-1 or 0,2).
    #[arg(long)]
    cores: Option<String>,
    /// `busy` (never sleep) or `adaptive` (sleep when idle).
    #[arg(long, default_value = "adaptive")]
    poll_mode: PollMode,
    /// Do not pin reactor threads to their cores.
    #[arg(long)]
    no_pin: bool,
    /// Coroutine stack size in KiB.
    #[arg(long, default_value_t = 128)]
    stack_kib: usize,
    /// Worker threads for CPU-heavy work moved off the reactors.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// JSON-RPC socket path.
    #[arg(
        short = 'r',
        long = "rpc-socket",
        default_value = "/var/tmp/ferrite.sock"
    )]
    rpc_socket: PathBuf,
    /// This node's id in the cluster (default: the host name).
    #[arg(long)]
    node_id: Option<String>,
    /// Failure-domain zone of this node.
    #[arg(long, default_value = "default")]
    zone: String,
    /// Where device files live when --device is not given.
    #[arg(long, default_value = "/var/lib/ferrite")]
    data_dir: PathBuf,
    /// A device (file or block device) of the chunk store; repeat for more.
    /// Default: DATA_DIR/dev0.img.
    #[arg(long = "device")]
    devices: Vec<PathBuf>,
    /// Size of a device file created because it does not exist (e.g. 8G).
    #[arg(long, default_value = "8G", value_parser = parse_size)]
    device_size: u64,
    /// Keep every block where it was first written: small writes are
    /// journaled and then written home in place. By default (copy-on-write)
    /// small writes go to new blocks, written once, which gives faster
    /// small random writes but scatters data and free space (slower
    /// sequential reads) until the store's cleaner puts them back in order
    /// while the node is idle; in place never scatters. See
    /// engine/store/README.md.
    #[arg(long)]
    home_in_place: bool,
    /// Journal small writes and write them home later (relocated to new
    /// contiguous blocks, or in place with --home-in-place) instead of
    /// writing them once to new blocks with the batch that maps them (the
    /// default). Costs about twice the device writes.
    #[arg(long)]
    journal_small_writes: bool,
    /// Size of the DMA buffer arena all I/O buffers come from (registered
    /// with io_uring, on hugepages where they are reserved), e.g. 256M.
    /// Default: 64M plus a quarter of a store journal per reactor, which is
    /// what the store may hold for write-back. Buffers beyond it come from
    /// the heap and cost the kernel a page pinning per I/O.
    #[arg(long, value_parser = parse_size)]
    dma_arena: Option<u64>,
    /// ferrite-meta endpoints, host:port, comma separated.
    #[arg(long, default_value = "127.0.0.1:7000", value_delimiter = ',')]
    meta: Vec<String>,
    /// NBD listen address, or "off".
    #[arg(long, default_value = "127.0.0.1:10809")]
    nbd: String,
    /// How long an I/O waits for enough replicas (or a new primary)
    /// before it fails.
    #[arg(long, default_value_t = 30)]
    io_timeout_secs: u64,
    /// Replica protocol listen address (other nodes send extent I/O here).
    #[arg(long, default_value = "127.0.0.1:7100")]
    replica: SocketAddr,
    /// iSCSI portal (portal group 1, initiator group 1 = any), or "off".
    #[arg(long, default_value = "127.0.0.1:3260")]
    iscsi: String,
    /// NVMe/TCP address subsystems listen on by default, or "off".
    #[arg(long, default_value = "127.0.0.1:4420")]
    nvmf: String,
    /// NVMe/TCP discovery controller address, or "off".
    #[arg(long, default_value = "127.0.0.1:8009")]
    nvmf_discovery: String,
    /// Prometheus endpoint address, or "off".
    #[arg(long, default_value = "127.0.0.1:9560")]
    metrics: String,
    /// Host name or address other nodes and initiators use to reach this node.
    #[arg(long, default_value = "127.0.0.1")]
    advertise: String,
    /// The address NVMe/TCP discovery log entries (and `volume_export`)
    /// give for this node's NVMe/TCP listeners, when hosts reach them at
    /// another address than the one bound (NAT, a VM's forwards). Default:
    /// each listener's own address.
    #[arg(long)]
    nvmf_advertise: Option<String>,
    /// Replica traffic over DPDK (build feature `dpdk`): the EAL's
    /// arguments, e.g. "--no-pci --in-memory --vdev=net_memif0,role=server".
    /// A unique --file-prefix, --lcores and --no-telemetry are added unless
    /// given. Needs --dpdk-ip. Off (kernel TCP) without it.
    #[arg(long, allow_hyphen_values = true)]
    dpdk_eal: Option<String>,
    /// This node's IPv4 address[/PREFIX] on the DPDK ports; meta gets
    /// `dpdk://IP:PORT` (PORT of --replica) as its replica address.
    #[arg(long)]
    dpdk_ip: Option<String>,
    /// A peer known statically, `[NAME=]IP[@MAC][%PORT]` (no ARP for it
    /// when MAC is given; PORT: index of our DPDK port that reaches it).
    /// Repeat for more; others are resolved by ARP.
    #[arg(long = "dpdk-peer")]
    dpdk_peers: Vec<String>,
    /// IP MTU of the DPDK links (jumbo frames where the link carries them).
    #[arg(long, default_value_t = 1500)]
    dpdk_mtu: u16,
    /// Network namespace whose interfaces the DPDK ports open (af_packet).
    #[arg(long)]
    dpdk_netns: Option<String>,
    /// Loss injection on the DPDK send path, for tests:
    /// `drop=R,dup=R,reorder=R[,seed=N]` (also FERRITE_DPDK_LOSS).
    #[arg(long)]
    dpdk_loss: Option<String>,
    /// Bytes of each receive mbuf (headroom included), for tests: smaller
    /// than a frame, the driver hands frames over as chained mbufs.
    /// Default: a whole frame fits one.
    #[arg(long, hide = true)]
    dpdk_rx_mbuf_room: Option<u16>,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_uppercase();
    let t = t.trim_end_matches('B').trim_end_matches('I');
    let (num, mult) = match t.chars().last() {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        Some('T') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    num.parse::<u64>()
        .map(|n| n * mult)
        .map_err(|_| format!("'{s}' is not a size like 8G or 512M"))
}

fn parse_addr(what: &str, s: &str) -> Result<Option<SocketAddr>, String> {
    if s == "off" {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|_| format!("--{what} '{s}' is not host:port or 'off'"))
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("ferrited: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), String> {
    let cores = match (&args.cpumask, &args.cores) {
        (Some(m), _) => CoreSet::parse_mask(m)?,
        (None, Some(l)) => CoreSet::parse_list(l)?,
        (None, None) => CoreSet::parse_mask("0x1")?,
    };
    // Before anything takes a buffer: the arena's size is fixed then.
    let arena = args
        .dma_arena
        .unwrap_or_else(|| node::default_dma_arena(cores.len()));
    if !ferrite_engine::bdev::dma::configure(arena as usize) {
        log::warn!("DMA arena already in use; --dma-arena not applied");
    }
    let node_id = match args.node_id.clone() {
        Some(n) => n,
        None => std::fs::read_to_string("/etc/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "node1".into()),
    };
    let devices = if args.devices.is_empty() {
        vec![args.data_dir.join("dev0.img")]
    } else {
        args.devices.clone()
    };
    let cfg = NodeConfig {
        node_id,
        zone: args.zone.clone(),
        devices,
        device_size: args.device_size,
        meta: args.meta.clone(),
        rpc_socket: args.rpc_socket.clone(),
        nbd: parse_addr("nbd", &args.nbd)?,
        metrics: parse_addr("metrics", &args.metrics)?,
        iscsi: parse_addr("iscsi", &args.iscsi)?,
        nvmf: parse_addr("nvmf", &args.nvmf)?,
        nvmf_discovery: parse_addr("nvmf-discovery", &args.nvmf_discovery)?,
        replica: args.replica,
        io_timeout: Duration::from_secs(args.io_timeout_secs),
        advertise_host: args.advertise.clone(),
        nvmf_advertise: args.nvmf_advertise.clone(),
        data_dir: args.data_dir.clone(),
        relocate_home: !args.home_in_place,
        log_small_writes: !args.journal_small_writes,
    };
    let dpdk_cfg = dpdk::config(&args)?;

    // Before any thread exists, so that every thread inherits the mask.
    ferrite_sys::signals::block_termination_signals()
        .map_err(|e| format!("blocking signals: {e}"))?;
    let config = Config {
        cores,
        pin: !args.no_pin,
        poll_mode: args.poll_mode,
        stack_size: args.stack_kib * 1024,
        workers: args.workers,
        shutdown_grace: Duration::from_secs(5),
        ..Config::default()
    };
    // The EAL comes up on the main thread before the reactors exist (its
    // threads inherit the blocked signals, so SIGTERM/SIGINT reach only
    // the wait below, and every exit path goes through the clean-up).
    // `env` owns it: dropped on any error return below, it cleans up.
    let mut env = dpdk::Env::bring_up(dpdk_cfg, config.cores.len())?;
    let runtime = Runtime::new(config.clone()).map_err(|e| format!("starting reactors: {e}"))?;
    log::info!(
        "{} reactors on cores {} ({:?} polling)",
        runtime.reactor_count(),
        config.cores,
        config.poll_mode
    );
    let net = match env.attach(&runtime.handle()) {
        Ok(n) => n,
        Err(e) => {
            runtime.shutdown();
            return Err(e);
        }
    };

    let node = match Node::start(&cfg, runtime.handle(), net.clone()) {
        Ok(n) => n,
        Err(e) => {
            dpdk::stop(&net);
            runtime.shutdown();
            env.shutdown();
            return Err(e);
        }
    };
    log::info!(
        "ferrited '{}' ready; RPC on {}",
        cfg.node_id,
        cfg.rpc_socket.display()
    );
    let sig = ferrite_sys::signals::wait_termination_signal();
    log::info!("{sig}: shutting down");
    node.stop();
    dpdk::stop(&net);
    runtime.shutdown();
    env.shutdown();
    log::info!("stopped");
    Ok(())
}

/// The DPDK replica transport when built in (feature `dpdk`), and a
/// stand-in that refuses the flags when not.
#[cfg(feature = "dpdk")]
mod dpdk {
    use super::Args;
    use ferrite_engine::replica::dpdk::config::{parse_ip, DpdkConfig, PeerSpec};
    use ferrite_engine::replica::dpdk::loss::LossSpec;
    use ferrite_engine::replica::dpdk::{DpdkEnv, Stack};
    use ferrite_engine::rt::Handle;

    pub type Net = Option<Stack>;

    pub fn config(args: &Args) -> Result<Option<DpdkConfig>, String> {
        let Some(eal) = &args.dpdk_eal else {
            if args.dpdk_ip.is_some() || !args.dpdk_peers.is_empty() {
                return Err("--dpdk-ip and --dpdk-peer need --dpdk-eal".into());
            }
            return Ok(None);
        };
        let ip = args
            .dpdk_ip
            .as_deref()
            .ok_or("--dpdk-eal needs --dpdk-ip (this node's address on the DPDK links)")?;
        let (ip, prefix) = parse_ip(ip)?;
        let eal_args: Vec<String> = eal.split_whitespace().map(String::from).collect();
        let mut c = DpdkConfig::new(eal_args, ip, prefix, args.replica.port());
        for p in &args.dpdk_peers {
            c.peers.push(PeerSpec::parse(p)?);
        }
        c.mtu = args.dpdk_mtu;
        c.netns = args.dpdk_netns.clone();
        c.rx_mbuf_room = args.dpdk_rx_mbuf_room;
        let loss = args
            .dpdk_loss
            .clone()
            .or_else(|| std::env::var("FERRITE_DPDK_LOSS").ok());
        if let Some(l) = loss {
            c.loss = LossSpec::parse(&l)?;
            if c.loss.active() {
                log::warn!("dpdk: loss injection on: {:?}", c.loss);
            }
        }
        Ok(Some(c))
    }

    pub struct Env(Option<DpdkEnv>);

    impl Env {
        pub fn bring_up(cfg: Option<DpdkConfig>, reactors: usize) -> Result<Self, String> {
            match cfg {
                Some(c) => Ok(Self(Some(DpdkEnv::bring_up(c, reactors)?))),
                None => Ok(Self(None)),
            }
        }

        pub fn attach(&mut self, handle: &Handle) -> Result<Net, String> {
            match &mut self.0 {
                Some(e) => e.attach(handle).map(Some),
                None => Ok(None),
            }
        }

        pub fn shutdown(mut self) {
            if let Some(e) = self.0.take() {
                match e.shutdown() {
                    Ok(()) => log::info!("dpdk: EAL cleaned up"),
                    Err(e) => log::error!("{e}"),
                }
            }
        }
    }

    pub fn stop(net: &Net) {
        if let Some(s) = net {
            s.stop();
        }
    }
}

#[cfg(not(feature = "dpdk"))]
mod dpdk {
    use super::Args;
    use ferrite_engine::rt::Handle;

    pub type Net = Option<()>;

    pub fn config(args: &Args) -> Result<Option<()>, String> {
        if args.dpdk_eal.is_some()
            || args.dpdk_ip.is_some()
            || !args.dpdk_peers.is_empty()
            || args.dpdk_netns.is_some()
            || args.dpdk_loss.is_some()
        {
            return Err(
                "this ferrited was built without DPDK (cargo build --features ferrited/dpdk)"
                    .into(),
            );
        }
        Ok(None)
    }

    pub struct Env;

    impl Env {
        pub fn bring_up(_: Option<()>, _: usize) -> Result<Self, String> {
            Ok(Self)
        }

        pub fn attach(&mut self, _: &Handle) -> Result<Net, String> {
            Ok(None)
        }

        pub fn shutdown(self) {}
    }

    pub fn stop(_: &Net) {}
}
