//! Entry point for fuzzing CDB decoding and execution (the cargo-fuzz
//! target `scsi_cdb` and the corpus test call it): a small RAM volume, two
//! nexuses, and commands built from the input. It must never panic and its
//! answers must be well formed.

use super::{Lun, Nexus, Status};
use ferrite_engine::volume::mem::MemVolume;

/// Input layout: byte 0 picks the nexus (bit 0) and the CDB length (bits
/// 1..: 6, 10, 12, 16 or up to 32), then the CDB, then the data-out
/// buffer. Several commands may follow each other, separated by 0xFF 0xFF.
pub fn cdb(data: &[u8]) {
    let vol = MemVolume::new("fuzz", 1 << 20, 512);
    let lun = Lun::new(vol);
    let nexus = [
        Nexus::iscsi("iqn.fuzz:a", [0, 1, 2, 3, 4, 5], "iqn.fuzz:t", 1, 1),
        Nexus::iscsi("iqn.fuzz:b", [9, 1, 2, 3, 4, 5], "iqn.fuzz:t", 2, 1),
    ];
    for n in &nexus {
        lun.attach(n);
    }
    for cmd in data
        .split(|&b| b == 0xFF)
        .filter(|c| !c.is_empty())
        .take(16)
    {
        let sel = cmd[0];
        let len = match (sel >> 1) & 7 {
            0 => 6,
            1 => 10,
            2 => 12,
            3 => 16,
            x => 16 + x as usize * 4,
        }
        .min(cmd.len() - 1);
        let (cdb, out) = cmd[1..].split_at(len);
        let r = lun.execute(&nexus[(sel & 1) as usize], cdb, out);
        assert_eq!(
            r.status == Status::CheckCondition,
            r.sense.is_some(),
            "sense iff CHECK CONDITION"
        );
        if let Some(s) = &r.sense {
            assert!(
                s.len() >= 8 && (s[0] & 0x7F == 0x70 || s[0] == 0x72),
                "sense format"
            );
        }
        if r.status != Status::Good && r.status != Status::ConditionMet {
            assert!(r.data_in.is_empty(), "no data with a failed command");
        }
    }
    // Resets and nexus loss in between never hurt either.
    lun.reset(super::lun::ResetKind::LogicalUnit);
    lun.detach(&nexus[0]);
    let _ = lun.execute(&nexus[0], &[0; 6], &[]);
}
