//! Reservations: SPC-4 persistent reservations (PERSISTENT RESERVE IN/OUT,
//! used by Windows and Linux clusters) and SPC-2 RESERVE/RELEASE(6).
//!
//! Registrations belong to an I_T nexus (initiator port + target port), or
//! to an initiator port on every target port when registered with
//! ALL_TG_PT. State lives in memory: APTPL (persist through power loss) is
//! not offered, and REPORT CAPABILITIES says so.

use super::sense::{Asc, Sense};
use super::Nexus;

/// Reservation types (SPC-4 table 171).
pub mod ty {
    pub const WRITE_EXCLUSIVE: u8 = 1;
    pub const EXCLUSIVE_ACCESS: u8 = 3;
    pub const WRITE_EXCLUSIVE_REG_ONLY: u8 = 5;
    pub const EXCLUSIVE_ACCESS_REG_ONLY: u8 = 6;
    pub const WRITE_EXCLUSIVE_ALL_REG: u8 = 7;
    pub const EXCLUSIVE_ACCESS_ALL_REG: u8 = 8;
}

fn valid_type(t: u8) -> bool {
    matches!(t, 1 | 3 | 5 | 6 | 7 | 8)
}

fn all_registrants(t: u8) -> bool {
    t == ty::WRITE_EXCLUSIVE_ALL_REG || t == ty::EXCLUSIVE_ACCESS_ALL_REG
}

/// How a command touches the medium, for conflict checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Never conflicts (INQUIRY, REPORT LUNS, PR commands, ...).
    Exempt,
    Read,
    Write,
}

/// Whom a unit attention is for: an initiator port on one target port or
/// (`target_port == None`) on all of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UaTarget {
    pub initiator_port: String,
    pub target_port: Option<String>,
    pub asc: Asc,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Registration {
    initiator_port: String,
    /// `None`: registered through every target port (ALL_TG_PT).
    target_port: Option<String>,
    rel_port_id: u16,
    key: u64,
}

impl Registration {
    fn matches(&self, n: &Nexus) -> bool {
        self.initiator_port == n.initiator_port
            && self
                .target_port
                .as_ref()
                .is_none_or(|t| *t == n.target_port)
    }

    fn same_holder(&self, h: &(String, Option<String>)) -> bool {
        self.initiator_port == h.0 && self.target_port == h.1
    }

    fn ua(&self, asc: Asc) -> UaTarget {
        UaTarget {
            initiator_port: self.initiator_port.clone(),
            target_port: self.target_port.clone(),
            asc,
        }
    }
}

#[derive(Clone, Debug)]
struct Reservation {
    /// The registration holding it (for all-registrants types: whoever
    /// reserved; every registrant is a holder then).
    holder: (String, Option<String>),
    ty: u8,
}

/// Why a reservation operation failed.
#[derive(Debug, PartialEq, Eq)]
pub enum PrError {
    Conflict,
    Check(Sense),
}

impl From<Sense> for PrError {
    fn from(s: Sense) -> Self {
        PrError::Check(s)
    }
}

#[derive(Default, Debug)]
pub struct PrState {
    regs: Vec<Registration>,
    res: Option<Reservation>,
    generation: u32,
    /// SPC-2 RESERVE(6): the nexus key holding it.
    spc2: Option<String>,
}

impl PrState {
    fn reg_of(&self, n: &Nexus) -> Option<&Registration> {
        self.regs.iter().find(|r| r.matches(n))
    }

    fn is_holder(&self, n: &Nexus) -> bool {
        match &self.res {
            None => false,
            Some(r) if all_registrants(r.ty) => self.reg_of(n).is_some(),
            Some(r) => self.reg_of(n).is_some_and(|reg| reg.same_holder(&r.holder)),
        }
    }

    /// Whether `n` may run a command of class `access` (SPC-4 table 110 for
    /// persistent reservations; SPC-2 7.21 for RESERVE(6)).
    /// `spc2_allowed`: the command is one SPC-2 lets through another
    /// nexus's RESERVE(6) (INQUIRY, REPORT LUNS, REQUEST SENSE, RELEASE).
    pub fn check(&self, n: &Nexus, access: Access, spc2_allowed: bool) -> Result<(), PrError> {
        if let Some(k) = &self.spc2 {
            if *k != n.key() && !spc2_allowed {
                return Err(PrError::Conflict);
            }
        }
        if access == Access::Exempt {
            return Ok(());
        }
        let Some(res) = &self.res else { return Ok(()) };
        if self.is_holder(n) {
            return Ok(());
        }
        let registered = self.reg_of(n).is_some();
        let ok = match res.ty {
            ty::WRITE_EXCLUSIVE => access == Access::Read,
            ty::EXCLUSIVE_ACCESS => false,
            ty::WRITE_EXCLUSIVE_REG_ONLY | ty::WRITE_EXCLUSIVE_ALL_REG => {
                access == Access::Read || registered
            }
            _ => registered,
        };
        if ok {
            Ok(())
        } else {
            Err(PrError::Conflict)
        }
    }

    /// RESERVE(6): refused while a persistent reservation exists or another
    /// nexus holds the SPC-2 reservation.
    pub fn reserve6(&mut self, n: &Nexus) -> Result<(), PrError> {
        if self.res.is_some() {
            return Err(PrError::Conflict);
        }
        match &self.spc2 {
            Some(k) if *k != n.key() => Err(PrError::Conflict),
            _ => {
                self.spc2 = Some(n.key());
                Ok(())
            }
        }
    }

    /// RELEASE(6): releases only the caller's own reservation; anything
    /// else is a no-op that succeeds (SPC-2 7.17).
    pub fn release6(&mut self, n: &Nexus) -> Result<(), PrError> {
        if self.res.is_some() && !self.is_holder(n) && self.reg_of(n).is_none() {
            // A persistent reservation exists: RELEASE(6) from outside it conflicts.
            return Err(PrError::Conflict);
        }
        if self.spc2.as_deref() == Some(&n.key()) {
            self.spc2 = None;
        }
        Ok(())
    }

    /// I_T nexus loss and resets release the SPC-2 reservation it held.
    pub fn nexus_lost(&mut self, key: &str) {
        if self.spc2.as_deref() == Some(key) {
            self.spc2 = None;
        }
    }

    /// LOGICAL UNIT RESET / target reset: SPC-2 reservations go,
    /// persistent ones stay (SPC-4 5.13.1).
    pub fn reset(&mut self) {
        self.spc2 = None;
    }

    /// PERSISTENT RESERVE IN.
    pub fn prin(&self, cdb: &[u8]) -> Result<Vec<u8>, Sense> {
        let sa = cdb[1] & 0x1F;
        let mut out = Vec::new();
        match sa {
            0 => {
                out.extend_from_slice(&self.generation.to_be_bytes());
                out.extend_from_slice(&((self.regs.len() * 8) as u32).to_be_bytes());
                for r in &self.regs {
                    out.extend_from_slice(&r.key.to_be_bytes());
                }
            }
            1 => {
                out.extend_from_slice(&self.generation.to_be_bytes());
                match &self.res {
                    None => out.extend_from_slice(&0u32.to_be_bytes()),
                    Some(res) => {
                        out.extend_from_slice(&16u32.to_be_bytes());
                        let key = if all_registrants(res.ty) {
                            0
                        } else {
                            self.regs
                                .iter()
                                .find(|r| r.same_holder(&res.holder))
                                .map(|r| r.key)
                                .unwrap_or(0)
                        };
                        out.extend_from_slice(&key.to_be_bytes());
                        out.extend_from_slice(&[0, 0, 0, 0, 0, res.ty & 0x0F, 0, 0]);
                    }
                }
            }
            2 => {
                out.extend_from_slice(&8u16.to_be_bytes());
                // CRH (RESERVE/RELEASE conflict with PR as SPC-4 5.13.3
                // says), ATP_C (ALL_TG_PT); no SIP_C, no PTPL_C.
                out.push(0x10 | 0x04);
                // TMV: the type mask is valid; ALLOW COMMANDS = 001b.
                out.push(0x80 | 0x10);
                out.push(0x80 | 0x40 | 0x20 | 0x08 | 0x02);
                out.push(0x01);
                out.extend_from_slice(&[0, 0]);
            }
            3 => {
                out.extend_from_slice(&self.generation.to_be_bytes());
                out.extend_from_slice(&[0, 0, 0, 0]);
                for r in &self.regs {
                    let holder = match &self.res {
                        Some(res) if all_registrants(res.ty) => Some(res.ty),
                        Some(res) if r.same_holder(&res.holder) => Some(res.ty),
                        _ => None,
                    };
                    let tid = transport_id(&r.initiator_port);
                    out.extend_from_slice(&r.key.to_be_bytes());
                    out.extend_from_slice(&[0, 0, 0, 0]);
                    out.push(
                        if r.target_port.is_none() { 0x02 } else { 0 }
                            | if holder.is_some() { 0x01 } else { 0 },
                    );
                    out.push(holder.unwrap_or(0) & 0x0F);
                    out.extend_from_slice(&[0, 0, 0, 0]);
                    out.extend_from_slice(&r.rel_port_id.to_be_bytes());
                    out.extend_from_slice(&(tid.len() as u32).to_be_bytes());
                    out.extend_from_slice(&tid);
                }
                let len = (out.len() - 8) as u32;
                out[4..8].copy_from_slice(&len.to_be_bytes());
            }
            _ => return Err(Sense::invalid_cdb_field(1, Some(4))),
        }
        Ok(out)
    }

    /// PERSISTENT RESERVE OUT. Returns the unit attentions to establish
    /// for other nexuses.
    pub fn prout(&mut self, n: &Nexus, cdb: &[u8], data: &[u8]) -> Result<Vec<UaTarget>, PrError> {
        let sa = cdb[1] & 0x1F;
        let scope = cdb[2] >> 4;
        let rtype = cdb[2] & 0x0F;
        let plen = u32::from_be_bytes([cdb[5], cdb[6], cdb[7], cdb[8]]) as usize;
        if plen != 24 {
            return Err(Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR).into());
        }
        if data.len() < 24 {
            return Err(Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR).into());
        }
        let key = u64::from_be_bytes(data[0..8].try_into().expect("8 bytes"));
        let sark = u64::from_be_bytes(data[8..16].try_into().expect("8 bytes"));
        let spec_i_pt = data[20] & 0x08 != 0;
        let all_tg_pt = data[20] & 0x04 != 0;
        let aptpl = data[20] & 0x01 != 0;
        if spec_i_pt {
            return Err(Sense::invalid_param_field(20, Some(3)).into());
        }
        if aptpl {
            return Err(Sense::invalid_param_field(20, Some(0)).into());
        }
        // An SPC-2 reservation of another nexus blocks persistent ones.
        if let Some(k) = &self.spc2 {
            if *k != n.key() {
                return Err(PrError::Conflict);
            }
        }
        let needs_type = matches!(sa, 1 | 2 | 4 | 5);
        if needs_type && scope != 0 {
            return Err(Sense::invalid_cdb_field(2, Some(7)).into());
        }
        match sa {
            0 | 6 => self.register(n, key, sark, all_tg_pt, sa == 6),
            1 => {
                if !valid_type(rtype) {
                    return Err(Sense::invalid_cdb_field(2, Some(3)).into());
                }
                self.reserve(n, key, rtype)
            }
            2 => {
                if !valid_type(rtype) {
                    return Err(Sense::invalid_cdb_field(2, Some(3)).into());
                }
                self.release(n, key, rtype)
            }
            3 => self.clear(n, key),
            4 | 5 => {
                if !valid_type(rtype) {
                    return Err(Sense::invalid_cdb_field(2, Some(3)).into());
                }
                self.preempt(n, key, sark, rtype)
            }
            _ => Err(Sense::invalid_cdb_field(1, Some(4)).into()),
        }
    }

    fn checked_reg(&self, n: &Nexus, key: u64) -> Result<usize, PrError> {
        match self.regs.iter().position(|r| r.matches(n)) {
            Some(i) if self.regs[i].key == key => Ok(i),
            _ => Err(PrError::Conflict),
        }
    }

    fn register(
        &mut self,
        n: &Nexus,
        key: u64,
        sark: u64,
        all_tg_pt: bool,
        ignore: bool,
    ) -> Result<Vec<UaTarget>, PrError> {
        let mut uas = Vec::new();
        match self.regs.iter().position(|r| r.matches(n)) {
            None => {
                if !ignore && key != 0 {
                    return Err(PrError::Conflict);
                }
                if sark != 0 {
                    self.regs.push(Registration {
                        initiator_port: n.initiator_port.clone(),
                        target_port: if all_tg_pt {
                            None
                        } else {
                            Some(n.target_port.clone())
                        },
                        rel_port_id: n.rel_port_id,
                        key: sark,
                    });
                }
            }
            Some(i) => {
                if !ignore && self.regs[i].key != key {
                    return Err(PrError::Conflict);
                }
                if sark == 0 {
                    let gone = self.regs.remove(i);
                    uas.extend(self.after_unregister(&gone));
                } else {
                    self.regs[i].key = sark;
                }
            }
        }
        self.generation = self.generation.wrapping_add(1);
        Ok(uas)
    }

    /// A registration went away: the reservation goes with it when it was
    /// its holder (or, for all-registrants types, the last registrant).
    fn after_unregister(&mut self, gone: &Registration) -> Vec<UaTarget> {
        let Some(res) = &self.res else {
            return Vec::new();
        };
        let released = if all_registrants(res.ty) {
            self.regs.is_empty()
        } else {
            gone.same_holder(&res.holder)
        };
        if !released {
            return Vec::new();
        }
        let ty = res.ty;
        self.res = None;
        // Registrants-only reservations tell the other registrants.
        if matches!(
            ty,
            ty::WRITE_EXCLUSIVE_REG_ONLY | ty::EXCLUSIVE_ACCESS_REG_ONLY
        ) {
            return self
                .regs
                .iter()
                .map(|r| r.ua(Asc::RESERVATIONS_RELEASED))
                .collect();
        }
        Vec::new()
    }

    fn reserve(&mut self, n: &Nexus, key: u64, rtype: u8) -> Result<Vec<UaTarget>, PrError> {
        let i = self.checked_reg(n, key)?;
        match &self.res {
            Some(res) => {
                if self.is_holder(n) && res.ty == rtype {
                    Ok(Vec::new())
                } else {
                    Err(PrError::Conflict)
                }
            }
            None => {
                let r = &self.regs[i];
                self.res = Some(Reservation {
                    holder: (r.initiator_port.clone(), r.target_port.clone()),
                    ty: rtype,
                });
                Ok(Vec::new())
            }
        }
    }

    fn release(&mut self, n: &Nexus, key: u64, rtype: u8) -> Result<Vec<UaTarget>, PrError> {
        self.checked_reg(n, key)?;
        let Some(res) = &self.res else {
            return Ok(Vec::new());
        };
        if !self.is_holder(n) {
            return Ok(Vec::new());
        }
        if res.ty != rtype {
            return Err(Sense::illegal(Asc::INVALID_RELEASE_OF_PR).into());
        }
        let ty = res.ty;
        self.res = None;
        if matches!(ty, ty::WRITE_EXCLUSIVE | ty::EXCLUSIVE_ACCESS) {
            return Ok(Vec::new());
        }
        Ok(self
            .regs
            .iter()
            .filter(|r| !r.matches(n))
            .map(|r| r.ua(Asc::RESERVATIONS_RELEASED))
            .collect())
    }

    fn clear(&mut self, n: &Nexus, key: u64) -> Result<Vec<UaTarget>, PrError> {
        self.checked_reg(n, key)?;
        let uas = self
            .regs
            .iter()
            .filter(|r| !r.matches(n))
            .map(|r| r.ua(Asc::RESERVATIONS_PREEMPTED))
            .collect();
        self.regs.clear();
        self.res = None;
        self.generation = self.generation.wrapping_add(1);
        Ok(uas)
    }

    fn preempt(
        &mut self,
        n: &Nexus,
        key: u64,
        sark: u64,
        rtype: u8,
    ) -> Result<Vec<UaTarget>, PrError> {
        let me = self.checked_reg(n, key)?;
        let me_reg = self.regs[me].clone();
        let mut uas = Vec::new();
        let mut remove =
            |regs: &mut Vec<Registration>, pred: &dyn Fn(&Registration) -> bool| -> usize {
                let before = regs.len();
                regs.retain(|r| {
                    let go = pred(r) && *r != me_reg;
                    if go {
                        uas.push(r.ua(Asc::REGISTRATIONS_PREEMPTED));
                    }
                    !go
                });
                before - regs.len()
            };
        match self.res.clone() {
            None => {
                if sark == 0 {
                    return Err(Sense::invalid_param_field(8, None).into());
                }
                if remove(&mut self.regs, &|r| r.key == sark) == 0 {
                    return Err(PrError::Conflict);
                }
            }
            Some(res) if all_registrants(res.ty) => {
                if sark == 0 {
                    remove(&mut self.regs, &|_| true);
                    self.res = Some(Reservation {
                        holder: (me_reg.initiator_port.clone(), me_reg.target_port.clone()),
                        ty: rtype,
                    });
                } else if remove(&mut self.regs, &|r| r.key == sark) == 0 {
                    return Err(PrError::Conflict);
                }
            }
            Some(res) => {
                let holder_key = self
                    .regs
                    .iter()
                    .find(|r| r.same_holder(&res.holder))
                    .map(|r| r.key);
                if holder_key == Some(sark) {
                    remove(&mut self.regs, &|r| r.key == sark);
                    let changed = res.ty != rtype;
                    self.res = Some(Reservation {
                        holder: (me_reg.initiator_port.clone(), me_reg.target_port.clone()),
                        ty: rtype,
                    });
                    if changed {
                        for r in &self.regs {
                            if *r != me_reg {
                                uas.push(r.ua(Asc::RESERVATIONS_RELEASED));
                            }
                        }
                    }
                } else {
                    if sark == 0 {
                        return Err(Sense::invalid_param_field(8, None).into());
                    }
                    if remove(&mut self.regs, &|r| r.key == sark) == 0 {
                        return Err(PrError::Conflict);
                    }
                }
            }
        }
        self.generation = self.generation.wrapping_add(1);
        Ok(uas)
    }
}

/// An iSCSI TransportID (SPC-4 7.6.4.6, format 01b): the initiator port
/// name "iqn...,i,0x<ISID>", null terminated and padded to 4 bytes.
fn transport_id(initiator_port: &str) -> Vec<u8> {
    let mut name = initiator_port.as_bytes().to_vec();
    name.push(0);
    name.resize(name.len().div_ceil(4) * 4, 0);
    let mut t = vec![0x40 | super::inquiry::PROTOCOL_ISCSI, 0];
    t.extend_from_slice(&(name.len() as u16).to_be_bytes());
    t.extend(name);
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nx(i: u8) -> Nexus {
        Nexus::iscsi(&format!("iqn.i{i}"), [0, 0, 0, 0, 0, i], "iqn.t", 1, 1)
    }

    fn params(key: u64, sark: u64) -> Vec<u8> {
        let mut d = vec![0u8; 24];
        d[0..8].copy_from_slice(&key.to_be_bytes());
        d[8..16].copy_from_slice(&sark.to_be_bytes());
        d
    }

    fn cdb(sa: u8, ty: u8) -> [u8; 10] {
        [0x5F, sa, ty, 0, 0, 0, 0, 0, 24, 0]
    }

    #[test]
    fn register_reserve_and_conflicts() {
        let mut pr = PrState::default();
        let (a, b) = (nx(1), nx(2));
        pr.prout(&a, &cdb(0, 0), &params(0, 0xA)).unwrap();
        assert_eq!(
            pr.prout(&a, &cdb(1, ty::EXCLUSIVE_ACCESS), &params(0xB, 0)),
            Err(PrError::Conflict)
        );
        pr.prout(&a, &cdb(1, ty::EXCLUSIVE_ACCESS), &params(0xA, 0))
            .unwrap();
        assert_eq!(pr.check(&b, Access::Read, false), Err(PrError::Conflict));
        assert!(pr.check(&a, Access::Write, false).is_ok());
        assert!(pr.check(&b, Access::Exempt, false).is_ok());
        // Release with the wrong type is an error, with the right one works.
        assert!(matches!(
            pr.prout(&a, &cdb(2, ty::WRITE_EXCLUSIVE), &params(0xA, 0)),
            Err(PrError::Check(_))
        ));
        pr.prout(&a, &cdb(2, ty::EXCLUSIVE_ACCESS), &params(0xA, 0))
            .unwrap();
        assert!(pr.check(&b, Access::Write, false).is_ok());
    }

    #[test]
    fn preempt_removes_the_holder_and_reserves() {
        let mut pr = PrState::default();
        let (a, b) = (nx(1), nx(2));
        pr.prout(&a, &cdb(0, 0), &params(0, 0xA)).unwrap();
        pr.prout(&b, &cdb(0, 0), &params(0, 0xB)).unwrap();
        pr.prout(&a, &cdb(1, ty::WRITE_EXCLUSIVE), &params(0xA, 0))
            .unwrap();
        let uas = pr
            .prout(&b, &cdb(4, ty::EXCLUSIVE_ACCESS), &params(0xB, 0xA))
            .unwrap();
        assert_eq!(uas.len(), 1);
        assert_eq!(uas[0].initiator_port, a.initiator_port);
        assert_eq!(pr.check(&a, Access::Read, false), Err(PrError::Conflict));
        let keys = pr.prin(&[0x5E, 0, 0, 0, 0, 0, 0, 1, 0, 0]).unwrap();
        assert_eq!(u32::from_be_bytes(keys[4..8].try_into().unwrap()), 8);
    }

    #[test]
    fn spc2_reservation_is_exclusive_and_released_on_nexus_loss() {
        let mut pr = PrState::default();
        let (a, b) = (nx(1), nx(2));
        pr.reserve6(&a).unwrap();
        assert_eq!(pr.reserve6(&b), Err(PrError::Conflict));
        assert_eq!(pr.check(&b, Access::Read, false), Err(PrError::Conflict));
        pr.release6(&b).unwrap(); // a no-op
        assert_eq!(pr.check(&b, Access::Read, false), Err(PrError::Conflict));
        pr.nexus_lost(&a.key());
        pr.reserve6(&b).unwrap();
    }
}
