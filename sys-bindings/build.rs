//! Build script of `ferrite-sys`. Without feature `dpdk` it does nothing.
//!
//! With `dpdk`: asks pkg-config for `libdpdk`, passes its cflags unchanged
//! to bindgen and to the C shim (they carry `-include rte_config.h` and
//! `-march=...`, which DPDK's headers need), generates bindings for the
//! allowlisted API only, compiles `csrc/dpdk_shim.c` (DPDK's fast path is
//! static inline and macros, which bindgen cannot bind) and links the DPDK
//! libraries. Poll-mode drivers are not linked: the EAL loads them as
//! plugins at start (Debian's `dpdk` package ships them).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "dpdk")]
    dpdk::build();
}

#[cfg(feature = "dpdk")]
mod dpdk {
    use std::path::PathBuf;
    use std::process::Command;

    fn pkg_config(args: &[&str]) -> Vec<String> {
        let out = Command::new("pkg-config")
            .args(args)
            .arg("libdpdk")
            .output()
            .unwrap_or_else(|e| {
                panic!("ferrite-sys/dpdk: running pkg-config: {e} (install pkg-config and libdpdk-dev: scripts/install-deps.sh)")
            });
        if !out.status.success() {
            panic!(
                "ferrite-sys/dpdk: pkg-config {args:?} libdpdk failed: {} (install libdpdk-dev: scripts/install-deps.sh)",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        // pkg-config output is shell-like, but DPDK's holds no quoted spaces.
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }

    pub fn build() {
        println!("cargo:rerun-if-changed=csrc/dpdk_shim.c");
        println!("cargo:rerun-if-changed=csrc/dpdk_shim.h");
        println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
        let cflags = pkg_config(&["--cflags"]);

        // The shim: same flags as the bindings.
        let mut cc = cc::Build::new();
        cc.file("csrc/dpdk_shim.c").include("csrc").opt_level(2);
        for f in &cflags {
            cc.flag(f);
        }
        // DPDK's headers trip a few warnings we cannot fix in them.
        cc.flag_if_supported("-Wno-unused-parameter");
        cc.compile("ferrite_dpdk_shim");

        // Link the libraries the bindings and the shim use (not the PMDs).
        for f in pkg_config(&["--libs"]) {
            if let Some(dir) = f.strip_prefix("-L") {
                println!("cargo:rustc-link-search=native={dir}");
            }
        }
        for lib in [
            "rte_ethdev",
            "rte_mbuf",
            "rte_mempool",
            "rte_ring",
            "rte_eal",
            "rte_kvargs",
            "rte_net",
        ] {
            println!("cargo:rustc-link-lib=dylib={lib}");
        }

        let bindings = bindgen::Builder::default()
            .header("csrc/dpdk_shim.h")
            .clang_args(cflags.iter())
            .clang_arg("-Icsrc")
            .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
            // What Ferrite uses, and nothing else: DPDK's headers hold
            // thousands of items (and some that bindgen cannot lay out).
            .allowlist_function("ferrite_dpdk_.*")
            .allowlist_function("rte_eal_init")
            .allowlist_function("rte_eal_cleanup")
            .allowlist_function("rte_strerror")
            .allowlist_function("rte_socket_id")
            .allowlist_function("rte_thread_register")
            .allowlist_function("rte_thread_unregister")
            .allowlist_function("rte_pktmbuf_pool_create")
            .allowlist_function("rte_mempool_avail_count")
            .allowlist_function("rte_mempool_in_use_count")
            .allowlist_function("rte_eth_dev_count_avail")
            .allowlist_function("rte_eth_dev_is_valid_port")
            .allowlist_function("rte_eth_dev_info_get")
            .allowlist_function("rte_eth_dev_configure")
            .allowlist_function("rte_eth_rx_queue_setup")
            .allowlist_function("rte_eth_tx_queue_setup")
            .allowlist_function("rte_eth_dev_start")
            .allowlist_function("rte_eth_dev_stop")
            .allowlist_function("rte_eth_dev_close")
            .allowlist_function("rte_eth_dev_set_mtu")
            .allowlist_function("rte_eth_dev_get_mtu")
            .allowlist_function("rte_eth_dev_socket_id")
            .allowlist_function("rte_eth_dev_get_name_by_port")
            .allowlist_function("rte_eth_macaddr_get")
            .allowlist_function("rte_eth_link_get_nowait")
            .allowlist_function("rte_eth_promiscuous_enable")
            .allowlist_function("rte_eth_stats_get")
            .allowlist_type("rte_eth_conf")
            .allowlist_type("rte_eth_dev_info")
            .allowlist_type("rte_eth_link")
            .allowlist_type("rte_eth_stats")
            .allowlist_type("rte_ether_addr")
            .allowlist_var("RTE_PKTMBUF_HEADROOM")
            .allowlist_var("RTE_MAX_ETHPORTS")
            .allowlist_var("RTE_ETH_NAME_MAX_LEN")
            // Reached only through the shim: no layout needed in Rust.
            .opaque_type("rte_mbuf")
            .opaque_type("rte_mempool")
            .derive_default(true)
            .layout_tests(false)
            .generate_comments(false)
            .generate()
            .unwrap_or_else(|e| {
                panic!("ferrite-sys/dpdk: bindgen over the DPDK headers failed: {e}")
            });
        let out =
            PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("dpdk_bindings.rs");
        bindings
            .write_to_file(&out)
            .unwrap_or_else(|e| panic!("ferrite-sys/dpdk: writing {}: {e}", out.display()));
    }
}
