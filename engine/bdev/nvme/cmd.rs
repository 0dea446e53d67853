//! Command and completion formats: submission queue entries as 16 dwords,
//! completion queue entries, opcodes, and status codes with their names.

use std::fmt;

pub mod admin {
    pub const DELETE_SQ: u8 = 0x00;
    pub const CREATE_SQ: u8 = 0x01;
    pub const DELETE_CQ: u8 = 0x04;
    pub const CREATE_CQ: u8 = 0x05;
    pub const IDENTIFY: u8 = 0x06;
    pub const ABORT: u8 = 0x08;
    pub const SET_FEATURES: u8 = 0x09;
}

pub mod nvm {
    pub const FLUSH: u8 = 0x00;
    pub const WRITE: u8 = 0x01;
    pub const READ: u8 = 0x02;
    pub const WRITE_ZEROES: u8 = 0x08;
    pub const DSM: u8 = 0x09;
}

/// Feature identifier of "Number of Queues".
pub const FEAT_NUM_QUEUES: u32 = 0x07;
/// Identify CNS values.
pub const CNS_NAMESPACE: u32 = 0x00;
pub const CNS_CONTROLLER: u32 = 0x01;

/// A 64-byte submission queue entry.
#[derive(Clone, Copy, Debug, Default)]
pub struct Command {
    pub dw: [u32; 16],
}

impl Command {
    pub fn new(opcode: u8, nsid: u32) -> Command {
        let mut c = Command::default();
        c.dw[0] = opcode as u32;
        c.dw[1] = nsid;
        c
    }

    pub fn opcode(&self) -> u8 {
        self.dw[0] as u8
    }

    pub fn set_cid(&mut self, cid: u16) {
        self.dw[0] = (self.dw[0] & 0xffff) | (cid as u32) << 16;
    }

    /// PRP entry 1 and 2 (PSDT = 00b).
    pub fn set_prp(&mut self, prp1: u64, prp2: u64) {
        self.dw[0] &= !(3 << 14);
        self.dw[6] = prp1 as u32;
        self.dw[7] = (prp1 >> 32) as u32;
        self.dw[8] = prp2 as u32;
        self.dw[9] = (prp2 >> 32) as u32;
    }

    /// An SGL descriptor in DPTR (PSDT = 01b: SGLs, metadata pointer).
    pub fn set_sgl(&mut self, desc: [u32; 4]) {
        self.dw[0] = (self.dw[0] & !(3 << 14)) | 1 << 14;
        self.dw[6..10].copy_from_slice(&desc);
    }

    pub fn set_slba(&mut self, lba: u64) {
        self.dw[10] = lba as u32;
        self.dw[11] = (lba >> 32) as u32;
    }

    pub fn starting_lba(&self) -> u64 {
        self.dw[10] as u64 | (self.dw[11] as u64) << 32
    }
}

/// An SGL data block descriptor.
pub fn sgl_data_block(addr: u64, len: u32) -> [u32; 4] {
    [addr as u32, (addr >> 32) as u32, len, 0]
}

/// An SGL last segment descriptor pointing at `n` descriptors at `addr`.
pub fn sgl_last_segment(addr: u64, n: u32) -> [u32; 4] {
    [addr as u32, (addr >> 32) as u32, n * 16, 0x30 << 24]
}

/// A completion queue entry.
#[derive(Clone, Copy, Debug)]
pub struct Completion {
    pub result: u32,
    pub sq_head: u16,
    pub cid: u16,
    pub status: Status,
}

/// The status field of a completion (phase bit removed).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Status(pub u16);

impl Status {
    pub fn from_dw3(dw3: u32) -> Status {
        Status((dw3 >> 17) as u16 & 0x7fff)
    }
    pub fn ok(&self) -> bool {
        self.sc() == 0 && self.sct() == 0
    }
    pub fn sc(&self) -> u8 {
        self.0 as u8
    }
    pub fn sct(&self) -> u8 {
        (self.0 >> 8 & 7) as u8
    }
    /// Do not retry.
    pub fn dnr(&self) -> bool {
        self.0 >> 14 & 1 == 1
    }

    /// The status' name from the specification, where the driver knows it.
    pub fn name(&self) -> &'static str {
        match (self.sct(), self.sc()) {
            (0, 0x00) => "successful completion",
            (0, 0x01) => "invalid command opcode",
            (0, 0x02) => "invalid field in command",
            (0, 0x03) => "command ID conflict",
            (0, 0x04) => "data transfer error",
            (0, 0x05) => "commands aborted due to power loss notification",
            (0, 0x06) => "internal error",
            (0, 0x07) => "command abort requested",
            (0, 0x08) => "command aborted due to SQ deletion",
            (0, 0x0b) => "invalid namespace or format",
            (0, 0x0f) => "invalid SGL segment descriptor",
            (0, 0x13) => "invalid PRP offset",
            (0, 0x15) => "operation denied",
            (0, 0x80) => "LBA out of range",
            (0, 0x81) => "capacity exceeded",
            (0, 0x82) => "namespace not ready",
            (1, 0x00) => "completion queue invalid",
            (1, 0x01) => "invalid queue identifier",
            (1, 0x02) => "invalid queue size",
            (1, 0x03) => "abort command limit exceeded",
            (1, 0x08) => "invalid interrupt vector",
            (1, 0x0c) => "invalid queue deletion",
            (2, 0x80) => "write fault",
            (2, 0x81) => "unrecovered read error",
            (2, 0x86) => "access denied",
            _ => "unknown status",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (SCT {:#x} SC {:#04x}{})",
            self.name(),
            self.sct(),
            self.sc(),
            if self.dnr() { ", DNR" } else { "" }
        )
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A command's name for messages.
pub fn io_opcode_name(op: u8) -> &'static str {
    match op {
        nvm::FLUSH => "flush",
        nvm::WRITE => "write",
        nvm::READ => "read",
        nvm::WRITE_ZEROES => "write zeroes",
        nvm::DSM => "dataset management",
        _ => "command",
    }
}

/// An admin command's name for messages.
pub fn admin_opcode_name(op: u8) -> &'static str {
    match op {
        admin::DELETE_SQ => "Delete I/O SQ",
        admin::CREATE_SQ => "Create I/O SQ",
        admin::DELETE_CQ => "Delete I/O CQ",
        admin::CREATE_CQ => "Create I/O CQ",
        admin::IDENTIFY => "Identify",
        admin::ABORT => "Abort",
        admin::SET_FEATURES => "Set Features",
        _ => "admin command",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields() {
        // SCT 0, SC 0x80, DNR, phase 1.
        let dw3 = (1u32 << 16) | (0x80 << 17) | (1 << 31);
        let s = Status::from_dw3(dw3);
        assert!(!s.ok());
        assert!(s.dnr());
        assert_eq!(s.name(), "LBA out of range");
        assert!(Status::from_dw3(1 << 16).ok());
        let mut c = Command::new(nvm::READ, 1);
        c.set_cid(0xbeef);
        c.set_slba(0x1_0000_0002);
        assert_eq!(c.dw[0], 0xbeef_0002);
        assert_eq!(c.starting_lba(), 0x1_0000_0002);
        c.set_sgl(sgl_data_block(0x1000, 512));
        assert_eq!(c.dw[0] >> 14 & 3, 1);
    }
}
