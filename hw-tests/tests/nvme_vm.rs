//! The user-space NVMe driver (engine/bdev/nvme) against QEMU's emulated
//! NVMe controller, inside the VM of `hw-tests/vm` (hw-tests/nvme/run.sh):
//! no-IOMMU mode with every case, IOMMU type1 with the I/O and fault cases.
//!
//! The guest binary is this package's `nvme-guest`, built by cargo for this
//! test. Without a VM cache the test builds one with vm-prepare.sh (root
//! and Debian's archive needed): a missing VM is a failure, never a skip.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// One VM at a time: two TCG guests on a 2-core machine only slow both.
static VM: Mutex<()> = Mutex::new(());

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("hw-tests lives in the repository")
        .to_path_buf()
}

fn vm_dir() -> PathBuf {
    std::env::var_os("VM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("hw-tests/vm"))
}

fn vm_cache() -> PathBuf {
    let c = std::env::var_os("VM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".vm-cache"));
    if !c.join("vmlinux").exists() && !c.join("vmlinuz").exists() {
        let prepare = vm_dir().join("vm-prepare.sh");
        eprintln!(
            "nvme_vm: no VM cache at {}: building it with {}",
            c.display(),
            prepare.display()
        );
        let st = Command::new(&prepare)
            .env("VM_CACHE", &c)
            .status()
            .unwrap_or_else(|e| panic!("{}: {e}", prepare.display()));
        assert!(
            st.success(),
            "{} failed ({st}): the VM tests cannot run",
            prepare.display()
        );
    }
    c
}

/// Runs the guest cases; returns the guest's output after checking that
/// every case reported PASS.
fn run(mode: &str, cases: &[&str], model_args: &str) -> String {
    let _one = VM.lock().unwrap_or_else(|e| e.into_inner());
    let cache = vm_cache();
    let out = Command::new(repo().join("hw-tests/nvme/run.sh"))
        .arg(mode)
        .args(cases)
        .env("FERRITE_NVME_GUEST", env!("CARGO_BIN_EXE_nvme-guest"))
        .env("VM_CACHE", &cache)
        .env("VM_DIR", vm_dir())
        .env("MODEL_ARGS", model_args)
        .output()
        .expect("hw-tests/nvme/run.sh starts");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    for c in cases {
        assert!(
            stdout
                .lines()
                .any(|l| l.trim() == format!("NVME-HW PASS {c}")),
            "{mode}: case {c} did not pass (see the guest output above)"
        );
    }
    assert!(
        !stdout.contains("NVME-HW FAIL"),
        "{mode}: a case failed (see the guest output above)"
    );
    assert!(
        out.status.success(),
        "{mode}: the VM run ended with {}",
        out.status
    );
    stdout
}

#[test]
fn vfio_noiommu_all_cases() {
    let out = run(
        "noiommu",
        &[
            "setup-errors",
            "identify",
            "io",
            "queues",
            "errors",
            "timeout",
            "model",
            "signal",
            "exit",
            "reset",
        ],
        "1 700",
    );
    assert!(out.contains("mode=NoIommu"), "not in no-IOMMU mode");
    assert!(out.contains("timed out after 1s; the controller was reset"));
    assert!(out.contains("shut down cleanly"));
}

#[test]
fn vfio_iommu_type1() {
    let out = run("iommu", &["identify", "io", "timeout", "model"], "2 300");
    assert!(out.contains("mode=Type1"), "not in IOMMU type1 mode");
}
