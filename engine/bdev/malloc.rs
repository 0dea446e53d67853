//! A RAM block device for tests.
//!
//! Devices live in a process-wide registry by name, so a store on them can
//! be formatted, closed and opened again within one process. Requests
//! complete at once (no parking); every write is immediately "stable".

use super::{check_op, BlockDevice, DeviceInfo, DeviceStats, IoDone, IoOp, BLOCK_SIZE};
use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, OnceLock};

/// A RAM device.
pub struct MallocDevice {
    info: DeviceInfo,
    stats: DeviceStats,
    data: Mutex<Vec<u8>>,
}

fn registry() -> &'static Mutex<HashMap<String, Arc<MallocDevice>>> {
    static R: OnceLock<Mutex<HashMap<String, Arc<MallocDevice>>>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Creates (or replaces) a zeroed RAM device of `size` bytes (rounded down
/// to 4 KiB) under `name`.
pub fn create(name: &str, size: u64) -> Arc<MallocDevice> {
    let size = size / BLOCK_SIZE * BLOCK_SIZE;
    let dev = Arc::new(MallocDevice {
        info: DeviceInfo {
            name: name.to_string(),
            size,
            block_size: BLOCK_SIZE,
            backend: "malloc",
        },
        stats: DeviceStats::default(),
        data: Mutex::new(vec![0u8; size as usize]),
    });
    registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(name.to_string(), dev.clone());
    dev
}

/// The RAM device named `name`.
pub fn get(name: &str) -> Option<Arc<MallocDevice>> {
    registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(name)
        .cloned()
}

/// Drops the registry's reference to `name`; returns whether it existed.
pub fn remove(name: &str) -> bool {
    registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(name)
        .is_some()
}

impl MallocDevice {
    /// Runs `f` on the raw contents (tests use it to corrupt blocks).
    pub fn with_contents<R>(&self, f: impl FnOnce(&mut [u8]) -> R) -> R {
        f(&mut self.data.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn run(&self, op: &mut IoOp) -> io::Result<()> {
        check_op(&self.info, op)?;
        let mut data = self.data.lock().unwrap_or_else(|e| e.into_inner());
        match op {
            IoOp::Read { offset, buf } => {
                let o = *offset as usize;
                let n = buf.len();
                buf.as_mut_slice().copy_from_slice(&data[o..o + n]);
            }
            IoOp::Readv { offset, bufs } => {
                let mut o = *offset as usize;
                for b in bufs.iter_mut() {
                    let n = b.len();
                    b.as_mut_slice().copy_from_slice(&data[o..o + n]);
                    o += n;
                }
            }
            IoOp::Write { offset, buf, .. } => {
                let o = *offset as usize;
                data[o..o + buf.len()].copy_from_slice(buf.as_slice());
            }
            IoOp::Writev { offset, bufs, .. } => {
                let mut o = *offset as usize;
                for b in bufs.iter() {
                    data[o..o + b.len()].copy_from_slice(b.as_slice());
                    o += b.len();
                }
            }
            IoOp::WriteZeroes { offset, len } | IoOp::Unmap { offset, len } => {
                data[*offset as usize..(*offset + *len) as usize].fill(0);
            }
            IoOp::Flush => {}
        }
        Ok(())
    }
}

impl BlockDevice for MallocDevice {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn stats(&self) -> &DeviceStats {
        &self.stats
    }

    fn submit(&self, ops: Vec<IoOp>) -> Vec<IoDone> {
        ops.into_iter()
            .map(|mut op| {
                let result = self.run(&mut op);
                self.stats.account(&op, result.is_ok());
                IoDone { op, result }
            })
            .collect()
    }
}
