//! INQUIRY: the standard data and the vital product data pages (SPC-4 6.6,
//! 7.8; SBC-3 6.6). Pure functions of the logical unit's identity, its
//! volume and the nexus asking, so they are cheap to test.

use super::sense::Sense;
use super::Nexus;
use ferrite_engine::volume::VolumeInfo;

/// How the logical unit names itself.
#[derive(Clone, Debug)]
pub struct Ident {
    /// T10 vendor identification (8 ASCII characters, space padded).
    pub vendor: String,
    /// Product identification (16 characters).
    pub product: String,
    /// Product revision level (4 characters).
    pub revision: String,
    /// Unit serial number (VPD 0x80): the volume uuid in hex, so every
    /// gateway of the cluster reports the same serial for one volume.
    pub serial: String,
    /// NAA IEEE Registered Extended designator (VPD 0x83), from the uuid:
    /// stable and identical on every path, which is what lets multipath
    /// initiators group the paths of one volume.
    pub naa: [u8; 16],
}

impl Ident {
    pub fn for_volume(info: &VolumeInfo) -> Self {
        let serial: String = info.uuid.iter().map(|b| format!("{b:02x}")).collect();
        let mut naa = [0u8; 16];
        // NAA 6 (IEEE Registered Extended) in the top nibble, then the uuid's
        // first 124 bits: unique per volume and the same on every node.
        naa[0] = 0x60 | (info.uuid[0] >> 4);
        for (i, pair) in info.uuid.windows(2).enumerate() {
            naa[i + 1] = (pair[0] << 4) | (pair[1] >> 4);
        }
        Self {
            vendor: "FERRITE".into(),
            product: "VOLUME".into(),
            revision: format!("{:.4}", env!("CARGO_PKG_VERSION").replace('.', "")),
            serial,
            naa,
        }
    }
}

/// Limits the logical unit advertises in the Block Limits VPD page and
/// enforces on commands.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest READ/WRITE/VERIFY transfer, in blocks.
    pub max_transfer_blocks: u32,
    /// Preferred transfer, in blocks.
    pub optimal_transfer_blocks: u32,
    /// Largest COMPARE AND WRITE, in blocks.
    pub max_compare_write_blocks: u8,
    pub max_unmap_blocks: u32,
    pub max_unmap_descriptors: u32,
    pub max_write_same_blocks: u64,
    /// Largest WRITE ATOMIC(16), in blocks.
    pub max_atomic_blocks: u32,
    /// Logical blocks per physical block, as a power of two (READ
    /// CAPACITY(16) LBPPBE; also the optimal granularities). Ferrite's store
    /// works in 4 KiB blocks, so 3 would be truthful for 512-byte volumes,
    /// but it stays 0 like LIO's and SPDK's default: libiscsi's GET LBA
    /// STATUS test expects a descriptor to start past the LBA asked for
    /// when it is above 0 (which SBC-3 forbids), and initiators align to 4
    /// KiB anyway.
    pub physical_exp: u8,
}

impl Limits {
    /// Defaults for a volume with `block_size`-byte blocks: 32 MiB transfers
    /// (the iSCSI layer buffers a command's data, so this bounds memory per
    /// command; 65536 blocks of 512 bytes is what initiators' tests use).
    pub fn for_block_size(block_size: u32) -> Self {
        let bs = block_size.max(512);
        Self {
            max_transfer_blocks: (32 << 20) / bs,
            optimal_transfer_blocks: (1 << 20) / bs,
            max_compare_write_blocks: 255,
            // At most 2^20 blocks: initiators treat larger explicit limits
            // as bogus (libiscsi's suite does).
            max_unmap_blocks: ((1 << 30) / bs).min(1 << 20),
            max_unmap_descriptors: 256,
            max_write_same_blocks: (1 << 30) / bs as u64,
            max_atomic_blocks: 256,
            physical_exp: 0,
        }
    }
}

/// Protocol identifier of iSCSI (SPC-4 table 362).
pub const PROTOCOL_ISCSI: u8 = 0x5;

fn pad_ascii(s: &str, n: usize) -> Vec<u8> {
    let mut v: Vec<u8> = s
        .bytes()
        .filter(|b| (0x20..0x7f).contains(b))
        .take(n)
        .collect();
    v.resize(n, b' ');
    v
}

/// Standard INQUIRY data (96 bytes before truncation to the allocation
/// length).
pub fn standard(ident: &Ident) -> Vec<u8> {
    let mut b = vec![0u8; 96];
    b[0] = 0x00; // peripheral qualifier 0, direct access block device
    b[1] = 0x00; // not removable
    b[2] = 0x06; // SPC-4
    b[3] = 0x12; // HISUP, response data format 2
    b[4] = (b.len() - 5) as u8;
    b[5] = 0x10 | 0x08; // TPGS = 01b: implicit ALUA; 3PC: EXTENDED COPY
    b[6] = 0x00;
    b[7] = 0x02; // CMDQUE
    b[8..16].copy_from_slice(&pad_ascii(&ident.vendor, 8));
    b[16..32].copy_from_slice(&pad_ascii(&ident.product, 16));
    b[32..36].copy_from_slice(&pad_ascii(&ident.revision, 4));
    // Version descriptors: SAM-5, iSCSI, SPC-4, SBC-3.
    for (i, v) in [0x00A0u16, 0x0960, 0x0460, 0x04C0].iter().enumerate() {
        b[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
    }
    b
}

/// INQUIRY data for a LUN that does not exist (SPC-4 6.6.2: peripheral
/// qualifier 011b, device type 1Fh).
pub fn not_present() -> Vec<u8> {
    let mut b = vec![0u8; 36];
    b[0] = 0x7F;
    b[2] = 0x06;
    b[3] = 0x12;
    b[4] = 31;
    b
}

/// The VPD pages this logical unit has, in ascending order.
pub const SUPPORTED_VPD: &[u8] = &[0x00, 0x80, 0x83, 0x8F, 0xB0, 0xB1, 0xB2];

fn page(code: u8, body: Vec<u8>) -> Vec<u8> {
    let mut b = Vec::with_capacity(body.len() + 4);
    b.extend_from_slice(&[0x00, code]);
    b.extend_from_slice(&(body.len() as u16).to_be_bytes());
    b.extend_from_slice(&body);
    b
}

/// A VPD page, or INVALID FIELD IN CDB (byte 2, the page code).
pub fn vpd(
    code: u8,
    ident: &Ident,
    info: &VolumeInfo,
    limits: &Limits,
    nexus: &Nexus,
) -> Result<Vec<u8>, Sense> {
    Ok(match code {
        0x00 => page(0x00, SUPPORTED_VPD.to_vec()),
        0x80 => page(0x80, ident.serial.as_bytes().to_vec()),
        0x83 => page(0x83, device_identification(ident, nexus)),
        0xB0 => page(0xB0, block_limits(limits)),
        0xB1 => {
            let mut body = vec![0u8; 0x3C];
            body[0..2].copy_from_slice(&1u16.to_be_bytes()); // non-rotating medium
            page(0xB1, body)
        }
        0xB2 => page(0xB2, logical_block_provisioning(info)),
        0x8F => page(0x8F, super::xcopy::vpd_body()),
        _ => return Err(Sense::invalid_cdb_field(2, None)),
    })
}

fn designator(code_set: u8, assoc_type: u8, piv_proto: Option<u8>, id: &[u8]) -> Vec<u8> {
    let mut d = Vec::with_capacity(4 + id.len());
    let proto = piv_proto.unwrap_or(0);
    d.push((proto << 4) | code_set);
    d.push(if piv_proto.is_some() { 0x80 } else { 0 } | assoc_type);
    d.push(0);
    d.push(id.len() as u8);
    d.extend_from_slice(id);
    d
}

/// VPD 0x83: the logical unit's NAA and T10 vendor ids, and the target
/// port's relative port id, target port group and SCSI name.
fn device_identification(ident: &Ident, nexus: &Nexus) -> Vec<u8> {
    let mut body = Vec::new();
    // Association 0 (the logical unit): binary NAA, type 3.
    body.extend(designator(0x1, 0x03, None, &ident.naa));
    // T10 vendor id, type 1, ASCII: vendor + product + serial.
    let mut t10 = pad_ascii(&ident.vendor, 8);
    t10.extend(pad_ascii(&ident.product, 16));
    t10.extend(ident.serial.as_bytes());
    body.extend(designator(0x2, 0x01, None, &t10));
    // Association 1 (the target port): relative target port (type 4) and
    // target port group (type 5), which ALUA initiators match against
    // REPORT TARGET PORT GROUPS.
    let proto = Some(nexus.protocol_id);
    body.extend(designator(
        0x1,
        0x10 | 0x04,
        proto,
        &[
            0,
            0,
            (nexus.rel_port_id >> 8) as u8,
            nexus.rel_port_id as u8,
        ],
    ));
    body.extend(designator(
        0x1,
        0x10 | 0x05,
        proto,
        &[0, 0, (nexus.port_group >> 8) as u8, nexus.port_group as u8],
    ));
    if !nexus.target_port.is_empty() {
        // SCSI name string (type 8, UTF-8): null terminated, padded to 4.
        let mut name = nexus.target_port.as_bytes().to_vec();
        name.push(0);
        name.resize(name.len().div_ceil(4) * 4, 0);
        if name.len() <= 252 {
            body.extend(designator(0x3, 0x10 | 0x08, proto, &name));
        }
    }
    body
}

fn block_limits(l: &Limits) -> Vec<u8> {
    let mut b = vec![0u8; 0x3C];
    // Offsets below are of the page (SBC-3 6.6.4) minus its 4-byte header.
    b[0] = 0x00; // WSNZ = 0: WRITE SAME with 0 blocks means "to the end"
    b[1] = l.max_compare_write_blocks;
    let phys = 1u32 << l.physical_exp;
    b[2..4].copy_from_slice(&(phys as u16).to_be_bytes()); // optimal granularity
    b[4..8].copy_from_slice(&l.max_transfer_blocks.to_be_bytes());
    b[8..12].copy_from_slice(&l.optimal_transfer_blocks.to_be_bytes());
    b[12..16].copy_from_slice(&l.max_transfer_blocks.to_be_bytes()); // max prefetch
    b[16..20].copy_from_slice(&l.max_unmap_blocks.to_be_bytes());
    b[20..24].copy_from_slice(&l.max_unmap_descriptors.to_be_bytes());
    // Optimal unmap granularity: 0, "not reported". One logical block would
    // be no real hint (the store frees whole 4 KiB blocks), and with 4 KiB
    // logical blocks it turns on qemu 7.2's allocation map, whose block-status
    // probe asks for 0x7FFFFE00 bytes and trips its own 4 KiB alignment
    // assertion on every read of 64 KiB or more (seen with qemu-io).
    b[24..28].copy_from_slice(&0u32.to_be_bytes());
    b[28..32].copy_from_slice(&0x8000_0000u32.to_be_bytes()); // UGAVALID, alignment 0
    b[32..40].copy_from_slice(&l.max_write_same_blocks.to_be_bytes());
    // WRITE ATOMIC(16): any alignment and granularity, no boundaries.
    b[40..44].copy_from_slice(&l.max_atomic_blocks.min(l.max_transfer_blocks).to_be_bytes());
    b
}

fn logical_block_provisioning(info: &VolumeInfo) -> Vec<u8> {
    let mut b = vec![0u8; 4];
    b[0] = 0; // threshold exponent: no thresholds
              // LBPU (UNMAP), LBPWS (WRITE SAME 16 with UNMAP), LBPWS10, LBPRZ=1:
              // unmapped blocks read as zeroes (BlockVolume::unmap guarantees it).
    b[1] = 0x80 | 0x40 | 0x20 | 0x04;
    b[2] = if info.thin { 0x02 } else { 0x01 }; // thin or resource provisioned
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> VolumeInfo {
        VolumeInfo {
            name: "v".into(),
            uuid: [0x12; 16],
            block_size: 512,
            size: 1 << 20,
            thin: true,
        }
    }

    fn nexus() -> Nexus {
        Nexus::iscsi("iqn.i", [0, 0x23, 0, 0, 0, 1], "iqn.t", 1, 1)
    }

    #[test]
    fn standard_inquiry_announces_alua_and_sbc3() {
        let b = standard(&Ident::for_volume(&info()));
        assert_eq!(b[4] as usize + 5, b.len());
        assert_eq!(b[5] & 0x30, 0x10);
        assert_eq!(&b[8..15], b"FERRITE");
        assert!(b[58..74].chunks(2).any(|c| c == [0x04, 0xC0]));
    }

    #[test]
    fn vpd_pages_have_consistent_lengths() {
        let ident = Ident::for_volume(&info());
        let l = Limits::for_block_size(512);
        for &p in SUPPORTED_VPD {
            let b = vpd(p, &ident, &info(), &l, &nexus()).unwrap();
            assert_eq!(b[1], p);
            assert_eq!(u16::from_be_bytes([b[2], b[3]]) as usize + 4, b.len());
        }
        assert!(vpd(0x99, &ident, &info(), &l, &nexus()).is_err());
        let b = vpd(0x83, &ident, &info(), &l, &nexus()).unwrap();
        assert_eq!(b[4] & 0x0f, 1);
        assert_eq!(b[8] >> 4, 6, "NAA 6");
    }
}
