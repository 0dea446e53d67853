//! `ferrite-meta`: cluster metadata on etcd: pools, volumes, extent
//! placement, node leases, failure detection and self-healing. The gRPC
//! protocol (`proto/`) and a thin client are what the engine depends on.
//! Lands with issue 4.
