//! Replication between chunk servers: the replica protocol, its TCP and DPDK
//! transports, and resync. Lands with issues 5 and 8.
