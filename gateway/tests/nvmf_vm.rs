//! The Linux kernel's NVMe/TCP initiator against the target, in the VM of
//! `../shared/vm` (see `hw-tests/nvmf/run.sh`): discovery, connect, fio
//! verify with and without digests, connect-all, a resize, a refused host,
//! then ANA and failover across two target processes. Runs when the VM
//! cache exists (`VM_CACHE`, default `.vm-cache` of the repository); prints
//! why it skips otherwise, and fails instead when `FERRITE_REQUIRE_VM=1`.
//! `FERRITE_NVMF_VM_CASES` picks cases (default "basic multipath").

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
    let harness = repo
        .parent()
        .map(|p| p.join("shared/vm/vm-run.sh"))
        .filter(|p| p.exists());
    let required = std::env::var("FERRITE_REQUIRE_VM").as_deref() == Ok("1");
    let missing = if harness.is_none() {
        Some("no VM harness at ../shared/vm".to_string())
    } else if !cache.join("vmlinux").exists() && !cache.join("vmlinuz").exists() {
        Some(format!(
            "no VM cache at {} (run ../shared/vm/vm-prepare.sh with VM_CACHE set)",
            cache.display()
        ))
    } else {
        None
    };
    if let Some(why) = missing {
        assert!(!required, "FERRITE_REQUIRE_VM=1 but {why}");
        eprintln!("nvmf_vm: skipped: {why}");
        return;
    }
    let cases = std::env::var("FERRITE_NVMF_VM_CASES").unwrap_or_else(|_| "basic multipath".into());
    let status = Command::new(repo.join("hw-tests/nvmf/run.sh"))
        .args(cases.split_whitespace())
        .env(
            "FERRITE_NVMF_TESTD",
            env!("CARGO_BIN_EXE_ferrite-nvmf-testd"),
        )
        .env("VM_CACHE", &cache)
        .status()
        .expect("running hw-tests/nvmf/run.sh");
    assert!(status.success(), "hw-tests/nvmf/run.sh {cases}: {status}");
}
