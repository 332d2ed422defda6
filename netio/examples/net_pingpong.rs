//! Loopback round trip and streaming throughput of the connection layer on both backends,
//! printed beside the same measurements on plain blocking std sockets (the machine's limit).
//!
//! `cargo run --release -p raftline-netio --example net_pingpong -- [--rounds N]
//!  [--payload-bytes B] [--stream-secs S] [--frame-bytes F] [--backend uring|poll|both]`
//!
//! Ping-pong: node 1 sends a `PeerMessage` of B bytes to node 2, which answers with the same
//! payload; each Net runs on its own (pinned) thread. Streaming: node 1 keeps node 2's queue full
//! of F-byte frames for S seconds; node 2 counts payload bytes.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftline_netio::cluster_id::ClusterId;
use raftline_netio::frame::{self, FrameHeader, FrameType, FRAME_HEADER_BYTES};
use raftline_netio::net::{Net, NetConfig, NetEvent};
use raftline_netio::reactor::Backend;
use raftline_pinning::{available_cores, spawn_pinned};

const CLUSTER: ClusterId = ClusterId(0xBE7C);

struct Args {
    rounds: usize,
    payload_bytes: usize,
    stream_secs: u64,
    frame_bytes: usize,
    backends: Vec<Backend>,
}

fn parse_args() -> Args {
    let mut args = Args {
        rounds: 20_000,
        payload_bytes: 64,
        stream_secs: 3,
        frame_bytes: 64 << 10,
        backends: vec![Backend::Uring, Backend::Poll],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--rounds" => args.rounds = value.parse().expect("--rounds N"),
            "--payload-bytes" => args.payload_bytes = value.parse().expect("--payload-bytes B"),
            "--stream-secs" => args.stream_secs = value.parse().expect("--stream-secs S"),
            "--frame-bytes" => args.frame_bytes = value.parse().expect("--frame-bytes F"),
            "--backend" => {
                args.backends = match value.as_str() {
                    "both" => vec![Backend::Uring, Backend::Poll],
                    one => vec![one.parse().expect("--backend uring|poll|both")],
                }
            }
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

fn reserved_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn message(from: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
    let header = FrameHeader {
        frame_type: FrameType::PeerMessage,
        cluster_id: CLUSTER,
        sender_id: from,
    };
    frame::encode(&mut out, header, &[payload]).unwrap();
    out
}

fn config(
    id: u64,
    listen: SocketAddr,
    peer: (u64, SocketAddr),
    backend: Backend,
    frame_bytes: usize,
) -> NetConfig {
    let mut cfg = NetConfig::new(
        id,
        CLUSTER,
        listen,
        "127.0.0.1:0".parse().unwrap(),
        BTreeMap::from([peer]),
    );
    cfg.payload_bytes_max = frame_bytes.max(1 << 20) as u32;
    cfg.peer_queue_bytes_max = 8 * (FRAME_HEADER_BYTES + cfg.payload_bytes_max as usize);
    cfg.client_queue_bytes_max = cfg.peer_queue_bytes_max;
    cfg.backend = backend;
    cfg
}

/// The two cores the two loops run on (the same one twice on a one-core machine).
fn cores() -> (Option<usize>, Option<usize>) {
    let cores = available_cores();
    (
        cores.first().copied(),
        cores.get(1).or(cores.first()).copied(),
    )
}

struct Percentiles {
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
}

fn percentiles(mut samples_ns: Vec<u64>) -> Percentiles {
    samples_ns.sort_unstable();
    let at = |q: f64| samples_ns[((samples_ns.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
    Percentiles {
        p50_us: at(0.50),
        p99_us: at(0.99),
        p999_us: at(0.999),
    }
}

/// Node 2: answers every message (ping-pong) and counts payload bytes (streaming).
fn run_echo(mut net: Net, stop: Arc<AtomicBool>, received_bytes: Arc<AtomicU64>) {
    let mut events = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        net.poll(Some(Duration::from_millis(50)), &mut events)
            .unwrap();
        for event in events.drain(..) {
            if let NetEvent::PeerFrame { frame, .. } = event {
                received_bytes.fetch_add(frame.payload.len() as u64, Ordering::Relaxed);
                if frame.payload.len() < 1024 {
                    let _ = net.send_peer(1, message(2, &frame.payload));
                }
            }
        }
    }
}

fn wait_pong(net: &mut Net, events: &mut Vec<NetEvent>) {
    loop {
        net.poll(Some(Duration::from_secs(5)), events).unwrap();
        if events
            .drain(..)
            .any(|e| matches!(e, NetEvent::PeerFrame { .. }))
        {
            return;
        }
    }
}

fn measure_net(backend: Backend, args: &Args) -> (Percentiles, f64) {
    let (addr1, addr2) = (reserved_addr(), reserved_addr());
    let (core_a, core_b) = cores();
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let echo = {
        let (stop, received) = (stop.clone(), received.clone());
        let cfg = config(2, addr2, (1, addr1), backend, args.frame_bytes);
        spawn_pinned("echo", core_b, move || {
            run_echo(Net::bind(cfg).unwrap(), stop, received)
        })
        .unwrap()
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let cfg = config(1, addr1, (2, addr2), backend, args.frame_bytes);
    let rounds = args.rounds;
    let payload = vec![7u8; args.payload_bytes];
    let frame_payload = vec![1u8; args.frame_bytes];
    let stream_for = Duration::from_secs(args.stream_secs);
    let driver = spawn_pinned("driver", core_a, move || {
        let mut net = Net::bind(cfg).unwrap();
        let mut events = Vec::new();
        // Both links are up once a pong comes back; a ping sent before the echo's link to us
        // was up gets no answer, so resend until one does.
        let start = Instant::now();
        'handshake: loop {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "links never came up"
            );
            let _ = net.send_peer(2, message(1, &payload));
            let sent_at = Instant::now();
            while sent_at.elapsed() < Duration::from_millis(50) {
                net.poll(Some(Duration::from_millis(10)), &mut events)
                    .unwrap();
                if events
                    .drain(..)
                    .any(|e| matches!(e, NetEvent::PeerFrame { .. }))
                {
                    break 'handshake;
                }
            }
        }
        // Answers to earlier handshake pings may still be on their way: let them land.
        let settle = Instant::now();
        while settle.elapsed() < Duration::from_millis(200) {
            net.poll(Some(Duration::from_millis(10)), &mut events)
                .unwrap();
            events.clear();
        }
        for _ in 0..rounds / 10 {
            net.send_peer(2, message(1, &payload)).unwrap();
            wait_pong(&mut net, &mut events);
        }
        let mut samples = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let t = Instant::now();
            net.send_peer(2, message(1, &payload)).unwrap();
            wait_pong(&mut net, &mut events);
            samples.push(t.elapsed().as_nanos() as u64);
        }
        tx.send(samples).unwrap();
        let start = Instant::now();
        while start.elapsed() < stream_for {
            while net.send_peer(2, message(1, &frame_payload)).is_ok() {}
            net.poll(Some(Duration::from_millis(1)), &mut events)
                .unwrap();
            events.clear();
        }
    })
    .unwrap();
    let samples = rx.recv().unwrap();
    let before = received.load(Ordering::Relaxed);
    let t = Instant::now();
    driver.join().unwrap();
    let mb_per_s =
        (received.load(Ordering::Relaxed) - before) as f64 / t.elapsed().as_secs_f64() / 1e6;
    stop.store(true, Ordering::Relaxed);
    echo.join().unwrap();
    (percentiles(samples), mb_per_s)
}

/// The same two measurements on blocking std sockets: what the kernel gives without our loop.
fn measure_std(args: &Args) -> (Percentiles, f64) {
    let (rounds, payload_bytes, stream_secs, frame_bytes) = (
        args.rounds,
        args.payload_bytes,
        args.stream_secs,
        args.frame_bytes,
    );
    let (core_a, _) = cores();
    spawn_pinned("std-driver", core_a, move || {
        std_client(rounds, payload_bytes, stream_secs, frame_bytes)
    })
    .unwrap()
    .join()
    .unwrap()
}

fn std_client(
    rounds: usize,
    payload_bytes: usize,
    stream_secs: u64,
    frame_bytes: usize,
) -> (Percentiles, f64) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (_, core_b) = cores();
    let echo = spawn_pinned("std-echo", core_b, move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_nodelay(true).unwrap();
        let mut buf = vec![0u8; payload_bytes];
        while s.read_exact(&mut buf).is_ok() {
            s.write_all(&buf).unwrap();
        }
    })
    .unwrap();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    let mut buf = vec![7u8; payload_bytes];
    for _ in 0..rounds / 10 {
        s.write_all(&buf).unwrap();
        s.read_exact(&mut buf).unwrap();
    }
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        s.write_all(&buf).unwrap();
        s.read_exact(&mut buf).unwrap();
        samples.push(t.elapsed().as_nanos() as u64);
    }
    drop(s);
    echo.join().unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let sink = spawn_pinned("std-sink", core_b, move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        total
    })
    .unwrap();
    let mut s = TcpStream::connect(addr).unwrap();
    let chunk = vec![1u8; frame_bytes];
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(stream_secs) {
        s.write_all(&chunk).unwrap();
    }
    drop(s);
    let total = sink.join().unwrap();
    (
        percentiles(samples),
        total as f64 / t.elapsed().as_secs_f64() / 1e6,
    )
}

fn main() {
    let args = parse_args();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "loopback ping-pong ({} rounds, {} B payload) and streaming ({} s, {} B frames); cores {:?}; loadavg {}",
        args.rounds,
        args.payload_bytes,
        args.stream_secs,
        args.frame_bytes,
        cores(),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>10}",
        "path", "p50 µs", "p99 µs", "p99.9 µs", "MB/s"
    );
    let row = |name: &str, (p, mbps): (Percentiles, f64)| {
        println!(
            "{name:<28} {:>9.1} {:>9.1} {:>9.1} {:>10.0}",
            p.p50_us, p.p99_us, p.p999_us, mbps
        );
    };
    for backend in &args.backends {
        row(&format!("Net ({backend:?})"), measure_net(*backend, &args));
    }
    row("std blocking sockets (limit)", measure_std(&args));
    println!("reference (DESIGN §3a, fio/iperf-class tools on this machine kind): 64 B ping-pong p50 ~67 µs, loopback ~16 Gbit/s (~2000 MB/s)");
}
