//! Bringing DPDK's EAL up once per process, and down again on every exit
//! path: `DpdkEnv` (mod.rs) owns the [`EalGuard`], which cleans up the EAL
//! and removes its runtime folder when dropped — after a clean stop, an
//! error on the way up, or a panic unwinding through `ferrited`'s main.
//! (SIGKILL cannot be caught: with `--in-memory` or `--no-huge` nothing but
//! the runtime folder remains, and the next process with the same
//! `--file-prefix` reuses it.)

use super::config::DpdkConfig;
use ferrite_sys::dpdk::Eal;
use std::path::PathBuf;

/// The EAL arguments `ferrited` passes: the configured ones, plus a
/// unique `--file-prefix` (two processes must never share one), `--lcores`
/// mapping lcore 0 to every CPU we may use (rte_eal_init pins the calling
/// thread to its lcore's CPUs; the reactors pin themselves), and
/// `--no-telemetry` (no socket thread we do not use), unless given.
pub fn compose_args(cfg: &DpdkConfig, allowed_cpus: &[usize]) -> (Vec<String>, String) {
    let mut args = cfg.eal_args.clone();
    let has = |args: &[String], names: &[&str]| {
        args.iter().any(|a| {
            names
                .iter()
                .any(|n| a == n || a.starts_with(&format!("{n}=")))
        })
    };
    let prefix = match args.iter().position(|a| a == "--file-prefix") {
        Some(i) => args.get(i + 1).cloned().unwrap_or_default(),
        None => match args.iter().find_map(|a| a.strip_prefix("--file-prefix=")) {
            Some(p) => p.to_string(),
            None => {
                let p = format!("ferrite-{}", std::process::id());
                args.push(format!("--file-prefix={p}"));
                p
            }
        },
    };
    if !has(&args, &["-l", "-c", "--lcores"]) && !allowed_cpus.is_empty() {
        let cpus: Vec<String> = allowed_cpus.iter().map(|c| c.to_string()).collect();
        args.push(format!("--lcores=0@({})", cpus.join(",")));
    }
    if !has(&args, &["--no-telemetry", "--telemetry"]) {
        args.push("--no-telemetry".into());
    }
    (args, prefix)
}

/// Where the EAL keeps its runtime files for `prefix`.
pub fn runtime_dir(prefix: &str) -> PathBuf {
    // Root keeps it under /var/run (DPDK: eal_get_runtime_dir).
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false);
    let base = if root {
        PathBuf::from("/var/run/dpdk")
    } else {
        std::env::var_os("XDG_RUNTIME_DIR")
            .map(|d| PathBuf::from(d).join("dpdk"))
            .unwrap_or_else(|| PathBuf::from("/tmp/dpdk"))
    };
    base.join(prefix)
}

/// The initialised EAL and what to remove after it.
pub struct EalGuard {
    eal: Option<Eal>,
    pub prefix: String,
    runtime_dir: PathBuf,
}

impl EalGuard {
    pub fn init(args: &[String], prefix: String) -> Result<Self, String> {
        log::info!("dpdk: rte_eal_init {}", args.join(" "));
        let runtime_dir = runtime_dir(&prefix);
        let eal = Eal::init(args).map_err(|e| {
            // A failed init may have created the folder already.
            remove_runtime_dir(&runtime_dir);
            format!("DPDK EAL: {e}")
        })?;
        Ok(Self {
            eal: Some(eal),
            prefix,
            runtime_dir,
        })
    }

    /// Cleans the EAL up (every DPDK object must be gone by now) and
    /// removes its runtime folder. Idempotent.
    pub fn cleanup(&mut self) -> Result<(), String> {
        let r = match self.eal.take() {
            Some(e) => e.cleanup().map_err(|e| format!("DPDK cleanup: {e}")),
            None => Ok(()),
        };
        remove_runtime_dir(&self.runtime_dir);
        r
    }
}

impl Drop for EalGuard {
    fn drop(&mut self) {
        if let Err(e) = self.cleanup() {
            log::error!("{e}");
        }
    }
}

fn remove_runtime_dir(dir: &PathBuf) {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => log::debug!("dpdk: removed {}", dir.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("dpdk: removing {}: {e}", dir.display()),
    }
    // The parent (/var/run/dpdk) stays: removing it could race with another
    // process creating its own folder in it.
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_get_a_prefix_lcores_and_no_telemetry() {
        let mut c = DpdkConfig::new(
            vec!["--no-pci".into(), "--no-huge".into()],
            "10.0.0.1".parse().unwrap(),
            24,
            7100,
        );
        let (a, p) = compose_args(&c, &[0, 1]);
        assert!(p.starts_with("ferrite-"));
        assert!(a.contains(&"--lcores=0@(0,1)".to_string()), "{a:?}");
        assert!(a.contains(&"--no-telemetry".to_string()));
        c.eal_args = vec!["--file-prefix".into(), "x1".into(), "-l".into(), "0".into()];
        let (a, p) = compose_args(&c, &[0, 1]);
        assert_eq!(p, "x1");
        assert!(!a.iter().any(|x| x.starts_with("--lcores")));
    }
}
