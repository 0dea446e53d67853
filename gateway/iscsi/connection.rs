//! One iSCSI connection: login, then full feature phase.
//!
//! The connection's coroutine reads PDUs; each SCSI command runs in a
//! coroutine of its own on the same reactor (so many commands are in flight
//! per connection), and task management in another. Everything sent goes
//! through `Conn::send`, serialised by a coroutine mutex, which also stamps
//! StatSN/ExpCmdSN/MaxCmdSN so they leave in order. Data-Out payloads are
//! read straight into their command's buffer.
//!
//! A protocol violation closes only this connection (after a Reject where
//! the RFC has one); the session's other connections and the process go on.

use super::login::{Login, Step};
use super::pdu::{
    self, opcode, reject, OutPdu, Pdu, PduError, Request, Residual, ScsiCmd, BHS_LEN, RESERVED_TAG,
};
use super::session::{CmdSnVerdict, ConnShared, Session, TaskCtl};
use super::target::{ConnectionInfo, IscsiTarget};
use super::{text, tmf};
use crate::scsi::{self, cdb::op, decode_lun, Asc, Sense, Status};
use ferrite_engine::rt::{self, net::TcpStream, sync::Event, sync::Mutex};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// The largest data-out buffer one command may ask for. Larger writes
/// exceed every LUN's maximum transfer length anyway.
const MAX_EDTL: u32 = 64 << 20;
/// Login text PDUs are at most this long (RFC 7143 default MRDSL).
const LOGIN_MAX_DATA: usize = 8192;

/// Why the connection ends.
#[derive(Debug)]
enum End {
    /// The peer closed or the socket failed.
    Io(io::Error),
    /// A protocol error: Reject (reason, offending header) then close.
    Protocol(u8, Box<[u8; BHS_LEN]>, String),
    /// Close without a word (header digest error, timeout, kill).
    Silent(String),
    /// Logged out.
    Logout,
}

impl From<io::Error> for End {
    fn from(e: io::Error) -> Self {
        End::Io(e)
    }
}

enum Incoming {
    Pdu(Pdu),
    /// No PDU started before the idle deadline.
    Idle,
    /// A Data-Out whose payload went straight to its command.
    Consumed,
}

/// One R2T sequence of a write.
struct R2tSeq {
    ttt: u32,
    offset: u32,
    len: u32,
    got: u32,
    datasn: u32,
    done: bool,
}

/// The data-out side of a write command.
struct WriteXfer {
    task: Arc<TaskCtl>,
    itt: u32,
    edtl: u32,
    buf: RefCell<Vec<u8>>,
    /// More unsolicited Data-Out PDUs are expected.
    unsol_open: Cell<bool>,
    unsol_limit: u32,
    unsol_datasn: Cell<u32>,
    /// Bytes received in order from offset 0 before the first R2T.
    received: Cell<u32>,
    r2ts: RefCell<Vec<R2tSeq>>,
    /// Set when a Data-Out broke the rules: the task ends with CHECK
    /// CONDITION, ABORTED COMMAND and this additional sense code.
    failed: Cell<Option<Asc>>,
}

struct Conn {
    target: Arc<IscsiTarget>,
    pg: u16,
    stream: TcpStream,
    shared: Arc<ConnShared>,
    writer: Mutex<()>,
    statsn: Cell<u32>,
    header_digest: Cell<bool>,
    data_digest: Cell<bool>,
    max_send: Cell<u32>,
    max_recv: Cell<u32>,
    session: RefCell<Option<Arc<Session>>>,
    login_window: Cell<(u32, u32)>,
    xfers: RefCell<HashMap<u32, Rc<WriteXfer>>>,
    unsol: RefCell<HashMap<u32, Rc<WriteXfer>>>,
    next_ttt: Cell<u32>,
    active: Cell<usize>,
    idle: Event,
    text_rest: RefCell<Option<(u32, Vec<u8>)>>,
    ping: Cell<Option<(u32, Instant)>>,
    closing: Cell<bool>,
    /// Bytes of command data this connection holds (see
    /// `TargetOptions::max_buffered_per_connection`).
    buffered: Cell<usize>,
}

fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}

/// Serves one accepted connection until it ends (called by the portal
/// group's `TcpServer`, in a coroutine of its own).
pub(crate) fn serve(target: Arc<IscsiTarget>, pg: u16, stream: TcpStream, peer: SocketAddr) {
    let local = stream.local_addr().unwrap_or(peer);
    let id = target.conn_id();
    let shared = Arc::new(ConnShared::new(
        id,
        rt::current_reactor().unwrap_or(0),
        peer,
        local,
        stream.std().try_clone().ok(),
    ));
    let conn = Rc::new(Conn {
        target: target.clone(),
        pg,
        stream,
        shared,
        writer: Mutex::new(()),
        statsn: Cell::new(0),
        header_digest: Cell::new(false),
        data_digest: Cell::new(false),
        max_send: Cell::new(LOGIN_MAX_DATA as u32),
        max_recv: Cell::new(LOGIN_MAX_DATA as u32),
        session: RefCell::new(None),
        login_window: Cell::new((0, 0)),
        xfers: RefCell::new(HashMap::new()),
        unsol: RefCell::new(HashMap::new()),
        next_ttt: Cell::new(1),
        active: Cell::new(0),
        idle: Event::new(),
        text_rest: RefCell::new(None),
        ping: Cell::new(None),
        closing: Cell::new(false),
        buffered: Cell::new(0),
    });
    let end = match conn.login() {
        Ok(true) => conn.full_feature(),
        Ok(false) => End::Silent("login refused".into()),
        Err(e) => e,
    };
    match &end {
        End::Protocol(reason, hdr, why) => {
            log::warn!(
                "iscsi: {peer}: {why}; rejecting (reason {reason:#04x}) and closing the connection"
            );
            let mut p = pdu::reject(*reason);
            p.takes_statsn = true;
            let _ = conn.send(p, &hdr[..]);
        }
        End::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            log::debug!("iscsi: {peer} closed the connection")
        }
        End::Io(e) => log::info!("iscsi: {peer}: connection ended: {e}"),
        End::Silent(why) => log::info!("iscsi: {peer}: closing: {why}"),
        End::Logout => log::debug!("iscsi: {peer} logged out"),
    }
    conn.teardown();
}

impl Conn {
    fn window(&self) -> (u32, u32) {
        match self.session.borrow().as_ref() {
            Some(s) => s.window(),
            None => self.login_window.get(),
        }
    }

    fn session(&self) -> Arc<Session> {
        self.session
            .borrow()
            .clone()
            .expect("full feature phase has a session")
    }

    /// Sends one PDU: header (+digest), data, padding (+digest). StatSN and
    /// the command window are stamped under the writer lock.
    fn send(&self, mut p: OutPdu, data: &[u8]) -> io::Result<()> {
        if self.closing.get() {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "connection is closing",
            ));
        }
        let _g = self.writer.lock();
        let sn = self.statsn.get();
        let (exp, max) = self.window();
        p.stamp(sn, exp, max);
        if p.takes_statsn {
            self.statsn.set(sn.wrapping_add(1));
        }
        p.set_data_len(data.len());
        let hdig = crc32c::crc32c(&p.bhs).to_le_bytes();
        let pad = [0u8; 3];
        let padn = pad4(data.len());
        let ddig = crc32c::crc32c_append(crc32c::crc32c(data), &pad[..padn]).to_le_bytes();
        let mut parts: [&[u8]; 5] = [&p.bhs, &[], &[], &[], &[]];
        let mut n = 1;
        if self.header_digest.get() {
            parts[n] = &hdig;
            n += 1;
        }
        if !data.is_empty() {
            parts[n] = data;
            n += 1;
            if padn > 0 {
                parts[n] = &pad[..padn];
                n += 1;
            }
            if self.data_digest.get() {
                parts[n] = &ddig;
                n += 1;
            }
        }
        self.stream.write_all_vectored(&parts[..n])
    }

    fn read_exact(&self, buf: &mut [u8]) -> io::Result<()> {
        let deadline = Some(Instant::now() + self.target.options().nop_timeout);
        self.stream.read_exact_until(buf, deadline)
    }

    /// Reads the next PDU. `idle` bounds the wait for its first byte only.
    fn next(&self, idle: Option<Instant>, max_data: usize) -> Result<Incoming, End> {
        let mut bhs = [0u8; BHS_LEN];
        let mut got = 0;
        while got < BHS_LEN {
            let deadline = if got == 0 {
                idle
            } else {
                Some(Instant::now() + self.target.options().nop_timeout)
            };
            match self.stream.read_until(&mut bhs[got..], deadline) {
                Ok(0) => {
                    return Err(End::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "peer closed the connection",
                    )))
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::TimedOut && got == 0 => {
                    return Ok(Incoming::Idle)
                }
                Err(e) => return Err(e.into()),
            }
        }
        let (hd, dd) = (self.header_digest.get(), self.data_digest.get());
        let f = match pdu::framing(&bhs, hd, dd, max_data) {
            Ok(f) => f,
            Err(e) => {
                return Err(End::Protocol(
                    reject::PROTOCOL_ERROR,
                    Box::new(bhs),
                    e.to_string(),
                ))
            }
        };
        let mut ahs = vec![0u8; f.ahs_len];
        self.read_exact(&mut ahs)?;
        if hd {
            let mut d = [0u8; 4];
            self.read_exact(&mut d)?;
            let want = crc32c::crc32c_append(crc32c::crc32c(&bhs), &ahs);
            if u32::from_le_bytes(d) != want {
                // The lengths cannot be trusted: nothing to do but close.
                return Err(End::Silent(
                    PduError::HeaderDigest {
                        got: u32::from_le_bytes(d),
                        want,
                    }
                    .to_string(),
                ));
            }
        }
        if bhs[0] & 0x3F == opcode::DATA_OUT && f.data_len > 0 {
            self.data_out(&bhs, f.data_len)?;
            return Ok(Incoming::Consumed);
        }
        let mut data = Vec::new();
        if f.data_len > 0 {
            let padded = f.data_len + pad4(f.data_len);
            let mut raw = vec![0u8; padded + if dd { 4 } else { 0 }];
            self.read_exact(&mut raw)?;
            if dd {
                let got = u32::from_le_bytes(raw[padded..].try_into().expect("4 bytes"));
                let want = crc32c::crc32c(&raw[..padded]);
                if got != want {
                    return Err(End::Protocol(
                        reject::DATA_DIGEST,
                        Box::new(bhs),
                        PduError::DataDigest { got, want }.to_string(),
                    ));
                }
            }
            raw.truncate(f.data_len);
            data = raw;
        }
        Ok(Incoming::Pdu(Pdu { bhs, ahs, data }))
    }

    /// A Data-Out payload: validated against its R2T (or the unsolicited
    /// burst) and read into the command's buffer.
    fn data_out(&self, bhs: &[u8; BHS_LEN], len: usize) -> Result<(), End> {
        let itt = pdu::be32(&bhs[16..20]);
        let ttt = pdu::be32(&bhs[20..24]);
        let datasn = pdu::be32(&bhs[36..40]);
        let offset = pdu::be32(&bhs[40..44]);
        let final_ = bhs[1] & 0x80 != 0;
        let dd = self.data_digest.get();
        let tail = pad4(len) + if dd { 4 } else { 0 };
        let x = if ttt == RESERVED_TAG {
            self.unsol.borrow().get(&itt).cloned()
        } else {
            self.xfers.borrow().get(&ttt).cloned()
        };
        let Some(x) = x else {
            // A task we no longer have (aborted, refused, ignored): drop it.
            log::debug!(
                "iscsi: {}: discarding Data-Out for unknown itt {itt:#x} ttt {ttt:#x}",
                self.shared.peer
            );
            let mut sink = vec![0u8; len + tail];
            self.read_exact(&mut sink)?;
            return Ok(());
        };
        if x.itt != itt {
            // Not attributable to the task: the initiator is confused.
            return Err(End::Protocol(
                reject::PROTOCOL_ERROR,
                Box::new(*bhs),
                format!(
                    "Data-Out ttt {ttt:#x} belongs to itt {:#x}, not {itt:#x}",
                    x.itt
                ),
            ));
        }
        let len32 = len as u32;
        // Where the payload may go, per the DataSN and offset rules of
        // RFC 7143 (DataPDUInOrder and DataSequenceInOrder are Yes). A
        // violation fails this task only: its data is discarded and it ends
        // with CHECK CONDITION once the initiator has sent what it meant to.
        let mut problem: Option<(Asc, String)> = None;
        let seq = if ttt == RESERVED_TAG {
            if !x.unsol_open.get() {
                problem = Some((
                    Asc::UNEXPECTED_UNSOLICITED_DATA,
                    format!("unsolicited Data-Out for itt {itt:#x} after its final PDU"),
                ));
            } else if datasn != x.unsol_datasn.get() {
                problem = Some((
                    Asc::DATA_PHASE_ERROR,
                    format!(
                        "unsolicited Data-Out DataSN {datasn}, expected {}",
                        x.unsol_datasn.get()
                    ),
                ));
            } else if offset != x.received.get()
                || offset.checked_add(len32).is_none_or(|e| e > x.unsol_limit)
            {
                problem = Some((
                    Asc::DATA_OFFSET_ERROR,
                    format!(
                        "unsolicited Data-Out at {offset}+{len} outside 0..{} (expected offset {})",
                        x.unsol_limit,
                        x.received.get()
                    ),
                ));
            }
            None
        } else {
            let r2ts = x.r2ts.borrow();
            match r2ts.iter().position(|s| s.ttt == ttt && !s.done) {
                None => {
                    problem = Some((
                        Asc::INVALID_TTT,
                        format!("Data-Out for finished R2T ttt {ttt:#x}"),
                    ));
                    None
                }
                Some(i) => {
                    let s = &r2ts[i];
                    if datasn != s.datasn {
                        problem = Some((
                            Asc::DATA_PHASE_ERROR,
                            format!(
                                "Data-Out DataSN {datasn}, expected {} (itt {itt:#x})",
                                s.datasn
                            ),
                        ));
                    } else if offset != s.offset + s.got || s.got + len32 > s.len {
                        problem = Some((
                            Asc::DATA_OFFSET_ERROR,
                            format!(
                                "Data-Out at {offset}+{len} outside R2T {}+{} (received {})",
                                s.offset, s.len, s.got
                            ),
                        ));
                    }
                    Some(i)
                }
            }
        };
        let start = offset as usize;
        if problem.is_none() && start + len > x.edtl as usize {
            problem = Some((
                Asc::TOO_MUCH_WRITE_DATA,
                format!(
                    "Data-Out beyond the expected data transfer length {}",
                    x.edtl
                ),
            ));
        }
        if problem.is_none() {
            let mut buf = x.buf.borrow_mut();
            self.read_exact(&mut buf[start..start + len])?;
            let mut t = vec![0u8; tail];
            self.read_exact(&mut t)?;
            if dd {
                let padn = pad4(len);
                let got = u32::from_le_bytes(t[padn..].try_into().expect("4 bytes"));
                let want =
                    crc32c::crc32c_append(crc32c::crc32c(&buf[start..start + len]), &t[..padn]);
                if got != want {
                    drop(buf);
                    // RFC 7143 7.8: reject the PDU; at ERL 0 the task fails.
                    self.reject_pdu(reject::DATA_DIGEST, bhs)?;
                    problem = Some((
                        Asc::PROTOCOL_CRC_ERROR,
                        PduError::DataDigest { got, want }.to_string(),
                    ));
                }
            }
        } else {
            let mut sink = vec![0u8; len + tail];
            self.read_exact(&mut sink)?;
        }
        if let Some((asc, why)) = problem {
            log::warn!("iscsi: {}: {why}; failing itt {itt:#x}", self.shared.peer);
            if x.failed.get().is_none() {
                x.failed.set(Some(asc));
            }
        }
        // Account for the PDU either way, so the task knows when the
        // initiator is done sending.
        match seq {
            None => {
                if x.unsol_open.get() {
                    x.received.set(x.received.get().saturating_add(len32));
                    x.unsol_datasn.set(datasn.wrapping_add(1));
                    if final_ || x.failed.get().is_some() && x.received.get() >= x.unsol_limit {
                        x.unsol_open.set(false);
                        self.unsol.borrow_mut().remove(&itt);
                    }
                }
                x.task.wake.set();
            }
            Some(i) => {
                let mut r2ts = x.r2ts.borrow_mut();
                let s = &mut r2ts[i];
                s.got = s.got.saturating_add(len32).min(s.len);
                s.datasn = datasn.wrapping_add(1);
                if s.got == s.len || final_ {
                    if s.got != s.len && x.failed.get().is_none() {
                        log::warn!("iscsi: {}: final Data-Out of R2T ttt {ttt:#x} after {} of {} bytes; failing itt {itt:#x}", self.shared.peer, s.got, s.len);
                        x.failed.set(Some(Asc::DATA_PHASE_ERROR));
                    }
                    s.done = true;
                    self.xfers.borrow_mut().remove(&ttt);
                }
                x.task.wake.set();
            }
        }
        Ok(())
    }

    /// The login phase. `Ok(true)`: full feature phase begins.
    fn login(self: &Rc<Self>) -> Result<bool, End> {
        let deadline = Instant::now() + self.target.options().login_timeout;
        let mut login: Option<Login> = None;
        loop {
            let pdu = match self.next(Some(deadline), LOGIN_MAX_DATA)? {
                Incoming::Pdu(p) => p,
                Incoming::Idle => return Err(End::Silent("login timed out".into())),
                Incoming::Consumed => return Err(End::Silent("Data-Out during login".into())),
            };
            let req = match pdu.decode() {
                Ok(Request::Login(r)) => r,
                Ok(_) | Err(_) if login.is_none() => {
                    return Err(End::Silent(format!(
                        "first PDU is not a Login Request (opcode {:#04x})",
                        pdu.opcode()
                    )))
                }
                Ok(_) | Err(_) => {
                    return Err(End::Protocol(
                        reject::PROTOCOL_ERROR,
                        Box::new(pdu.bhs),
                        format!("opcode {:#04x} during login", pdu.opcode()),
                    ));
                }
            };
            let l = login.get_or_insert_with(|| {
                self.shared.cid.store(req.cid, Ordering::Release);
                self.statsn.set(req.exp_statsn);
                Login::new(
                    self.target.clone(),
                    self.pg,
                    self.shared.peer,
                    self.shared.clone(),
                )
            });
            self.login_window.set((req.cmdsn, req.cmdsn));
            match l.step(&req) {
                Step::Reply(p, d) => self.send(p, &d)?,
                Step::Fail(p, d, why) => {
                    log::warn!("iscsi: login from {} refused: {why}", self.shared.peer);
                    let _ = self.send(p, &d);
                    return Ok(false);
                }
                Step::Established {
                    pdu,
                    data,
                    session,
                    conn,
                } => {
                    *self.session.borrow_mut() = Some(session.clone());
                    // Listed before the initiator hears it is logged in, so
                    // that what it does next (another connection, a
                    // `iscsi_get_connections`) finds it; teardown unlists it
                    // whatever happens to the reply.
                    let node = session.node().map(|n| n.name.clone()).unwrap_or_default();
                    self.target.register_conn(ConnectionInfo {
                        id: self.shared.id,
                        cid: self.shared.cid(),
                        tsih: session.tsih,
                        lcore_id: self.shared.reactor,
                        initiator_addr: self.shared.peer.ip().to_string(),
                        target_addr: self.shared.local.ip().to_string(),
                        target_node_name: node.clone(),
                        initiator_name: session.initiator_name.clone(),
                    });
                    self.send(pdu, &data)?;
                    // Digests and segment sizes apply from the next PDU on.
                    self.header_digest.set(conn.header_digest);
                    self.data_digest.set(conn.data_digest);
                    self.max_send.set(conn.max_send_data);
                    self.max_recv.set(conn.max_recv_data);
                    log::info!(
                        "iscsi: {} ({}) logged in to {} (tsih {}, cid {}, {}digests {}/{})",
                        session.initiator_name,
                        self.shared.peer,
                        if session.is_discovery() {
                            "discovery"
                        } else {
                            &node
                        },
                        session.tsih,
                        self.shared.cid(),
                        "",
                        conn.header_digest,
                        conn.data_digest
                    );
                    return Ok(true);
                }
            }
        }
    }

    /// Full feature phase (or a discovery session): the reader loop.
    fn full_feature(self: &Rc<Self>) -> End {
        let opts = self.target.options().clone();
        loop {
            if self.shared.kill_requested.load(Ordering::Acquire) {
                return End::Silent("closed by the target".into());
            }
            let deadline = match self.ping.get() {
                None => Instant::now() + opts.nop_in_interval,
                Some((_, sent)) => sent + opts.nop_timeout,
            };
            let max_recv = self.max_recv.get().max(LOGIN_MAX_DATA as u32) as usize;
            match self.next(Some(deadline), max_recv) {
                Ok(Incoming::Idle) => {
                    if self.ping.get().is_some() {
                        return End::Silent("the initiator stopped answering NOP-In pings".into());
                    }
                    let ttt = self.new_ttt();
                    if let Err(e) = self.send(pdu::nop_in(RESERVED_TAG, ttt, [0; 8], 0), &[]) {
                        return End::Io(e);
                    }
                    self.ping.set(Some((ttt, Instant::now())));
                }
                Ok(Incoming::Consumed) => self.ping.set(None),
                Ok(Incoming::Pdu(p)) => {
                    self.ping.set(None);
                    if let Err(e) = self.handle(p) {
                        return e;
                    }
                }
                Err(e) => return e,
            }
        }
    }

    fn new_ttt(&self) -> u32 {
        let mut t = self.next_ttt.get();
        if t == RESERVED_TAG {
            t = 1;
        }
        self.next_ttt.set(t.wrapping_add(1));
        t
    }

    fn reject_pdu(&self, reason: u8, bhs: &[u8; BHS_LEN]) -> Result<(), End> {
        self.send(pdu::reject(reason), &bhs[..]).map_err(End::Io)
    }

    fn handle(self: &Rc<Self>, p: Pdu) -> Result<(), End> {
        let session = self.session();
        let req = match p.decode() {
            Ok(r) => r,
            Err(e) => {
                log::warn!("iscsi: {}: {e}; rejecting the PDU", self.shared.peer);
                return self.reject_pdu(e.reject_reason(), &p.bhs);
            }
        };
        if session.is_discovery()
            && !matches!(
                req,
                Request::Text(_) | Request::NopOut(_) | Request::Logout(_)
            )
        {
            // RFC 7143 4.3: a discovery session carries text and logout only.
            return self.reject_pdu(reject::PROTOCOL_ERROR, &p.bhs);
        }
        match req {
            Request::ScsiCmd(c) => self.scsi_command(&session, c, &p.bhs),
            Request::NopOut(n) => {
                if !n.immediate && session.admit(n.cmdsn, false) == CmdSnVerdict::Ignore {
                    return Ok(());
                }
                if !n.immediate {
                    session.command_done();
                }
                if n.itt != RESERVED_TAG {
                    let len = n.data.len().min(self.max_send.get() as usize);
                    self.send(pdu::nop_in(n.itt, RESERVED_TAG, n.lun, len), &n.data[..len])?;
                }
                Ok(())
            }
            Request::Tmf(t) => {
                if session.admit(t.cmdsn, t.immediate) == CmdSnVerdict::Ignore {
                    return Ok(());
                }
                let exp = session.window().0;
                let me = self.clone();
                let (itt, immediate) = (t.itt, t.immediate);
                let s = session.clone();
                let spawned = self.spawn_tracked(move || {
                    let session = s;
                    let outcome = tmf::execute(&me.target, &session, &t, exp);
                    if !t.immediate {
                        session.command_done();
                    }
                    let _ = me.send(pdu::tmf_response(t.itt, outcome.response), &[]);
                    if outcome.drop_sessions {
                        if let Some(node) = session.node() {
                            for s in me.target.sessions_of(node) {
                                s.kill();
                            }
                        }
                    }
                });
                if !spawned {
                    if !immediate {
                        session.command_done();
                    }
                    self.send(pdu::tmf_response(itt, tmf::response::REJECTED), &[])?;
                }
                Ok(())
            }
            Request::Text(t) => {
                if session.admit(t.cmdsn, t.immediate) == CmdSnVerdict::Ignore {
                    return Ok(());
                }
                if !t.immediate {
                    session.command_done();
                }
                let body = if t.ttt != RESERVED_TAG {
                    // The initiator asks for the rest of a long answer.
                    match self.text_rest.borrow_mut().take() {
                        Some((ttt, rest)) if ttt == t.ttt => rest,
                        _ => return self.reject_pdu(reject::INVALID_PDU_FIELD, &p.bhs),
                    }
                } else {
                    match text::answer(
                        &self.target,
                        &session,
                        self.shared.peer,
                        self.shared.local,
                        &t.data,
                    ) {
                        Ok(b) => b,
                        Err(why) => {
                            log::warn!("iscsi: {}: text request: {why}", self.shared.peer);
                            return self.reject_pdu(reject::INVALID_PDU_FIELD, &p.bhs);
                        }
                    }
                };
                let (now, rest) = text::split(&body, self.max_send.get() as usize);
                if rest.is_empty() {
                    self.send(
                        pdu::text_response(t.itt, RESERVED_TAG, true, false, now.len()),
                        &now,
                    )?;
                } else {
                    let ttt = self.new_ttt();
                    *self.text_rest.borrow_mut() = Some((ttt, rest));
                    self.send(pdu::text_response(t.itt, ttt, false, true, now.len()), &now)?;
                }
                Ok(())
            }
            Request::Logout(l) => {
                if session.admit(l.cmdsn, l.immediate) == CmdSnVerdict::Ignore {
                    return Ok(());
                }
                if !l.immediate {
                    session.command_done();
                }
                match l.reason {
                    // Close the session, or this connection.
                    0 | 1 if l.reason == 0 || l.cid == self.shared.cid() => {
                        self.quiesce(&session);
                        if l.reason == 0 {
                            for c in session.conns() {
                                if c.id != self.shared.id {
                                    c.kill();
                                }
                            }
                        }
                        let (w, r) = (
                            session.params.default_time2wait,
                            session.params.default_time2retain,
                        );
                        self.send(pdu::logout_response(l.itt, 0, w, r), &[])?;
                        Err(End::Logout)
                    }
                    1 => {
                        let other = session.conns().into_iter().find(|c| c.cid() == l.cid);
                        let resp = match other {
                            Some(c) => {
                                c.kill();
                                0
                            }
                            None => 1, // CID not found
                        };
                        self.send(pdu::logout_response(l.itt, resp, 0, 0), &[])?;
                        Ok(())
                    }
                    // Connection recovery needs ErrorRecoveryLevel 2.
                    2 => {
                        self.send(pdu::logout_response(l.itt, 2, 0, 0), &[])?;
                        Ok(())
                    }
                    _ => self.reject_pdu(reject::INVALID_PDU_FIELD, &p.bhs),
                }
            }
            Request::DataOut(_) => Ok(()), // zero-length Data-Out: nothing to place
            Request::Snack => self.reject_pdu(reject::NOT_SUPPORTED, &p.bhs),
            Request::Login(_) => Err(End::Protocol(
                reject::PROTOCOL_ERROR,
                Box::new(p.bhs),
                "Login Request in full feature phase".into(),
            )),
        }
    }

    /// Stops this connection's tasks and waits until none runs.
    fn quiesce(&self, session: &Session) {
        for t in session.tasks_where(|t| t.conn_id == self.shared.id) {
            t.abort();
        }
        while self.active.get() > 0 {
            self.idle.reset();
            if self.active.get() == 0 {
                break;
            }
            self.idle.wait();
        }
    }

    /// Spawns a coroutine that counts as activity of this connection.
    /// `false` if no coroutine could be started (no stack memory).
    fn spawn_tracked(self: &Rc<Self>, f: impl FnOnce() + 'static) -> bool {
        self.active.set(self.active.get() + 1);
        let me = self.clone();
        let r = rt::Builder::new().static_name("iscsi-task").spawn(move || {
            f();
            me.active.set(me.active.get() - 1);
            if me.active.get() == 0 {
                me.idle.set();
            }
        });
        if let Err(e) = r {
            log::error!("iscsi: cannot start a task coroutine: {e}");
            self.active.set(self.active.get() - 1);
            return false;
        }
        true
    }

    /// How much data a command may make the target hold: its data-out
    /// buffer or its read result, whichever the CDB and EDTL make larger.
    fn buffer_charge(session: &Session, cmd: &ScsiCmd) -> usize {
        let bs = session
            .node()
            .and_then(|n| decode_lun(cmd.lun).and_then(|id| n.lun(id)))
            .map(|l| l.volume().info().block_size as usize)
            .unwrap_or(512);
        let cdb_bytes = scsi::cdb::lba_and_len(&cmd.cdb)
            .map(|(_, n)| n as usize * bs)
            .unwrap_or(0);
        (cmd.edtl as usize).max(cdb_bytes).min(MAX_EDTL as usize)
    }

    fn reserve_buffer(&self, bytes: usize) -> bool {
        if bytes == 0 {
            return true;
        }
        if self.buffered.get() + bytes > self.target.options().max_buffered_per_connection
            || !self.target.reserve_buffer(bytes)
        {
            return false;
        }
        self.buffered.set(self.buffered.get() + bytes);
        true
    }

    fn release_buffer(&self, bytes: usize) {
        if bytes > 0 {
            self.buffered.set(self.buffered.get() - bytes);
            self.target.release_buffer(bytes);
        }
    }

    /// Answers a command at once with a bare status (TASK SET FULL, BUSY).
    fn refuse(
        &self,
        session: &Session,
        itt: u32,
        edtl: u32,
        counted: bool,
        status: Status,
    ) -> Result<(), End> {
        session.remove_task(itt);
        if counted {
            session.command_done();
        }
        let residual = Residual::of(0, edtl);
        self.send(pdu::scsi_response(itt, status as u8, residual, 0, 0), &[])
            .map_err(End::Io)
    }

    fn scsi_command(
        self: &Rc<Self>,
        session: &Arc<Session>,
        cmd: ScsiCmd,
        bhs: &[u8; BHS_LEN],
    ) -> Result<(), End> {
        if session.admit(cmd.cmdsn, cmd.immediate) == CmdSnVerdict::Ignore {
            log::debug!(
                "iscsi: {}: ignoring CmdSN {:#x} outside the window {:?}",
                self.shared.peer,
                cmd.cmdsn,
                session.window()
            );
            return Ok(());
        }
        let counted = !cmd.immediate;
        let lun = decode_lun(cmd.lun).unwrap_or(u64::MAX);
        let task = Arc::new(TaskCtl {
            itt: cmd.itt,
            lun,
            cmdsn: cmd.cmdsn,
            conn_id: self.shared.id,
            aborted: Default::default(),
            wake: Event::new(),
            done: Event::new(),
        });
        if !session.add_task(task.clone()) {
            if counted {
                session.command_done();
            }
            return self.reject_pdu(reject::TASK_IN_PROGRESS, bhs);
        }
        let charge = Self::buffer_charge(session, &cmd);
        if !self.reserve_buffer(charge) {
            log::debug!(
                "iscsi: {}: {} bytes of command data would exceed the buffer budget; TASK SET FULL",
                self.shared.peer,
                charge
            );
            return self.refuse(session, cmd.itt, cmd.edtl, counted, Status::TaskSetFull);
        }
        let params = &session.params;
        let mut early: Option<Sense> = None;
        if cmd.read && cmd.write {
            early = Some(Sense::invalid_cdb_field(0, None)); // bidirectional: not offered
        } else if cmd.write && cmd.edtl > MAX_EDTL {
            early = Some(Sense::invalid_cdb_field(0, None));
        }
        let xfer = if cmd.write && cmd.edtl > 0 && early.is_none() {
            if !cmd.data.is_empty() && !params.immediate_data {
                session.remove_task(cmd.itt);
                self.release_buffer(charge);
                if counted {
                    session.command_done();
                }
                return Err(End::Protocol(
                    reject::PROTOCOL_ERROR,
                    Box::new(*bhs),
                    "immediate data although ImmediateData=No".into(),
                ));
            }
            let unsol_limit = params.first_burst_length.min(cmd.edtl);
            if cmd.data.len() as u32 > unsol_limit {
                session.remove_task(cmd.itt);
                self.release_buffer(charge);
                if counted {
                    session.command_done();
                }
                return Err(End::Protocol(
                    reject::PROTOCOL_ERROR,
                    Box::new(*bhs),
                    format!(
                        "{} bytes of immediate data exceed FirstBurstLength/EDTL {unsol_limit}",
                        cmd.data.len()
                    ),
                ));
            }
            let mut buf = vec![0u8; cmd.edtl as usize];
            buf[..cmd.data.len()].copy_from_slice(&cmd.data);
            let x = Rc::new(WriteXfer {
                task: task.clone(),
                itt: cmd.itt,
                edtl: cmd.edtl,
                buf: RefCell::new(buf),
                unsol_open: Cell::new(!cmd.final_ && !params.initial_r2t),
                unsol_limit,
                unsol_datasn: Cell::new(0),
                received: Cell::new(cmd.data.len() as u32),
                r2ts: RefCell::new(Vec::new()),
                failed: Cell::new(None),
            });
            if x.unsol_open.get() {
                self.unsol.borrow_mut().insert(cmd.itt, x.clone());
            }
            Some(x)
        } else {
            None
        };
        let (itt, edtl) = (cmd.itt, cmd.edtl);
        let me = self.clone();
        let s = session.clone();
        let t = task.clone();
        let spawned = self.spawn_tracked(move || {
            me.run_command(&s, &t, cmd, xfer, early);
            me.release_buffer(charge);
            s.remove_task(t.itt);
            t.done.set();
        });
        if !spawned {
            self.unsol.borrow_mut().remove(&itt);
            self.release_buffer(charge);
            task.done.set();
            return self.refuse(session, itt, edtl, counted, Status::Busy);
        }
        Ok(())
    }

    /// One SCSI command, from data-out collection to the response.
    fn run_command(
        self: &Rc<Self>,
        session: &Arc<Session>,
        task: &Arc<TaskCtl>,
        cmd: ScsiCmd,
        xfer: Option<Rc<WriteXfer>>,
        early: Option<Sense>,
    ) {
        let counted = !cmd.immediate;
        let mut r2t_count = 0u32;
        let data_out = match &xfer {
            Some(x) => {
                let ok = self.collect(session, x, &cmd, &mut r2t_count);
                self.unsol.borrow_mut().remove(&x.itt);
                self.xfers.borrow_mut().retain(|_, v| !Rc::ptr_eq(v, x));
                if !ok {
                    if counted {
                        session.command_done();
                    }
                    return;
                }
                match x.buf.try_borrow_mut() {
                    Ok(mut b) => std::mem::take(&mut *b),
                    Err(_) => {
                        if counted {
                            session.command_done();
                        }
                        return;
                    }
                }
            }
            None => Vec::new(),
        };
        let failed = xfer.as_ref().and_then(|x| x.failed.get());
        let result = match (early, failed) {
            (Some(s), _) => scsi::ScsiResult::check(&s, false),
            (None, Some(asc)) => {
                scsi::ScsiResult::check(&Sense::new(scsi::sense::key::ABORTED_COMMAND, asc), false)
            }
            (None, None) => self.execute(session, &cmd, &data_out),
        };
        drop(data_out);
        if counted {
            session.command_done();
        }
        if task.is_aborted() || self.closing.get() {
            return;
        }
        if let Err(e) = self.respond(&cmd, result, r2t_count) {
            log::debug!(
                "iscsi: {}: response to itt {:#x} not sent: {e}",
                self.shared.peer,
                cmd.itt
            );
        }
    }

    fn execute(&self, session: &Arc<Session>, cmd: &ScsiCmd, data: &[u8]) -> scsi::ScsiResult {
        let (Some(node), Some(nexus)) = (session.node(), session.nexus.as_ref()) else {
            return scsi::ScsiResult::check(&Sense::illegal(scsi::Asc::LUN_NOT_SUPPORTED), false);
        };
        if cmd.cdb.first() == Some(&op::REPORT_LUNS) {
            return scsi::report::report_luns(&cmd.cdb, &node.lun_ids());
        }
        match decode_lun(cmd.lun).and_then(|id| node.lun(id)) {
            Some(l) => l.execute(nexus, &cmd.cdb, data),
            None => scsi::lun_not_present(&cmd.cdb),
        }
    }

    /// Gathers a write's data: the unsolicited burst, then R2Ts (at most
    /// MaxOutstandingR2T at a time, each at most MaxBurstLength). `false`
    /// if the task was aborted or the connection is going away.
    fn collect(
        &self,
        session: &Session,
        x: &Rc<WriteXfer>,
        cmd: &ScsiCmd,
        r2t_count: &mut u32,
    ) -> bool {
        let stop = || x.task.is_aborted() || self.closing.get();
        loop {
            x.task.wake.reset();
            if stop() {
                return false;
            }
            if !x.unsol_open.get() {
                break;
            }
            x.task.wake.wait();
        }
        let mbl = session.params.max_burst_length.max(512);
        let max_out = session.params.max_outstanding_r2t.max(1) as usize;
        let mut next = x.received.get();
        loop {
            x.task.wake.reset();
            if stop() {
                return false;
            }
            let outstanding = x.r2ts.borrow().iter().filter(|s| !s.done).count();
            if next >= x.edtl && outstanding == 0 {
                return true;
            }
            let mut room = max_out.saturating_sub(outstanding);
            while room > 0 && next < x.edtl {
                let len = mbl.min(x.edtl - next);
                let ttt = self.new_ttt();
                x.r2ts.borrow_mut().push(R2tSeq {
                    ttt,
                    offset: next,
                    len,
                    got: 0,
                    datasn: 0,
                    done: false,
                });
                self.xfers.borrow_mut().insert(ttt, x.clone());
                if self
                    .send(pdu::r2t(cmd.itt, cmd.lun, ttt, *r2t_count, next, len), &[])
                    .is_err()
                {
                    return false;
                }
                *r2t_count += 1;
                next += len;
                room -= 1;
            }
            if x.r2ts.borrow().iter().any(|s| !s.done) {
                x.task.wake.wait();
            }
        }
    }

    /// Sends the data and status of a finished command.
    fn respond(&self, cmd: &ScsiCmd, r: scsi::ScsiResult, r2t_count: u32) -> io::Result<()> {
        let edtl = cmd.edtl as usize;
        let wanted = if cmd.write {
            r.data_out_wanted
        } else {
            r.data_in.len()
        };
        let residual = Residual::of(wanted, cmd.edtl);
        let status = r.status as u8;
        let data: &[u8] = if cmd.read {
            &r.data_in[..r.data_in.len().min(edtl)]
        } else {
            &[]
        };
        let collapse = r.sense.is_none() && matches!(r.status, Status::Good | Status::ConditionMet);
        let mut datasn = 0u32;
        if !data.is_empty() {
            let session = self.session();
            let mbl = session.params.max_burst_length.max(512) as usize;
            let per_pdu = (self.max_send.get() as usize).min(mbl).max(512);
            let mut off = 0usize;
            while off < data.len() {
                let burst_end = (off / mbl + 1) * mbl;
                let n = per_pdu.min(data.len() - off).min(burst_end - off);
                let last = off + n == data.len();
                let final_ = last || off + n == burst_end;
                let st = if last && collapse {
                    Some((status, residual))
                } else {
                    None
                };
                self.send(
                    pdu::data_in(cmd.itt, cmd.lun, datasn, off as u32, n, final_, st),
                    &data[off..off + n],
                )?;
                datasn += 1;
                off += n;
            }
            if collapse {
                return Ok(());
            }
        }
        let exp_datasn = if cmd.write { r2t_count } else { datasn };
        match &r.sense {
            Some(s) => {
                let mut seg = Vec::with_capacity(2 + s.len());
                seg.extend_from_slice(&(s.len() as u16).to_be_bytes());
                seg.extend_from_slice(s);
                self.send(
                    pdu::scsi_response(cmd.itt, status, residual, s.len(), exp_datasn),
                    &seg,
                )
            }
            None => self.send(
                pdu::scsi_response(cmd.itt, status, residual, 0, exp_datasn),
                &[],
            ),
        }
    }

    /// After the reader stops: abort what still runs, wait for it, and let
    /// the session go when this was its last connection (I_T nexus loss).
    fn teardown(self: &Rc<Self>) {
        self.closing.set(true);
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        let session = self.session.borrow().clone();
        if let Some(s) = &session {
            for t in s.tasks_where(|t| t.conn_id == self.shared.id) {
                t.abort();
            }
        }
        while self.active.get() > 0 {
            self.idle.reset();
            if self.active.get() == 0 {
                break;
            }
            self.idle.wait();
        }
        self.xfers.borrow_mut().clear();
        self.unsol.borrow_mut().clear();
        if let Some(s) = session {
            if s.remove_conn(self.shared.id) == 0 {
                s.release_nexus();
                self.target.remove_session_if(&s);
                log::debug!(
                    "iscsi: session tsih {} of {} ended",
                    s.tsih,
                    s.initiator_name
                );
            }
        }
        self.target.unregister_conn(self.shared.id);
        self.shared.closed.store(true, Ordering::Release);
        self.shared
            .dup
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }
}
