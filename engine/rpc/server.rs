//! The JSON-RPC Unix-socket server (lands next: SPDK framing, one
//! coroutine per connection, clear errors for bad JSON).
