//! Replication between chunk servers.
//!
//! - [`proto`]: the wire format (length-prefixed frames, fixed binary
//!   header, prost bodies, payload).
//! - [`transport`]: how frames travel (kernel TCP here; DPDK alike).
//! - [`server`]: the node's replica port.
//! - [`service`]: the node's side of replication: primary writes fanned out
//!   to replicas and learners, replica writes, reads with repair, the view
//!   of extents confirmed with meta (read leases), resync of learners, and
//!   garbage collection of extents meta moved away.
//! - [`router`]: the volume client's extent I/O: writes to the primary,
//!   reads local-first, failures reported to meta.

pub mod proto;
pub mod router;
pub mod server;
pub mod service;
pub mod transport;
