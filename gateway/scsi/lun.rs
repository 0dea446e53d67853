//! A logical unit: the SCSI block command set executed on one volume.
//!
//! [`Lun::execute`] is coroutine-blocking (it calls the volume) and may be
//! called concurrently from any reactor: the state it keeps between
//! commands sits behind a short `std` mutex that is never held across
//! volume I/O.

use super::cdb::{self, op, sa};
use super::inquiry::{self, Ident, Limits};
use super::mode::{self, ModeState};
use super::pr::{Access, PrError, PrState, UaTarget};
use super::report::{self, PortGroup};
use super::sense::{key, Asc, Sense};
use super::ua::UaTable;
use super::xcopy;
use super::{Nexus, ScsiResult, Status};
use ferrite_engine::volume::{AccessState, BlockVolume, IoError, VolumeInfo};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

/// Why a command did not complete with GOOD.
enum Fail {
    Check(Sense),
    Status(Status),
}

impl From<Sense> for Fail {
    fn from(s: Sense) -> Self {
        Fail::Check(s)
    }
}

impl From<PrError> for Fail {
    fn from(e: PrError) -> Self {
        match e {
            PrError::Conflict => Fail::Status(Status::ReservationConflict),
            PrError::Check(s) => Fail::Check(s),
        }
    }
}

/// What a successful command produced.
#[derive(Default)]
struct Done {
    data_in: Vec<u8>,
    data_out_wanted: usize,
    condition_met: bool,
}

impl Done {
    fn data(d: Vec<u8>) -> Self {
        Self {
            data_in: d,
            ..Self::default()
        }
    }
}

type CmdResult = Result<Done, Fail>;

/// Which reset a task management function performed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetKind {
    LogicalUnit,
    TargetWarm,
    TargetCold,
}

struct State {
    ua: UaTable,
    pr: PrState,
    mode: ModeState,
    /// (target port group, relative port id) of every port that reaches us.
    ports: BTreeSet<(u16, u16)>,
    /// What the initiators were last told, to raise CAPACITY DATA CHANGED
    /// and ASYMMETRIC ACCESS STATE CHANGED when the volume moves on.
    last_size: u64,
    last_access: AccessState,
    /// EXTENDED COPY results held for RECEIVE COPY RESULTS.
    held: xcopy::Held,
}

/// One logical unit of a target.
pub struct Lun {
    volume: Arc<dyn BlockVolume>,
    ident: Ident,
    limits: Limits,
    state: Mutex<State>,
    /// Finds other LUNs for EXTENDED COPY (set by the transport).
    copy_resolver: RwLock<Option<xcopy::CopyResolver>>,
}

/// Largest piece of a WRITE SAME or VERIFY done in one volume call.
const CHUNK: usize = 1 << 20;

impl Lun {
    pub fn new(volume: Arc<dyn BlockVolume>) -> Self {
        let info = volume.info();
        let access = volume.access_state();
        Self {
            ident: Ident::for_volume(&info),
            limits: Limits::for_block_size(info.block_size),
            state: Mutex::new(State {
                ua: UaTable::default(),
                pr: PrState::default(),
                mode: ModeState::default(),
                ports: BTreeSet::new(),
                last_size: info.size,
                last_access: access,
                held: xcopy::Held::default(),
            }),
            copy_resolver: RwLock::new(None),
            volume,
        }
    }

    pub fn volume(&self) -> &Arc<dyn BlockVolume> {
        &self.volume
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The NAA designator initiators know this unit by (VPD 0x83).
    pub fn naa(&self) -> &[u8; 16] {
        &self.ident.naa
    }

    /// Lets EXTENDED COPY reach other logical units of the target.
    pub fn set_copy_resolver(&self, r: xcopy::CopyResolver) {
        *self
            .copy_resolver
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(r);
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Declares a target port through which the unit is reachable (for
    /// REPORT TARGET PORT GROUPS).
    pub fn add_port(&self, port_group: u16, rel_port_id: u16) {
        self.state().ports.insert((port_group, rel_port_id));
    }

    /// A session (I_T nexus) now reaches this unit.
    pub fn attach(&self, nexus: &Nexus) {
        let mut st = self.state();
        st.ports.insert((nexus.port_group, nexus.rel_port_id));
        st.ua.attach(&nexus.key());
    }

    /// I_T nexus loss: the session is gone (logout, dropped connection,
    /// reinstatement). Its SPC-2 reservation and unit attentions go too;
    /// persistent reservations stay, as SPC-4 wants.
    pub fn detach(&self, nexus: &Nexus) {
        let mut st = self.state();
        let k = nexus.key();
        st.pr.nexus_lost(&k);
        st.ua.detach(&k);
        st.held.forget(&k);
    }

    /// A reset through task management: SPC-2 reservations are released
    /// and every nexus (the one that asked included, SAM-5 6.3) gets a
    /// unit attention.
    pub fn reset(&self, kind: ResetKind) {
        let mut st = self.state();
        st.pr.reset();
        let asc = match kind {
            // SAM-3 6.2/6.6: LU and target reset both report BUS DEVICE
            // RESET FUNCTION OCCURRED; a cold reset is a power-on.
            ResetKind::LogicalUnit | ResetKind::TargetWarm => Asc::BUS_DEVICE_RESET,
            ResetKind::TargetCold => Asc::POWER_ON_OCCURRED,
        };
        st.ua.push_where(asc, |_| true);
    }

    /// Establishes a unit attention for every nexus but `except`
    /// (e.g. COMMANDS CLEARED BY ANOTHER INITIATOR after CLEAR TASK SET).
    pub fn unit_attention_others(&self, except: &Nexus, asc: Asc) {
        let k = except.key();
        self.state().ua.push_where(asc, |n| n != k);
    }

    /// Whether sense data goes out in descriptor format (D_SENSE).
    pub fn descriptor_sense(&self) -> bool {
        self.state().mode.d_sense
    }

    /// Executes one command. Never panics on bad input: every malformed CDB
    /// or parameter list becomes CHECK CONDITION with the field named.
    pub fn execute(&self, nexus: &Nexus, cdb: &[u8], data_out: &[u8]) -> ScsiResult {
        let r = self.run(nexus, cdb, data_out);
        match r {
            Ok(d) => ScsiResult {
                status: if d.condition_met {
                    Status::ConditionMet
                } else {
                    Status::Good
                },
                sense: None,
                data_in: d.data_in,
                data_out_wanted: d.data_out_wanted,
            },
            Err(Fail::Status(s)) => ScsiResult {
                data_out_wanted: expected_data_out(cdb, self.volume.info().block_size),
                ..ScsiResult::status(s)
            },
            Err(Fail::Check(s)) => {
                if s.key != key::UNIT_ATTENTION {
                    log::debug!(
                        "lun {}: {:02x?} -> sense {:x}/{:02x}/{:02x}",
                        self.ident.serial,
                        cdb.first(),
                        s.key,
                        s.asc.0,
                        s.asc.1
                    );
                }
                ScsiResult {
                    data_out_wanted: expected_data_out(cdb, self.volume.info().block_size),
                    ..ScsiResult::check(&s, self.descriptor_sense())
                }
            }
        }
    }

    fn run(&self, nexus: &Nexus, cdb: &[u8], data_out: &[u8]) -> CmdResult {
        let opcode = *cdb
            .first()
            .ok_or_else(|| Sense::illegal(Asc::INVALID_OPCODE))?;
        let info = match cdb::lookup(cdb) {
            Ok(i) => i,
            Err(0) => return Err(Sense::illegal(Asc::INVALID_OPCODE).into()),
            Err(b) => return Err(Sense::invalid_cdb_field(b, Some(4)).into()),
        };
        cdb::check_usage(info, cdb)?;
        let vinfo = self.volume.info();
        let access_state = self.volume.access_state();
        let exempt = matches!(opcode, op::INQUIRY | op::REPORT_LUNS | op::REQUEST_SENSE);
        {
            let mut st = self.state();
            let key = nexus.key();
            if !st.ua.is_attached(&key) {
                // A transport that does not call attach() still gets
                // per-nexus state.
                st.ua.attach(&key);
                st.ports.insert((nexus.port_group, nexus.rel_port_id));
            }
            if vinfo.size != st.last_size {
                st.last_size = vinfo.size;
                st.ua.push_where(Asc::CAPACITY_DATA_CHANGED, |_| true);
            }
            if access_state != st.last_access {
                st.last_access = access_state;
                st.ua
                    .push_where(Asc::ASYMMETRIC_ACCESS_STATE_CHANGED, |_| true);
            }
            if !exempt {
                if let Some(asc) = st.ua.pop(&key) {
                    return Err(Sense::new(key::UNIT_ATTENTION, asc).into());
                }
            }
            st.pr
                .check(nexus, access_class(opcode, cdb), spc2_allowed(opcode))?;
        }
        if access_state == AccessState::Inaccessible && !alua_allowed(opcode) {
            return Err(Sense::new(key::NOT_READY, Asc::LU_NOT_ACCESSIBLE_UNAVAILABLE).into());
        }
        self.dispatch(nexus, cdb, data_out, &vinfo)
    }

    fn dispatch(&self, nexus: &Nexus, cdb: &[u8], data_out: &[u8], vi: &VolumeInfo) -> CmdResult {
        match cdb[0] {
            op::TEST_UNIT_READY => Ok(Done::default()),
            op::INQUIRY => self.inquiry(nexus, cdb, vi),
            op::REQUEST_SENSE => self.request_sense(nexus, cdb),
            op::READ_CAPACITY_10 => read_capacity10(cdb, vi),
            op::SERVICE_ACTION_IN_16 => match cdb::service_action(cdb) {
                sa::READ_CAPACITY_16 => read_capacity16(cdb, vi, &self.limits),
                _ => get_lba_status(cdb, vi),
            },
            op::READ_6 | op::READ_10 | op::READ_12 | op::READ_16 => self.read(cdb, vi),
            op::WRITE_6 | op::WRITE_10 | op::WRITE_12 | op::WRITE_16 => {
                self.write(cdb, data_out, vi, false)
            }
            op::WRITE_VERIFY_10 | op::WRITE_VERIFY_12 | op::WRITE_VERIFY_16 => {
                self.write(cdb, data_out, vi, true)
            }
            op::VERIFY_10 | op::VERIFY_12 | op::VERIFY_16 => self.verify(cdb, data_out, vi),
            op::PRE_FETCH_10 | op::PRE_FETCH_16 => {
                let (lba, n) = cdb::lba_and_len(cdb).expect("block command");
                check_range(lba, n as u64, vi)?;
                Ok(Done::default())
            }
            op::SYNC_CACHE_10 | op::SYNC_CACHE_16 => {
                let (lba, n) = cdb::lba_and_len(cdb).expect("block command");
                check_range(lba, n as u64, vi)?;
                self.volume
                    .flush()
                    .map_err(|e| io_sense(&e, lba, vi, true))?;
                Ok(Done::default())
            }
            op::WRITE_SAME_10 | op::WRITE_SAME_16 => self.write_same(cdb, data_out, vi),
            op::UNMAP => self.unmap(cdb, data_out, vi),
            op::COMPARE_AND_WRITE => self.compare_and_write(cdb, data_out, vi),
            op::ORWRITE_16 => self.orwrite(cdb, data_out, vi),
            op::EXTENDED_COPY => {
                self.write_protected()?;
                let me = xcopy::Me {
                    volume: &self.volume,
                    naa: &self.ident.naa,
                    resolver: self
                        .copy_resolver
                        .read()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone(),
                };
                let (r, hold) = xcopy::extended_copy(&me, cdb, data_out);
                if let Some((id, st)) = hold {
                    self.state().held.put(&nexus.key(), id, st);
                }
                r?;
                Ok(Done {
                    data_out_wanted: cdb::be32(&cdb[10..14]) as usize,
                    ..Done::default()
                })
            }
            op::RECEIVE_COPY_RESULTS => {
                let held = self.state().held.get(&nexus.key(), cdb[2]);
                Ok(Done::data(xcopy::receive_copy_results(cdb, held)?))
            }
            op::WRITE_ATOMIC_16 => self.write_atomic(cdb, data_out, vi),
            op::MODE_SENSE_6 | op::MODE_SENSE_10 => {
                let req = mode::SenseRequest::parse(cdb);
                let st = self.state().mode;
                let mut d = mode::sense(&req, &st, vi.size / vi.block_size as u64, vi.block_size)?;
                d.truncate(req.alloc);
                Ok(Done::data(d))
            }
            op::MODE_SELECT_6 | op::MODE_SELECT_10 => self.mode_select(nexus, cdb, data_out, vi),
            op::RESERVE_6 => {
                self.state().pr.reserve6(nexus)?;
                Ok(Done::default())
            }
            op::RELEASE_6 => {
                self.state().pr.release6(nexus)?;
                Ok(Done::default())
            }
            op::PERSISTENT_RESERVE_IN => {
                let alloc = cdb::be16(&cdb[7..9]) as usize;
                let mut d = self.state().pr.prin(cdb)?;
                d.truncate(alloc);
                Ok(Done::data(d))
            }
            op::PERSISTENT_RESERVE_OUT => self.prout(nexus, cdb, data_out),
            op::START_STOP_UNIT => start_stop(cdb),
            op::PREVENT_ALLOW => Ok(Done::default()),
            op::READ_DEFECT_DATA_10 | op::READ_DEFECT_DATA_12 => {
                Ok(Done::data(read_defect_data(cdb)))
            }
            op::MAINTENANCE_IN => match cdb::service_action(cdb) {
                sa::REPORT_TARGET_PORT_GROUPS => {
                    let groups = self.port_groups(nexus);
                    Ok(Done::data(report::target_port_groups(cdb, &groups)?))
                }
                sa::REPORT_SUPPORTED_OPCODES => Ok(Done::data(report::supported_opcodes(cdb)?)),
                _ => Ok(Done::data(report::supported_tmfs(cdb))),
            },
            op::REPORT_LUNS => {
                // The transport answers REPORT LUNS for the whole target;
                // a unit asked directly knows only itself.
                Ok(Done::data(report::report_luns(cdb, &[0]).data_in))
            }
            _ => Err(Sense::illegal(Asc::INVALID_OPCODE).into()),
        }
    }

    fn port_groups(&self, nexus: &Nexus) -> Vec<PortGroup> {
        let st = self.state();
        let mut ports = st.ports.clone();
        ports.insert((nexus.port_group, nexus.rel_port_id));
        drop(st);
        // Every port of this node serves the volume equally well, so all
        // groups carry the volume's access state here.
        let state = self.volume.access_state();
        let mut groups: Vec<PortGroup> = Vec::new();
        for (g, p) in ports {
            match groups.iter_mut().find(|x| x.id == g) {
                Some(x) => x.rel_ports.push(p),
                None => groups.push(PortGroup {
                    id: g,
                    state,
                    rel_ports: vec![p],
                }),
            }
        }
        groups
    }

    fn inquiry(&self, nexus: &Nexus, cdb: &[u8], vi: &VolumeInfo) -> CmdResult {
        let evpd = cdb[1] & 0x01 != 0;
        let page = cdb[2];
        let alloc = cdb::be16(&cdb[3..5]) as usize;
        let mut d = if evpd {
            inquiry::vpd(page, &self.ident, vi, &self.limits, nexus)?
        } else {
            if page != 0 {
                return Err(Sense::invalid_cdb_field(2, None).into());
            }
            inquiry::standard(&self.ident)
        };
        d.truncate(alloc);
        Ok(Done::data(d))
    }

    fn request_sense(&self, nexus: &Nexus, cdb: &[u8]) -> CmdResult {
        let desc = cdb[1] & 0x01 != 0;
        let alloc = cdb[4] as usize;
        // A pending unit attention is reported (and cleared) here; else
        // NO SENSE: with autosense every error went out with its status.
        let asc = self.state().ua.pop(&nexus.key());
        let s = match asc {
            Some(a) => Sense::new(key::UNIT_ATTENTION, a),
            None => Sense::new(key::NO_SENSE, Asc::NO_ADDITIONAL),
        };
        let mut d = s.encode(desc);
        d.truncate(alloc);
        Ok(Done::data(d))
    }

    fn write_protected(&self) -> Result<(), Fail> {
        if self.state().mode.swp {
            return Err(Sense::new(key::DATA_PROTECT, Asc::WRITE_PROTECTED).into());
        }
        Ok(())
    }

    fn read(&self, cdb: &[u8], vi: &VolumeInfo) -> CmdResult {
        let (lba, n) = cdb::lba_and_len(cdb).expect("block command");
        check_range(lba, n as u64, vi)?;
        self.check_transfer(cdb, n)?;
        let bs = vi.block_size as u64;
        let mut buf = vec![0u8; (n as u64 * bs) as usize];
        if n > 0 {
            self.volume
                .read(lba * bs, &mut buf)
                .map_err(|e| io_sense(&e, lba, vi, false))?;
        }
        Ok(Done::data(buf))
    }

    fn check_transfer(&self, cdb: &[u8], n: u32) -> Result<(), Fail> {
        if n > self.limits.max_transfer_blocks {
            let at = match cdb[0] >> 5 {
                0 => 4,
                1 | 2 => 7,
                5 => 6,
                _ => 10,
            };
            return Err(Sense::invalid_cdb_field(at, None).into());
        }
        Ok(())
    }

    fn write(&self, cdb: &[u8], data: &[u8], vi: &VolumeInfo, verify: bool) -> CmdResult {
        let (lba, n) = cdb::lba_and_len(cdb).expect("block command");
        let bs = vi.block_size as usize;
        self.write_protected()?;
        check_range(lba, n as u64, vi)?;
        self.check_transfer(cdb, n)?;
        let wanted = n as usize * bs;
        // The initiator may send less than the CDB asks for (iSCSI EDTL
        // smaller than the transfer length): write the whole blocks that
        // came and let the transport report the residual.
        let blocks = (data.len().min(wanted)) / bs;
        let data = &data[..blocks * bs];
        if blocks > 0 {
            self.volume
                .write(lba * bs as u64, data)
                .map_err(|e| io_sense(&e, lba, vi, true))?;
            if verify {
                let mut back = vec![0u8; data.len()];
                self.volume
                    .read(lba * bs as u64, &mut back)
                    .map_err(|e| io_sense(&e, lba, vi, false))?;
                if let Some(i) = back.iter().zip(data).position(|(a, b)| a != b) {
                    return Err(Sense::new(key::MISCOMPARE, Asc::MISCOMPARE_DURING_VERIFY)
                        .with_info(i as u64)
                        .into());
                }
            }
        }
        Ok(Done {
            data_out_wanted: wanted,
            ..Done::default()
        })
    }

    fn verify(&self, cdb: &[u8], data: &[u8], vi: &VolumeInfo) -> CmdResult {
        let (lba, n) = cdb::lba_and_len(cdb).expect("block command");
        let bytchk = (cdb[1] >> 1) & 0x03;
        let bs = vi.block_size as usize;
        if bytchk == 2 {
            return Err(Sense::invalid_cdb_field(1, Some(2)).into());
        }
        check_range(lba, n as u64, vi)?;
        self.check_transfer(cdb, n)?;
        let wanted = match bytchk {
            1 => n as usize * bs,
            3 => bs,
            _ => 0,
        };
        let done = Done {
            data_out_wanted: wanted,
            ..Done::default()
        };
        if n == 0 {
            return Ok(done);
        }
        if bytchk != 0 && data.len() < wanted {
            // Nothing to compare against: the initiator sent too little.
            return Err(Sense::illegal(Asc::INVALID_FIELD_IN_IU).into());
        }
        // Read the range in pieces; with BYTCHK compare, without just make
        // sure every block can be read (the medium verification).
        let total = n as usize * bs;
        let mut buf = vec![0u8; CHUNK.min(total)];
        let mut at = 0usize;
        while at < total {
            let len = buf.len().min(total - at);
            let piece = &mut buf[..len];
            self.volume
                .read(lba * bs as u64 + at as u64, piece)
                .map_err(|e| io_sense(&e, lba + (at / bs) as u64, vi, false))?;
            let mismatch = match bytchk {
                1 => piece
                    .iter()
                    .zip(&data[at..at + len])
                    .position(|(a, b)| a != b),
                3 => piece.chunks(bs).enumerate().find_map(|(bi, blk)| {
                    blk.iter()
                        .zip(&data[..bs])
                        .position(|(a, b)| a != b)
                        .map(|p| bi * bs + p)
                }),
                _ => None,
            };
            if let Some(i) = mismatch {
                return Err(Sense::new(key::MISCOMPARE, Asc::MISCOMPARE_DURING_VERIFY)
                    .with_info((at + i) as u64)
                    .into());
            }
            at += len;
        }
        Ok(done)
    }

    fn write_same(&self, cdb: &[u8], data: &[u8], vi: &VolumeInfo) -> CmdResult {
        let sixteen = cdb[0] == op::WRITE_SAME_16;
        let (lba, n) = cdb::lba_and_len(cdb).expect("block command");
        let unmap = cdb[1] & 0x08 != 0;
        let ndob = sixteen && cdb[1] & 0x01 != 0;
        let bs = vi.block_size as usize;
        self.write_protected()?;
        let blocks = if n == 0 {
            // WSNZ is 0: zero blocks means "to the last block".
            if lba > vi.size / bs as u64 {
                return Err(Sense::illegal(Asc::LBA_OUT_OF_RANGE).into());
            }
            vi.size / bs as u64 - lba
        } else {
            n as u64
        };
        check_range(lba, blocks, vi)?;
        if blocks > self.limits.max_write_same_blocks {
            return Err(Sense::invalid_cdb_field(if sixteen { 10 } else { 7 }, None).into());
        }
        let wanted = if ndob { 0 } else { bs };
        if !ndob && data.len() != bs {
            // One block of data or nothing makes sense: refuse anything else.
            return Err(Sense::illegal(Asc::INVALID_FIELD_IN_IU).into());
        }
        let done = Done {
            data_out_wanted: wanted,
            ..Done::default()
        };
        if blocks == 0 {
            return Ok(done);
        }
        let off = lba * bs as u64;
        let len = blocks * bs as u64;
        if unmap {
            // UNMAP set: the blocks are deallocated and, LBPRZ being set,
            // read back as zeroes whatever the data-out block held (what
            // initiators and libiscsi's suite expect of a thin LUN).
            self.volume
                .unmap(off, len)
                .map_err(|e| io_sense(&e, lba, vi, true))?;
            return Ok(done);
        }
        if ndob || data.iter().all(|&b| b == 0) {
            // Zeroes without UNMAP: the space stays allocated.
            self.volume
                .write_zeroes(off, len, false)
                .map_err(|e| io_sense(&e, lba, vi, true))?;
            return Ok(done);
        }
        // A pattern: fill a buffer with copies and write it piecewise.
        let per = (CHUNK / bs).max(1);
        let mut buf = Vec::with_capacity(per.min(blocks as usize) * bs);
        for _ in 0..per.min(blocks as usize) {
            buf.extend_from_slice(data);
        }
        let mut at = 0u64;
        while at < len {
            let l = (buf.len() as u64).min(len - at) as usize;
            self.volume
                .write(off + at, &buf[..l])
                .map_err(|e| io_sense(&e, lba + at / bs as u64, vi, true))?;
            at += l as u64;
        }
        Ok(done)
    }

    fn unmap(&self, cdb: &[u8], data: &[u8], vi: &VolumeInfo) -> CmdResult {
        let plen = cdb::be16(&cdb[7..9]) as usize;
        self.write_protected()?;
        let done = Done {
            data_out_wanted: plen,
            ..Done::default()
        };
        if plen == 0 {
            return Ok(done);
        }
        if plen < 8 || data.len() < plen {
            return Err(Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR).into());
        }
        let data = &data[..plen];
        let bd_len = cdb::be16(&data[2..4]) as usize;
        if bd_len & 15 != 0 || 8 + bd_len > plen {
            return Err(Sense::invalid_param_field(2, None).into());
        }
        let count = bd_len / 16;
        if count as u32 > self.limits.max_unmap_descriptors {
            return Err(Sense::invalid_param_field(2, None).into());
        }
        let bs = vi.block_size as u64;
        let mut ranges = Vec::with_capacity(count);
        for i in 0..count {
            let d = &data[8 + i * 16..8 + (i + 1) * 16];
            let lba = cdb::be64(&d[0..8]);
            let n = cdb::be32(&d[8..12]);
            check_range(lba, n as u64, vi)?;
            if n > self.limits.max_unmap_blocks {
                return Err(Sense::invalid_param_field((8 + i * 16 + 8) as u16, None).into());
            }
            if n > 0 {
                ranges.push((lba, n));
            }
        }
        // Validated as a whole first, so a bad descriptor unmaps nothing.
        for (lba, n) in ranges {
            self.volume
                .unmap(lba * bs, n as u64 * bs)
                .map_err(|e| io_sense(&e, lba, vi, true))?;
        }
        Ok(done)
    }

    fn compare_and_write(&self, cdb: &[u8], data: &[u8], vi: &VolumeInfo) -> CmdResult {
        let (lba, n) = cdb::lba_and_len(cdb).expect("block command");
        let bs = vi.block_size as usize;
        self.write_protected()?;
        if n > self.limits.max_compare_write_blocks as u32 {
            return Err(Sense::invalid_cdb_field(13, None).into());
        }
        check_range(lba, n as u64, vi)?;
        let len = n as usize * bs;
        let done = Done {
            data_out_wanted: 2 * len,
            ..Done::default()
        };
        if n == 0 {
            // SBC-4 calls NUMBER OF LOGICAL BLOCKS = 0 a no-op, but a count
            // of 0 here is in practice a count of 256 that wrapped in a
            // one-byte field (libiscsi's suite sends exactly that and expects
            // INVALID FIELD IN CDB, as LIO-derived targets answer): refusing
            // it costs no real initiator anything (VMware ATS uses 1).
            return Err(Sense::invalid_cdb_field(13, None).into());
        }
        if data.len() != 2 * len {
            // Verify and write halves only make sense with exactly 2 x NLB.
            return Err(Sense::invalid_cdb_field(13, None).into());
        }
        let off = lba * bs as u64;
        match self
            .volume
            .compare_and_write(off, &data[..len], &data[len..])
        {
            Ok(()) => Ok(done),
            Err(IoError::CompareMismatch { offset, .. }) => {
                Err(Sense::new(key::MISCOMPARE, Asc::MISCOMPARE_DURING_VERIFY)
                    .with_info(offset.saturating_sub(off))
                    .into())
            }
            Err(e) => Err(io_sense(&e, lba, vi, true).into()),
        }
    }

    /// WRITE ATOMIC(16): all the blocks or none, also against concurrent
    /// writers, through the volume's compare-and-write (retried on a race).
    fn write_atomic(&self, cdb: &[u8], data: &[u8], vi: &VolumeInfo) -> CmdResult {
        let (lba, n) = cdb::lba_and_len(cdb).expect("block command");
        let bs = vi.block_size as usize;
        self.write_protected()?;
        if cdb::be16(&cdb[10..12]) != 0 {
            // ATOMIC BOUNDARY: the Block Limits page offers no boundaries.
            return Err(Sense::invalid_cdb_field(10, None).into());
        }
        check_range(lba, n as u64, vi)?;
        if n > self
            .limits
            .max_atomic_blocks
            .min(self.limits.max_transfer_blocks)
        {
            return Err(Sense::invalid_cdb_field(12, None).into());
        }
        let wanted = n as usize * bs;
        let done = Done {
            data_out_wanted: wanted,
            ..Done::default()
        };
        if n == 0 {
            return Ok(done);
        }
        if data.len() < wanted {
            // Writing part of an atomic write would defeat its purpose.
            return Err(Sense::illegal(Asc::INVALID_FIELD_IN_IU).into());
        }
        self.replace_atomically(lba, &data[..wanted], vi, |_, new| new)?;
        Ok(done)
    }

    /// Reads the blocks at `lba`, computes their new contents with `f(old,
    /// data)` and stores them with compare-and-write, retrying while
    /// another writer changes them in between.
    fn replace_atomically(
        &self,
        lba: u64,
        data: &[u8],
        vi: &VolumeInfo,
        f: impl Fn(u8, u8) -> u8,
    ) -> Result<(), Fail> {
        let off = lba * vi.block_size as u64;
        let mut old = vec![0u8; data.len()];
        for _ in 0..64 {
            self.volume
                .read(off, &mut old)
                .map_err(|e| io_sense(&e, lba, vi, false))?;
            let new: Vec<u8> = old.iter().zip(data).map(|(a, b)| f(*a, *b)).collect();
            match self.volume.compare_and_write(off, &old, &new) {
                Ok(()) => return Ok(()),
                Err(IoError::CompareMismatch { .. }) => continue,
                Err(e) => return Err(io_sense(&e, lba, vi, true).into()),
            }
        }
        // Another writer kept changing the blocks: let the initiator retry.
        Err(Sense::new(key::ABORTED_COMMAND, Asc::NO_ADDITIONAL).into())
    }

    /// ORWRITE(16): the stored blocks become stored OR data, atomically
    /// against other writers (compare-and-write, retried on a race).
    fn orwrite(&self, cdb: &[u8], data: &[u8], vi: &VolumeInfo) -> CmdResult {
        let (lba, n) = cdb::lba_and_len(cdb).expect("block command");
        let bs = vi.block_size as usize;
        self.write_protected()?;
        check_range(lba, n as u64, vi)?;
        self.check_transfer(cdb, n)?;
        let wanted = n as usize * bs;
        let done = Done {
            data_out_wanted: wanted,
            ..Done::default()
        };
        let blocks = data.len().min(wanted) / bs;
        if blocks == 0 {
            return Ok(done);
        }
        self.replace_atomically(lba, &data[..blocks * bs], vi, |a, b| a | b)?;
        Ok(done)
    }

    fn mode_select(&self, nexus: &Nexus, cdb: &[u8], data: &[u8], vi: &VolumeInfo) -> CmdResult {
        let ten = cdb[0] == op::MODE_SELECT_10;
        let plen = if ten {
            cdb::be16(&cdb[7..9]) as usize
        } else {
            cdb[4] as usize
        };
        let done = Done {
            data_out_wanted: plen,
            ..Done::default()
        };
        if data.len() < plen {
            return Err(Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR).into());
        }
        let pf = cdb[1] & 0x10 != 0;
        let sp = cdb[1] & 0x01 != 0;
        let mut st = self.state();
        let before = st.mode;
        mode::select(ten, pf, sp, &data[..plen], &mut st.mode, vi.block_size)?;
        if st.mode != before {
            // Other initiators learn that the shared parameters moved.
            let k = nexus.key();
            st.ua.push_where(Asc::MODE_PARAMETERS_CHANGED, |n| n != k);
        }
        Ok(done)
    }

    fn prout(&self, nexus: &Nexus, cdb: &[u8], data: &[u8]) -> CmdResult {
        let plen = cdb::be32(&cdb[5..9]) as usize;
        let mut st = self.state();
        let uas: Vec<UaTarget> = st.pr.prout(nexus, cdb, data)?;
        for u in uas {
            let ip = format!("{}|", u.initiator_port);
            st.ua.push_where(u.asc, |k| {
                k.starts_with(&ip) && u.target_port.as_ref().is_none_or(|t| k[ip.len()..] == **t)
            });
        }
        Ok(Done {
            data_out_wanted: plen,
            ..Done::default()
        })
    }
}

/// SPC-4 table 110 and SPC-2: which commands a reservation held by another
/// nexus blocks, and as what kind of access.
fn access_class(opcode: u8, cdb: &[u8]) -> Access {
    match opcode {
        op::READ_6
        | op::READ_10
        | op::READ_12
        | op::READ_16
        | op::VERIFY_10
        | op::VERIFY_12
        | op::VERIFY_16
        | op::PRE_FETCH_10
        | op::PRE_FETCH_16
        | op::READ_DEFECT_DATA_10
        | op::READ_DEFECT_DATA_12 => Access::Read,
        op::SERVICE_ACTION_IN_16 if cdb::service_action(cdb) == sa::GET_LBA_STATUS => Access::Read,
        op::WRITE_6
        | op::WRITE_10
        | op::WRITE_12
        | op::WRITE_16
        | op::WRITE_VERIFY_10
        | op::WRITE_VERIFY_12
        | op::WRITE_VERIFY_16
        | op::WRITE_SAME_10
        | op::WRITE_SAME_16
        | op::UNMAP
        | op::COMPARE_AND_WRITE
        | op::ORWRITE_16
        | op::WRITE_ATOMIC_16
        | op::EXTENDED_COPY
        | op::SYNC_CACHE_10
        | op::SYNC_CACHE_16
        | op::MODE_SELECT_6
        | op::MODE_SELECT_10
        | op::START_STOP_UNIT => Access::Write,
        // PREVENT (not ALLOW) counts as a write: it would pin the medium.
        op::PREVENT_ALLOW if cdb[4] & 0x03 != 0 => Access::Write,
        _ => Access::Exempt,
    }
}

/// Commands another nexus may still send while one holds an SPC-2
/// RESERVE(6) (SPC-2 5.5.1): everything else gets RESERVATION CONFLICT.
fn spc2_allowed(opcode: u8) -> bool {
    matches!(
        opcode,
        op::INQUIRY | op::REPORT_LUNS | op::REQUEST_SENSE | op::RELEASE_6 | op::MAINTENANCE_IN
    )
}

/// Commands an ALUA "unavailable" port still serves (SPC-4 5.16.2.4.5).
fn alua_allowed(opcode: u8) -> bool {
    matches!(
        opcode,
        op::INQUIRY
            | op::REPORT_LUNS
            | op::REQUEST_SENSE
            | op::MAINTENANCE_IN
            | op::MODE_SENSE_6
            | op::MODE_SENSE_10
            | op::PERSISTENT_RESERVE_IN
            | op::READ_CAPACITY_10
            | op::SERVICE_ACTION_IN_16
    )
}

/// The data-out length a CDB asks for, so a transport can compute
/// residuals even when the command fails before looking at its data.
pub fn expected_data_out(cdb: &[u8], block_size: u32) -> usize {
    let bs = block_size as usize;
    let Some(&opcode) = cdb.first() else { return 0 };
    let blocks = || cdb::lba_and_len(cdb).map(|(_, n)| n as usize).unwrap_or(0);
    match opcode {
        op::WRITE_6
        | op::WRITE_10
        | op::WRITE_12
        | op::WRITE_16
        | op::WRITE_VERIFY_10
        | op::WRITE_VERIFY_12
        | op::WRITE_VERIFY_16
        | op::ORWRITE_16
        | op::WRITE_ATOMIC_16 => blocks() * bs,
        op::COMPARE_AND_WRITE => 2 * blocks() * bs,
        op::VERIFY_10 | op::VERIFY_12 | op::VERIFY_16 if cdb.len() > 1 => match (cdb[1] >> 1) & 3 {
            1 => blocks() * bs,
            3 => bs,
            _ => 0,
        },
        op::WRITE_SAME_10 => bs,
        op::WRITE_SAME_16 if cdb.len() > 1 => {
            if cdb[1] & 0x01 != 0 {
                0
            } else {
                bs
            }
        }
        op::UNMAP | op::MODE_SELECT_10 if cdb.len() >= 9 => cdb::be16(&cdb[7..9]) as usize,
        op::MODE_SELECT_6 if cdb.len() >= 5 => cdb[4] as usize,
        op::PERSISTENT_RESERVE_OUT if cdb.len() >= 9 => cdb::be32(&cdb[5..9]) as usize,
        op::EXTENDED_COPY if cdb.len() >= 14 => cdb::be32(&cdb[10..14]) as usize,
        _ => 0,
    }
}

fn check_range(lba: u64, blocks: u64, vi: &VolumeInfo) -> Result<(), Fail> {
    let cap = vi.size / vi.block_size as u64;
    if lba > cap || blocks > cap - lba {
        return Err(Sense::illegal(Asc::LBA_OUT_OF_RANGE).into());
    }
    Ok(())
}

/// Maps a volume error to sense data; `lba` goes into INFORMATION.
fn io_sense(e: &IoError, lba: u64, vi: &VolumeInfo, write: bool) -> Sense {
    log::warn!("volume {}: I/O at lba {lba} failed: {e}", vi.name);
    match e {
        IoError::OutOfRange { .. } => Sense::illegal(Asc::LBA_OUT_OF_RANGE),
        IoError::Checksum { offset, .. } => {
            Sense::new(key::MEDIUM_ERROR, Asc::UNRECOVERED_READ_ERROR)
                .with_info(offset / vi.block_size as u64)
        }
        IoError::NoSpace { .. } => Sense::new(
            key::DATA_PROTECT,
            Asc::SPACE_ALLOCATION_FAILED_WRITE_PROTECT,
        )
        .with_info(lba),
        // Transient: NOT READY, "becoming ready" makes initiators retry.
        IoError::Unavailable { .. } => Sense::new(key::NOT_READY, Asc(0x04, 0x01)),
        IoError::Device { .. } if write => {
            Sense::new(key::MEDIUM_ERROR, Asc::WRITE_ERROR).with_info(lba)
        }
        IoError::Device { .. } => {
            Sense::new(key::MEDIUM_ERROR, Asc::UNRECOVERED_READ_ERROR).with_info(lba)
        }
        IoError::Gone { .. } => Sense::illegal(Asc::LUN_NOT_SUPPORTED),
        IoError::CompareMismatch { .. } => {
            Sense::new(key::MISCOMPARE, Asc::MISCOMPARE_DURING_VERIFY)
        }
        // Only compare-and-write returns it for a valid range: the range
        // spans two extents, which no single owner can update atomically.
        IoError::Misaligned { .. } => Sense::invalid_cdb_field(2, None),
    }
}

fn read_capacity10(cdb: &[u8], vi: &VolumeInfo) -> CmdResult {
    // LBA without PMI is an invalid field (SBC-3 5.15).
    if cdb[8] & 0x01 == 0 && cdb::be32(&cdb[2..6]) != 0 {
        return Err(Sense::invalid_cdb_field(2, None).into());
    }
    let blocks = vi.size / vi.block_size as u64;
    let last = blocks.saturating_sub(1);
    let mut d = Vec::with_capacity(8);
    d.extend_from_slice(
        &(if last > u32::MAX as u64 {
            u32::MAX
        } else {
            last as u32
        })
        .to_be_bytes(),
    );
    d.extend_from_slice(&vi.block_size.to_be_bytes());
    Ok(Done::data(d))
}

fn read_capacity16(cdb: &[u8], vi: &VolumeInfo, limits: &Limits) -> CmdResult {
    if cdb[14] & 0x01 == 0 && cdb::be64(&cdb[2..10]) != 0 {
        return Err(Sense::invalid_cdb_field(2, None).into());
    }
    let alloc = cdb::be32(&cdb[10..14]) as usize;
    let blocks = vi.size / vi.block_size as u64;
    let mut d = vec![0u8; 32];
    d[0..8].copy_from_slice(&blocks.saturating_sub(1).to_be_bytes());
    d[8..12].copy_from_slice(&vi.block_size.to_be_bytes());
    d[13] = limits.physical_exp & 0x0F;
    // LBPME (UNMAP and friends are in force) and LBPRZ (unmapped reads 0).
    d[14] = 0x80 | 0x40;
    d.truncate(alloc);
    Ok(Done::data(d))
}

/// GET LBA STATUS: the volume interface does not expose allocation, so one
/// descriptor says "mapped or unknown" (SBC-4 provisioning status 0) from
/// the LBA asked for to the end.
fn get_lba_status(cdb: &[u8], vi: &VolumeInfo) -> CmdResult {
    let lba = cdb::be64(&cdb[2..10]);
    let alloc = cdb::be32(&cdb[10..14]) as usize;
    let blocks = vi.size / vi.block_size as u64;
    if lba >= blocks {
        return Err(Sense::illegal(Asc::LBA_OUT_OF_RANGE).into());
    }
    let mut d = vec![0u8; 24];
    d[0..4].copy_from_slice(&20u32.to_be_bytes());
    d[8..16].copy_from_slice(&lba.to_be_bytes());
    let n = (blocks - lba).min(u32::MAX as u64) as u32;
    d[16..20].copy_from_slice(&n.to_be_bytes());
    d[20] = 0x00;
    d.truncate(alloc);
    Ok(Done::data(d))
}

fn start_stop(cdb: &[u8]) -> CmdResult {
    let power_condition = cdb[4] >> 4;
    let loej = cdb[4] & 0x02 != 0;
    let start = cdb[4] & 0x01 != 0;
    if power_condition == 0 && loej && !start {
        // Eject on a medium that cannot be removed.
        return Err(Sense::invalid_cdb_field(4, Some(1)).into());
    }
    // The volume is always spun up; START and STOP are accepted as no-ops.
    Ok(Done::default())
}

fn read_defect_data(cdb: &[u8]) -> Vec<u8> {
    // No defects to report: a header with an empty list in the format asked.
    if cdb[0] == op::READ_DEFECT_DATA_10 {
        let alloc = cdb::be16(&cdb[7..9]) as usize;
        let mut d = vec![0, cdb[2] & 0x1F, 0, 0];
        d.truncate(alloc);
        d
    } else {
        let alloc = cdb::be32(&cdb[6..10]) as usize;
        let mut d = vec![0, cdb[1] & 0x1F, 0, 0, 0, 0, 0, 0];
        d.truncate(alloc);
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrite_engine::volume::mem::MemVolume;

    fn lun() -> (Lun, Arc<MemVolume>) {
        let v = MemVolume::new("t", 1 << 20, 512);
        (Lun::new(v.clone()), v)
    }

    fn nx(i: u8) -> Nexus {
        Nexus::iscsi(&format!("iqn.i{i}"), [0, 0, 0, 0, 0, i], "iqn.t", 1, 1)
    }

    fn rw10(op: u8, lba: u32, n: u16) -> Vec<u8> {
        let mut c = vec![0u8; 10];
        c[0] = op;
        c[2..6].copy_from_slice(&lba.to_be_bytes());
        c[7..9].copy_from_slice(&n.to_be_bytes());
        c
    }

    fn sense_of(r: &ScsiResult) -> (u8, u8, u8) {
        let s = r.sense.as_ref().expect("sense");
        (s[2] & 0xf, s[12], s[13])
    }

    #[test]
    fn write_read_round_trip_and_range_errors() {
        let (l, _) = lun();
        let n = nx(1);
        let data = vec![0x5Au8; 1024];
        let w = l.execute(&n, &rw10(op::WRITE_10, 10, 2), &data);
        assert_eq!(w.status, Status::Good);
        assert_eq!(w.data_out_wanted, 1024);
        let r = l.execute(&n, &rw10(op::READ_10, 10, 2), &[]);
        assert_eq!(r.data_in, data);
        let e = l.execute(&n, &rw10(op::READ_10, 2047, 2), &[]);
        assert_eq!(sense_of(&e), (key::ILLEGAL_REQUEST, 0x21, 0));
        let z = l.execute(&n, &rw10(op::READ_10, 2048, 0), &[]);
        assert_eq!(z.status, Status::Good);
    }

    #[test]
    fn short_data_out_writes_only_whole_blocks() {
        let (l, v) = lun();
        let n = nx(1);
        l.execute(&n, &rw10(op::WRITE_10, 0, 2), &[b'a'; 1024]);
        let r = l.execute(&n, &rw10(op::WRITE_10, 0, 2), &[b'b'; 512]);
        assert_eq!((r.status, r.data_out_wanted), (Status::Good, 1024));
        let mut back = [0u8; 1024];
        v.read(0, &mut back).unwrap();
        assert!(back[..512].iter().all(|&b| b == b'b') && back[512..].iter().all(|&b| b == b'a'));
    }

    #[test]
    fn compare_and_write_reports_miscompare_offset() {
        let (l, _) = lun();
        let n = nx(1);
        let mut cdb = vec![0u8; 16];
        cdb[0] = op::COMPARE_AND_WRITE;
        cdb[13] = 1;
        let mut d = vec![0u8; 1024];
        d[512..].fill(7);
        assert_eq!(l.execute(&n, &cdb, &d).status, Status::Good);
        let r = l.execute(&n, &cdb, &d); // the block is 7s now, not zeroes
        assert_eq!(sense_of(&r), (key::MISCOMPARE, 0x1D, 0));
        assert_eq!(r.sense.unwrap()[0], 0xF0, "info valid");
        assert_eq!(
            l.execute(&n, &cdb, &d[..512]).status,
            Status::CheckCondition
        );
    }

    #[test]
    fn lun_reset_raises_unit_attention_everywhere_once() {
        let (l, _) = lun();
        let (a, b) = (nx(1), nx(2));
        l.attach(&a);
        l.attach(&b);
        l.reset(ResetKind::LogicalUnit);
        let tur = [0u8; 6];
        for n in [&a, &b] {
            let r = l.execute(n, &tur, &[]);
            assert_eq!(sense_of(&r), (key::UNIT_ATTENTION, 0x29, 0x03));
            assert_eq!(l.execute(n, &tur, &[]).status, Status::Good);
        }
    }

    #[test]
    fn capacity_change_is_announced() {
        let (l, v) = lun();
        let a = nx(1);
        l.attach(&a);
        v.resize(2 << 20);
        let r = l.execute(&a, &[0u8; 6], &[]);
        assert_eq!(sense_of(&r), (key::UNIT_ATTENTION, 0x2A, 0x09));
    }

    #[test]
    fn reservations_conflict_for_others() {
        let (l, _) = lun();
        let (a, b) = (nx(1), nx(2));
        assert_eq!(
            l.execute(&a, &[op::RESERVE_6, 0, 0, 0, 0, 0], &[]).status,
            Status::Good
        );
        assert_eq!(
            l.execute(&b, &rw10(op::READ_10, 0, 1), &[]).status,
            Status::ReservationConflict
        );
        assert_eq!(
            l.execute(&b, &[op::INQUIRY, 0, 0, 0, 96, 0], &[]).status,
            Status::Good
        );
        l.detach(&a);
        assert_eq!(
            l.execute(&b, &rw10(op::READ_10, 0, 1), &[]).status,
            Status::Good
        );
    }

    #[test]
    fn write_same_pattern_and_unmap() {
        let (l, v) = lun();
        let n = nx(1);
        let mut c = rw10(op::WRITE_SAME_10, 4, 3);
        assert_eq!(l.execute(&n, &c, &[9u8; 512]).status, Status::Good);
        let mut b = [0u8; 1536];
        v.read(2048, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == 9));
        c[1] = 0x08;
        assert_eq!(l.execute(&n, &c, &[0u8; 512]).status, Status::Good);
        v.read(2048, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == 0));
        assert_eq!(
            l.execute(&n, &c, &[0u8; 100]).status,
            Status::CheckCondition
        );
    }

    #[test]
    fn descriptor_sense_after_mode_select() {
        let (l, _) = lun();
        let n = nx(1);
        let ms = l.execute(&n, &[op::MODE_SENSE_6, 0x08, 0x0A, 0, 255, 0], &[]);
        let mut p = ms.data_in.clone();
        p[0] = 0;
        p[2] = 0;
        p[4 + 2] |= 0x04;
        let sel = l.execute(&n, &[op::MODE_SELECT_6, 0x10, 0, 0, p.len() as u8, 0], &p);
        assert_eq!(sel.status, Status::Good);
        let e = l.execute(&n, &rw10(op::READ_10, 5000, 1), &[]);
        assert_eq!(e.sense.unwrap()[0], 0x72);
    }
}
