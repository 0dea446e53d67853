//! The iSCSI target (RFC 7143) over the transport-independent SCSI layer.
//!
//! - `pdu`: PDU framing, digests, decoding and building;
//! - `params`: text keys and operational parameter negotiation;
//! - `chap` (+ `md5`): CHAP, one-way and mutual;
//! - `login`: the login state machine;
//! - `session`: sessions, the CmdSN window, tasks;
//! - `connection`: one connection's reader, command coroutines and writer;
//! - `tmf`: task management;
//! - `text`: SendTargets;
//! - `target`: portal/initiator/auth groups, target nodes, the public API;
//! - `rpc`: the SPDK-named JSON-RPC methods.
//!
//! Limits worth knowing: ErrorRecoveryLevel 0 (a broken connection ends its
//! tasks; initiators reconnect), DataPDUInOrder/DataSequenceInOrder Yes,
//! no markers, no bidirectional commands.

pub mod chap;
mod connection;
#[doc(hidden)]
pub mod fuzzing;
pub mod login;
mod md5;
pub mod params;
pub mod pdu;
pub mod rpc;
pub mod session;
pub mod target;
pub mod text;
pub mod tmf;

pub use rpc::register_rpc;
pub use target::{
    ChapPolicy, IscsiTarget, NodeSpec, Portal, TargetError, TargetOptions, DEFAULT_PORT, NODE_BASE,
};
