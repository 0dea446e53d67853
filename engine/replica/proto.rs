//! The replica protocol's wire format.
//!
//! A frame is `u32 frame_len` (little endian) then a fixed 64-byte header,
//! then `body_len` bytes of prost-encoded body (control data, error text),
//! then `length` bytes of payload (block data). The header carries what the
//! data path needs without decoding a body: op, request id, extent,
//! generation, offset, payload length and the payload's crc32c; its own
//! crc32c guards it on transports without one (DPDK).
//!
//! ```text
//!  0 magic u32 "FRPL"   4 version u8   5 op u8   6 flags u16
//!  8 request_id u64    16 extent u64  24 generation u64  32 offset u64
//! 40 length u32        44 payload_crc u32   48 body_len u32  52 status i32
//! 56 aux u32           60 header_crc u32 (of bytes 0..60)
//! ```
//! Everything here is pure bytes-in, values-out, so it is fuzzed.

use prost::Message;

pub const MAGIC: u32 = u32::from_le_bytes(*b"FRPL");
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 64;
/// The largest frame accepted (a request's payload plus header and body).
pub const MAX_FRAME: u32 = 64 << 20;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// A volume client to the extent's primary: write and replicate.
    Write = 1,
    /// The primary to a replica or learner: write this.
    Replicate = 2,
    /// Read from a replica.
    Read = 3,
    /// Zero `aux` bytes at `offset` (flag DEALLOCATE: may free them).
    Zero = 4,
    /// Payload is compare bytes then write bytes, each `length / 2`.
    CompareWrite = 5,
    /// A replica asks the primary to push `aux` bytes at `offset` back to
    /// it (its copy failed a checksum).
    Repair = 6,
    Ping = 7,
    /// The primary's copier to a learner: one chunk of the extent.
    Resync = 8,
    /// The primary to a replica or learner: zero `aux` bytes at `offset`.
    ZeroReplica = 9,
}

impl Op {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Op::Write,
            2 => Op::Replicate,
            3 => Op::Read,
            4 => Op::Zero,
            5 => Op::CompareWrite,
            6 => Op::Repair,
            7 => Op::Ping,
            8 => Op::Resync,
            9 => Op::ZeroReplica,
            _ => return None,
        })
    }
}

/// Header flags.
pub const FLAG_RESPONSE: u16 = 1;
pub const FLAG_DEALLOCATE: u16 = 2;
/// A read by the primary from another replica (repair): the primary holds
/// the read lease, so the replica serves it without its own.
pub const FLAG_PEER_READ: u16 = 4;

/// Answers (`status` of a response header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Status {
    Ok = 0,
    /// The request's generation is older than the receiver's.
    StaleGeneration = 1,
    /// The receiver is not the extent's primary.
    NotPrimary = 2,
    /// The receiver holds no replica of the extent (at that generation).
    NotReplica = 3,
    Checksum = 5,
    NoSpace = 6,
    OutOfRange = 7,
    IoError = 8,
    /// `aux` is the offset of the first differing byte.
    CompareMismatch = 9,
    BadRequest = 10,
    /// Too few replicas could be written, or membership could not be
    /// confirmed with meta: retry later.
    Unavailable = 11,
    /// The payload did not match its crc32c.
    PayloadCrc = 12,
}

impl Status {
    pub fn from_i32(v: i32) -> Self {
        match v {
            0 => Status::Ok,
            1 => Status::StaleGeneration,
            2 => Status::NotPrimary,
            3 => Status::NotReplica,
            5 => Status::Checksum,
            6 => Status::NoSpace,
            7 => Status::OutOfRange,
            8 => Status::IoError,
            9 => Status::CompareMismatch,
            10 => Status::BadRequest,
            11 => Status::Unavailable,
            12 => Status::PayloadCrc,
            _ => Status::IoError,
        }
    }
}

/// The fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    pub op: u8,
    pub flags: u16,
    pub request_id: u64,
    pub extent: u64,
    pub generation: u64,
    pub offset: u64,
    pub length: u32,
    pub payload_crc: u32,
    pub body_len: u32,
    pub status: i32,
    pub aux: u32,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4] = VERSION;
        b[5] = self.op;
        b[6..8].copy_from_slice(&self.flags.to_le_bytes());
        b[8..16].copy_from_slice(&self.request_id.to_le_bytes());
        b[16..24].copy_from_slice(&self.extent.to_le_bytes());
        b[24..32].copy_from_slice(&self.generation.to_le_bytes());
        b[32..40].copy_from_slice(&self.offset.to_le_bytes());
        b[40..44].copy_from_slice(&self.length.to_le_bytes());
        b[44..48].copy_from_slice(&self.payload_crc.to_le_bytes());
        b[48..52].copy_from_slice(&self.body_len.to_le_bytes());
        b[52..56].copy_from_slice(&self.status.to_le_bytes());
        b[56..60].copy_from_slice(&self.aux.to_le_bytes());
        let crc = crc32c::crc32c(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Self, String> {
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        if u32_at(0) != MAGIC {
            return Err(format!("bad magic {:#x}", u32_at(0)));
        }
        if b[4] != VERSION {
            return Err(format!(
                "protocol version {} (this node speaks {VERSION})",
                b[4]
            ));
        }
        if crc32c::crc32c(&b[..60]) != u32_at(60) {
            return Err("header checksum mismatch".into());
        }
        let h = Header {
            op: b[5],
            flags: u16::from_le_bytes([b[6], b[7]]),
            request_id: u64_at(8),
            extent: u64_at(16),
            generation: u64_at(24),
            offset: u64_at(32),
            length: u32_at(40),
            payload_crc: u32_at(44),
            body_len: u32_at(48),
            status: i32::from_le_bytes(b[52..56].try_into().expect("4 bytes")),
            aux: u32_at(56),
        };
        if (HEADER_LEN as u64 + h.body_len as u64 + h.length as u64) > MAX_FRAME as u64 {
            return Err(format!(
                "frame of {} body and {} payload bytes is too large",
                h.body_len, h.length
            ));
        }
        Ok(h)
    }

    pub fn is_response(&self) -> bool {
        self.flags & FLAG_RESPONSE != 0
    }

    /// The frame length a header announces (what follows the u32 prefix).
    pub fn frame_len(&self) -> u32 {
        HEADER_LEN as u32 + self.body_len + self.length
    }
}

/// Context a write carries so that a replica can create the extent on its
/// first write without asking meta.
#[derive(Clone, PartialEq, Message)]
pub struct ExtentCtx {
    #[prost(string, tag = "1")]
    pub volume: String,
    #[prost(uint64, tag = "2")]
    pub extent_size: u64,
    #[prost(uint64, tag = "3")]
    pub index: u64,
    /// Replicas that must have a write before it is acknowledged (0: the
    /// default for the extent's size).
    #[prost(uint32, tag = "4")]
    pub min_replicas: u32,
}

/// An error answer's explanation.
#[derive(Clone, PartialEq, Message)]
pub struct ErrorBody {
    #[prost(string, tag = "1")]
    pub message: String,
}

/// A whole frame, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub header: Header,
    pub body: Vec<u8>,
    pub payload: Vec<u8>,
}

impl Frame {
    /// Splits a complete frame (without its u32 prefix) into its parts and
    /// checks the payload's crc32c.
    pub fn parse(bytes: &[u8]) -> Result<Frame, String> {
        if bytes.len() < HEADER_LEN {
            return Err(format!(
                "frame of {} bytes is shorter than a header",
                bytes.len()
            ));
        }
        let header = Header::decode(bytes[..HEADER_LEN].try_into().expect("header"))?;
        if header.frame_len() as usize != bytes.len() {
            return Err(format!(
                "frame of {} bytes announces {}",
                bytes.len(),
                header.frame_len()
            ));
        }
        let body_end = HEADER_LEN + header.body_len as usize;
        let body = bytes[HEADER_LEN..body_end].to_vec();
        let payload = bytes[body_end..].to_vec();
        if crc32c::crc32c(&payload) != header.payload_crc {
            return Err("payload checksum mismatch".into());
        }
        Ok(Frame {
            header,
            body,
            payload,
        })
    }

    pub fn error_message(&self) -> String {
        ErrorBody::decode(&self.body[..])
            .map(|e| e.message)
            .unwrap_or_default()
    }

    pub fn ctx(&self) -> Option<ExtentCtx> {
        if self.body.is_empty() {
            return None;
        }
        ExtentCtx::decode(&self.body[..]).ok()
    }
}

/// Encodes a frame (u32 prefix, header, body, payload) into wire pieces;
/// the payload is returned by reference so it is not copied.
pub fn encode_head(mut header: Header, body: &[u8], payload: &[u8]) -> Vec<u8> {
    header.body_len = body.len() as u32;
    header.length = payload.len() as u32;
    header.payload_crc = crc32c::crc32c(payload);
    let mut v = Vec::with_capacity(4 + HEADER_LEN + body.len());
    v.extend_from_slice(&header.frame_len().to_le_bytes());
    v.extend_from_slice(&header.encode());
    v.extend_from_slice(body);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let h = Header {
            op: Op::Write as u8,
            request_id: 7,
            extent: 42,
            generation: 3,
            offset: 8192,
            ..Default::default()
        };
        let ctx = ExtentCtx {
            volume: "vol0".into(),
            extent_size: 1 << 28,
            index: 2,
            min_replicas: 2,
        }
        .encode_to_vec();
        let payload = vec![0xabu8; 4096];
        let head = encode_head(h, &ctx, &payload);
        let mut wire = head[4..].to_vec();
        wire.extend_from_slice(&payload);
        let f = Frame::parse(&wire).unwrap();
        assert_eq!(
            (f.header.extent, f.header.generation, f.header.length),
            (42, 3, 4096)
        );
        assert_eq!(f.ctx().unwrap().volume, "vol0");
        assert_eq!(f.payload, payload);
        let mut bad = wire.clone();
        bad[HEADER_LEN + ctx.len() + 5] ^= 1;
        assert!(Frame::parse(&bad).unwrap_err().contains("payload"));
        let mut bad = wire.clone();
        bad[20] ^= 1;
        assert!(Frame::parse(&bad).unwrap_err().contains("header"));
        assert!(Frame::parse(&wire[..wire.len() - 1]).is_err());
        assert!(Frame::parse(&wire[..10]).is_err());
    }
}
