//! Replica traffic over DPDK (feature `dpdk`): Ferrite's replica frames in
//! UDP/IPv4 over Ethernet, on DPDK ethdevs polled by the reactors, with
//! reliable delivery of its own. The replica layer sees only
//! [`transport::DpdkTransport`] (a `Transport`) and the same `Handler` the
//! TCP server feeds: it does not know which transport it runs on.
//!
//! | module | job |
//! |---|---|
//! | `config` | flags, the `dpdk://IP:PORT` address scheme, port mapping |
//! | `eal` | the EAL's arguments, bring-up, clean-up on every exit path |
//! | `port` | ports: a queue pair and an mbuf pool per reactor; link watch |
//! | `udp`, `arp` | Ethernet/IPv4/UDP and ARP, built and checked |
//! | `wire` | the reliable-delivery header |
//! | `frag` | frames cut into packets, reassembled without a second copy |
//! | `session` | sequence numbers, acks, retransmission, credit, epochs |
//! | `loss` | drop/duplicate/reorder injection for tests |
//! | `reactor` | a reactor's queues, sessions and poller |
//! | `transport`, `server` | the `Transport` and the `Handler` side |
//!
//! `ferrited` turns it on with `--dpdk-eal "EAL ARGS"` and `--dpdk-ip`;
//! see `engine/ferrited/main.rs` and the README.

pub mod arp;
pub mod config;
pub mod frag;
pub mod fuzzing;
pub mod loss;
pub mod session;
pub mod udp;
pub mod wire;

#[cfg(feature = "dpdk")]
pub mod eal;
#[cfg(feature = "dpdk")]
pub mod port;
#[cfg(feature = "dpdk")]
mod reactor;
#[cfg(feature = "dpdk")]
pub mod server;
#[cfg(feature = "dpdk")]
pub mod stats;
#[cfg(feature = "dpdk")]
pub mod transport;

#[cfg(feature = "dpdk")]
pub use env::{DpdkEnv, Stack};

#[cfg(feature = "dpdk")]
pub(crate) use env::Shared;

#[cfg(feature = "dpdk")]
mod env {
    use super::arp::ArpTable;
    use super::config::DpdkConfig;
    use super::eal::{compose_args, EalGuard};
    use super::port::{self, Links, PortSetup};
    use super::reactor::ReactorNet;
    use super::stats::Stats;
    use crate::replica::server::Handler;
    use crate::rt::Handle;
    use ferrite_sys::dpdk::{Mempool, QueuePair};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, RwLock};

    /// What every reactor shares.
    pub struct Shared {
        pub cfg: DpdkConfig,
        pub ports: Vec<PortSetup>,
        pub arp: ArpTable,
        pub stats: Stats,
        pub links: Arc<Links>,
        pub handler: RwLock<Option<Arc<dyn Handler>>>,
        pub handle: Handle,
        pub reactors: usize,
        pub stopping: AtomicBool,
    }

    /// The process's DPDK: EAL, ports, link watch. Made before the
    /// runtime starts (rte_eal_init wants the main thread), attached to the
    /// reactors once they run, and cleaned up last — also when dropped on
    /// an error path.
    pub struct DpdkEnv {
        cfg: DpdkConfig,
        ports: Vec<PortSetup>,
        pools: Vec<Mempool>,
        queues: Vec<Vec<QueuePair>>,
        links: Arc<Links>,
        link_stop: Arc<AtomicBool>,
        link_thread: Option<std::thread::JoinHandle<()>>,
        stack: Option<Stack>,
        // Last: dropped after every DPDK object above.
        eal: EalGuard,
    }

    impl DpdkEnv {
        /// Initialises the EAL (on the calling thread, which should be the
        /// main thread, before other threads start) and sets up every port
        /// with `reactors` queue pairs.
        pub fn bring_up(cfg: DpdkConfig, reactors: usize) -> Result<Self, String> {
            let cpus = ferrite_sys::affinity::allowed_cpus().unwrap_or_default();
            let (args, prefix) = compose_args(&cfg, &cpus);
            // Kernel-backed ports (af_packet) open their interfaces in the
            // namespace of the thread that probes and starts them.
            let ns = match &cfg.netns {
                Some(n) => {
                    Some(ferrite_sys::netns::enter(n).map_err(|e| format!("--dpdk-netns: {e}"))?)
                }
                None => None,
            };
            let mut eal = EalGuard::init(&args, prefix)?;
            let set = port::setup(&cfg, reactors);
            if let Some(ns) = ns {
                ns.leave().map_err(|e| format!("--dpdk-netns: {e}"))?;
            }
            let set = match set {
                Ok(s) => s,
                Err(e) => {
                    let _ = eal.cleanup();
                    return Err(e);
                }
            };
            let links = Arc::new(Links {
                up: set
                    .ports
                    .iter()
                    .map(|p| {
                        AtomicBool::new(
                            ferrite_sys::dpdk::port::link(p.id)
                                .map(|l| l.up)
                                .unwrap_or(false),
                        )
                    })
                    .collect(),
                changes: AtomicU64::new(0),
            });
            let link_stop = Arc::new(AtomicBool::new(false));
            let link_thread = port::spawn_link_monitor(
                set.ports.clone(),
                links.clone(),
                cfg.netns.clone(),
                link_stop.clone(),
            )
            .map_err(|e| format!("starting the DPDK link monitor: {e}"))?;
            Ok(Self {
                cfg,
                ports: set.ports,
                pools: set.pools,
                queues: set.queues,
                links,
                link_stop,
                link_thread: Some(link_thread),
                stack: None,
                eal,
            })
        }

        pub fn ports(&self) -> &[PortSetup] {
            &self.ports
        }

        /// Puts a queue pair on every reactor and starts polling.
        pub fn attach(&mut self, handle: &Handle) -> Result<Stack, String> {
            if let Some(s) = &self.stack {
                return Ok(s.clone());
            }
            let reactors = handle.reactor_count();
            if reactors != self.queues.len() {
                return Err(format!(
                    "DPDK was set up for {} reactors, the runtime has {reactors}",
                    self.queues.len()
                ));
            }
            let arp = ArpTable::new();
            for p in &self.cfg.peers {
                if let Some(mac) = p.mac {
                    arp.add_static(p.ip, mac, p.port);
                }
            }
            let shared = Arc::new(Shared {
                cfg: self.cfg.clone(),
                ports: self.ports.clone(),
                arp,
                stats: Stats::default(),
                links: self.links.clone(),
                handler: RwLock::new(None),
                handle: handle.clone(),
                reactors,
                stopping: AtomicBool::new(false),
            });
            let stack = Stack { shared };
            for (r, queues) in std::mem::take(&mut self.queues).into_iter().enumerate() {
                let (sh, pool) = (stack.shared.clone(), self.pools[r].clone());
                handle.call_on(r, move || ReactorNet::install(sh, r, queues, pool))?;
            }
            log::info!(
                "dpdk: replica transport on {} reactor(s); this node is {}",
                reactors,
                self.cfg.replica_address()
            );
            self.stack = Some(stack.clone());
            Ok(stack)
        }

        /// Stops the link watch and cleans the EAL up. The reactors must
        /// have been detached ([`Stack::stop`]) or stopped.
        pub fn shutdown(mut self) -> Result<(), String> {
            self.release();
            self.eal.cleanup()
        }

        fn release(&mut self) {
            self.link_stop.store(true, Ordering::Release);
            if let Some(t) = self.link_thread.take() {
                let _ = t.join();
            }
            self.stack.take();
            self.queues.clear();
            self.pools.clear();
        }
    }

    impl Drop for DpdkEnv {
        fn drop(&mut self) {
            self.release();
            // `eal` drops next and cleans up.
        }
    }

    /// A handle on the running transport (cheap to clone).
    #[derive(Clone)]
    pub struct Stack {
        pub(crate) shared: Arc<Shared>,
    }

    impl Stack {
        pub fn replica_address(&self) -> String {
            self.shared.cfg.replica_address()
        }

        pub fn stats(&self) -> &Stats {
            &self.shared.stats
        }

        /// Counters of the transport and of the drivers, as JSON.
        pub fn stats_json(&self) -> serde_json::Value {
            let mut v = self.shared.stats.json();
            v["ports"] = port::stats_json(&self.shared.ports);
            v["address"] = self.replica_address().into();
            v["links_up"] = self
                .shared
                .links
                .up
                .iter()
                .map(|u| u.load(Ordering::Acquire))
                .collect::<Vec<_>>()
                .into();
            v["reactors"] = self.shared.reactors.into();
            v["arp"] = self
                .shared
                .arp
                .entries()
                .into_iter()
                .map(|(ip, mac, port, fixed)| {
                    serde_json::json!({"ip": ip.to_string(), "mac": super::udp::mac_to_string(&mac), "port": port, "static": fixed})
                })
                .collect::<Vec<_>>()
                .into();
            v
        }

        /// Detaches every reactor: no more polling; everything in flight
        /// fails; queues, pools and mbufs go back (before EAL clean-up).
        pub fn stop(&self) {
            if self.shared.stopping.swap(true, Ordering::AcqRel) {
                return;
            }
            for r in 0..self.shared.reactors {
                self.shared.handle.call_on(r, ReactorNet::uninstall);
            }
        }
    }
}
