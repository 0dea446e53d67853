//! The JSON-RPC 2.0 control socket, framed as SPDK frames it, and its method
//! registry. Lands with issue 4.
