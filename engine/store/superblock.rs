//! The superblock: who this device is and where everything lives.
//!
//! Two copies, in blocks 0 and 1 of every device, each with a crc32c. Open
//! takes the valid copy (the newer is identical: superblocks are written
//! only by format), so one damaged copy is survivable. Device 0 also holds
//! the per-worker journals and checkpoint slots; every device has a data
//! area after its metadata.
//!
//! ```text
//! device 0: [sb A][sb B][journal 0]..[journal W-1][ckpt 0 A][ckpt 0 B]..[ckpt W-1 B][data ...]
//! device i: [sb A][sb B][data ...]
//! ```

use super::codec::{Dec, Enc};
use crate::bdev::BLOCK_SIZE;

/// "FERRITE" + store marker, little-endian in the first 8 bytes.
pub const MAGIC: u64 = u64::from_le_bytes(*b"FERSTOR1");
/// The on-disk format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// One device's superblock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub version: u32,
    pub uuid: u128,
    pub device_index: u32,
    pub device_count: u32,
    /// This device's size in blocks.
    pub device_blocks: u64,
    pub workers: u32,
    /// Blocks of each worker's journal (device 0).
    pub journal_blocks: u64,
    /// Blocks of each checkpoint slot (device 0).
    pub ckpt_blocks: u64,
    pub extent_size_max: u64,
    /// First journal block (device 0).
    pub journal_start: u64,
    /// First checkpoint slot block (device 0).
    pub ckpt_start: u64,
    /// First data block of this device.
    pub data_start: u64,
}

/// Why a block is not a usable superblock.
#[derive(Debug, PartialEq, Eq)]
pub enum SbError {
    /// All zeroes: never formatted.
    Blank,
    /// Not ours (another format or garbage).
    NotFerrite,
    /// Ours, but another format version.
    Version(u32),
    /// Ours, but its checksum does not match.
    Damaged,
}

/// The largest extent a store may be formatted for: extent maps are sized
/// from it, so a superblock that claims more is refused as damaged.
pub const EXTENT_SIZE_LIMIT: u64 = 1 << 40;

/// Where the crc32c of the encoded fields sits (it covers the bytes before).
pub const CRC_AT: usize = 100;

impl Superblock {
    /// Whether the fields describe a layout `format` could have written. A
    /// superblock with a valid crc but impossible fields (a bug, or a
    /// crafted image) is refused instead of being divided by or sized from.
    fn consistent(&self) -> bool {
        let w = self.workers as u64;
        // Every device's superblock carries device 0's journal and
        // checkpoint layout; only device 0 holds those regions, before its
        // data area.
        let regions = || -> Option<bool> {
            let journal_end = self
                .journal_start
                .checked_add(w.checked_mul(self.journal_blocks)?)?;
            let ckpt_end = self
                .ckpt_start
                .checked_add(w.checked_mul(2)?.checked_mul(self.ckpt_blocks)?)?;
            Some(
                self.journal_start >= 2
                    && journal_end <= self.ckpt_start
                    && (self.device_index != 0 || ckpt_end <= self.data_start),
            )
        };
        (1..=256).contains(&self.workers)
            && (1..=64).contains(&self.device_count)
            && self.device_index < self.device_count
            && self.journal_blocks >= 16
            && self.ckpt_blocks >= 1
            && self.extent_size_max > 0
            && self.extent_size_max % BLOCK_SIZE == 0
            && self.extent_size_max <= EXTENT_SIZE_LIMIT
            && self.data_start >= 2
            && self.data_start < self.device_blocks
            && regions() == Some(true)
    }

    /// The 4 KiB on-disk image.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::with_capacity(BLOCK_SIZE as usize);
        e.u64(MAGIC);
        e.u32(self.version);
        e.u32(BLOCK_SIZE as u32);
        e.u128(self.uuid);
        e.u32(self.device_index);
        e.u32(self.device_count);
        e.u64(self.device_blocks);
        e.u32(self.workers);
        e.u64(self.journal_blocks);
        e.u64(self.ckpt_blocks);
        e.u64(self.extent_size_max);
        e.u64(self.journal_start);
        e.u64(self.ckpt_start);
        e.u64(self.data_start);
        let crc = crc32c::crc32c(&e.buf);
        e.u32(crc);
        e.buf.resize(BLOCK_SIZE as usize, 0);
        e.buf
    }

    /// Parses a block; says precisely why it is not a superblock.
    pub fn decode(b: &[u8]) -> Result<Superblock, SbError> {
        if b.iter().all(|&x| x == 0) {
            return Err(SbError::Blank);
        }
        let mut d = Dec::new(b);
        if d.u64() != Some(MAGIC) {
            return Err(SbError::NotFerrite);
        }
        let version = d.u32().ok_or(SbError::Damaged)?;
        if version != FORMAT_VERSION {
            return Err(SbError::Version(version));
        }
        let parse = |d: &mut Dec| -> Option<Superblock> {
            if d.u32()? as u64 != BLOCK_SIZE {
                return None;
            }
            Some(Superblock {
                version,
                uuid: d.u128()?,
                device_index: d.u32()?,
                device_count: d.u32()?,
                device_blocks: d.u64()?,
                workers: d.u32()?,
                journal_blocks: d.u64()?,
                ckpt_blocks: d.u64()?,
                extent_size_max: d.u64()?,
                journal_start: d.u64()?,
                ckpt_start: d.u64()?,
                data_start: d.u64()?,
            })
        };
        let sb = parse(&mut d).ok_or(SbError::Damaged)?;
        let end = d.pos();
        let crc = d.u32().ok_or(SbError::Damaged)?;
        if crc32c::crc32c(&b[..end]) != crc || !sb.consistent() {
            return Err(SbError::Damaged);
        }
        Ok(sb)
    }

    /// Block of checkpoint slot `slot` (0 or 1) of worker `w` (device 0).
    pub fn ckpt_slot(&self, w: usize, slot: usize) -> u64 {
        self.ckpt_start + (w as u64 * 2 + slot as u64) * self.ckpt_blocks
    }

    /// First block of worker `w`'s journal (device 0).
    pub fn journal_of(&self, w: usize) -> u64 {
        self.journal_start + w as u64 * self.journal_blocks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Superblock {
        Superblock {
            version: FORMAT_VERSION,
            uuid: 0x1234_5678_9abc,
            device_index: 1,
            device_count: 2,
            device_blocks: 1000,
            workers: 2,
            journal_blocks: 64,
            ckpt_blocks: 16,
            extent_size_max: 256 << 20,
            journal_start: 2,
            ckpt_start: 130,
            data_start: 194,
        }
    }

    #[test]
    fn impossible_layouts_with_valid_crcs_are_damaged() {
        let sb = sample();
        let img = sb.encode();
        let crc = u32::from_le_bytes(img[CRC_AT..CRC_AT + 4].try_into().unwrap());
        assert_eq!(crc, crc32c::crc32c(&img[..CRC_AT]), "CRC_AT matches encode");
        let bad = [
            Superblock {
                workers: 0,
                ..sample()
            },
            Superblock {
                journal_blocks: 0,
                ..sample()
            },
            Superblock {
                device_index: 2,
                ..sample()
            },
            Superblock {
                extent_size_max: EXTENT_SIZE_LIMIT * 2,
                ..sample()
            },
            Superblock {
                extent_size_max: 4095,
                ..sample()
            },
            Superblock {
                data_start: 5000,
                ..sample()
            },
            Superblock {
                device_index: 0,
                ckpt_start: 100,
                ..sample()
            },
        ];
        for b in bad {
            assert_eq!(
                Superblock::decode(&b.encode()),
                Err(SbError::Damaged),
                "{b:?}"
            );
        }
        let ok = Superblock {
            device_index: 0,
            ..sample()
        };
        assert_eq!(Superblock::decode(&ok.encode()), Ok(ok));
    }

    #[test]
    fn round_trips_and_detects_damage() {
        let sb = sample();
        let mut b = sb.encode();
        assert_eq!(Superblock::decode(&b), Ok(sb));
        b[40] ^= 1;
        assert_eq!(Superblock::decode(&b), Err(SbError::Damaged));
        assert_eq!(Superblock::decode(&[0u8; 4096]), Err(SbError::Blank));
        assert_eq!(Superblock::decode(&[7u8; 4096]), Err(SbError::NotFerrite));
        let mut other = sample();
        other.version = 9;
        assert_eq!(
            Superblock::decode(&other.encode()),
            Err(SbError::Version(9))
        );
    }
}
