//! Namespaces: validation of a namespace id and its Identify Namespace data
//! (size, LBA format).

use super::controller::Controller;
use std::io;

/// What the driver needs to know about one namespace.
#[derive(Clone, Debug)]
pub struct Namespace {
    pub nsid: u32,
    /// Logical blocks.
    pub blocks: u64,
    /// Bytes per logical block.
    pub lba_size: u64,
}

impl Namespace {
    /// Identifies namespace `nsid` of `ctrl`, refusing ids out of range,
    /// inactive namespaces and formats the block layer cannot use.
    pub fn identify(ctrl: &Controller, nsid: u32) -> io::Result<Namespace> {
        let bad = |kind, msg: String| Err(io::Error::new(kind, format!("{}: {msg}", ctrl.name)));
        if nsid == 0 || nsid == u32::MAX {
            return bad(
                io::ErrorKind::InvalidInput,
                format!("{nsid:#x} is not a namespace id (1..={})", ctrl.ident.nn),
            );
        }
        if nsid > ctrl.ident.nn {
            return bad(
                io::ErrorKind::NotFound,
                format!(
                    "namespace {nsid} out of range: the controller has namespace ids 1..={}",
                    ctrl.ident.nn
                ),
            );
        }
        let d = ctrl
            .identify_namespace(nsid)
            .map_err(|e| io::Error::new(e.kind(), format!("Identify Namespace {nsid}: {e}")))?;
        let u64_at = |o: usize| u64::from_le_bytes(d[o..o + 8].try_into().expect("8 bytes"));
        let nsze = u64_at(0);
        if nsze == 0 {
            return bad(
                io::ErrorKind::NotFound,
                format!("namespace {nsid} is not active (no such namespace on this controller)"),
            );
        }
        let flbas = d[26] & 0xf;
        let lbaf = 128 + 4 * flbas as usize;
        let ms = u16::from_le_bytes([d[lbaf], d[lbaf + 1]]);
        let lbads = d[lbaf + 2];
        if !(9..=12).contains(&lbads) {
            return bad(
                io::ErrorKind::Unsupported,
                format!("namespace {nsid}: LBA size 2^{lbads} is not 512..4096 bytes"),
            );
        }
        if ms != 0 {
            return bad(
                io::ErrorKind::Unsupported,
                format!("namespace {nsid} is formatted with {ms} bytes of metadata per block; use a format without metadata"),
            );
        }
        Ok(Namespace {
            nsid,
            blocks: nsze,
            lba_size: 1 << lbads,
        })
    }

    /// Size in bytes.
    pub fn bytes(&self) -> u64 {
        self.blocks * self.lba_size
    }
}
