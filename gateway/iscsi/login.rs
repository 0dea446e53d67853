//! The login phase (RFC 7143 6): security negotiation (CHAP), operational
//! negotiation, and the move to full feature phase, which creates a session,
//! reinstates one, or adds a connection to one.
//!
//! `Login::step` consumes one Login Request and says what to answer; the
//! connection does the I/O. Every refusal carries the RFC status class and
//! detail (authentication, authorization, not found, ...) and a reason for
//! the log.

use super::chap::ChapServer;
use super::params::{encode_text, parse_text, ConnParams, Limits, Negotiation};
use super::pdu::{login_response, LoginReq, OutPdu};
use super::session::{ConnShared, Session, SessionKind};
use super::target::{ChapPolicy, IscsiTarget, TargetNode};
use crate::scsi::Nexus;
use std::net::SocketAddr;
use std::sync::Arc;

/// Login status (class, detail), RFC 7143 11.13.5.
pub mod status {
    pub const SUCCESS: (u8, u8) = (0, 0);
    pub const INITIATOR_ERROR: (u8, u8) = (2, 0x00);
    pub const AUTH_FAILED: (u8, u8) = (2, 0x01);
    pub const FORBIDDEN: (u8, u8) = (2, 0x02);
    pub const NOT_FOUND: (u8, u8) = (2, 0x03);
    pub const UNSUPPORTED_VERSION: (u8, u8) = (2, 0x05);
    pub const TOO_MANY_CONNECTIONS: (u8, u8) = (2, 0x06);
    pub const MISSING_PARAMETER: (u8, u8) = (2, 0x07);
    pub const CANT_INCLUDE: (u8, u8) = (2, 0x08);
    pub const SESSION_TYPE_UNSUPPORTED: (u8, u8) = (2, 0x09);
    pub const NO_SUCH_SESSION: (u8, u8) = (2, 0x0A);
    pub const INVALID_DURING_LOGIN: (u8, u8) = (2, 0x0B);
    pub const TARGET_ERROR: (u8, u8) = (3, 0x00);
}

const STAGE_SECURITY: u8 = 0;
const STAGE_OPERATIONAL: u8 = 1;
const STAGE_FULL_FEATURE: u8 = 3;

/// Queue depth of discovery sessions (they only do text exchanges).
const DISCOVERY_QUEUE_DEPTH: u32 = 4;

/// What to do after one Login Request.
pub enum Step {
    /// Send this and read the next Login Request.
    Reply(OutPdu, Vec<u8>),
    /// Send this and close the connection.
    Fail(OutPdu, Vec<u8>, String),
    /// Send this; the connection is now in full feature phase.
    Established {
        pdu: OutPdu,
        data: Vec<u8>,
        session: Arc<Session>,
        conn: ConnParams,
    },
}

enum Auth {
    /// No AuthMethod agreed yet.
    Pending,
    /// AuthMethod=CHAP agreed, waiting for CHAP_A.
    ChapAgreed,
    Challenged(ChapServer),
    Done,
}

pub struct Login {
    target: Arc<IscsiTarget>,
    pg: u16,
    peer: SocketAddr,
    conn: Arc<ConnShared>,
    first: bool,
    isid: [u8; 6],
    tsih: u16,
    cid: u16,
    stage: u8,
    initiator: String,
    discovery: bool,
    node: Option<Arc<TargetNode>>,
    policy: ChapPolicy,
    auth: Auth,
    neg: Negotiation,
    limits: Limits,
    declared_tpgt: bool,
    declared_mrdsl: bool,
    /// Text of Login Requests with C=1, until the last piece arrives.
    pending: Vec<u8>,
}

impl Login {
    pub fn new(target: Arc<IscsiTarget>, pg: u16, peer: SocketAddr, conn: Arc<ConnShared>) -> Self {
        let limits = target.options().limits.clone();
        Self {
            target,
            pg,
            peer,
            conn,
            first: true,
            isid: [0; 6],
            tsih: 0,
            cid: 0,
            stage: STAGE_SECURITY,
            initiator: String::new(),
            discovery: false,
            node: None,
            policy: ChapPolicy::default(),
            auth: Auth::Pending,
            neg: Negotiation::new(),
            limits,
            declared_tpgt: false,
            declared_mrdsl: false,
            pending: Vec::new(),
        }
    }

    pub fn initiator(&self) -> &str {
        &self.initiator
    }

    fn fail(&self, r: &LoginReq, st: (u8, u8), why: String) -> Step {
        let p = login_response(false, r.csg, 0, r.isid, 0, r.itt, st.0, st.1, 0);
        Step::Fail(p, Vec::new(), why)
    }

    /// Processes one Login Request.
    pub fn step(&mut self, r: &LoginReq) -> Step {
        if self.first {
            if r.version_min > 0 {
                return self.fail(
                    r,
                    status::UNSUPPORTED_VERSION,
                    format!(
                        "initiator wants iSCSI version {}..{}",
                        r.version_min, r.version_max
                    ),
                );
            }
            self.isid = r.isid;
            self.tsih = r.tsih;
            self.cid = r.cid;
            if r.csg != STAGE_SECURITY && r.csg != STAGE_OPERATIONAL {
                return self.fail(
                    r,
                    status::INITIATOR_ERROR,
                    format!("login starts in stage {}", r.csg),
                );
            }
            self.stage = r.csg;
        } else if r.isid != self.isid || r.tsih != self.tsih || r.cid != self.cid {
            return self.fail(
                r,
                status::INITIATOR_ERROR,
                "ISID, TSIH or CID changed during the login".into(),
            );
        }
        if r.csg != self.stage {
            return self.fail(
                r,
                status::INITIATOR_ERROR,
                format!(
                    "login request in stage {} while in stage {}",
                    r.csg, self.stage
                ),
            );
        }
        if self.pending.len() + r.data.len() > 64 * 1024 {
            return self.fail(
                r,
                status::INITIATOR_ERROR,
                "login text longer than 64 KiB".into(),
            );
        }
        self.pending.extend_from_slice(&r.data);
        if r.cont {
            // More text follows: acknowledge with an empty response.
            return Step::Reply(
                login_response(false, self.stage, 0, self.isid, self.tsih, r.itt, 0, 0, 0),
                Vec::new(),
            );
        }
        let text = std::mem::take(&mut self.pending);
        let pairs = match parse_text(&text) {
            Ok(p) => p,
            Err(e) => return self.fail(r, status::INITIATOR_ERROR, format!("login text: {e}")),
        };
        let mut out: Vec<(String, String)> = Vec::new();
        if self.first {
            self.first = false;
            if let Err((st, why)) = self.identify(&pairs) {
                return self.fail(r, st, why);
            }
        }
        if self.stage == STAGE_OPERATIONAL
            && self.auth_required()
            && !matches!(self.auth, Auth::Done)
        {
            return self.fail(
                r,
                status::AUTH_FAILED,
                format!(
                    "{}: CHAP is required but the login skipped the security stage",
                    self.initiator
                ),
            );
        }
        if !self.discovery && !self.declared_tpgt {
            out.push(("TargetPortalGroupTag".into(), self.pg.to_string()));
            if let Some(n) = &self.node {
                if !n.alias.is_empty() {
                    out.push(("TargetAlias".into(), n.alias.clone()));
                }
            }
            self.declared_tpgt = true;
        }
        let mut chap_a = None;
        let (mut chap_n, mut chap_r, mut chap_i, mut chap_c) = (None, None, None, None);
        for (k, v) in &pairs {
            match k.as_str() {
                "InitiatorName" | "SessionType" | "TargetName" | "InitiatorAlias" => {}
                "AuthMethod" => {
                    if self.stage != STAGE_SECURITY {
                        out.push((k.clone(), "Irrelevant".into()));
                        continue;
                    }
                    match self.choose_auth(v) {
                        Some(m) => out.push((k.clone(), m.into())),
                        None => {
                            return self.fail(
                                r,
                                status::AUTH_FAILED,
                                format!(
                                    "{}: no acceptable AuthMethod in {v:?} (policy {:?})",
                                    self.initiator, self.policy
                                ),
                            );
                        }
                    }
                }
                "CHAP_A" => chap_a = Some(v.clone()),
                "CHAP_N" => chap_n = Some(v.clone()),
                "CHAP_R" => chap_r = Some(v.clone()),
                "CHAP_I" => chap_i = Some(v.clone()),
                "CHAP_C" => chap_c = Some(v.clone()),
                _ => match self.neg.offer(k, v, &self.limits, self.discovery) {
                    Ok(Some(p)) => out.push(p),
                    Ok(None) => {}
                    Err(e) => {
                        return self.fail(
                            r,
                            status::INITIATOR_ERROR,
                            format!("{}: {e}", self.initiator),
                        )
                    }
                },
            }
        }
        // CHAP, in the security stage only.
        if self.stage == STAGE_SECURITY {
            if let Some(a) = chap_a {
                if !matches!(self.auth, Auth::ChapAgreed) {
                    return self.fail(
                        r,
                        status::AUTH_FAILED,
                        format!("{}: CHAP_A out of sequence", self.initiator),
                    );
                }
                match ChapServer::start(&a) {
                    Ok((srv, keys)) => {
                        out.extend(keys);
                        self.auth = Auth::Challenged(srv);
                    }
                    Err(e) => {
                        return self.fail(
                            r,
                            status::AUTH_FAILED,
                            format!("{}: {e}", self.initiator),
                        )
                    }
                }
            } else if chap_n.is_some() || chap_r.is_some() {
                let Auth::Challenged(srv) = &self.auth else {
                    return self.fail(
                        r,
                        status::AUTH_FAILED,
                        format!("{}: CHAP_N/CHAP_R before a challenge", self.initiator),
                    );
                };
                let group = self.policy.group;
                let target = self.target.clone();
                match srv.finish(
                    chap_n.as_deref(),
                    chap_r.as_deref(),
                    chap_i.as_deref(),
                    chap_c.as_deref(),
                    self.policy.mutual,
                    |u| target.chap_secret(group, u),
                ) {
                    Ok(keys) => {
                        out.extend(keys);
                        self.auth = Auth::Done;
                        log::info!(
                            "iscsi: {} authenticated with CHAP{}",
                            self.initiator,
                            if chap_i.is_some() { " (mutual)" } else { "" }
                        );
                    }
                    Err(e) => {
                        return self.fail(
                            r,
                            status::AUTH_FAILED,
                            format!("{} from {}: {e}", self.initiator, self.peer),
                        )
                    }
                }
            }
        }
        // Declare our receive limit once we negotiate operationally (a login
        // that skips that stage leaves both sides at the 8192 default).
        if !self.declared_mrdsl && self.stage == STAGE_OPERATIONAL {
            out.push((
                "MaxRecvDataSegmentLength".into(),
                self.limits.max_recv_data.to_string(),
            ));
            self.neg.conn.max_recv_data = self.limits.max_recv_data;
            self.declared_mrdsl = true;
        }
        // Stage transition.
        let mut transit = false;
        if r.transit {
            if r.nsg <= self.stage || r.nsg == 2 {
                return self.fail(
                    r,
                    status::INITIATOR_ERROR,
                    format!("invalid stage transition {} -> {}", self.stage, r.nsg),
                );
            }
            if self.stage == STAGE_SECURITY {
                match &self.auth {
                    Auth::Done => transit = true,
                    Auth::Pending if !self.auth_required() => transit = true,
                    Auth::Pending => {
                        return self.fail(
                            r,
                            status::AUTH_FAILED,
                            format!("{}: CHAP is required but was not offered", self.initiator),
                        )
                    }
                    // CHAP still running: answer without T and wait for it.
                    Auth::ChapAgreed | Auth::Challenged(_) => {}
                }
            } else {
                transit = true;
            }
        }
        let data = encode_text(&out);
        if transit && r.nsg == STAGE_FULL_FEATURE {
            return self.establish(r, data);
        }
        if transit {
            self.stage = r.nsg;
        }
        let p = login_response(
            transit,
            r.csg,
            r.nsg,
            self.isid,
            self.tsih,
            r.itt,
            0,
            0,
            data.len(),
        );
        Step::Reply(p, data)
    }

    fn auth_required(&self) -> bool {
        self.policy.require
    }

    fn choose_auth(&mut self, offered: &str) -> Option<&'static str> {
        let offered: Vec<&str> = offered.split(',').map(str::trim).collect();
        let pick = if self.policy.require {
            offered.contains(&"CHAP").then_some("CHAP")
        } else if self.policy.disable {
            offered.contains(&"None").then_some("None")
        } else {
            offered.iter().find_map(|m| match *m {
                "CHAP" => Some("CHAP"),
                "None" => Some("None"),
                _ => None,
            })
        }?;
        self.auth = if pick == "CHAP" {
            Auth::ChapAgreed
        } else {
            Auth::Done
        };
        Some(pick)
    }

    /// The first request: who is logging in, to what, and may it.
    fn identify(&mut self, pairs: &[(String, String)]) -> Result<(), ((u8, u8), String)> {
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        self.initiator = get("InitiatorName")
            .filter(|n| !n.is_empty())
            .ok_or((status::MISSING_PARAMETER, "no InitiatorName".to_string()))?;
        let ty = get("SessionType").unwrap_or_else(|| "Normal".into());
        match ty.as_str() {
            "Discovery" => {
                self.discovery = true;
                self.policy = self.target.discovery_chap();
                if self.tsih != 0 {
                    return Err((
                        status::NO_SUCH_SESSION,
                        "discovery sessions have one connection".into(),
                    ));
                }
                Ok(())
            }
            "Normal" => {
                let name = get("TargetName").ok_or((
                    status::MISSING_PARAMETER,
                    format!("{}: no TargetName", self.initiator),
                ))?;
                let node = self
                    .target
                    .target_node(&name)
                    .filter(|n| n.on_portal_group(self.pg))
                    .ok_or((
                        status::NOT_FOUND,
                        format!(
                            "{}: no target {name:?} on portal group {}",
                            self.initiator, self.pg
                        ),
                    ))?;
                let ig = self
                    .target
                    .authorize(&node, self.pg, &self.initiator, self.peer.ip())
                    .ok_or((
                        status::FORBIDDEN,
                        format!(
                            "{} from {} is not allowed to use {name}",
                            self.initiator, self.peer
                        ),
                    ))?;
                self.policy = if ig.chap.is_set() { ig.chap } else { node.chap };
                self.limits.require_header_digest = node.header_digest;
                self.limits.require_data_digest = node.data_digest;
                self.node = Some(node);
                Ok(())
            }
            other => Err((
                status::SESSION_TYPE_UNSUPPORTED,
                format!("SessionType {other:?}"),
            )),
        }
    }

    /// The move to full feature phase: a new session, a reinstated one, or
    /// one more connection of an existing one.
    fn establish(&mut self, r: &LoginReq, data: Vec<u8>) -> Step {
        self.neg.finish();
        let target = self.target.clone();
        let node_name = self.node.as_ref().map(|n| n.name.clone());
        let session = if self.tsih == 0 {
            // RFC 7143 6.3.5: same initiator port and target: reinstatement.
            if !self.discovery {
                if let Some(old) =
                    target.find_session(&self.initiator, self.isid, node_name.as_deref(), self.pg)
                {
                    log::info!(
                        "iscsi: {} reinstates session tsih {}",
                        self.initiator,
                        old.tsih
                    );
                    old.release_nexus();
                    old.kill();
                    target.remove_session(old.tsih);
                }
            }
            let tsih = target.alloc_tsih();
            let (kind, qd, nexus) = match &self.node {
                Some(n) => (
                    SessionKind::Normal(n.clone()),
                    n.queue_depth,
                    Some(Nexus::iscsi(
                        &self.initiator,
                        self.isid,
                        &n.name,
                        self.pg,
                        self.pg,
                    )),
                ),
                None => (SessionKind::Discovery, DISCOVERY_QUEUE_DEPTH, None),
            };
            let s = Session::new(
                tsih,
                self.isid,
                self.initiator.clone(),
                kind,
                self.pg,
                self.neg.session.clone(),
                nexus.clone(),
                r.cmdsn,
                qd,
            );
            if let (Some(n), Some(nx)) = (&self.node, &nexus) {
                for l in n.luns() {
                    l.lun.attach(nx);
                }
            }
            target.add_session(s.clone());
            s
        } else {
            let Some(s) = target.session(self.tsih) else {
                return self.fail(
                    r,
                    status::NO_SUCH_SESSION,
                    format!("{}: no session with TSIH {}", self.initiator, self.tsih),
                );
            };
            if s.isid != self.isid
                || !s.initiator_name.eq_ignore_ascii_case(&self.initiator)
                || s.tpgt != self.pg
                || s.node().map(|n| n.name.clone()) != node_name
            {
                return self.fail(
                    r,
                    status::CANT_INCLUDE,
                    format!(
                        "{}: TSIH {} belongs to another nexus",
                        self.initiator, self.tsih
                    ),
                );
            }
            // Connection reinstatement: the same CID replaces its old connection.
            for c in s.conns() {
                if c.cid() == self.cid {
                    log::info!(
                        "iscsi: {} reinstates connection cid {} of tsih {}",
                        self.initiator,
                        self.cid,
                        s.tsih
                    );
                    c.kill();
                    s.remove_conn(c.id);
                }
            }
            if s.conn_count() >= s.params.max_connections as usize {
                return self.fail(
                    r,
                    status::TOO_MANY_CONNECTIONS,
                    format!(
                        "{}: session {} already has {} connections",
                        self.initiator,
                        s.tsih,
                        s.conn_count()
                    ),
                );
            }
            s
        };
        session.add_conn(self.conn.clone());
        let conn = self.neg.conn.clone();
        let p = login_response(
            true,
            r.csg,
            STAGE_FULL_FEATURE,
            self.isid,
            session.tsih,
            r.itt,
            0,
            0,
            data.len(),
        );
        Step::Established {
            pdu: p,
            data,
            session,
            conn,
        }
    }

    /// The answer to a PDU other than a Login Request during the login.
    pub fn invalid_during_login(r: &LoginReq) -> Step {
        let p = login_response(
            false,
            r.csg,
            0,
            r.isid,
            0,
            r.itt,
            status::INVALID_DURING_LOGIN.0,
            status::INVALID_DURING_LOGIN.1,
            0,
        );
        Step::Fail(p, Vec::new(), "non-login PDU during login".into())
    }
}

/// Target-side error during login (e.g. the login timed out).
pub fn target_error(r: &LoginReq) -> (OutPdu, Vec<u8>) {
    (
        login_response(
            false,
            r.csg,
            0,
            r.isid,
            0,
            r.itt,
            status::TARGET_ERROR.0,
            status::TARGET_ERROR.1,
            0,
        ),
        Vec::new(),
    )
}
