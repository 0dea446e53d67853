//! Controller registers (NVMe base specification, "Controller Registers")
//! and the decoding of CAP, CC and CSTS.

use ferrite_sys::mmio::Mmio;

pub const CAP: usize = 0x00;
pub const VS: usize = 0x08;
pub const INTMS: usize = 0x0c;
pub const CC: usize = 0x14;
pub const CSTS: usize = 0x1c;
pub const AQA: usize = 0x24;
pub const ASQ: usize = 0x28;
pub const ACQ: usize = 0x30;
/// First doorbell.
pub const DOORBELLS: usize = 0x1000;

pub const CC_EN: u32 = 1;
/// CC.SHN = 01b: normal shutdown notification.
pub const CC_SHN_NORMAL: u32 = 1 << 14;
pub const CC_SHN_MASK: u32 = 3 << 14;
pub const CSTS_RDY: u32 = 1;
pub const CSTS_CFS: u32 = 1 << 1;
pub const CSTS_SHST_MASK: u32 = 3 << 2;
pub const CSTS_SHST_COMPLETE: u32 = 2 << 2;

/// The fields of CAP the driver uses.
#[derive(Clone, Copy, Debug)]
pub struct Cap {
    /// Maximum queue entries supported (1-based here).
    pub mqes: u32,
    /// Contiguous queues required.
    pub cqr: bool,
    /// Worst-case time to become ready, in milliseconds.
    pub timeout_ms: u64,
    /// Doorbell stride: 4 << dstrd bytes.
    pub dstrd: u32,
    /// The NVM command set is supported.
    pub css_nvm: bool,
    /// Smallest memory page size, as a shift (12 = 4 KiB).
    pub mps_min_shift: u32,
    pub mps_max_shift: u32,
}

impl Cap {
    pub fn decode(v: u64) -> Cap {
        Cap {
            mqes: (v & 0xffff) as u32 + 1,
            cqr: v >> 16 & 1 == 1,
            timeout_ms: (v >> 24 & 0xff) * 500,
            dstrd: (v >> 32 & 0xf) as u32,
            css_nvm: v >> 37 & 1 == 1,
            mps_min_shift: 12 + (v >> 48 & 0xf) as u32,
            mps_max_shift: 12 + (v >> 52 & 0xf) as u32,
        }
    }
}

/// CC for an enabled controller: 4 KiB pages, NVM command set, round-robin
/// arbitration, 64-byte submission and 16-byte completion entries.
pub fn cc_enable() -> u32 {
    (4 << 20) | (6 << 16) | CC_EN
}

/// Offset of the submission queue `qid` tail doorbell.
pub fn sq_doorbell(qid: u16, dstrd: u32) -> usize {
    DOORBELLS + (2 * qid as usize) * (4usize << dstrd)
}

/// Offset of the completion queue `qid` head doorbell.
pub fn cq_doorbell(qid: u16, dstrd: u32) -> usize {
    DOORBELLS + (2 * qid as usize + 1) * (4usize << dstrd)
}

/// A readable one-line summary of CSTS, for errors.
pub fn csts_text(v: u32) -> String {
    if v == u32::MAX {
        return "CSTS=0xffffffff (device gone from the bus?)".into();
    }
    format!(
        "CSTS={v:#x} (RDY={} CFS={} SHST={})",
        v & CSTS_RDY,
        (v & CSTS_CFS) >> 1,
        (v & CSTS_SHST_MASK) >> 2
    )
}

/// Whether the BAR is large enough for the doorbells of queues `0..=max_qid`.
pub fn bar_fits(bar: &Mmio, max_qid: u16, dstrd: u32) -> bool {
    cq_doorbell(max_qid, dstrd) + 4 <= bar.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_qemu_cap() {
        // CAP of QEMU 7.2's emulated controller, read in the VM.
        let c = Cap::decode(0x0040_1820_0f01_07ff);
        assert_eq!(c.mqes, 2048);
        assert!(c.cqr);
        assert_eq!(c.timeout_ms, 7500);
        assert_eq!(c.dstrd, 0);
        assert!(c.css_nvm);
        assert_eq!(c.mps_min_shift, 12);
        assert_eq!(sq_doorbell(1, 0), 0x1008);
        assert_eq!(cq_doorbell(1, 0), 0x100c);
        assert_eq!(cq_doorbell(0, 2), 0x1010);
    }
}
