//! The volumes this node exported with `volume_export`, kept in a small
//! JSON file so that a restarted `ferrited` serves them again: initiators
//! that reconnect after a crash or an upgrade find their NBD export, iSCSI
//! target and NVMe/TCP subsystem where they were.
//!
//! The file lives next to the node's first device file
//! (`<device>.exports.json`), or in the data directory as
//! `exports-<node id>.json` when that device is a block device. It is
//! rewritten whole (temporary file, fsync, rename) on every change, so a
//! crash leaves either the old list or the new one.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Which front ends `volume_export` was asked for (`None`: the default,
/// every front end this node runs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fronts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbd: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iscsi: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nvmf: Option<bool>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    volumes: BTreeMap<String, Fronts>,
}

/// The saved exports of this node.
pub struct SavedExports {
    path: PathBuf,
    volumes: Mutex<BTreeMap<String, Fronts>>,
}

impl SavedExports {
    /// Where a node whose first device is `device` keeps its list.
    pub fn path_for(device: &Path, data_dir: &Path, node_id: &str) -> PathBuf {
        let is_block = std::fs::metadata(device).is_ok_and(|m| {
            use std::os::unix::fs::FileTypeExt;
            m.file_type().is_block_device()
        });
        if is_block {
            data_dir.join(format!("exports-{node_id}.json"))
        } else {
            let mut p = device.as_os_str().to_owned();
            p.push(".exports.json");
            PathBuf::from(p)
        }
    }

    /// Reads the list at `path` (none yet: an empty list). A file that
    /// cannot be parsed is logged and set aside as `<path>.bad`, never
    /// fatal: the node serves its volumes either way.
    pub fn load(path: PathBuf) -> SavedExports {
        let volumes = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<File>(&bytes) {
                Ok(f) => f.volumes,
                Err(e) => {
                    let bad = path.with_extension("json.bad");
                    log::warn!(
                        "saved exports {}: {e}; moved aside to {} and starting with none",
                        path.display(),
                        bad.display()
                    );
                    let _ = std::fs::rename(&path, &bad);
                    BTreeMap::new()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                log::warn!("saved exports {}: {e}; starting with none", path.display());
                BTreeMap::new()
            }
        };
        SavedExports {
            path,
            volumes: Mutex::new(volumes),
        }
    }

    /// The saved exports, by volume name.
    pub fn list(&self) -> Vec<(String, Fronts)> {
        let v = self.volumes.lock().unwrap();
        v.iter().map(|(k, f)| (k.clone(), *f)).collect()
    }

    /// Records that `volume` is exported with `fronts`.
    pub fn add(&self, volume: &str, fronts: Fronts) {
        let mut v = self.volumes.lock().unwrap();
        if v.get(volume) != Some(&fronts) {
            v.insert(volume.to_string(), fronts);
            self.write(&v);
        }
    }

    /// Forgets `volume` (deleted, or gone while this node was down).
    pub fn remove(&self, volume: &str) {
        let mut v = self.volumes.lock().unwrap();
        if v.remove(volume).is_some() {
            self.write(&v);
        }
    }

    fn write(&self, volumes: &BTreeMap<String, Fronts>) {
        let body = serde_json::to_vec_pretty(&File {
            volumes: volumes.clone(),
        })
        .expect("a map of names serialises");
        let tmp = self.path.with_extension("json.tmp");
        let r = (|| -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            if let Some(dir) = self.path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        })();
        if let Err(e) = r {
            // The exports work now; only a restart would miss them.
            log::warn!(
                "saving exports to {}: {e} (a restarted node will not export them again)",
                self.path.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_survives_a_reload_and_a_bad_file_is_set_aside() {
        let dir = std::env::temp_dir().join(format!("ferrited-exports-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dev0.img.exports.json");
        let s = SavedExports::load(path.clone());
        assert!(s.list().is_empty());
        s.add("a", Fronts::default());
        s.add(
            "b",
            Fronts {
                nvmf: Some(false),
                ..Fronts::default()
            },
        );
        s.remove("a");
        let again = SavedExports::load(path.clone());
        assert_eq!(
            again.list(),
            vec![(
                "b".to_string(),
                Fronts {
                    nvmf: Some(false),
                    ..Fronts::default()
                }
            )]
        );
        std::fs::write(&path, b"{ not json").unwrap();
        assert!(SavedExports::load(path.clone()).list().is_empty());
        assert!(dir.join("dev0.img.exports.json.bad").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
