//! Fragmentation of replica frames into packets and their reassembly.
//!
//! A message is a replica frame without its u32 length prefix: `split`
//! bytes of header and body, then the payload. The sender cuts it into
//! pieces of at most the packet's data capacity; the receiver copies each
//! piece straight into its place — header and body into one buffer,
//! payload into another of exactly its size — so a payload is copied once
//! from the driver's buffers and never again. Duplicates never reach this
//! layer (the session suppresses them by sequence number).

use super::super::proto::{Frame, Header, HEADER_LEN, MAX_FRAME};
use std::collections::HashMap;

/// `(offset, length)` of each piece of a `msg_len`-byte message.
pub fn pieces(msg_len: usize, max_piece: usize) -> impl Iterator<Item = (usize, usize)> {
    let max_piece = max_piece.max(1);
    let n = msg_len.div_ceil(max_piece).max(1);
    (0..n).map(move |i| {
        let off = i * max_piece;
        (off, (msg_len - off).min(max_piece))
    })
}

/// Copies message bytes `[off, off + out.len())` out of `head ++ payload`.
pub fn copy_piece(head: &[u8], payload: &[u8], off: usize, out: &mut [u8]) {
    let mut done = 0;
    if off < head.len() {
        let n = (head.len() - off).min(out.len());
        out[..n].copy_from_slice(&head[off..off + n]);
        done = n;
    }
    if done < out.len() {
        let p = off + done - head.len();
        let n = out.len() - done;
        out[done..].copy_from_slice(&payload[p..p + n]);
    }
}

/// Why a piece was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FragError {
    /// Lengths that cannot describe a frame.
    BadLength,
    /// The piece disagrees with earlier pieces of the same message.
    Inconsistent,
}

/// A complete message: header and body, and payload.
#[derive(Debug, PartialEq, Eq)]
pub struct Message {
    pub head: Vec<u8>,
    pub payload: Vec<u8>,
}

/// What adding a piece gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Added {
    Incomplete,
    Complete(Message),
    /// Too many bytes in partial messages: the piece was not taken (its
    /// sender will retransmit it).
    NoRoom,
}

struct Partial {
    head: Vec<u8>,
    payload: Vec<u8>,
    msg_len: u32,
    split: u32,
    got: usize,
}

/// Messages being reassembled, by id, with a bound on their memory.
pub struct Reassembly {
    partial: HashMap<u64, Partial>,
    bytes: usize,
    limit: usize,
}

impl Reassembly {
    pub fn new(limit: usize) -> Self {
        Self {
            partial: HashMap::new(),
            bytes: 0,
            limit,
        }
    }

    pub fn in_progress(&self) -> usize {
        self.partial.len()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn clear(&mut self) {
        self.partial.clear();
        self.bytes = 0;
    }

    /// Forgets a message (after one of its pieces was inconsistent).
    pub fn discard(&mut self, msg_id: u64) {
        if let Some(p) = self.partial.remove(&msg_id) {
            self.bytes -= p.msg_len as usize;
        }
    }

    pub fn add(
        &mut self,
        msg_id: u64,
        msg_len: u32,
        split: u32,
        off: u32,
        data: &[u8],
    ) -> Result<Added, FragError> {
        self.add_parts(msg_id, msg_len, split, off, &[data])
    }

    /// [`Self::add`] for a piece that arrived in several parts (the
    /// segments of a chained mbuf): each part is copied straight to its
    /// place, so no byte is copied twice.
    pub fn add_parts(
        &mut self,
        msg_id: u64,
        msg_len: u32,
        split: u32,
        off: u32,
        parts: &[&[u8]],
    ) -> Result<Added, FragError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if msg_len > MAX_FRAME
            || (split as usize) < HEADER_LEN
            || split > msg_len
            || len == 0
            || off as u64 + len as u64 > msg_len as u64
        {
            return Err(FragError::BadLength);
        }
        if !self.partial.contains_key(&msg_id) {
            if self.bytes + msg_len as usize > self.limit && !self.partial.is_empty() {
                return Ok(Added::NoRoom);
            }
            self.bytes += msg_len as usize;
            self.partial.insert(
                msg_id,
                Partial {
                    head: vec![0; split as usize],
                    payload: vec![0; (msg_len - split) as usize],
                    msg_len,
                    split,
                    got: 0,
                },
            );
        }
        let p = self.partial.get_mut(&msg_id).expect("inserted above");
        if p.msg_len != msg_len || p.split != split || p.got + len > msg_len as usize {
            return Err(FragError::Inconsistent);
        }
        let (mut off, split) = (off as usize, split as usize);
        for data in parts {
            let mut done = 0;
            if off < split {
                let n = (split - off).min(data.len());
                p.head[off..off + n].copy_from_slice(&data[..n]);
                done = n;
            }
            if done < data.len() {
                let at = off + done - split;
                p.payload[at..at + data.len() - done].copy_from_slice(&data[done..]);
            }
            off += data.len();
        }
        p.got += len;
        if p.got < msg_len as usize {
            return Ok(Added::Incomplete);
        }
        let p = self.partial.remove(&msg_id).expect("present");
        self.bytes -= p.msg_len as usize;
        Ok(Added::Complete(Message {
            head: p.head,
            payload: p.payload,
        }))
    }
}

/// The frame a message carries, checked as `Frame::parse` checks a frame
/// read from TCP (header crc, lengths, payload crc), without copying the
/// payload again.
pub fn frame(m: Message) -> Result<Frame, String> {
    if m.head.len() < HEADER_LEN {
        return Err(format!("message head of {} bytes", m.head.len()));
    }
    let mut hb = [0u8; HEADER_LEN];
    hb.copy_from_slice(&m.head[..HEADER_LEN]);
    let header = Header::decode(&hb)?;
    if HEADER_LEN + header.body_len as usize != m.head.len()
        || header.length as usize != m.payload.len()
    {
        return Err(format!(
            "frame announces {} body and {} payload bytes, message has {} and {}",
            header.body_len,
            header.length,
            m.head.len() - HEADER_LEN,
            m.payload.len()
        ));
    }
    if crc32c::crc32c(&m.payload) != header.payload_crc {
        return Err("payload checksum mismatch".into());
    }
    let mut head = m.head;
    let body = head.split_off(HEADER_LEN);
    Ok(Frame {
        header,
        body,
        payload: m.payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::proto::encode_head;

    #[test]
    fn pieces_cover_the_message() {
        let v: Vec<_> = pieces(10, 4).collect();
        assert_eq!(v, vec![(0, 4), (4, 4), (8, 2)]);
        assert_eq!(pieces(0, 4).count(), 1);
        assert_eq!(pieces(8, 4).count(), 2);
    }

    /// A message to cut into pieces: its head (without the length prefix)
    /// and an `n`-byte payload whose byte i is `i * step`.
    fn message(request_id: u64, body: &[u8], n: u32, step: u32) -> (Vec<u8>, Vec<u8>) {
        let h = Header {
            op: 2,
            request_id,
            ..Default::default()
        };
        let payload: Vec<u8> = (0..n).map(|i| (i * step) as u8).collect();
        let head = encode_head(h, body, &payload)[4..].to_vec();
        (head, payload)
    }

    #[test]
    fn reassembles_out_of_order_and_checks_the_frame() {
        let (head, payload) = message(9, b"body!", 10_000, 7);
        let head = &head[..];
        let msg_len = head.len() + payload.len();
        let mut ps: Vec<_> = pieces(msg_len, 1000).collect();
        ps.reverse();
        let mut r = Reassembly::new(1 << 20);
        let mut out = None;
        for (i, (off, len)) in ps.iter().enumerate() {
            let mut piece = vec![0u8; *len];
            copy_piece(head, &payload, *off, &mut piece);
            let a = r
                .add(1, msg_len as u32, head.len() as u32, *off as u32, &piece)
                .unwrap();
            if i + 1 < ps.len() {
                assert_eq!(a, Added::Incomplete);
            } else {
                out = Some(a);
            }
        }
        let Some(Added::Complete(m)) = out else {
            panic!()
        };
        assert_eq!(r.bytes(), 0);
        let f = frame(m).unwrap();
        assert_eq!((f.header.request_id, &f.body[..]), (9, &b"body!"[..]));
        assert_eq!(f.payload, payload);
    }

    #[test]
    fn pieces_in_parts_land_where_whole_pieces_do() {
        let (head, payload) = message(5, b"b", 9000, 13);
        let head = &head[..];
        let msg_len = head.len() + payload.len();
        let mut r = Reassembly::new(1 << 20);
        let mut out = None;
        // Pieces of 2500 bytes, each split in up to three parts at uneven
        // places (one inside the head, empty parts too), as mbuf segments.
        for (i, (off, len)) in pieces(msg_len, 2500).enumerate() {
            let mut piece = vec![0u8; len];
            copy_piece(head, &payload, off, &mut piece);
            let a = (i * 37 + 3) % len;
            let b = (a + 700).min(len);
            let parts: [&[u8]; 4] = [&piece[..a], &[], &piece[a..b], &piece[b..]];
            out = Some(
                r.add_parts(7, msg_len as u32, head.len() as u32, off as u32, &parts)
                    .unwrap(),
            );
        }
        let Some(Added::Complete(m)) = out else {
            panic!()
        };
        let f = frame(m).unwrap();
        assert_eq!((f.header.request_id, &f.body[..]), (5, &b"b"[..]));
        assert_eq!(f.payload, payload);
        assert_eq!(
            r.add_parts(8, 100, 64, 0, &[&[], &[]]),
            Err(FragError::BadLength)
        );
    }

    #[test]
    fn refuses_bad_pieces_and_bounds_memory() {
        let mut r = Reassembly::new(1000);
        assert_eq!(r.add(1, 100, 10, 0, b"x"), Err(FragError::BadLength));
        assert_eq!(r.add(1, 100, 64, 99, b"xy"), Err(FragError::BadLength));
        assert_eq!(
            r.add(1, MAX_FRAME + 1, 64, 0, b"x"),
            Err(FragError::BadLength)
        );
        assert_eq!(r.add(1, 800, 64, 0, b"x"), Ok(Added::Incomplete));
        assert_eq!(r.add(1, 801, 64, 1, b"x"), Err(FragError::Inconsistent));
        assert_eq!(r.add(2, 800, 64, 0, b"x"), Ok(Added::NoRoom));
        r.discard(1);
        assert_eq!(r.add(2, 800, 64, 0, b"x"), Ok(Added::Incomplete));
        let bad = Message {
            head: vec![0; 64],
            payload: vec![],
        };
        assert!(frame(bad).is_err());
    }
}
