//! The NBD server against real clients nobody here wrote: nbdinfo (libnbd),
//! qemu-io / qemu-img, and fio's nbd engine, over loopback. The volumes are
//! RAM volumes, so this tests the protocol layer alone; the end-to-end tests
//! through `ferrited` live in engine/tests.

use ferrite_engine::rt::{Config, Runtime};
use ferrite_engine::volume::mem::{MemProvider, MemVolume};
use ferrite_gateway::nbd::NbdServer;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;

struct Fixture {
    _rt: Runtime,
    server: Arc<NbdServer>,
    addr: SocketAddr,
}

fn fixture(vols: &[(&str, u64, u32)]) -> Fixture {
    let rt = Runtime::new(Config::for_tests(2)).unwrap();
    let provider = MemProvider::new();
    for (name, size, bs) in vols {
        provider.add(MemVolume::new(name, *size, *bs));
    }
    let server = NbdServer::new(rt.handle(), provider);
    let addr = server.listen("127.0.0.1:0".parse().unwrap()).unwrap();
    for (name, _, _) in vols {
        server.export_start(name, None).unwrap();
    }
    Fixture {
        _rt: rt,
        server,
        addr,
    }
}

fn uri(addr: SocketAddr, export: &str) -> String {
    format!("nbd://{}:{}/{}", addr.ip(), addr.port(), export)
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("running {cmd:?}: {e} (is it installed? scripts/install-deps.sh)")
    });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn nbdinfo_sees_exports_sizes_and_block_sizes() {
    let f = fixture(&[("vol0", 64 << 20, 512), ("vol4k", 32 << 20, 4096)]);
    let (ok, out) = run(Command::new("nbdinfo").args(["--list", &uri(f.addr, "")]));
    assert!(ok, "{out}");
    assert!(out.contains("vol0") && out.contains("vol4k"), "{out}");
    let (ok, out) = run(Command::new("nbdinfo").args(["--json", &uri(f.addr, "vol4k")]));
    assert!(ok, "{out}");
    let v: serde_json::Value =
        serde_json::from_str(out.trim_start_matches(|c| c != '{')).expect("nbdinfo --json output");
    let e = &v["exports"][0];
    assert_eq!(e["export-size"], 32u64 << 20);
    assert_eq!(e["block_size_minimum"], 4096);
    assert_eq!(e["can_multi_conn"], true);
    assert_eq!(e["can_trim"], true);
    assert_eq!(e["can_zero"], true);
    assert_eq!(e["can_fua"], true);
    let (ok, out) = run(Command::new("nbdinfo").arg(uri(f.addr, "nope")));
    assert!(!ok, "unknown export must fail: {out}");
}

#[test]
fn qemu_io_reads_writes_at_the_end_and_refuses_past_it() {
    let size = 16u64 << 20;
    let f = fixture(&[("vol0", size, 512)]);
    let u = uri(f.addr, "vol0");
    let (ok, out) = run(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        &format!("write -P 0xab {} 4096", size - 4096),
        "-c",
        &format!("read -P 0xab {} 4096", size - 4096),
        &u,
    ]));
    assert!(ok && !out.contains("Pattern verification failed"), "{out}");
    let (_, out) = run(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        &format!("write -P 0xcd {} 4096", size),
        &u,
    ]));
    assert!(
        out.contains("failed")
            || out.contains("Input/output error")
            || out.contains("out of range")
            || out.contains("Invalid argument"),
        "writing past the end must be refused: {out}"
    );
    let (_, out) =
        run(Command::new("qemu-io").args(["-f", "raw", "-c", &format!("read {} 512", size), &u]));
    assert!(
        out.contains("failed") || out.contains("error") || out.contains("Invalid"),
        "reading past the end must be refused: {out}"
    );
    // The server is fine afterwards.
    let (ok, out) = run(Command::new("qemu-io").args(["-f", "raw", "-c", "read -P 0 0 4096", &u]));
    assert!(ok && !out.contains("failed"), "{out}");
}

#[test]
fn qemu_img_convert_round_trip_is_byte_identical() {
    let size = 8u64 << 20;
    let f = fixture(&[("vol0", size, 512)]);
    let dir = std::env::temp_dir().join(format!("ferrite-nbd-qemu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("src.raw");
    let back = dir.join("back.raw");
    let data: Vec<u8> = (0..size)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&src, &data).unwrap();
    let u = uri(f.addr, "vol0");
    let (ok, out) = run(Command::new("qemu-img")
        .args(["convert", "-n", "-f", "raw", "-O", "raw"])
        .arg(&src)
        .arg(&u));
    assert!(ok, "{out}");
    let (ok, out) = run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw", &u])
        .arg(&back));
    assert!(ok, "{out}");
    assert!(
        std::fs::read(&back).unwrap() == data,
        "the image came back different"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn fio_nbd_engine_verifies_with_several_connections() {
    let f = fixture(&[("vol0", 96 << 20, 512)]);
    let mut handles = Vec::new();
    // Three fio processes at once: several connections to one export. The
    // third mixes sizes on one connection, so small replies queue behind
    // large ones written straight from their buffers, and the reverse.
    for (i, bs) in ["--bs=4k", "--bs=64k", "--bsrange=4k-256k"]
        .iter()
        .enumerate()
    {
        let addr = f.addr;
        let bs = bs.to_string();
        handles.push(std::thread::spawn(move || {
            run(Command::new("fio").args([
                "--name=verify",
                "--ioengine=nbd",
                &format!("--uri={}", uri(addr, "vol0")),
                "--rw=randrw",
                &bs,
                "--iodepth=16",
                "--size=16m",
                &format!("--offset={}m", i * 32),
                "--verify=crc32c",
                "--verify_fatal=1",
                "--do_verify=1",
                "--verify_state_save=0",
                "--output-format=terse",
                "--terse-version=3",
            ]))
        }));
    }
    for h in handles {
        let (ok, out) = h.join().unwrap();
        assert!(ok, "fio failed:\n{out}");
        assert!(!out.contains("verify: bad"), "{out}");
    }
    let st = f.server.export_stats("vol0").unwrap();
    assert!(st.connections.load(std::sync::atomic::Ordering::Relaxed) >= 2);
}

/// Raw protocol abuse: a bad handshake, an unknown export, an oversized
/// request. Each gets its answer; the server keeps serving others.
#[test]
fn bad_clients_get_clear_errors_and_harm_nobody() {
    let f = fixture(&[("vol0", 1 << 20, 512)]);
    // 1. Garbage instead of the client flags and options: the server closes.
    {
        let mut s = std::net::TcpStream::connect(f.addr).unwrap();
        let mut greet = [0u8; 18];
        s.read_exact(&mut greet).unwrap();
        assert_eq!(&greet[..8], b"NBDMAGIC");
        s.write_all(&[0xff; 64]).unwrap();
        let mut b = [0u8; 1];
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        assert_eq!(
            s.read(&mut b).unwrap_or(0),
            0,
            "server should close after unknown client flags"
        );
    }
    // 2. NBD_OPT_GO for an unknown export: NBD_REP_ERR_UNKNOWN, then haggling goes on.
    let mut s = std::net::TcpStream::connect(f.addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut greet = [0u8; 18];
    s.read_exact(&mut greet).unwrap();
    s.write_all(&3u32.to_be_bytes()).unwrap(); // fixed newstyle + no zeroes
    let go = |s: &mut std::net::TcpStream, name: &str| {
        let mut p = Vec::new();
        p.extend_from_slice(&(name.len() as u32).to_be_bytes());
        p.extend_from_slice(name.as_bytes());
        p.extend_from_slice(&0u16.to_be_bytes());
        let mut m = Vec::new();
        m.extend_from_slice(b"IHAVEOPT");
        m.extend_from_slice(&7u32.to_be_bytes());
        m.extend_from_slice(&(p.len() as u32).to_be_bytes());
        m.extend_from_slice(&p);
        s.write_all(&m).unwrap();
    };
    go(&mut s, "missing");
    let mut rep = [0u8; 20];
    s.read_exact(&mut rep).unwrap();
    let kind = u32::from_be_bytes(rep[12..16].try_into().unwrap());
    assert_eq!(kind, (1 << 31) + 6, "NBD_REP_ERR_UNKNOWN");
    let len = u32::from_be_bytes(rep[16..20].try_into().unwrap()) as usize;
    let mut msg = vec![0u8; len];
    s.read_exact(&mut msg).unwrap();
    assert!(String::from_utf8_lossy(&msg).contains("missing"));
    // 3. Now a good GO, then an oversized read: EOVERFLOW, connection stays.
    go(&mut s, "vol0");
    loop {
        let mut rep = [0u8; 20];
        s.read_exact(&mut rep).unwrap();
        let kind = u32::from_be_bytes(rep[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(rep[16..20].try_into().unwrap()) as usize;
        let mut d = vec![0u8; len];
        s.read_exact(&mut d).unwrap();
        if kind == 1 {
            break; // NBD_REP_ACK: transmission starts
        }
    }
    let req = |s: &mut std::net::TcpStream, kind: u16, cookie: u64, off: u64, len: u32| {
        let mut r = Vec::new();
        r.extend_from_slice(&0x25609513u32.to_be_bytes());
        r.extend_from_slice(&0u16.to_be_bytes());
        r.extend_from_slice(&kind.to_be_bytes());
        r.extend_from_slice(&cookie.to_be_bytes());
        r.extend_from_slice(&off.to_be_bytes());
        r.extend_from_slice(&len.to_be_bytes());
        s.write_all(&r).unwrap();
    };
    req(&mut s, 0, 7, 0, 1 << 30);
    let mut r = [0u8; 16];
    s.read_exact(&mut r).unwrap();
    assert_eq!(
        u32::from_be_bytes(r[4..8].try_into().unwrap()),
        75,
        "EOVERFLOW for an oversized read"
    );
    req(&mut s, 0, 8, 0, 512);
    s.read_exact(&mut r).unwrap();
    assert_eq!(u32::from_be_bytes(r[4..8].try_into().unwrap()), 0);
    assert_eq!(u64::from_be_bytes(r[8..16].try_into().unwrap()), 8);
    let mut data = [1u8; 512];
    s.read_exact(&mut data).unwrap();
    assert!(data.iter().all(|&b| b == 0));
    // 4. Another client is unaffected by all of the above.
    let (ok, out) = run(Command::new("nbdinfo").arg(uri(f.addr, "vol0")));
    assert!(ok, "{out}");
}

#[test]
fn stopping_an_export_closes_its_connections() {
    let f = fixture(&[("vol0", 1 << 20, 512)]);
    let u = uri(f.addr, "vol0");
    let mut child = Command::new("qemu-io")
        .args(["-f", "raw", &u])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until it is attached.
    for _ in 0..200 {
        if f.server.export_list()[0].connections == 1 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(f.server.export_list()[0].connections, 1);
    f.server.export_stop("vol0").unwrap();
    assert!(f.server.export_list().is_empty());
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        f.server.export_stop("vol0").is_err(),
        "stopping twice is an error"
    );
}
