//! The reactors' TCP serving loop lives in the engine (`rt::server`), where
//! the replica protocol uses it too; front ends reach it here.

pub use ferrite_engine::rt::server::*;
