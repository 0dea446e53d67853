//! SPDK for Ferrite's `spdk` bdev backend: bindings generated with bindgen
//! against the SPDK installation `build.rs` finds (SPDK_PATH or
//! pkg-config), and small wrappers over the parts the backend uses: the
//! environment, SPDK threads (polled by Ferrite's reactors), subsystem
//! initialisation from a JSON config, bdev descriptors, I/O channels and
//! I/O submission with completion closures.
//!
//! Without the `bindings` feature the crate is empty and needs no SPDK.

#[cfg(feature = "bindings")]
#[allow(
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    dead_code,
    unused_imports,
    clippy::all
)]
pub mod raw {
    include!(concat!(env!("OUT_DIR"), "/spdk.rs"));
}

#[cfg(feature = "bindings")]
mod wrap;
#[cfg(feature = "bindings")]
pub use wrap::*;
