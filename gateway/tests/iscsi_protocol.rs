//! The iSCSI target against hand-built PDUs, for what no real initiator
//! here does on purpose: malformed and hostile PDUs, an initiator that
//! vanishes mid-command or stops answering pings, several connections in
//! one session (MC/S), data digests. Each case also checks that the
//! target's other connections go on and that the process lives.

mod iscsi_common;

use iscsi_common::{require, run, Target, NODE_BASE};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const INITIATOR: &str = "iqn.2026-11.io.ferrite:raw-initiator";

/// Text keys as (key, value) pairs.
type Keys = Vec<(String, String)>;

/// A bare-bones initiator: enough login and framing to provoke the target.
struct Raw {
    s: TcpStream,
    hd: bool,
    dd: bool,
    itt: u32,
    cmdsn: u32,
    tsih: u16,
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn text(keys: &[(&str, &str)]) -> Vec<u8> {
    let mut v = Vec::new();
    for (k, val) in keys {
        v.extend_from_slice(format!("{k}={val}").as_bytes());
        v.push(0);
    }
    v
}

fn parse_text(d: &[u8]) -> Vec<(String, String)> {
    d.split(|&b| b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let s = String::from_utf8_lossy(p);
            let (k, v) = s.split_once('=').unwrap_or((&s, ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn pad(n: usize) -> usize {
    (4 - n % 4) % 4
}

impl Raw {
    fn connect(addr: SocketAddr) -> Self {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Raw {
            s,
            hd: false,
            dd: false,
            itt: 1,
            cmdsn: 1,
            tsih: 0,
        }
    }

    /// Logs in straight to full feature phase (operational stage only).
    fn login(
        addr: SocketAddr,
        target: Option<&str>,
        extra: &[(&str, &str)],
        isid_tail: u8,
        tsih: u16,
        cid: u16,
    ) -> Result<(Raw, Keys), (u8, u8)> {
        let mut r = Raw::connect(addr);
        let mut keys = vec![("InitiatorName", INITIATOR)];
        match target {
            Some(t) => {
                keys.push(("TargetName", t));
                keys.push(("SessionType", "Normal"));
            }
            None => keys.push(("SessionType", "Discovery")),
        }
        keys.extend_from_slice(extra);
        let data = text(&keys);
        let mut bhs = [0u8; 48];
        bhs[0] = 0x40 | 0x03;
        bhs[1] = 0x80 | (1 << 2) | 3; // T, CSG=1, NSG=3
        bhs[8..14].copy_from_slice(&[0x80, 0, 0, 0, 0, isid_tail]);
        bhs[14..16].copy_from_slice(&tsih.to_be_bytes());
        bhs[16..20].copy_from_slice(&0x1000u32.to_be_bytes());
        bhs[20..22].copy_from_slice(&cid.to_be_bytes());
        bhs[24..28].copy_from_slice(&1u32.to_be_bytes());
        r.send(bhs, &data);
        let (h, d) = r.recv().expect("login response");
        assert_eq!(h[0] & 0x3f, 0x23, "login response opcode");
        if h[36] != 0 {
            return Err((h[36], h[37]));
        }
        let keys = parse_text(&d);
        r.tsih = u16::from_be_bytes([h[14], h[15]]);
        r.cmdsn = be32(&h[28..32]);
        for (k, v) in &keys {
            if k == "HeaderDigest" {
                r.hd = v == "CRC32C";
            }
            if k == "DataDigest" {
                r.dd = v == "CRC32C";
            }
        }
        Ok((r, keys))
    }

    fn send(&mut self, mut bhs: [u8; 48], data: &[u8]) {
        bhs[5] = (data.len() >> 16) as u8;
        bhs[6] = (data.len() >> 8) as u8;
        bhs[7] = data.len() as u8;
        self.send_raw(bhs, data, true);
    }

    /// Sends without fixing the length (to lie about it) and with digests
    /// computed honestly, unless `good_digest` is false.
    fn send_raw(&mut self, bhs: [u8; 48], data: &[u8], good_digest: bool) {
        let mut out = bhs.to_vec();
        if self.hd {
            out.extend_from_slice(&crc32c::crc32c(&bhs).to_le_bytes());
        }
        if !data.is_empty() {
            out.extend_from_slice(data);
            out.resize(out.len() + pad(data.len()), 0);
            if self.dd {
                let start = out.len() - data.len() - pad(data.len());
                let mut d = crc32c::crc32c(&out[start..]);
                if !good_digest {
                    d ^= 1;
                }
                out.extend_from_slice(&d.to_le_bytes());
            }
        }
        let _ = self.s.write_all(&out);
    }

    fn recv(&mut self) -> std::io::Result<([u8; 48], Vec<u8>)> {
        let mut h = [0u8; 48];
        self.s.read_exact(&mut h)?;
        if self.hd {
            let mut d = [0u8; 4];
            self.s.read_exact(&mut d)?;
            assert_eq!(
                u32::from_le_bytes(d),
                crc32c::crc32c(&h),
                "header digest from the target"
            );
        }
        let len = (h[5] as usize) << 16 | (h[6] as usize) << 8 | h[7] as usize;
        let mut d = vec![0u8; len + pad(len)];
        self.s.read_exact(&mut d)?;
        if self.dd && len > 0 {
            let mut g = [0u8; 4];
            self.s.read_exact(&mut g)?;
            assert_eq!(
                u32::from_le_bytes(g),
                crc32c::crc32c(&d),
                "data digest from the target"
            );
        }
        d.truncate(len);
        Ok((h, d))
    }

    /// Receives, skipping NOP-In pings from the target.
    fn recv_reply(&mut self) -> std::io::Result<([u8; 48], Vec<u8>)> {
        loop {
            let (h, d) = self.recv()?;
            if h[0] & 0x3f == 0x20 && be32(&h[16..20]) == 0xffff_ffff {
                continue;
            }
            return Ok((h, d));
        }
    }

    fn next_itt(&mut self) -> u32 {
        self.itt += 1;
        self.itt
    }

    fn scsi_cmd(
        &mut self,
        cdb: &[u8],
        read: bool,
        write: bool,
        edtl: u32,
        immediate: &[u8],
    ) -> u32 {
        let itt = self.next_itt();
        let mut bhs = [0u8; 48];
        bhs[0] = 0x01;
        bhs[1] = 0x80 | if read { 0x40 } else { 0 } | if write { 0x20 } else { 0 } | 1;
        bhs[16..20].copy_from_slice(&itt.to_be_bytes());
        bhs[20..24].copy_from_slice(&edtl.to_be_bytes());
        bhs[24..28].copy_from_slice(&self.cmdsn.to_be_bytes());
        self.cmdsn += 1;
        bhs[32..32 + cdb.len()].copy_from_slice(cdb);
        self.send(bhs, immediate);
        itt
    }

    /// Sends a NOP-Out ping and expects its NOP-In echo.
    fn ping(&mut self) -> bool {
        let itt = self.next_itt();
        let mut bhs = [0u8; 48];
        bhs[0] = 0x40; // immediate NOP-Out
        bhs[1] = 0x80;
        bhs[16..20].copy_from_slice(&itt.to_be_bytes());
        bhs[20..24].copy_from_slice(&0xffff_ffffu32.to_be_bytes());
        bhs[24..28].copy_from_slice(&self.cmdsn.to_be_bytes());
        self.send(bhs, b"ping");
        match self.recv_reply() {
            Ok((h, d)) => h[0] & 0x3f == 0x20 && be32(&h[16..20]) == itt && d == b"ping",
            Err(_) => false,
        }
    }

    /// True once the target has closed the connection.
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1024];
        for _ in 0..100 {
            match self.s.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return false
                }
                Err(_) => return true,
            }
        }
        false
    }
}

fn node(v: &str) -> String {
    format!("{NODE_BASE}:{v}")
}

fn read10(lba: u32, n: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = 0x28;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&n.to_be_bytes());
    c
}

fn write10(lba: u32, n: u16) -> [u8; 10] {
    let mut c = read10(lba, n);
    c[0] = 0x2A;
    c
}

#[test]
fn malformed_pdus_close_only_their_connection() {
    require("iscsi-inq");
    let mut t = Target::start("malformed", &["v0:4M"], 1, true, &[]);
    let addr = t.portals[0];
    let n = node("v0");
    let (mut a, _) = Raw::login(addr, Some(&n), &[], 1, 0, 0).expect("login");
    assert!(a.ping());

    // An opcode the target does not know: Reject "command not supported",
    // and the connection stays.
    let mut bhs = [0u8; 48];
    bhs[0] = 0x1C;
    bhs[16..20].copy_from_slice(&77u32.to_be_bytes());
    a.send(bhs, &[]);
    let (h, d) = a.recv_reply().expect("reject");
    assert_eq!(
        (h[0] & 0x3f, h[2]),
        (0x3f, 0x05),
        "Reject, command not supported"
    );
    assert_eq!(
        &d[..48],
        &bhs[..],
        "the Reject carries the offending header"
    );
    // SNACK at ErrorRecoveryLevel 0: rejected, connection stays.
    let mut snack = [0u8; 48];
    snack[0] = 0x10;
    snack[1] = 0x80;
    a.send(snack, &[]);
    assert_eq!(a.recv_reply().unwrap().0[2], 0x05);
    // A SCSI command with data but without the W bit: invalid field.
    let mut bad = [0u8; 48];
    bad[0] = 0x01;
    bad[1] = 0x80;
    a.send(bad, &[0u8; 16]);
    assert_eq!(
        a.recv_reply().unwrap().0[2],
        0x09,
        "Reject, invalid PDU field"
    );
    assert!(a.ping(), "connection A still works");

    // A data segment longer than the target's MaxRecvDataSegmentLength:
    // Reject "protocol error", then the connection closes.
    let (mut b, _) = Raw::login(addr, Some(&n), &[], 2, 0, 0).expect("login");
    let mut big = [0u8; 48];
    big[0] = 0x40;
    big[1] = 0x80;
    big[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    b.send_raw(big, &[], true);
    let (h, _) = b.recv_reply().expect("reject before close");
    assert_eq!((h[0] & 0x3f, h[2]), (0x3f, 0x04));
    assert!(b.closed(), "the target closes a connection it cannot frame");

    // A Login Request in full feature phase: protocol error, closed.
    let (mut c, _) = Raw::login(addr, Some(&n), &[], 3, 0, 0).expect("login");
    let mut l = [0u8; 48];
    l[0] = 0x43;
    c.send(l, &[]);
    assert_eq!(c.recv_reply().unwrap().0[2], 0x04);
    assert!(c.closed());

    // Garbage instead of a login, and a half-sent PDU: just closed.
    let mut g = Raw::connect(addr);
    g.s.write_all(&[0xA5; 200]).unwrap();
    assert!(g.closed(), "garbage before login");
    let mut h = Raw::connect(addr);
    h.s.write_all(&[0x43, 0x87, 0, 0, 0, 0, 0x10, 0]).unwrap();
    drop(h);

    // Through all this: A works, a real initiator works, the process lives.
    assert!(a.ping());
    let (ok, out) = run(30, "iscsi-inq", &[&t.url(0, "v0", 0)]);
    assert!(ok, "{out}");
    assert!(t.alive());
}

#[test]
fn digests_protect_headers_and_data() {
    let t = Target::start("digests", &["v0:4M"], 1, true, &[]);
    let n = node("v0");
    let (mut a, keys) = Raw::login(
        t.portals[0],
        Some(&n),
        &[
            ("HeaderDigest", "CRC32C,None"),
            ("DataDigest", "CRC32C,None"),
            ("ImmediateData", "Yes"),
            ("InitialR2T", "No"),
        ],
        4,
        0,
        0,
    )
    .expect("login");
    assert!(a.hd && a.dd, "digests negotiated: {keys:?}");
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    let itt = a.scsi_cmd(&write10(8, 8), false, true, 4096, &data);
    let (h, _) = a.recv_reply().unwrap();
    assert_eq!(
        (h[0] & 0x3f, be32(&h[16..20]), h[3]),
        (0x21, itt, 0),
        "write with digests"
    );
    let itt = a.scsi_cmd(&read10(8, 8), true, false, 4096, &[]);
    let mut back = Vec::new();
    loop {
        let (h, d) = a.recv_reply().unwrap();
        assert_eq!(be32(&h[16..20]), itt);
        back.extend_from_slice(&d);
        if h[0] & 0x3f == 0x21 || h[1] & 0x01 != 0 {
            break;
        }
    }
    assert_eq!(back, data);
    // A bad data digest: Reject "data digest error", the task fails, the
    // connection goes on.
    let itt = a.next_itt();
    let mut bhs = [0u8; 48];
    bhs[0] = 0x01;
    bhs[1] = 0x80 | 0x20 | 1;
    bhs[16..20].copy_from_slice(&itt.to_be_bytes());
    bhs[20..24].copy_from_slice(&1024u32.to_be_bytes());
    bhs[24..28].copy_from_slice(&a.cmdsn.to_be_bytes());
    a.cmdsn += 1;
    bhs[32..42].copy_from_slice(&write10(0, 2));
    a.send(bhs, &[]);
    let (r2t, _) = a.recv_reply().unwrap();
    assert_eq!(r2t[0] & 0x3f, 0x31, "R2T");
    let mut dout = [0u8; 48];
    dout[0] = 0x05;
    dout[1] = 0x80;
    dout[16..20].copy_from_slice(&itt.to_be_bytes());
    dout[20..24].copy_from_slice(&r2t[20..24]);
    dout[5..8].copy_from_slice(&[0, 4, 0]);
    a.send_raw(dout, &[1u8; 1024], false);
    let (h, _) = a.recv_reply().unwrap();
    assert_eq!(
        (h[0] & 0x3f, h[2]),
        (0x3f, 0x02),
        "Reject, data digest error"
    );
    let (h, d) = a.recv_reply().unwrap();
    assert_eq!(
        (h[0] & 0x3f, h[3]),
        (0x21, 0x02),
        "the write ends with CHECK CONDITION"
    );
    assert_eq!(
        (d[2 + 2] & 0x0f, d[2 + 12], d[2 + 13]),
        (0x0B, 0x47, 0x05),
        "ABORTED COMMAND, PROTOCOL SERVICE CRC ERROR"
    );
    assert!(a.ping());
}

fn connections(t: &Target) -> Vec<serde_json::Value> {
    t.rpc("iscsi_get_connections", serde_json::json!(null))
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn vanished_and_silent_initiators_are_cleaned_up() {
    let mut t = Target::start(
        "vanish",
        &["v0:8M"],
        1,
        true,
        &["--nop-in-interval-ms", "300", "--nop-timeout-ms", "600"],
    );
    let n = node("v0");
    // Vanishes in the middle of a write: R2T outstanding, then gone.
    let (mut a, _) = Raw::login(
        t.portals[0],
        Some(&n),
        &[("InitialR2T", "Yes"), ("ImmediateData", "No")],
        5,
        0,
        0,
    )
    .expect("login");
    a.scsi_cmd(&write10(0, 2048), false, true, 1 << 20, &[]);
    let (h, _) = a.recv_reply().unwrap();
    assert_eq!(h[0] & 0x3f, 0x31, "R2T");
    // And holds a reservation, which must go with its session.
    a.scsi_cmd(&[0x16, 0, 0, 0, 0, 0], false, false, 0, &[]);
    assert_eq!(connections(&t).len(), 1);
    drop(a);
    let mut gone = false;
    for _ in 0..200 {
        if connections(&t).is_empty() {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(gone, "the connection of a vanished initiator is torn down");
    // Another initiator can reserve now (the I_T nexus was lost).
    let (mut b, _) = Raw::login(t.portals[0], Some(&n), &[], 6, 0, 0).expect("login");
    let itt = b.scsi_cmd(&[0x16, 0, 0, 0, 0, 0], false, false, 0, &[]);
    let (h, _) = b.recv_reply().unwrap();
    assert_eq!(
        (be32(&h[16..20]), h[3]),
        (itt, 0),
        "RESERVE(6) after the holder vanished"
    );
    // Silent initiator: answers nothing, so the target's NOP-In pings go
    // unanswered and it closes the connection.
    let mut pinged = false;
    loop {
        match b.recv() {
            Ok((h, _)) => pinged |= h[0] & 0x3f == 0x20 && be32(&h[20..24]) != 0xffff_ffff,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => panic!("waiting for the target to give up: {e}"),
        }
    }
    assert!(pinged, "the target pinged before giving up");
    assert!(t.alive());
}

#[test]
fn several_connections_in_one_session() {
    let t = Target::start("mcs", &["v0:4M"], 1, true, &[]);
    let n = node("v0");
    let (mut a, keys) =
        Raw::login(t.portals[0], Some(&n), &[("MaxConnections", "4")], 7, 0, 0).expect("login");
    assert!(
        keys.iter().any(|(k, v)| k == "MaxConnections" && v == "4"),
        "{keys:?}"
    );
    let (mut b, _) = Raw::login(t.portals[0], Some(&n), &[], 7, a.tsih, 1)
        .expect("second connection joins the session");
    assert_eq!(b.tsih, a.tsih);
    let conns = connections(&t);
    assert_eq!(conns.len(), 2);
    assert!(
        conns.iter().all(|c| c["tsih"] == a.tsih as u64),
        "{conns:?}"
    );
    // One CmdSN space: the session's window is shared.
    b.cmdsn = a.cmdsn;
    let itt = b.scsi_cmd(&[0u8; 6], false, false, 0, &[]);
    let (h, _) = b.recv_reply().unwrap();
    assert_eq!(
        (be32(&h[16..20]), h[3]),
        (itt, 0),
        "TEST UNIT READY on connection 2"
    );
    a.cmdsn = b.cmdsn;
    assert!(a.ping());
    // A third login with an unknown TSIH is refused.
    assert_eq!(
        Raw::login(t.portals[0], Some(&n), &[], 7, 0x7777, 2).err(),
        Some((2, 0x0A))
    );
    // Logging out connection 2 leaves connection 1 in the session.
    let mut lo = [0u8; 48];
    lo[0] = 0x46;
    lo[1] = 0x80 | 1;
    lo[16..20].copy_from_slice(&999u32.to_be_bytes());
    lo[20..22].copy_from_slice(&1u16.to_be_bytes());
    lo[24..28].copy_from_slice(&b.cmdsn.to_be_bytes());
    b.send(lo, &[]);
    let (h, _) = b.recv_reply().unwrap();
    assert_eq!((h[0] & 0x3f, h[2]), (0x26, 0), "logout response");
    assert!(b.closed());
    assert!(a.ping());
}

#[test]
fn login_failures_say_why() {
    let t = Target::start("login", &["v0:4M"], 1, true, &[]);
    // Unknown target: not found (2/03).
    assert_eq!(
        Raw::login(t.portals[0], Some(&node("nope")), &[], 8, 0, 0).err(),
        Some((2, 0x03))
    );
    // A digest the target cannot do.
    assert!(Raw::login(
        t.portals[0],
        Some(&node("v0")),
        &[("HeaderDigest", "Adler32")],
        8,
        0,
        0
    )
    .is_err());
    // Discovery sessions work and answer SendTargets.
    let (mut d, _) = Raw::login(t.portals[0], None, &[], 9, 0, 0).expect("discovery login");
    let mut bhs = [0u8; 48];
    bhs[0] = 0x04;
    bhs[1] = 0x80;
    bhs[16..20].copy_from_slice(&5u32.to_be_bytes());
    bhs[20..24].copy_from_slice(&0xffff_ffffu32.to_be_bytes());
    bhs[24..28].copy_from_slice(&d.cmdsn.to_be_bytes());
    d.send(bhs, &text(&[("SendTargets", "All")]));
    let (h, data) = d.recv_reply().unwrap();
    assert_eq!(h[0] & 0x3f, 0x24);
    let keys = parse_text(&data);
    assert!(
        keys.iter()
            .any(|(k, v)| k == "TargetName" && *v == node("v0")),
        "{keys:?}"
    );
    assert!(
        keys.iter()
            .any(|(k, v)| k == "TargetAddress" && v.ends_with(",1")),
        "{keys:?}"
    );
    // SCSI commands have no place in a discovery session.
    d.scsi_cmd(&[0u8; 6], false, false, 0, &[]);
    assert_eq!(d.recv_reply().unwrap().0[0] & 0x3f, 0x3f, "Reject");
}

#[test]
fn command_data_is_bounded_per_connection() {
    let t = Target::start("budget", &["v0:16M"], 1, true, &["--max-buffered-mib", "1"]);
    let n = node("v0");
    let (mut a, _) =
        Raw::login(t.portals[0], Some(&n), &[("InitialR2T", "Yes")], 10, 0, 0).expect("login");
    // 2 MiB of data-out would exceed the 1 MiB budget: TASK SET FULL, no R2T.
    let itt = a.scsi_cmd(&write10(0, 4096), false, true, 2 << 20, &[]);
    let (h, _) = a.recv_reply().unwrap();
    assert_eq!(
        (h[0] & 0x3f, be32(&h[16..20]), h[3]),
        (0x21, itt, 0x28),
        "TASK SET FULL"
    );
    // So would a 2 MiB read, whatever EDTL claims.
    let itt = a.scsi_cmd(&read10(0, 4096), true, false, 512, &[]);
    let (h, _) = a.recv_reply().unwrap();
    assert_eq!(
        (be32(&h[16..20]), h[3]),
        (itt, 0x28),
        "TASK SET FULL for a read"
    );
    // Within the budget, writes go through as usual.
    let itt = a.scsi_cmd(&write10(0, 1), false, true, 512, &[7u8; 512]);
    let (h, _) = a.recv_reply().unwrap();
    assert_eq!((be32(&h[16..20]), h[3]), (itt, 0), "small write");
    assert!(a.ping());
}
