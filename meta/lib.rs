//! `ferrite-meta`: cluster metadata on etcd — pools, volumes, extent
//! placement, node leases and failure detection — served over gRPC by the
//! `ferrite-meta` binary, and the client the engine uses to call it.
//!
//! # Client and server halves
//!
//! The crate has two cargo features:
//!
//! - `client`: the generated protocol ([`proto`]: messages and the raw
//!   tonic client) and [`client::MetaClient`]. It needs only tonic's
//!   channel, prost and tokio — no etcd client, no gRPC server, no clap.
//!   This is what `ferrited` links:
//!
//!   ```toml
//!   ferrite-meta = { path = "../meta", default-features = false, features = ["client"] }
//!   ```
//!
//!   (A workspace dependency with `workspace = true` cannot turn default
//!   features off unless the root entry says `default-features = false`,
//!   hence the path form.)
//! - `server` (default, implies `client`): everything the `ferrite-meta`
//!   binary needs — the etcd store, placement, the election, the service
//!   and its wiring. The binary requires it; the tests use it.
//!
//! When the whole workspace is built at once cargo unifies features, so
//! the server half is compiled too, but only code that the engine calls is
//! linked into `ferrited`. `cargo build -p ferrite-engine` compiles the
//! client half alone. The dependency points one way: this crate never
//! depends on `ferrite-engine`.
//!
//! # Server modules (feature `server`)
//!
//! | module | job |
//! |---|---|
//! | [`keys`] | the etcd key layout under `/ferrite/v1/` |
//! | [`records`] | the JSON records stored at those keys |
//! | [`store`] | typed reads; transactions guarded by revisions and fenced by leadership |
//! | [`validate`] | request checks with messages that name the thing |
//! | [`placement`] | choosing nodes for an extent's replicas and new copies |
//! | [`replication`] | replicas and learners: failure reports, resync completion, drain, eviction of down nodes, the re-replication scheduler, the extent indexes |
//! | [`health`] | extent and volume health from records and liveness |
//! | [`election`] | leader election on etcd's election API |
//! | [`service`] | the gRPC service |
//! | [`monitor`] | the leader's background duties (failure detection and eviction, the scheduler loop) |
//! | [`server`] | wiring and shutdown of one process |

#![forbid(unsafe_code)]
#![warn(missing_docs)]

/// Response metadata key carrying the leader's address on a follower's
/// UNAVAILABLE answer.
pub const LEADER_METADATA_KEY: &str = "x-ferrite-leader";

/// The protocol, generated from `proto/meta.proto` (package
/// `ferrite.meta.v1`): messages, `meta_client::MetaClient` (raw) and, with
/// `server`, `meta_server`.
#[cfg(feature = "client")]
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("ferrite.meta.v1");
}

#[cfg(feature = "client")]
pub mod client;

#[cfg(feature = "server")]
pub mod election;
#[cfg(feature = "server")]
pub mod health;
#[cfg(feature = "server")]
pub mod keys;
#[cfg(feature = "server")]
pub mod monitor;
#[cfg(feature = "server")]
pub mod placement;
#[cfg(feature = "server")]
pub mod records;
#[cfg(feature = "server")]
pub mod replication;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod service;
#[cfg(feature = "server")]
pub mod store;
#[cfg(feature = "server")]
pub mod validate;
