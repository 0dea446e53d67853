//! CHAP authentication (RFC 1994 as used by RFC 7143 12.1.3): one-way (the
//! target checks the initiator) and mutual (the initiator checks us too).
//!
//! Exchange, all inside login PDUs of the security stage:
//! 1. I: `CHAP_A=5[,...]`           T: `CHAP_A=5 CHAP_I=<id> CHAP_C=0x<challenge>`
//! 2. I: `CHAP_N=<name> CHAP_R=0x<md5(id|secret|challenge)>`
//!    and, for mutual CHAP, `CHAP_I=<id'> CHAP_C=0x<challenge'>`
//!    T: (mutual) `CHAP_N=<our name> CHAP_R=0x<md5(id'|msecret|challenge')>`

use super::md5;
use std::io::Read;

/// One CHAP identity: the initiator's name and secret, and for mutual CHAP
/// the name and secret the target answers with (SPDK auth group secret).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Secret {
    pub user: String,
    pub secret: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub muser: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msecret: Option<String>,
}

/// Why CHAP failed; logged, never sent to the initiator in detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChapError {
    #[error("initiator offered no supported CHAP algorithm (only MD5, CHAP_A=5): {0:?}")]
    NoAlgorithm(String),
    #[error("missing CHAP key {0}")]
    Missing(&'static str),
    #[error("malformed CHAP value for {key}: {value:?}")]
    Malformed { key: &'static str, value: String },
    #[error("unknown CHAP user {0:?}")]
    UnknownUser(String),
    #[error("wrong CHAP response for user {0:?}")]
    WrongResponse(String),
    #[error("mutual CHAP required but the initiator did not challenge the target")]
    MutualRequired,
    #[error("mutual CHAP asked but no target secret is configured for user {0:?}")]
    NoMutualSecret(String),
    #[error("the initiator reflected the target's challenge")]
    Reflected,
    #[error("cannot read random bytes for a challenge: {0}")]
    Random(String),
}

/// Decodes a CHAP binary value: `0x` hex or `0b` base64 (RFC 7143 6.1).
pub fn decode_binary(key: &'static str, v: &str) -> Result<Vec<u8>, ChapError> {
    let bad = || ChapError::Malformed {
        key,
        value: v.chars().take(64).collect(),
    };
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        // Digits only, checked first: slicing below must not cut a
        // multi-byte character a hostile initiator sent (found by fuzzing).
        if h.is_empty() || h.len() > 2048 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let h = if h.len() % 2 == 1 {
            format!("0{h}")
        } else {
            h.to_string()
        };
        return (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).map_err(|_| bad()))
            .collect();
    }
    if let Some(b) = v.strip_prefix("0b").or_else(|| v.strip_prefix("0B")) {
        return base64_decode(b).ok_or_else(bad);
    }
    Err(bad())
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim_end_matches('=').as_bytes();
    if s.is_empty() || s.len() > 4096 {
        return None;
    }
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for &c in s {
        acc = (acc << 6) | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

pub fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(2 + b.len() * 2);
    s.push_str("0x");
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

/// The CHAP response: MD5 over identifier, secret and challenge.
pub fn response(id: u8, secret: &[u8], challenge: &[u8]) -> [u8; 16] {
    md5::digest(&[&[id], secret, challenge])
}

fn random_bytes(n: usize) -> Result<Vec<u8>, ChapError> {
    let mut b = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| ChapError::Random(e.to_string()))?;
    Ok(b)
}

/// The target's side of one CHAP exchange.
#[derive(Debug)]
pub struct ChapServer {
    id: u8,
    challenge: Vec<u8>,
}

impl ChapServer {
    /// Step 1: picks MD5 from the initiator's CHAP_A list and makes a
    /// challenge. Returns the keys to send.
    pub fn start(chap_a: &str) -> Result<(Self, Vec<(String, String)>), ChapError> {
        if !chap_a.split(',').any(|a| a.trim() == "5") {
            return Err(ChapError::NoAlgorithm(chap_a.chars().take(64).collect()));
        }
        let r = random_bytes(17)?;
        let s = Self {
            id: r[0],
            challenge: r[1..].to_vec(),
        };
        let keys = vec![
            ("CHAP_A".into(), "5".into()),
            ("CHAP_I".into(), s.id.to_string()),
            ("CHAP_C".into(), hex(&s.challenge)),
        ];
        Ok((s, keys))
    }

    /// Step 2: checks CHAP_N/CHAP_R against `lookup(user)`; for mutual CHAP
    /// answers the initiator's CHAP_I/CHAP_C. `mutual_required` refuses
    /// initiators that do not challenge us.
    pub fn finish(
        &self,
        chap_n: Option<&str>,
        chap_r: Option<&str>,
        chap_i: Option<&str>,
        chap_c: Option<&str>,
        mutual_required: bool,
        lookup: impl Fn(&str) -> Option<Secret>,
    ) -> Result<Vec<(String, String)>, ChapError> {
        let user = chap_n.ok_or(ChapError::Missing("CHAP_N"))?;
        let got = decode_binary("CHAP_R", chap_r.ok_or(ChapError::Missing("CHAP_R"))?)?;
        let secret = lookup(user).ok_or_else(|| ChapError::UnknownUser(user.to_string()))?;
        let want = response(self.id, secret.secret.as_bytes(), &self.challenge);
        if !constant_time_eq(&got, &want) {
            return Err(ChapError::WrongResponse(user.to_string()));
        }
        match (chap_i, chap_c) {
            (Some(i), Some(c)) => {
                let id: u8 = i.trim().parse().map_err(|_| ChapError::Malformed {
                    key: "CHAP_I",
                    value: i.chars().take(16).collect(),
                })?;
                let challenge = decode_binary("CHAP_C", c)?;
                if challenge == self.challenge {
                    return Err(ChapError::Reflected);
                }
                let (Some(mu), Some(ms)) = (secret.muser.as_ref(), secret.msecret.as_ref()) else {
                    return Err(ChapError::NoMutualSecret(user.to_string()));
                };
                Ok(vec![
                    ("CHAP_N".into(), mu.clone()),
                    (
                        "CHAP_R".into(),
                        hex(&response(id, ms.as_bytes(), &challenge)),
                    ),
                ])
            }
            (None, None) if mutual_required => Err(ChapError::MutualRequired),
            (None, None) => Ok(Vec::new()),
            (None, Some(_)) => Err(ChapError::Missing("CHAP_I")),
            (Some(_), None) => Err(ChapError::Missing("CHAP_C")),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Secret {
        Secret {
            user: "u1".into(),
            secret: "s1-0123456789".into(),
            muser: Some("tgt".into()),
            msecret: Some("ms1-0123456789".into()),
        }
    }

    fn answer(keys: &[(String, String)], sec: &str) -> (String, String) {
        let id: u8 = keys[1].1.parse().unwrap();
        let c = decode_binary("CHAP_C", &keys[2].1).unwrap();
        ("u1".into(), hex(&response(id, sec.as_bytes(), &c)))
    }

    #[test]
    fn one_way_and_mutual() {
        let (srv, keys) = ChapServer::start("7,5").unwrap();
        let (n, r) = answer(&keys, "s1-0123456789");
        let out = srv
            .finish(Some(&n), Some(&r), None, None, false, |u| {
                (u == "u1").then(secret)
            })
            .unwrap();
        assert!(out.is_empty());
        let ic = vec![9u8; 16];
        let out = srv
            .finish(Some(&n), Some(&r), Some("3"), Some(&hex(&ic)), true, |_| {
                Some(secret())
            })
            .unwrap();
        assert_eq!(out[1].1, hex(&response(3, b"ms1-0123456789", &ic)));
    }

    #[test]
    fn wrong_secret_unknown_user_and_reflection_fail() {
        let (srv, keys) = ChapServer::start("5").unwrap();
        let (n, r) = answer(&keys, "wrong");
        assert!(matches!(
            srv.finish(Some(&n), Some(&r), None, None, false, |_| Some(secret())),
            Err(ChapError::WrongResponse(_))
        ));
        let (n, r) = answer(&keys, "s1-0123456789");
        assert!(matches!(
            srv.finish(Some(&n), Some(&r), None, None, false, |_| None),
            Err(ChapError::UnknownUser(_))
        ));
        assert!(matches!(
            srv.finish(Some(&n), Some(&r), None, None, true, |_| Some(secret())),
            Err(ChapError::MutualRequired)
        ));
        assert!(matches!(
            srv.finish(
                Some(&n),
                Some(&r),
                Some("1"),
                Some(&keys[2].1),
                false,
                |_| Some(secret())
            ),
            Err(ChapError::Reflected)
        ));
        assert!(ChapServer::start("6,7").is_err());
        assert_eq!(decode_binary("x", "0bAQID").unwrap(), vec![1, 2, 3]);
        assert!(decode_binary("x", "0xZZ").is_err());
        assert!(
            decode_binary("x", "0x\u{e9}a").is_err(),
            "non-ASCII must not panic"
        );
    }
}
