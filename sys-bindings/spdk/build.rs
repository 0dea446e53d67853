//! Finds SPDK and generates its bindings (feature `bindings` only).
//!
//! Where SPDK comes from, in order:
//! 1. `SPDK_PATH`: an SPDK source tree after `./configure && make`
//!    (headers in `include/`, libraries in `build/lib/`, DPDK's in
//!    `dpdk/build/lib/`) or an installation prefix (`include/`, `lib/`).
//! 2. pkg-config: `spdk_bdev spdk_env_dpdk spdk_init spdk_thread` (what
//!    SPDK's `make install` puts in `lib/pkgconfig`).
//!
//! Neither: the build stops with a message saying so. There is no fallback:
//! the `spdk` feature is a request for SPDK.
//!
//! `FERRITE_SPDK_HEADERS_ONLY=1` (with `SPDK_PATH`) accepts a tree that has
//! SPDK's headers but no libraries: the bindings are generated and the crate
//! type-checks (`cargo check`), nothing is linked. That is how the backend
//! was compiled without an SPDK build at hand; a binary needs the libraries.

fn main() {
    println!("cargo:rerun-if-env-changed=SPDK_PATH");
    println!("cargo:rerun-if-env-changed=FERRITE_SPDK_HEADERS_ONLY");
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo::rustc-check-cfg=cfg(spdk_env_opts_size)");
    #[cfg(feature = "bindings")]
    bindings::generate();
}

#[cfg(feature = "bindings")]
mod bindings {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// The SPDK libraries the backend needs (whole-archive when static:
    /// SPDK registers its subsystems and bdev modules from constructors).
    const LIBS: &[&str] = &[
        "spdk_bdev",
        "spdk_bdev_malloc",
        "spdk_bdev_nvme",
        "spdk_nvme",
        "spdk_accel",
        "spdk_init",
        "spdk_thread",
        "spdk_trace",
        "spdk_rpc",
        "spdk_jsonrpc",
        "spdk_json",
        "spdk_notify",
        "spdk_dma",
        "spdk_sock",
        "spdk_util",
        "spdk_log",
        "spdk_env_dpdk",
        "spdk_event_bdev",
        "spdk_event_accel",
        "spdk_event_iobuf",
        "spdk_event_sock",
        "spdk_event_vmd",
        "spdk_vmd",
    ];

    fn fail(msg: &str) -> ! {
        panic!(
            "\n\nferrite-spdk-sys: {msg}\n\
             The `spdk` feature needs an SPDK installation: set SPDK_PATH to an SPDK \
             build (a source tree after ./configure && make, or a `make install` prefix), \
             or make `pkg-config spdk_bdev` work (PKG_CONFIG_PATH=<prefix>/lib/pkgconfig). \
             Build without `--features spdk` to leave SPDK out.\n\n"
        )
    }

    struct Found {
        includes: Vec<PathBuf>,
        cflags: Vec<String>,
    }

    fn from_path(root: &Path) -> Found {
        let inc = root.join("include");
        if !inc.join("spdk/bdev.h").exists() {
            fail(&format!(
                "SPDK_PATH={} has no include/spdk/bdev.h",
                root.display()
            ));
        }
        if std::env::var_os("FERRITE_SPDK_HEADERS_ONLY").is_some_and(|v| v == "1") {
            println!(
                "cargo:warning=ferrite-spdk-sys: FERRITE_SPDK_HEADERS_ONLY=1: bindings from {} \
                 without SPDK's libraries; type-checks only, linking will fail",
                inc.display()
            );
            return Found {
                includes: vec![inc],
                cflags: Vec::new(),
            };
        }
        let libdirs: Vec<PathBuf> = [
            root.join("build/lib"),
            root.join("lib"),
            root.join("dpdk/build/lib"),
            root.join("isa-l/.libs"),
        ]
        .into_iter()
        .filter(|d| d.exists())
        .collect();
        if !libdirs
            .iter()
            .any(|d| d.join("libspdk_bdev.a").exists() || d.join("libspdk_bdev.so").exists())
        {
            fail(&format!(
                "SPDK_PATH={}: no libspdk_bdev in build/lib or lib (is SPDK built? \
                 FERRITE_SPDK_HEADERS_ONLY=1 type-checks against headers alone)",
                root.display()
            ));
        }
        for d in &libdirs {
            println!("cargo:rustc-link-search=native={}", d.display());
        }
        let shared = libdirs.iter().any(|d| d.join("libspdk_bdev.so").exists());
        for l in LIBS {
            if shared {
                println!("cargo:rustc-link-lib=dylib={l}");
            } else {
                println!("cargo:rustc-link-lib=static:+whole-archive={l}");
            }
        }
        // DPDK under SPDK's env layer, and what SPDK itself links.
        for l in [
            "rte_eal",
            "rte_mempool",
            "rte_ring",
            "rte_mbuf",
            "rte_bus_pci",
            "rte_pci",
            "rte_kvargs",
            "rte_telemetry",
            "rte_log",
            "rte_power",
            "rte_vhost",
            "rte_net",
            "rte_cryptodev",
            "rte_hash",
            "rte_rcu",
            "rte_timer",
            "rte_dmadev",
        ] {
            if libdirs.iter().any(|d| {
                d.join(format!("lib{l}.a")).exists() || d.join(format!("lib{l}.so")).exists()
            }) {
                println!("cargo:rustc-link-lib={l}");
            }
        }
        for l in [
            "numa", "uuid", "ssl", "crypto", "aio", "pthread", "dl", "rt",
        ] {
            println!("cargo:rustc-link-lib={l}");
        }
        Found {
            includes: vec![inc],
            cflags: Vec::new(),
        }
    }

    fn from_pkg_config() -> Option<Found> {
        let mods = [
            "spdk_bdev",
            "spdk_env_dpdk",
            "spdk_init",
            "spdk_thread",
            "spdk_event_bdev",
        ];
        let run = |args: &[&str]| -> Option<String> {
            let o = Command::new("pkg-config")
                .args(args)
                .args(mods)
                .output()
                .ok()?;
            o.status
                .success()
                .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
        };
        let cflags = run(&["--cflags"])?;
        let libs = run(&["--libs", "--static"])?;
        let mut whole = false;
        for t in libs.split_whitespace() {
            if let Some(d) = t.strip_prefix("-L") {
                println!("cargo:rustc-link-search=native={d}");
            } else if t == "-Wl,--whole-archive" {
                whole = true;
            } else if t == "-Wl,--no-whole-archive" {
                whole = false;
            } else if let Some(l) = t.strip_prefix("-l") {
                if whole && l.starts_with("spdk") {
                    println!("cargo:rustc-link-lib=static:+whole-archive={l}");
                } else {
                    println!("cargo:rustc-link-lib={l}");
                }
            }
        }
        let mut includes = Vec::new();
        let mut other = Vec::new();
        for t in cflags.split_whitespace() {
            match t.strip_prefix("-I") {
                Some(d) => includes.push(PathBuf::from(d)),
                None => other.push(t.to_string()),
            }
        }
        Some(Found {
            includes,
            cflags: other,
        })
    }

    pub fn generate() {
        let found = match std::env::var_os("SPDK_PATH") {
            Some(p) if !p.is_empty() => from_path(Path::new(&p)),
            _ => from_pkg_config().unwrap_or_else(|| {
                fail("SPDK_PATH is not set and pkg-config does not know spdk_bdev")
            }),
        };
        let mut b = bindgen::Builder::default()
            .header("wrapper.h")
            // Exactly what `wrap.rs` calls, so that the rest of SPDK's API
            // (which moves between releases) does not enter the bindings.
            .allowlist_function(
                "spdk_(env_opts_init|env_init|thread_lib_init|mem_register|\
                 thread_create|set_thread|thread_poll|thread_send_msg|thread_exit|\
                 thread_is_exited|thread_destroy|subsystem_init|\
                 subsystem_init_from_json_config|bdev_open_ext|bdev_close|\
                 bdev_desc_get_bdev|bdev_get_name|bdev_get_block_size|\
                 bdev_get_num_blocks|bdev_get_io_channel|put_io_channel|\
                 bdev_readv|bdev_writev|bdev_flush|bdev_write_zeroes|bdev_unmap|\
                 bdev_free_io)",
            )
            .allowlist_var("SPDK_VERSION_(MAJOR|MINOR|PATCH)")
            .derive_default(true)
            .layout_tests(false)
            .generate_comments(false);
        for i in &found.includes {
            b = b.clang_arg(format!("-I{}", i.display()));
        }
        for f in &found.cflags {
            b = b.clang_arg(f);
        }
        let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("spdk.rs");
        let generated = b
            .generate()
            .unwrap_or_else(|e| fail(&format!("bindgen over wrapper.h failed: {e}")))
            .to_string();
        // Newer SPDK releases give `spdk_env_opts` an `opts_size` field (ABI
        // versioning) that the caller sets before `spdk_env_opts_init`;
        // v23.01 has none. `wrap.rs` sets it where the headers have it.
        if let Some(i) = generated.find("pub struct spdk_env_opts {") {
            let body = &generated[i..];
            let body = &body[..body.find('}').unwrap_or(body.len())];
            if body.contains("pub opts_size:") {
                println!("cargo:rustc-cfg=spdk_env_opts_size");
            }
        }
        std::fs::write(&out, generated)
            .unwrap_or_else(|e| fail(&format!("writing {}: {e}", out.display())));
    }
}
