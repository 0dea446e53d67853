//! The generated bindings (build.rs: bindgen over the DPDK headers with an
//! allowlist, plus the C shim's functions). Raw: use the safe wrappers in
//! the parent module.
#![allow(
    non_upper_case_globals,
    non_camel_case_types,
    non_snake_case,
    dead_code,
    clippy::all
)]

include!(concat!(env!("OUT_DIR"), "/dpdk_bindings.rs"));
