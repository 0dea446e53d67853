//! Replication between chunk servers.
//!
//! - [`proto`]: the wire format (length-prefixed frames, fixed binary
//!   header, prost bodies, payload).
//! - [`transport`]: how frames travel (kernel TCP here; DPDK alike).
//! - `dpdk` (feature `dpdk`): the same frames over UDP on DPDK ethdevs,
//!   with reliable delivery of its own.
//! - [`server`]: the node's replica port.
//! - [`service`]: the node's side of replication: primary writes fanned out
//!   to replicas and learners, replica writes, reads with repair, the view
//!   of extents confirmed with meta (read leases), resync of learners, and
//!   garbage collection of extents meta moved away.
//! - [`router`]: the volume client's extent I/O: writes to the primary,
//!   reads local-first, failures reported to meta.

// Feature `dpdk` implies `dpdk-wire`; `dpdk-wire` alone builds only the
// pure packet code (for the fuzzer), without DPDK.
#[cfg(feature = "dpdk-wire")]
pub mod dpdk;
pub mod proto;
pub mod router;
pub mod server;
pub mod service;
pub mod transport;
