//! One NVMe/TCP connection is one queue, admin or I/O. Three kinds of
//! coroutines serve it, all on the reactor the connection landed on:
//! - the reader (this function's coroutine) parses PDUs, answers Connect,
//!   runs R2T data transfers and hands each ready command to
//! - a coroutine per command, which runs it (volume I/O parks only that
//!   coroutine) and gives its answer to
//! - the writer, the only one to write to the socket, batching PDUs into
//!   one `writev` when several are ready.
//!
//! A malformed PDU ends the queue with a C2HTermReq naming the error; it
//! never costs other queues anything. A host that disappears ends the
//! reader (EOF or error), which stops the writer; commands still running
//! finish and their answers are dropped. The admin queue's end ends its
//! controller, which closes the controller's I/O queues.

use super::admin;
use super::capsule::{Direction, Sqe};
use super::controller::Controller;
use super::digest;
use super::fabrics;
use super::io;
use super::outbox::{Completion, Out, Outbox};
use super::pdu::{self, CommonHeader, FatalError, H2c, Negotiated, CH_LEN};
use super::spec::{fes, pdu_type, status, with_dnr};
use super::subsystem::ListenAddress;
use super::target::{NvmfTarget, TransportOpts};
use ferrite_engine::rt::{self, net::TcpStream, sync};
use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::io as stdio;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Instant;

/// In-capsule data an admin queue accepts: Linux sends fabrics commands
/// (Connect's 1 KiB) in-capsule up to 8 KiB regardless of IOCCSZ.
const ADMIN_ICD: u32 = 8192;
/// Receive buffer: several small PDUs per read system call.
const RECV_BUF: usize = 64 * 1024;
/// PDUs the writer gathers into one `writev`.
const WRITE_BATCH: usize = 64;

/// A command ready to run: its SQE, the data the host sent with it, and
/// the length of the data it expects back.
pub(crate) struct Request {
    pub sqe: Sqe,
    pub data: Vec<u8>,
    pub xfer_len: u32,
}

/// Serves one accepted connection until it ends.
pub(crate) fn serve(
    target: Arc<NvmfTarget>,
    sock: TcpStream,
    peer: SocketAddr,
    listener: ListenAddress,
) {
    let Some(opts) = target.transport() else {
        log::warn!("nvmf: connection from {peer} on {listener} before the TCP transport exists");
        return;
    };
    let sock = Rc::new(sock);
    let mut rx = RecvBuf::new(
        sock.clone(),
        Some(Instant::now() + target.config.connect_timeout),
    );
    let neg = match initialize(&sock, &mut rx, &opts) {
        Ok(n) => n,
        Err(Ended::Fatal(e, offending)) => {
            log::warn!("nvmf: {peer}: bad ICReq: {e}");
            let _ = sock.write_all(&pdu::encode_c2h_term(&e, &offending));
            return;
        }
        Err(Ended::Io(e)) => {
            log::debug!("nvmf: {peer}: connection ended before ICReq: {e}");
            return;
        }
        Err(Ended::Closed) => return,
    };
    // Room for every command's answer plus an R2T each, so that the reader
    // never waits for the writer while the host behaves.
    let cap = 2 * (opts.max_queue_depth.max(opts.max_aq_depth) as usize) + 16;
    let (tx, orx) = sync::channel::<Out>(cap);
    let sqhd = Rc::new(Cell::new(0u16));
    let writer = {
        let (sock, sqhd) = (sock.clone(), sqhd.clone());
        rt::Builder::new()
            .static_name("nvmf-writer")
            .spawn(move || writer(sock, orx, neg, sqhd))
    };
    let writer = match writer {
        Ok(w) => w,
        Err(e) => {
            log::error!("nvmf: {peer}: cannot start a writer: {e}");
            return;
        }
    };
    let mut q = Reader {
        target,
        sock: sock.clone(),
        listener,
        peer,
        opts,
        out: Outbox::new(tx, Arc::new(AtomicUsize::new(0)), neg),
        neg,
        ctrl: None,
        qid: 0,
        entries: 0,
        sqhd,
        transfers: HashMap::new(),
        next_ttag: 0,
        fused: Fused::default(),
    };
    let end = q.run(&mut rx);
    match &end {
        Ended::Fatal(e, offending) => {
            log::warn!("nvmf: {peer} queue {}: {e}; closing the queue", q.qid);
            if !q.out.try_send(Out::Raw(pdu::encode_c2h_term(e, offending))) {
                let _ = sock.shutdown(std::net::Shutdown::Both);
            }
        }
        Ended::Io(e) => log::info!("nvmf: {peer} queue {}: connection lost: {e}", q.qid),
        Ended::Closed => log::debug!("nvmf: {peer} queue {}: closed by the host", q.qid),
    }
    if !q.out.try_send(Out::Close) {
        // The writer is stuck on a host that does not read: cut it off.
        let _ = sock.shutdown(std::net::Shutdown::Both);
    }
    let _ = writer.join();
    if let Some(c) = q.ctrl.take() {
        c.remove_queue(q.qid);
    }
}

/// Why a queue ended.
enum Ended {
    /// A protocol error: answered with a C2HTermReq carrying the start of
    /// the offending PDU.
    Fatal(FatalError, Vec<u8>),
    Io(stdio::Error),
    /// The host closed the connection (or asked to, with a termination
    /// request or Disconnect).
    Closed,
}

impl From<stdio::Error> for Ended {
    fn from(e: stdio::Error) -> Self {
        if e.kind() == stdio::ErrorKind::UnexpectedEof {
            Ended::Closed
        } else {
            Ended::Io(e)
        }
    }
}

/// Reads the ICReq and answers it.
fn initialize(
    sock: &TcpStream,
    rx: &mut RecvBuf,
    opts: &TransportOpts,
) -> Result<Negotiated, Ended> {
    let mut b = [0u8; pdu::IC_LEN];
    rx.read_exact(&mut b[..CH_LEN])?;
    let ch = CommonHeader::parse(&b);
    // Check what we can before reading further, so that a stray client's
    // bytes do not make us wait for 120 more.
    if ch.pdu_type != pdu_type::IC_REQ || ch.plen as usize != pdu::IC_LEN {
        let e = pdu::parse_icreq(&b[..CH_LEN]).err().unwrap_or_else(|| {
            FatalError::new(fes::INVALID_PDU_HEADER_FIELD, 4, "ICReq PLEN is not 128")
        });
        return Err(Ended::Fatal(e, b[..CH_LEN].to_vec()));
    }
    rx.read_exact(&mut b[CH_LEN..])?;
    let ic = pdu::parse_icreq(&b).map_err(|e| Ended::Fatal(e, b.to_vec()))?;
    let neg = Negotiated {
        hdgst: ic.hdgst,
        ddgst: ic.ddgst,
        hpda: ic.hpda,
        maxh2cdata: opts.max_io_size,
        max_icd: opts.in_capsule_data_size.max(ADMIN_ICD),
    };
    sock.write_all(&pdu::encode_icresp(neg.hdgst, neg.ddgst, neg.maxh2cdata))?;
    Ok(neg)
}

/// An R2T-driven transfer of a command's data from the host.
struct Transfer {
    req: Request,
    received: u32,
    /// End of the range the outstanding R2T asked for.
    r2t_end: u32,
    bad_digest: bool,
}

struct Reader {
    target: Arc<NvmfTarget>,
    sock: Rc<TcpStream>,
    listener: ListenAddress,
    peer: SocketAddr,
    opts: TransportOpts,
    out: Outbox,
    neg: Negotiated,
    ctrl: Option<Arc<Controller>>,
    qid: u16,
    /// Queue entries (SQSIZE + 1) once connected.
    entries: u32,
    sqhd: Rc<Cell<u16>>,
    transfers: HashMap<u16, Transfer>,
    next_ttag: u16,
    fused: Fused,
}

impl Reader {
    fn run(&mut self, rx: &mut RecvBuf) -> Ended {
        match self.run_inner(rx) {
            Ok(()) => Ended::Closed,
            Err(e) => e,
        }
    }

    fn run_inner(&mut self, rx: &mut RecvBuf) -> Result<(), Ended> {
        // Common header, command header (64) and header digest.
        let mut hdr = [0u8; pdu::CMD_HLEN + pdu::DIGEST_LEN];
        loop {
            if self.out.stalled.get() {
                return Err(Ended::Io(stdio::Error::other(
                    "the host does not read its answers; dropping the queue",
                )));
            }
            rx.read_exact(&mut hdr[..CH_LEN])?;
            let ch = CommonHeader::parse(&hdr);
            let rest = pdu::header_rest_len(&ch, &self.neg)
                .map_err(|e| Ended::Fatal(e, hdr[..CH_LEN].to_vec()))?;
            rx.read_exact(&mut hdr[CH_LEN..CH_LEN + rest])?;
            let h = pdu::parse_h2c_header(&hdr[..CH_LEN + rest], &self.neg)
                .map_err(|e| Ended::Fatal(e, hdr[..CH_LEN + rest].to_vec()))?;
            rx.skip(h.pad)?;
            match h.pdu {
                H2c::Cmd { sqe } => {
                    let mut data = vec![0u8; h.data_len];
                    rx.read_exact(&mut data)?;
                    let digest_ok = if h.ddgst {
                        rx.check_digest(&data)?
                    } else {
                        true
                    };
                    if self.on_command(Sqe(sqe), data, digest_ok)? {
                        return Ok(());
                    }
                    if self.ctrl.is_some() {
                        // Connected: from now on the keep-alive timer rules.
                        rx.deadline = None;
                    }
                }
                H2c::Data {
                    cccid,
                    ttag,
                    datao,
                    datal,
                    ..
                } => self.on_data(
                    rx,
                    &hdr[..CH_LEN + rest],
                    cccid,
                    ttag,
                    datao,
                    datal,
                    h.ddgst,
                )?,
                H2c::Term { fes } => {
                    rx.skip(h.data_len)?;
                    log::warn!(
                        "nvmf: {} queue {}: host ended the connection (H2CTermReq FES {fes:#x})",
                        self.peer,
                        self.qid
                    );
                    return Ok(());
                }
            }
        }
    }

    /// A command capsule arrived. Returns true when the queue should close
    /// (Disconnect).
    fn on_command(&mut self, sqe: Sqe, data: Vec<u8>, digest_ok: bool) -> Result<bool, Ended> {
        let cid = sqe.cid();
        let in_flight = self.out.begin();
        self.sqhd
            .set(((self.sqhd.get() as u32 + 1) % self.entries.max(1)) as u16);
        let Some(ctrl) = self.ctrl.clone() else {
            return self.on_connect(sqe, data, digest_ok).map(|_| false);
        };
        // The host may not have more commands out than its queue has
        // entries; twice that is a broken or hostile host.
        if in_flight > 2 * self.entries as usize {
            return Err(Ended::Fatal(
                FatalError::new(
                    fes::PDU_SEQUENCE_ERROR,
                    0,
                    format!(
                        "{in_flight} commands outstanding on a queue of {}",
                        self.entries
                    ),
                ),
                sqe.0.to_vec(),
            ));
        }
        ctrl.touch();
        if !digest_ok {
            self.complete_now(
                cid,
                Completion::status(status::TRANSIENT_TRANSPORT_ERROR),
                0,
            );
            return Ok(false);
        }
        if sqe.psdt() != 1 {
            // Fabrics commands describe their data with SGLs only.
            self.complete_now(cid, Completion::status(with_dnr(status::INVALID_FIELD)), 0);
            return Ok(false);
        }
        if sqe.is_fabrics() {
            let (c, close) = fabrics::execute(&ctrl, self.qid, &sqe);
            self.complete_now(cid, c, 0);
            return Ok(close);
        }
        if self.qid > 0 {
            let (aborts, refused) = self.fused.on_capsule(&sqe);
            for (r, st) in aborts {
                self.complete_now(r.sqe.cid(), Completion::status(st), r.xfer_len);
            }
            if let Some(st) = refused {
                self.complete_now(cid, Completion::status(st), 0);
                return Ok(false);
            }
        }
        match self.prepare(sqe, data) {
            Ok(Some(req)) => self.dispatch(req),
            Ok(None) => {}
            Err(st) => self.complete_now(cid, Completion::status(st), 0),
        }
        Ok(false)
    }

    /// Works out where a command's data is: in the capsule, to be fetched
    /// with R2T (returns `None`, the transfer runs), or to be sent back.
    fn prepare(&mut self, sqe: Sqe, mut data: Vec<u8>) -> Result<Option<Request>, u16> {
        let sgl = sqe.sgl();
        let icd_limit = if self.qid == 0 {
            ADMIN_ICD
        } else {
            self.opts.in_capsule_data_size
        };
        match sqe.direction() {
            Direction::None => Ok(Some(Request {
                sqe,
                data: Vec::new(),
                xfer_len: 0,
            })),
            Direction::Bidirectional => Err(with_dnr(status::INVALID_FIELD)),
            Direction::ControllerToHost => {
                if !sgl.is_transport() {
                    return Err(with_dnr(status::SGL_DESCRIPTOR_TYPE_INVALID));
                }
                if sgl.len > self.opts.max_io_size {
                    return Err(with_dnr(status::SGL_DATA_LENGTH_INVALID));
                }
                Ok(Some(Request {
                    sqe,
                    data: Vec::new(),
                    xfer_len: sgl.len,
                }))
            }
            Direction::HostToController if sgl.is_in_capsule() => {
                let (off, len) = (sgl.addr, sgl.len as u64);
                if off > data.len() as u64 {
                    return Err(with_dnr(status::SGL_OFFSET_INVALID));
                }
                if off + len > data.len() as u64 || len > icd_limit as u64 {
                    return Err(with_dnr(status::SGL_DATA_LENGTH_INVALID));
                }
                if off > 0 || len < data.len() as u64 {
                    data = data[off as usize..(off + len) as usize].to_vec();
                }
                Ok(Some(Request {
                    sqe,
                    data,
                    xfer_len: 0,
                }))
            }
            Direction::HostToController if sgl.is_transport() => {
                if !data.is_empty() {
                    return Err(with_dnr(status::INVALID_FIELD));
                }
                if sgl.len > self.opts.max_io_size {
                    return Err(with_dnr(status::SGL_DATA_LENGTH_INVALID));
                }
                if sgl.len == 0 {
                    return Ok(Some(Request {
                        sqe,
                        data: Vec::new(),
                        xfer_len: 0,
                    }));
                }
                self.start_transfer(Request {
                    sqe,
                    data: vec![0u8; sgl.len as usize],
                    xfer_len: 0,
                });
                Ok(None)
            }
            Direction::HostToController => Err(with_dnr(status::SGL_DESCRIPTOR_TYPE_INVALID)),
        }
    }

    fn on_connect(&mut self, sqe: Sqe, data: Vec<u8>, digest_ok: bool) -> Result<(), Ended> {
        let cid = sqe.cid();
        if !(sqe.is_fabrics() && sqe.fctype() == super::spec::fctype::CONNECT) {
            log::warn!("nvmf: {}: {sqe:?} before Connect", self.peer);
            self.complete_now(
                cid,
                Completion::status(with_dnr(status::COMMAND_SEQUENCE_ERROR)),
                0,
            );
            return Ok(());
        }
        if !digest_ok {
            self.complete_now(
                cid,
                Completion::status(status::TRANSIENT_TRANSPORT_ERROR),
                0,
            );
            return Ok(());
        }
        let sgl = sqe.sgl();
        if !sgl.is_in_capsule()
            || (sgl.addr as usize) + (sgl.len as usize) > data.len()
            || sgl.len < 1024
        {
            // Linux always sends Connect's data in the capsule.
            self.complete_now(
                cid,
                Completion::status(with_dnr(status::SGL_DATA_LENGTH_INVALID)),
                0,
            );
            return Ok(());
        }
        let body = &data[sgl.addr as usize..sgl.addr as usize + sgl.len as usize];
        match fabrics::connect(&self.target, &self.listener, &sqe, body) {
            Err(c) => self.complete_now(cid, c, 0),
            Ok(conn) => {
                let Some(dup) = self.out_socket_dup() else {
                    if conn.qid == 0 {
                        conn.ctrl.teardown("its admin queue could not be set up");
                    }
                    self.complete_now(cid, Completion::status(status::INTERNAL_ERROR), 0);
                    return Ok(());
                };
                let mut out = self.out.clone();
                out.qid = conn.qid;
                out.success_flag = conn.sq_flow_disabled && self.opts.c2h_success;
                let admin_out = (conn.qid == 0).then(|| out.parking());
                if !conn.ctrl.add_queue(conn.qid, dup, admin_out) {
                    // Its controller ended meanwhile, or raced for the qid.
                    let c = Completion {
                        status: with_dnr(status::CONNECT_INVALID_PARAMETERS),
                        dw0: capsule_qid_ipo(),
                        ..Default::default()
                    };
                    self.complete_now(cid, c, 0);
                    return Ok(());
                }
                self.qid = conn.qid;
                self.entries = conn.entries;
                self.out = out;
                if conn.qid == 0 {
                    conn.ctrl.spawn_watcher(self.target.config.poll_interval);
                }
                log::debug!(
                    "nvmf: {}: queue {} of controller {} connected ({} entries)",
                    self.peer,
                    conn.qid,
                    conn.ctrl.id,
                    conn.entries
                );
                let cntlid = conn.ctrl.id;
                self.ctrl = Some(conn.ctrl);
                self.complete_now(cid, Completion::dw0(cntlid as u32), 0);
            }
        }
        Ok(())
    }

    /// A duplicate of the socket, for the controller to close this queue.
    fn out_socket_dup(&self) -> Option<std::net::TcpStream> {
        self.sock
            .std()
            .try_clone()
            .map_err(|e| log::error!("nvmf: {}: cannot duplicate the socket: {e}", self.peer))
            .ok()
    }

    fn complete_now(&self, cid: u16, c: Completion, xfer_len: u32) {
        self.out.complete(cid, c, xfer_len);
    }

    /// Asks for the first (or next) piece of a command's data.
    fn start_transfer(&mut self, req: Request) {
        let len = req.data.len() as u32;
        let mut ttag = self.next_ttag;
        while self.transfers.contains_key(&ttag) {
            ttag = ttag.wrapping_add(1);
        }
        self.next_ttag = ttag.wrapping_add(1);
        let r2tl = len.min(self.neg.maxh2cdata);
        let cid = req.sqe.cid();
        self.transfers.insert(
            ttag,
            Transfer {
                req,
                received: 0,
                r2t_end: r2tl,
                bad_digest: false,
            },
        );
        self.out.send(Out::Pdu {
            hdr: pdu::encode_r2t(cid, ttag, 0, r2tl, &self.neg),
            data: None,
            ddgst: [0; 4],
            is_resp: false,
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn on_data(
        &mut self,
        rx: &mut RecvBuf,
        hdr: &[u8],
        cccid: u16,
        ttag: u16,
        datao: u32,
        datal: u32,
        ddgst: bool,
    ) -> Result<(), Ended> {
        let fatal = |fes: u16, fei: u32, what: String| {
            Ended::Fatal(FatalError::new(fes, fei, what), hdr.to_vec())
        };
        let Some(t) = self.transfers.get_mut(&ttag) else {
            return Err(fatal(
                fes::INVALID_PDU_HEADER_FIELD,
                10,
                format!("H2CData for unknown transfer tag {ttag}"),
            ));
        };
        if t.req.sqe.cid() != cccid {
            return Err(fatal(
                fes::INVALID_PDU_HEADER_FIELD,
                8,
                format!(
                    "H2CData for command {cccid} on the transfer tag of command {}",
                    t.req.sqe.cid()
                ),
            ));
        }
        if datao != t.received {
            return Err(fatal(
                fes::DATA_TRANSFER_OUT_OF_RANGE,
                12,
                format!("H2CData at offset {datao}, expected {}", t.received),
            ));
        }
        if datao as u64 + datal as u64 > t.r2t_end as u64 {
            return Err(fatal(
                fes::DATA_TRANSFER_OUT_OF_RANGE,
                16,
                format!("H2CData {datao}+{datal} beyond the R2T's end {}", t.r2t_end),
            ));
        }
        let piece = &mut t.req.data[datao as usize..(datao + datal) as usize];
        rx.read_exact(piece)?;
        if ddgst && !rx.check_digest(piece)? {
            log::warn!(
                "nvmf: {} queue {}: data digest error in H2CData of command {cccid}",
                self.peer,
                self.qid
            );
            t.bad_digest = true;
        }
        t.received += datal;
        if t.received < t.r2t_end {
            return Ok(());
        }
        let total = t.req.data.len() as u32;
        if t.received < total {
            let r2to = t.r2t_end;
            let r2tl = (total - r2to).min(self.neg.maxh2cdata);
            t.r2t_end += r2tl;
            let h = pdu::encode_r2t(cccid, ttag, r2to, r2tl, &self.neg);
            self.out.send(Out::Pdu {
                hdr: h,
                data: None,
                ddgst: [0; 4],
                is_resp: false,
            });
            return Ok(());
        }
        let t = self.transfers.remove(&ttag).expect("present");
        if t.bad_digest {
            self.complete_now(
                cccid,
                Completion::status(status::TRANSIENT_TRANSPORT_ERROR),
                0,
            );
        } else {
            self.dispatch(t.req);
        }
        Ok(())
    }

    /// Runs a ready command in a coroutine of its own.
    fn dispatch(&mut self, req: Request) {
        let Some(ctrl) = self.ctrl.clone() else {
            return;
        };
        let out = self.out.clone();
        let target = self.target.clone();
        let qid = self.qid;
        if qid > 0 && req.sqe.fuse() != 0 {
            match self.fused.ready(req) {
                FusedStep::Hold => {}
                FusedStep::Abort(r, st) => {
                    out.complete(r.sqe.cid(), Completion::status(st), r.xfer_len)
                }
                FusedStep::Run(first, second) => {
                    let spawned = rt::Builder::new().static_name("nvmf-cmd").spawn(move || {
                        let (a, b) = io::execute_fused(&ctrl, &first, &second);
                        out.complete(first.sqe.cid(), a, 0);
                        out.complete(second.sqe.cid(), b, 0);
                    });
                    if let Err(e) = spawned {
                        log::error!("nvmf: cannot run a fused command: {e}");
                    }
                }
            }
            return;
        }
        let cid = req.sqe.cid();
        let out2 = out.clone();
        let spawned = rt::Builder::new().static_name("nvmf-cmd").spawn(move || {
            let c = if qid == 0 {
                admin::execute(&target, &ctrl, &req)
            } else {
                Some(io::execute(&ctrl, &req))
            };
            if let Some(c) = c {
                out.complete(cid, c, req.xfer_len);
            }
        });
        if let Err(e) = spawned {
            // No stack for a coroutine: answer so the host does not wait.
            log::error!(
                "nvmf: {} queue {}: cannot run a command: {e}",
                self.peer,
                self.qid
            );
            out2.complete(cid, Completion::status(status::INTERNAL_ERROR), 0);
        }
    }
}

/// Fused Compare+Write pairs. The two capsules arrive back to back; their
/// data may become ready in either order (R2T), so each waits for the other.
#[derive(Default)]
struct Fused {
    /// A first command whose next capsule has not arrived yet.
    open_first: Option<u16>,
    /// First cid -> second cid.
    pairs: HashMap<u16, u16>,
    /// Firsts whose next capsule was not their second.
    broken: HashSet<u16>,
    /// Members whose data is ready, waiting for their partner.
    held: HashMap<u16, Request>,
}

enum FusedStep {
    Hold,
    Abort(Request, u16),
    Run(Request, Request),
}

impl Fused {
    /// A capsule arrived: pairs it, or finds a first left without its
    /// second. Returns held commands to abort and, when this command cannot
    /// run at all, its status.
    fn on_capsule(&mut self, sqe: &Sqe) -> (Vec<(Request, u16)>, Option<u16>) {
        let mut aborts = Vec::new();
        let cid = sqe.cid();
        let fuse = sqe.fuse();
        if let Some(first) = self.open_first.take() {
            if fuse == 2 {
                self.pairs.insert(first, cid);
                return (aborts, None);
            }
            match self.held.remove(&first) {
                Some(r) => aborts.push((r, status::ABORTED_MISSING_FUSED)),
                None => {
                    self.broken.insert(first);
                }
            }
        }
        let refused = match fuse {
            0 => None,
            1 => {
                self.open_first = Some(cid);
                None
            }
            2 => Some(status::ABORTED_MISSING_FUSED),
            _ => Some(with_dnr(status::INVALID_FIELD)),
        };
        (aborts, refused)
    }

    fn ready(&mut self, req: Request) -> FusedStep {
        let cid = req.sqe.cid();
        if req.sqe.fuse() == 1 {
            if self.broken.remove(&cid) {
                return FusedStep::Abort(req, status::ABORTED_MISSING_FUSED);
            }
            if let Some(second) = self.pairs.get(&cid).copied() {
                if let Some(s) = self.held.remove(&second) {
                    self.pairs.remove(&cid);
                    return FusedStep::Run(req, s);
                }
            }
        } else if let Some(first) = self.pairs.iter().find(|(_, s)| **s == cid).map(|(f, _)| *f) {
            if let Some(f) = self.held.remove(&first) {
                self.pairs.remove(&first);
                return FusedStep::Run(f, req);
            }
        }
        self.held.insert(cid, req);
        FusedStep::Hold
    }
}

/// The writer coroutine: sends what the queue's coroutines hand it, in
/// order, several PDUs per system call.
fn writer(sock: Rc<TcpStream>, rx: sync::Receiver<Out>, neg: Negotiated, sqhd: Rc<Cell<u16>>) {
    let mut batch: Vec<Out> = Vec::with_capacity(WRITE_BATCH);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(o) => batch.push(o),
                Err(_) => break,
            }
        }
        let mut close = false;
        for o in batch.iter_mut() {
            if let Out::Pdu { hdr, is_resp, .. } = o {
                if *is_resp {
                    // SQHD: how far the host's submissions have been consumed.
                    hdr.bytes[16..18].copy_from_slice(&sqhd.get().to_le_bytes());
                }
                if neg.hdgst {
                    let h = hdr.hlen as usize;
                    let c = digest::to_wire(digest::crc(&hdr.bytes[..h]));
                    hdr.bytes[h..h + 4].copy_from_slice(&c);
                }
            }
        }
        let mut slices: Vec<&[u8]> = Vec::with_capacity(batch.len() * 3);
        for o in &batch {
            match o {
                Out::Pdu {
                    hdr, data, ddgst, ..
                } => {
                    slices.push(&hdr.bytes[..hdr.data_at as usize]);
                    if let Some(d) = data {
                        slices.push(d);
                        if neg.ddgst {
                            slices.push(ddgst);
                        }
                    }
                }
                Out::Raw(b) => slices.push(b),
                Out::Close => {
                    close = true;
                    break;
                }
            }
        }
        if let Err(e) = sock.write_all_vectored(&slices) {
            log::debug!("nvmf: writing to the host failed: {e}");
            // Wake the reader if it still waits on this connection.
            let _ = sock.shutdown(std::net::Shutdown::Both);
            break;
        }
        drop(slices);
        batch.clear();
        if close {
            let _ = sock.shutdown(std::net::Shutdown::Both);
            break;
        }
    }
}

/// Buffered reads from the socket: small PDUs come several per system
/// call; large data goes straight into its destination.
struct RecvBuf {
    sock: Rc<TcpStream>,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// Until Connect, the host has a deadline.
    deadline: Option<Instant>,
}

impl RecvBuf {
    fn new(sock: Rc<TcpStream>, deadline: Option<Instant>) -> Self {
        Self {
            sock,
            buf: vec![0u8; RECV_BUF].into_boxed_slice(),
            start: 0,
            end: 0,
            deadline,
        }
    }

    fn fill(&mut self) -> stdio::Result<()> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = self
            .sock
            .read_until(&mut self.buf[self.end..], self.deadline)?;
        if n == 0 {
            return Err(stdio::Error::new(
                stdio::ErrorKind::UnexpectedEof,
                "the host closed the connection",
            ));
        }
        self.end += n;
        Ok(())
    }

    fn read_exact(&mut self, out: &mut [u8]) -> stdio::Result<()> {
        let mut done = 0;
        loop {
            let take = (self.end - self.start).min(out.len() - done);
            out[done..done + take].copy_from_slice(&self.buf[self.start..self.start + take]);
            self.start += take;
            done += take;
            if done == out.len() {
                return Ok(());
            }
            if out.len() - done >= self.buf.len() / 2 {
                return self.sock.read_exact_until(&mut out[done..], self.deadline);
            }
            self.fill()?;
        }
    }

    fn skip(&mut self, mut n: usize) -> stdio::Result<()> {
        let mut scratch = [0u8; 256];
        while n > 0 {
            let k = n.min(scratch.len());
            self.read_exact(&mut scratch[..k])?;
            n -= k;
        }
        Ok(())
    }

    /// Reads a data digest and checks it against `data`.
    fn check_digest(&mut self, data: &[u8]) -> stdio::Result<bool> {
        let mut d = [0u8; 4];
        self.read_exact(&mut d)?;
        Ok(digest::verify(data, &d))
    }
}

/// IPO of Connect's QID field (in the SQE, so IATTR 0).
fn capsule_qid_ipo() -> u32 {
    super::capsule::connect_field::QID as u32
}
