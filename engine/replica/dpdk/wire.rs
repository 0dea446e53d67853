//! The header of Ferrite's reliable-delivery layer, first in every UDP
//! payload we send. 64 bytes, little endian, guarded by its own crc32c
//! (the data behind it is guarded end to end by the replica frame's
//! crc32c, so a damaged fragment fails its frame rather than passing).
//!
//! ```text
//!  0 magic "FD"   2 version u8   3 kind u8   4 flags u16   6 len u16
//!  8 src_epoch u64   16 dst_epoch u64
//! 24 seq u32   28 ack u32   32 window u32   36 msg_len u32
//! 40 msg_id u64 (RESET: the epoch the offending packet was sent to)
//! 48 frag_off u32   52 split u32   56 reserved u32   60 hdr_crc u32
//! ```
//! - DATA: `len` data bytes of message `msg_id` at `frag_off`; the message
//!   is `msg_len` bytes, the first `split` of them header and body (the
//!   rest is payload, reassembled into a buffer of its own).
//! - ACK: `len` bytes of selective-ack bitmap follow (bit i: `ack + 1 + i`
//!   arrived). Flag ACK_REQ asks the receiver to answer with an ACK.
//! - RESET: "I do not know the epoch you sent to"; see `session`.
//!
//! Every packet carries the sender's cumulative `ack` and receive
//! `window` (credit): the peer may send sequence numbers below
//! `ack + window`.

pub const HDR_LEN: usize = 64;
pub const MAGIC: [u8; 2] = *b"FD";
pub const VERSION: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Data = 1,
    Ack = 2,
    Reset = 3,
}

/// ACK: the receiver should answer with an ACK at once (probes).
pub const FLAG_ACK_REQ: u16 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireHeader {
    pub kind: Kind,
    pub flags: u16,
    pub len: u16,
    pub src_epoch: u64,
    pub dst_epoch: u64,
    pub seq: u32,
    pub ack: u32,
    pub window: u32,
    pub msg_len: u32,
    pub msg_id: u64,
    pub frag_off: u32,
    pub split: u32,
}

impl WireHeader {
    pub fn new(kind: Kind) -> Self {
        Self {
            kind,
            flags: 0,
            len: 0,
            src_epoch: 0,
            dst_epoch: 0,
            seq: 0,
            ack: 0,
            window: 0,
            msg_len: 0,
            msg_id: 0,
            frag_off: 0,
            split: 0,
        }
    }

    pub fn encode(&self, out: &mut [u8]) {
        let b = &mut out[..HDR_LEN];
        b[0..2].copy_from_slice(&MAGIC);
        b[2] = VERSION;
        b[3] = self.kind as u8;
        b[4..6].copy_from_slice(&self.flags.to_le_bytes());
        b[6..8].copy_from_slice(&self.len.to_le_bytes());
        b[8..16].copy_from_slice(&self.src_epoch.to_le_bytes());
        b[16..24].copy_from_slice(&self.dst_epoch.to_le_bytes());
        b[24..28].copy_from_slice(&self.seq.to_le_bytes());
        b[28..32].copy_from_slice(&self.ack.to_le_bytes());
        b[32..36].copy_from_slice(&self.window.to_le_bytes());
        b[36..40].copy_from_slice(&self.msg_len.to_le_bytes());
        b[40..48].copy_from_slice(&self.msg_id.to_le_bytes());
        b[48..52].copy_from_slice(&self.frag_off.to_le_bytes());
        b[52..56].copy_from_slice(&self.split.to_le_bytes());
        b[56..60].copy_from_slice(&[0; 4]);
        let crc = crc32c::crc32c(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes and checks a header; `avail` is how many bytes follow it in
    /// the datagram (its `len` must fit).
    pub fn decode(b: &[u8], avail: usize) -> Result<Self, &'static str> {
        if b.len() < HDR_LEN {
            return Err("short header");
        }
        if b[0..2] != MAGIC {
            return Err("bad magic");
        }
        if b[2] != VERSION {
            return Err("unknown version");
        }
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| (u32_at(i) as u64) | ((u32_at(i + 4) as u64) << 32);
        if crc32c::crc32c(&b[..60]) != u32_at(60) {
            return Err("header checksum");
        }
        let kind = match b[3] {
            1 => Kind::Data,
            2 => Kind::Ack,
            3 => Kind::Reset,
            _ => return Err("unknown kind"),
        };
        let h = Self {
            kind,
            flags: u16::from_le_bytes([b[4], b[5]]),
            len: u16::from_le_bytes([b[6], b[7]]),
            src_epoch: u64_at(8),
            dst_epoch: u64_at(16),
            seq: u32_at(24),
            ack: u32_at(28),
            window: u32_at(32),
            msg_len: u32_at(36),
            msg_id: u64_at(40),
            frag_off: u32_at(48),
            split: u32_at(52),
        };
        if h.len as usize > avail {
            return Err("length beyond the datagram");
        }
        if h.src_epoch == 0 {
            return Err("zero source epoch");
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_checks() {
        let mut h = WireHeader::new(Kind::Data);
        h.len = 100;
        h.src_epoch = 7;
        h.seq = 42;
        h.msg_id = 1 << 40;
        let mut b = [0u8; HDR_LEN];
        h.encode(&mut b);
        assert_eq!(WireHeader::decode(&b, 100), Ok(h));
        assert!(WireHeader::decode(&b, 99).is_err());
        b[30] ^= 1;
        assert_eq!(WireHeader::decode(&b, 100), Err("header checksum"));
        assert!(WireHeader::decode(&b[..10], 100).is_err());
    }
}
