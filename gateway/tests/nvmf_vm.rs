//! The Linux kernel's NVMe/TCP initiator against real Ferrite nodes (etcd,
//! ferrite-meta and ferrited on the host's loopback), in the VM of
//! `hw-tests/vm` (see `hw-tests/nvmf/run.sh`): discovery, connect, fio
//! verify with and without digests, connect-all, a `volume_resize`, a
//! refused host; then multipath over two gateways of an RF 2 volume with
//! the optimized one SIGKILLed during fio verify.
//!
//! Runs when the VM cache exists (`VM_CACHE`, default `.vm-cache` of the
//! repository) and `ferrited` and `ferrite-meta` are built beside this test's
//! binaries (`make test` builds them first; `FERRITE_BIN_DIR` points
//! elsewhere); prints why it skips otherwise, and fails instead when
//! `FERRITE_REQUIRE_VM=1`. `FERRITE_NVMF_VM_CASES` picks cases (default
//! "basic multipath").

use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
fn kernel_initiator_in_vm() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf();
    let cache = std::env::var_os("VM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join(".vm-cache"));
    // The workspace's binaries land in the same folder as this package's.
    let bin_dir = std::env::var_os("FERRITE_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_BIN_EXE_ferrite-nvmf-testd"))
                .parent()
                .expect("the target folder")
                .to_path_buf()
        });
    let required = std::env::var("FERRITE_REQUIRE_VM").as_deref() == Ok("1");
    let missing_bin = ["ferrited", "ferrite-meta"]
        .into_iter()
        .find(|b| !bin_dir.join(b).exists());
    let missing = if !repo.join("hw-tests/vm/vm-run.sh").exists() {
        Some("no VM harness at hw-tests/vm".to_string())
    } else if !cache.join("vmlinux").exists() && !cache.join("vmlinuz").exists() {
        Some(format!(
            "no VM cache at {} (make vm-cache)",
            cache.display()
        ))
    } else {
        missing_bin.map(|b| {
            format!(
                "no {b} in {} (cargo build --release --workspace --bins, or set FERRITE_BIN_DIR)",
                bin_dir.display()
            )
        })
    };
    if let Some(why) = missing {
        assert!(!required, "FERRITE_REQUIRE_VM=1 but {why}");
        eprintln!("nvmf_vm: skipped: {why}");
        return;
    }
    let cases = std::env::var("FERRITE_NVMF_VM_CASES").unwrap_or_else(|_| "basic multipath".into());
    let status = Command::new(repo.join("hw-tests/nvmf/run.sh"))
        .args(cases.split_whitespace())
        .env("FERRITE_BIN_DIR", &bin_dir)
        .env("VM_CACHE", &cache)
        .status()
        .expect("running hw-tests/nvmf/run.sh");
    assert!(status.success(), "hw-tests/nvmf/run.sh {cases}: {status}");
}
