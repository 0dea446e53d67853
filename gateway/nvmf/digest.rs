//! NVMe/TCP header and data digests: CRC32C (Castagnoli), written after
//! the header or the data as a little-endian 32-bit value. A queue uses
//! them when the host asked for them in its ICReq.

/// The digest of `bytes`.
pub fn crc(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// The digest of several pieces, as if they were one buffer.
pub fn crc_parts(parts: &[&[u8]]) -> u32 {
    parts.iter().fold(0u32, |c, p| crc32c::crc32c_append(c, p))
}

/// The 4 digest bytes as they go on the wire.
pub fn to_wire(crc: u32) -> [u8; 4] {
    crc.to_le_bytes()
}

/// Checks the digest that follows `bytes` on the wire.
pub fn verify(bytes: &[u8], wire: &[u8]) -> bool {
    wire.len() == 4 && crc(bytes).to_le_bytes() == wire
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_value_and_parts() {
        // RFC 3720 B.4: 32 bytes of zeroes.
        assert_eq!(crc(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc_parts(&[b"abc", b"def"]), crc(b"abcdef"));
        assert!(verify(b"xyz", &to_wire(crc(b"xyz"))));
        assert!(!verify(b"xyz", &[0, 0, 0, 0]));
    }
}
