//! NVMe over TCP: the target side of the NVMe/TCP transport (ICReq/ICResp,
//! header and data digests, in-capsule data, R2T/H2CData, C2HData), the
//! fabrics and admin command sets a Linux host uses, the NVM command set
//! onto `BlockVolume`s, a discovery service, ANA multipath and SPDK-named
//! JSON-RPC methods.
//!
//! The daemon's part:
//! ```no_run
//! # use std::sync::Arc;
//! # use ferrite_engine::rt::{Config, Runtime};
//! # use ferrite_engine::volume::mem::{MemProvider, MemVolume};
//! use ferrite_gateway::nvmf::{ExportOpts, ListenAddress, NvmfTarget, TransportOpts};
//! # let rt = Runtime::new(Config::for_tests(2)).unwrap();
//! # let provider = MemProvider::new();
//! # provider.add(MemVolume::new("vol0", 64 << 20, 512));
//! let target = NvmfTarget::new(rt.handle(), provider);
//! target.create_transport(TransportOpts::default()).unwrap();
//! target.add_discovery_listener(&ListenAddress::tcp("127.0.0.1", 8009), None).unwrap();
//! let nqn = target
//!     .export_volume("vol0", &ExportOpts { listeners: vec![ListenAddress::tcp("127.0.0.1", 4420)], ..Default::default() })
//!     .unwrap();
//! assert_eq!(nqn, "nqn.2026-11.io.ferrite:vol0");
//! ```
//! and `register_rpc(&registry, target)` for `nvmf_*` methods.
//!
//! Modules, top-down: `target` (subsystems, listeners), `queue` (a
//! connection), `fabrics`/`admin`/`io` (commands), `controller` (a host's
//! association: registers, features, events, keep-alive), `subsystem`,
//! `identify`, `ana`, `discovery`; below them `pdu`, `capsule`, `digest`,
//! `outbox` and `spec` (the specifications' numbers).

pub mod admin;
pub mod ana;
pub mod capsule;
pub mod controller;
pub mod digest;
pub mod discovery;
pub mod fabrics;
pub mod identify;
pub mod io;
pub mod outbox;
pub mod pdu;
pub(crate) mod queue;
pub mod rpc;
pub mod spec;
pub mod subsystem;
pub mod target;
pub mod testing;

pub use rpc::register_rpc;
pub use subsystem::{volume_nqn, ListenAddress, Namespace, Subsystem, SubsystemOpts};
pub use target::{ExportOpts, NamespaceOpts, NvmfTarget, TargetConfig, TransportOpts};

/// The default NVMe/TCP port.
pub const DEFAULT_PORT: u16 = 4420;
/// The default port of the discovery service.
pub const DISCOVERY_PORT: u16 = 8009;

/// Why a control operation on the target failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NvmfError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Exists(String),
    #[error("{0}")]
    Io(String),
}

impl NvmfError {
    /// The negative errno SPDK's RPCs answer with.
    pub fn errno(&self) -> i32 {
        match self {
            NvmfError::Invalid(_) => 22, // EINVAL
            NvmfError::NotFound(_) => 2, // ENOENT
            NvmfError::Exists(_) => 17,  // EEXIST
            NvmfError::Io(_) => 5,       // EIO
        }
    }
}
