//! Text keys (RFC 7143 6, 13): parsing `key=value` pairs and negotiating
//! the operational parameters of a session and a connection.

use std::collections::HashSet;

/// Longest key name (RFC 7143 6.1) and longest value we accept.
const MAX_KEY: usize = 63;
const MAX_VALUE: usize = 8192;
/// Most pairs in one text: bounds work on hostile input.
const MAX_PAIRS: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("text pair without '=': {0:?}")]
    NoEquals(String),
    #[error("key {0:?} is empty, too long or not printable")]
    BadKey(String),
    #[error("value of {0} is longer than {MAX_VALUE} bytes")]
    ValueTooLong(String),
    #[error("more than {MAX_PAIRS} text pairs")]
    TooMany,
    #[error("text is not UTF-8")]
    NotUtf8,
}

/// Splits NUL-separated `key=value` pairs. Empty strings between NULs (and
/// padding) are skipped.
pub fn parse_text(data: &[u8]) -> Result<Vec<(String, String)>, TextError> {
    let mut out = Vec::new();
    for raw in data.split(|&b| b == 0) {
        if raw.is_empty() {
            continue;
        }
        if out.len() >= MAX_PAIRS {
            return Err(TextError::TooMany);
        }
        let s = std::str::from_utf8(raw).map_err(|_| TextError::NotUtf8)?;
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| TextError::NoEquals(s.chars().take(64).collect()))?;
        if k.is_empty() || k.len() > MAX_KEY || !k.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TextError::BadKey(k.chars().take(64).collect()));
        }
        if v.len() > MAX_VALUE {
            return Err(TextError::ValueTooLong(k.to_string()));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

pub fn encode_text(pairs: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// Session-wide operational parameters, after negotiation (RFC 7143 13
/// defaults until then).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionParams {
    pub max_connections: u16,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub default_time2wait: u16,
    pub default_time2retain: u16,
    pub max_outstanding_r2t: u32,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub error_recovery_level: u8,
}

impl Default for SessionParams {
    fn default() -> Self {
        Self {
            max_connections: 1,
            initial_r2t: true,
            immediate_data: true,
            max_burst_length: 262144,
            first_burst_length: 65536,
            default_time2wait: 2,
            default_time2retain: 20,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            error_recovery_level: 0,
        }
    }
}

/// Per-connection parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnParams {
    pub header_digest: bool,
    pub data_digest: bool,
    /// The initiator's MaxRecvDataSegmentLength: our data segments to it
    /// must not be longer.
    pub max_send_data: u32,
    /// Ours, as declared (8192 until declared).
    pub max_recv_data: u32,
}

impl Default for ConnParams {
    fn default() -> Self {
        Self {
            header_digest: false,
            data_digest: false,
            max_send_data: 8192,
            max_recv_data: 8192,
        }
    }
}

/// What this target prefers and allows.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_connections: u16,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    pub max_recv_data: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub default_time2wait: u16,
    pub default_time2retain: u16,
    pub max_outstanding_r2t: u32,
    /// Digests the target insists on (SPDK's header_digest/data_digest).
    pub require_header_digest: bool,
    pub require_data_digest: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 4,
            initial_r2t: false,
            immediate_data: true,
            max_recv_data: 262144,
            max_burst_length: 1 << 20,
            first_burst_length: 262144,
            default_time2wait: 2,
            default_time2retain: 20,
            max_outstanding_r2t: 16,
            require_header_digest: false,
            require_data_digest: false,
        }
    }
}

/// Why a negotiation cannot go on (the login fails with an initiator error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NegotiationError {
    #[error("key {0} offered twice")]
    Repeated(String),
    #[error("no acceptable value for {key} among {offered:?}")]
    NoAcceptable { key: String, offered: String },
}

/// Negotiation state across the login PDUs of one connection.
#[derive(Debug, Default)]
pub struct Negotiation {
    pub session: SessionParams,
    pub conn: ConnParams,
    seen: HashSet<String>,
}

fn yes_no(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

fn yn(b: bool) -> String {
    if b { "Yes" } else { "No" }.to_string()
}

fn number(v: &str, lo: u64, hi: u64) -> Option<u64> {
    // Decimal, or 0x hex (RFC 7143 6.1 numerical values).
    let n = if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()?
    } else {
        v.parse().ok()?
    };
    (lo..=hi).contains(&n).then_some(n)
}

const MAX_DSL: u64 = (1 << 24) - 1;

impl Negotiation {
    pub fn new() -> Self {
        Self::default()
    }

    /// Negotiates one operational key the initiator offered; returns the
    /// pair to answer with, or `None` for keys that need no answer.
    /// Unknown keys get NotUnderstood, bad values Reject (RFC 7143 6.2).
    pub fn offer(
        &mut self,
        key: &str,
        value: &str,
        ours: &Limits,
        is_discovery: bool,
    ) -> Result<Option<(String, String)>, NegotiationError> {
        if !self.seen.insert(key.to_string()) {
            return Err(NegotiationError::Repeated(key.to_string()));
        }
        let reply = |v: String| Ok(Some((key.to_string(), v)));
        let reject = || Ok(Some((key.to_string(), "Reject".to_string())));
        match key {
            "HeaderDigest" | "DataDigest" => {
                let required = if key == "HeaderDigest" {
                    ours.require_header_digest
                } else {
                    ours.require_data_digest
                };
                let choice = value
                    .split(',')
                    .map(str::trim)
                    .find(|v| *v == "CRC32C" || (*v == "None" && !required));
                match choice {
                    Some(c) => {
                        let on = c == "CRC32C";
                        if key == "HeaderDigest" {
                            self.conn.header_digest = on;
                        } else {
                            self.conn.data_digest = on;
                        }
                        reply(c.to_string())
                    }
                    None => Err(NegotiationError::NoAcceptable {
                        key: key.into(),
                        offered: value.chars().take(64).collect(),
                    }),
                }
            }
            "MaxRecvDataSegmentLength" => match number(value, 512, MAX_DSL) {
                Some(n) => {
                    self.conn.max_send_data = n as u32;
                    Ok(None)
                }
                None => reject(),
            },
            "MaxConnections" => match number(value, 1, 65535) {
                Some(n) => {
                    let v = (n as u16).min(ours.max_connections).max(1);
                    self.session.max_connections = v;
                    reply(v.to_string())
                }
                None => reject(),
            },
            "InitialR2T" => match yes_no(value) {
                Some(b) => {
                    self.session.initial_r2t = b || ours.initial_r2t;
                    reply(yn(self.session.initial_r2t))
                }
                None => reject(),
            },
            "ImmediateData" => match yes_no(value) {
                Some(b) => {
                    self.session.immediate_data = b && ours.immediate_data;
                    reply(yn(self.session.immediate_data))
                }
                None => reject(),
            },
            "MaxBurstLength" => match number(value, 512, MAX_DSL) {
                Some(n) => {
                    self.session.max_burst_length = (n as u32).min(ours.max_burst_length);
                    reply(self.session.max_burst_length.to_string())
                }
                None => reject(),
            },
            "FirstBurstLength" => match number(value, 512, MAX_DSL) {
                Some(n) => {
                    self.session.first_burst_length = (n as u32).min(ours.first_burst_length);
                    reply(self.session.first_burst_length.to_string())
                }
                None => reject(),
            },
            "DefaultTime2Wait" => match number(value, 0, 3600) {
                Some(n) => {
                    self.session.default_time2wait = (n as u16).max(ours.default_time2wait);
                    reply(self.session.default_time2wait.to_string())
                }
                None => reject(),
            },
            "DefaultTime2Retain" => match number(value, 0, 3600) {
                Some(n) => {
                    self.session.default_time2retain = (n as u16).min(ours.default_time2retain);
                    reply(self.session.default_time2retain.to_string())
                }
                None => reject(),
            },
            "MaxOutstandingR2T" => match number(value, 1, 65535) {
                Some(n) => {
                    self.session.max_outstanding_r2t = (n as u32).min(ours.max_outstanding_r2t);
                    reply(self.session.max_outstanding_r2t.to_string())
                }
                None => reject(),
            },
            "DataPDUInOrder" | "DataSequenceInOrder" => match yes_no(value) {
                // We need both in order (OR with our Yes): the answer is Yes.
                Some(_) => reply("Yes".into()),
                None => reject(),
            },
            "ErrorRecoveryLevel" => match number(value, 0, 2) {
                Some(_) => {
                    self.session.error_recovery_level = 0;
                    reply("0".into())
                }
                None => reject(),
            },
            "IFMarker" | "OFMarker" => match yes_no(value) {
                Some(_) => reply("No".into()),
                None => reject(),
            },
            "IFMarkInt" | "OFMarkInt" => reply("Irrelevant".into()),
            "iSCSIProtocolLevel" => match number(value, 0, 31) {
                Some(n) => reply(n.min(1).to_string()),
                None => reject(),
            },
            "TaskReporting" => reply("RFC3720".into()),
            // Declarations the initiator makes, handled by the login.
            "InitiatorName" | "InitiatorAlias" | "TargetName" | "SessionType" => Ok(None),
            // Target-declared keys an initiator must not send.
            "TargetAlias" | "TargetAddress" | "TargetPortalGroupTag" if !is_discovery => {
                reply("Irrelevant".into())
            }
            _ => reply("NotUnderstood".into()),
        }
    }

    /// Settles values that depend on each other once the operational stage
    /// ends: FirstBurstLength may not exceed MaxBurstLength.
    pub fn finish(&mut self) {
        if self.session.first_burst_length > self.session.max_burst_length {
            self.session.first_burst_length = self.session.max_burst_length;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_encodes_text() {
        let t = b"InitiatorName=iqn.x\0SessionType=Normal\0\0";
        let p = parse_text(t).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(encode_text(&p), t[..t.len() - 1].to_vec());
        assert!(parse_text(b"novalue\0").is_err());
        assert!(parse_text(b"=v\0").is_err());
        assert!(parse_text(&[0xff, b'=', b'1']).is_err());
    }

    #[test]
    fn negotiates_by_the_rfc_functions() {
        let ours = Limits::default();
        let mut n = Negotiation::new();
        let r = |n: &mut Negotiation, k: &str, v: &str| {
            n.offer(k, v, &ours, false).unwrap().map(|p| p.1)
        };
        assert_eq!(
            r(&mut n, "HeaderDigest", "CRC32C,None").as_deref(),
            Some("CRC32C")
        );
        assert!(n.conn.header_digest);
        assert_eq!(r(&mut n, "DataDigest", "None").as_deref(), Some("None"));
        assert_eq!(r(&mut n, "InitialR2T", "Yes").as_deref(), Some("Yes"));
        assert_eq!(r(&mut n, "ImmediateData", "Yes").as_deref(), Some("Yes"));
        assert_eq!(
            r(&mut n, "MaxBurstLength", "16776192").as_deref(),
            Some("1048576")
        );
        assert_eq!(
            r(&mut n, "FirstBurstLength", "262144").as_deref(),
            Some("262144")
        );
        assert_eq!(r(&mut n, "MaxRecvDataSegmentLength", "65536"), None);
        assert_eq!(n.conn.max_send_data, 65536);
        assert_eq!(r(&mut n, "ErrorRecoveryLevel", "2").as_deref(), Some("0"));
        assert_eq!(
            r(&mut n, "X-com.example", "1").as_deref(),
            Some("NotUnderstood")
        );
        assert_eq!(
            r(&mut n, "MaxOutstandingR2T", "banana").as_deref(),
            Some("Reject")
        );
        assert!(
            n.offer("InitialR2T", "No", &ours, false).is_err(),
            "repeated key"
        );
        let strict = Limits {
            require_data_digest: true,
            ..Limits::default()
        };
        assert!(Negotiation::new()
            .offer("DataDigest", "None", &strict, false)
            .is_err());
    }
}
