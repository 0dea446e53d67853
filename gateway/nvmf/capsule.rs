//! Submission and completion queue entries as NVMe-oF carries them: the
//! 64-byte command (SQE) with its SGL descriptor, and the 16-byte
//! completion (CQE).

use super::spec::{admin, sgl};

/// A submission queue entry, read field by field.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Sqe(pub [u8; 64]);

/// Which way a command's data moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    None,
    HostToController,
    ControllerToHost,
    Bidirectional,
}

/// SGL descriptor 1 of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sgl {
    pub addr: u64,
    pub len: u32,
    /// Descriptor type (high nibble) and subtype (low nibble).
    pub id: u8,
}

impl Sgl {
    /// In-capsule data at offset `addr` of the capsule's data.
    pub fn is_in_capsule(&self) -> bool {
        self.id == sgl::DATA_BLOCK_OFFSET
    }
    /// Data moved by R2T/H2CData or C2HData PDUs.
    pub fn is_transport(&self) -> bool {
        self.id == sgl::TRANSPORT_DATA_BLOCK
    }
}

impl Sqe {
    fn u16_at(&self, at: usize) -> u16 {
        u16::from_le_bytes([self.0[at], self.0[at + 1]])
    }
    fn u32_at(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.0[at..at + 4].try_into().expect("4 bytes"))
    }
    fn u64_at(&self, at: usize) -> u64 {
        u64::from_le_bytes(self.0[at..at + 8].try_into().expect("8 bytes"))
    }
    pub fn opcode(&self) -> u8 {
        self.0[0]
    }
    /// Fused operation: 0 normal, 1 first (Compare), 2 second (Write).
    pub fn fuse(&self) -> u8 {
        self.0[1] & 0x3
    }
    /// PRP or SGL data pointer: fabrics commands must use SGLs (01b).
    pub fn psdt(&self) -> u8 {
        self.0[1] >> 6
    }
    pub fn cid(&self) -> u16 {
        self.u16_at(2)
    }
    pub fn nsid(&self) -> u32 {
        self.u32_at(4)
    }
    /// Command dword 10..=15.
    pub fn cdw(&self, n: usize) -> u32 {
        debug_assert!((10..=15).contains(&n));
        self.u32_at(40 + (n - 10) * 4)
    }
    pub fn sgl(&self) -> Sgl {
        Sgl {
            addr: self.u64_at(24),
            len: self.u32_at(32),
            id: self.0[39],
        }
    }
    /// Fabrics command type (byte 4 of a fabrics command).
    pub fn fctype(&self) -> u8 {
        self.0[4]
    }
    pub fn is_fabrics(&self) -> bool {
        self.opcode() == admin::FABRICS
    }
    /// The data direction, from the opcode's low bits (fabrics: the fctype's).
    pub fn direction(&self) -> Direction {
        let bits = if self.is_fabrics() {
            self.fctype()
        } else {
            self.opcode()
        };
        match bits & 0x3 {
            0 => Direction::None,
            1 => Direction::HostToController,
            2 => Direction::ControllerToHost,
            _ => Direction::Bidirectional,
        }
    }
    /// Starting LBA of an NVM command (CDW10-11).
    pub fn slba(&self) -> u64 {
        self.u64_at(40)
    }
    /// Number of logical blocks of an NVM command (CDW12 15:0, 0's based), as a count.
    pub fn nlb(&self) -> u32 {
        (self.cdw(12) & 0xffff) + 1
    }
    // Connect (fabrics) fields.
    pub fn connect_recfmt(&self) -> u16 {
        self.u16_at(40)
    }
    pub fn connect_qid(&self) -> u16 {
        self.u16_at(42)
    }
    pub fn connect_sqsize(&self) -> u16 {
        self.u16_at(44)
    }
    pub fn connect_cattr(&self) -> u8 {
        self.0[46]
    }
    pub fn connect_kato(&self) -> u32 {
        self.u32_at(48)
    }
    // Property Get/Set (fabrics) fields.
    /// 0: 4-byte property, 1: 8-byte property.
    pub fn prop_attrib(&self) -> u8 {
        self.0[40] & 0x7
    }
    pub fn prop_offset(&self) -> u32 {
        self.u32_at(44)
    }
    pub fn prop_value(&self) -> u64 {
        self.u64_at(48)
    }
}

impl std::fmt::Debug for Sqe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Sqe(opc {:#04x} cid {} nsid {} cdw10 {:#x} fuse {})",
            self.opcode(),
            self.cid(),
            self.nsid(),
            self.cdw(10),
            self.fuse()
        )
    }
}

/// Byte offsets that Connect errors point at (IPO in the completion).
pub mod connect_field {
    /// In the SQE.
    pub const QID: u16 = 42;
    pub const SQSIZE: u16 = 44;
    pub const RECFMT: u16 = 40;
    /// In the 1024-byte Connect data.
    pub const CNTLID: u16 = 16;
    pub const SUBNQN: u16 = 256;
    pub const HOSTNQN: u16 = 512;
}

/// The 1024-byte data of a Connect command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectData {
    pub hostid: [u8; 16],
    pub cntlid: u16,
    pub subnqn: String,
    pub hostnqn: String,
}

impl ConnectData {
    /// Parses Connect data; the error names the offending field's offset.
    pub fn parse(d: &[u8]) -> Result<Self, (u16, String)> {
        if d.len() < 1024 {
            return Err((0, format!("Connect data is {} bytes, not 1024", d.len())));
        }
        let mut hostid = [0u8; 16];
        hostid.copy_from_slice(&d[0..16]);
        let cntlid = u16::from_le_bytes([d[16], d[17]]);
        let subnqn =
            nqn_field(&d[256..512]).map_err(|e| (connect_field::SUBNQN, format!("SUBNQN {e}")))?;
        let hostnqn = nqn_field(&d[512..768])
            .map_err(|e| (connect_field::HOSTNQN, format!("HOSTNQN {e}")))?;
        Ok(Self {
            hostid,
            cntlid,
            subnqn,
            hostnqn,
        })
    }
}

/// A NUL-terminated NQN of at most 223 bytes of UTF-8.
fn nqn_field(b: &[u8]) -> Result<String, String> {
    let end = b
        .iter()
        .position(|&c| c == 0)
        .ok_or("is not NUL-terminated")?;
    if end == 0 {
        return Err("is empty".into());
    }
    if end > super::spec::NQN_MAX_LEN {
        return Err(format!("is {end} bytes, longer than 223"));
    }
    std::str::from_utf8(&b[..end])
        .map(str::to_string)
        .map_err(|_| "is not UTF-8".to_string())
}

/// A completion queue entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cqe {
    pub dw0: u32,
    pub dw1: u32,
    pub sqhd: u16,
    pub sqid: u16,
    pub cid: u16,
    /// Status (SCT/SC, DNR) without the phase bit.
    pub status: u16,
}

impl Cqe {
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&self.dw0.to_le_bytes());
        b[4..8].copy_from_slice(&self.dw1.to_le_bytes());
        b[8..10].copy_from_slice(&self.sqhd.to_le_bytes());
        b[10..12].copy_from_slice(&self.sqid.to_le_bytes());
        b[12..14].copy_from_slice(&self.cid.to_le_bytes());
        b[14..16].copy_from_slice(&(self.status << 1).to_le_bytes());
        b
    }

    pub fn from_bytes(b: &[u8]) -> Self {
        Self {
            dw0: u32::from_le_bytes(b[0..4].try_into().expect("4 bytes")),
            dw1: u32::from_le_bytes(b[4..8].try_into().expect("4 bytes")),
            sqhd: u16::from_le_bytes([b[8], b[9]]),
            sqid: u16::from_le_bytes([b[10], b[11]]),
            cid: u16::from_le_bytes([b[12], b[13]]),
            status: u16::from_le_bytes([b[14], b[15]]) >> 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields() {
        let mut b = [0u8; 64];
        b[0] = 0x02;
        b[1] = 0x40 | 0x01;
        b[2..4].copy_from_slice(&7u16.to_le_bytes());
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        b[32..36].copy_from_slice(&4096u32.to_le_bytes());
        b[39] = 0x5a;
        b[40..48].copy_from_slice(&100u64.to_le_bytes());
        b[48..52].copy_from_slice(&7u32.to_le_bytes());
        let s = Sqe(b);
        assert_eq!(
            (s.opcode(), s.fuse(), s.psdt(), s.cid(), s.nsid()),
            (2, 1, 1, 7, 1)
        );
        assert_eq!((s.slba(), s.nlb()), (100, 8));
        assert!(s.sgl().is_transport());
        assert_eq!(s.direction(), Direction::ControllerToHost);
        let c = Cqe {
            dw0: 1,
            dw1: 2,
            sqhd: 3,
            sqid: 4,
            cid: 5,
            status: 0x4002,
        };
        assert_eq!(Cqe::from_bytes(&c.to_bytes()), c);
    }

    #[test]
    fn connect_data() {
        let mut d = vec![0u8; 1024];
        d[16] = 0xff;
        d[17] = 0xff;
        d[256..256 + 5].copy_from_slice(b"nqn.a");
        d[512..512 + 5].copy_from_slice(b"nqn.h");
        let c = ConnectData::parse(&d).unwrap();
        assert_eq!(
            (c.cntlid, c.subnqn.as_str(), c.hostnqn.as_str()),
            (0xffff, "nqn.a", "nqn.h")
        );
        d[256..512].fill(b'x');
        assert_eq!(ConnectData::parse(&d).unwrap_err().0, 256);
    }
}
