//! `ferrited`: the Ferrite node daemon.

use clap::Parser;
use ferrite_engine::rt::{self, Config, CoreSet, PollMode, Runtime};
use std::time::Duration;

/// Ferrite's node daemon: chunk server and access gateway on one set of
/// pinned reactors.
#[derive(Parser, Debug)]
#[command(name = "ferrited", version, about)]
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
    #[arg(short = 'r', long = "rpc-socket", default_value = "/var/tmp/ferrite.sock")]
    rpc_socket: String,
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).format_timestamp_millis().init();
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
    // Before any thread exists, so that every thread inherits the mask.
    ferrite_sys::signals::block_termination_signals().map_err(|e| format!("blocking signals: {e}"))?;
    let config = Config {
        cores,
        pin: !args.no_pin,
        poll_mode: args.poll_mode,
        stack_size: args.stack_kib * 1024,
        workers: args.workers,
        shutdown_grace: Duration::from_secs(5),
        ..Config::default()
    };
    let runtime = Runtime::new(config.clone()).map_err(|e| format!("starting reactors: {e}"))?;
    for r in runtime.handle().reactors() {
        log::info!("reactor {} on core {:?} ({:?} polling)", r.id(), r.core(), config.poll_mode);
    }
    log::info!("ferrited running with {} reactors; it serves nothing yet (volumes and exports land with issue 4)", runtime.reactor_count());
    let _ = &args.rpc_socket;
    let sig = ferrite_sys::signals::wait_termination_signal();
    log::info!("{sig}: shutting down");
    runtime.shutdown();
    log::info!("all reactors stopped");
    let _ = rt::current_reactor();
    Ok(())
}
