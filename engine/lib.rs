//! `ferrite-engine`: the data path of a Ferrite node.
//!
//! Follow the folders down the data path: a front end in `ferrite-gateway`
//! calls [`volume`], which routes to [`replica`], which writes the
//! [`store`], which sits on a [`bdev`]. Everything runs on the reactors and
//! coroutines of [`rt`]; [`rpc`] is the control socket.

pub mod bdev;
pub mod cluster;
pub mod metrics;
pub mod replica;
pub mod rpc;
pub mod rt;
pub mod store;
pub mod volume;
