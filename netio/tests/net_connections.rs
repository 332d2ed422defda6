//! The connection layer over real loopback sockets, on both backends: frames both ways,
//! reconnect after a restart, bad input closing only its own connection, timeouts, bounded
//! queues and cross-thread wakes.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use raftline_netio::cluster_id::ClusterId;
use raftline_netio::frame::{self, FrameHeader, FrameType, FRAME_HEADER_BYTES};
use raftline_netio::net::{
    BindError, ClientId, CloseReason, Net, NetConfig, NetEvent, PeerHello, SendError,
};
use raftline_netio::reactor::{Backend, BackendKind};

const BACKENDS: [Backend; 2] = [Backend::Uring, Backend::Poll];
const CLUSTER: ClusterId = ClusterId(0xC0FF_EE00);
const PAYLOAD_BYTES_MAX: u32 = 64 << 10;
/// Bounds how long a broken build takes to fail; never reached when things work.
const DEADLINE: Duration = Duration::from_secs(20);

/// An address on loopback with a port the OS just handed out (for configs that must name a
/// peer's port before that peer binds it). Never the same port twice in this process: the OS may
/// hand a just-released port out again, and two nodes configured on one port cannot both bind.
fn reserved_addr() -> SocketAddr {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        if HANDED_OUT.lock().unwrap().insert(addr.port()) {
            return addr;
        }
    }
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn config(
    id: u64,
    peer_listen: SocketAddr,
    peers: &[(u64, SocketAddr)],
    backend: Backend,
) -> NetConfig {
    let mut cfg = NetConfig::new(
        id,
        CLUSTER,
        peer_listen,
        any_port(),
        peers.iter().copied().collect::<BTreeMap<_, _>>(),
    );
    let frame_bytes = FRAME_HEADER_BYTES + PAYLOAD_BYTES_MAX as usize;
    cfg.payload_bytes_max = PAYLOAD_BYTES_MAX;
    cfg.peer_queue_bytes_max = 4 * frame_bytes;
    cfg.client_queue_bytes_max = 4 * frame_bytes;
    cfg.client_drained_bytes = frame_bytes;
    cfg.reconnect_backoff_min = Duration::from_millis(10);
    cfg.reconnect_backoff_max = Duration::from_millis(100);
    cfg.backend = backend;
    cfg
}

fn encoded(
    frame_type: FrameType,
    cluster_id: ClusterId,
    sender_id: u64,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    let header = FrameHeader {
        frame_type,
        cluster_id,
        sender_id,
    };
    frame::encode(&mut out, header, &[payload]).unwrap();
    out
}

fn peer_message(from: u64, payload: &[u8]) -> Vec<u8> {
    encoded(FrameType::PeerMessage, CLUSTER, from, payload)
}

fn client_request(payload: &[u8]) -> Vec<u8> {
    encoded(FrameType::Status, CLUSTER, 0, payload)
}

struct Node {
    net: Net,
    events: Vec<NetEvent>,
}

impl Node {
    /// Binds, retrying while a reserved port is in use: between reserving a port (or a node's
    /// exit) and the bind, any connect() on the machine may take it as its ephemeral local port
    /// until that connection closes. No event announces that, so this polls with a deadline.
    fn bind(cfg: NetConfig) -> Node {
        let backend = cfg.backend;
        let start = Instant::now();
        let net = loop {
            match Net::bind(cfg.clone()) {
                Ok(net) => break net,
                Err(BindError::Listen { source, .. })
                    if source.kind() == ErrorKind::AddrInUse && start.elapsed() < DEADLINE =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(err) => panic!("bind: {err}"),
            }
        };
        let expected = match backend {
            Backend::Poll => BackendKind::Poll,
            _ => BackendKind::Uring,
        };
        assert_eq!(net.backend(), expected);
        Node {
            net,
            events: Vec::new(),
        }
    }
}

/// One short loop turn on every node.
fn turn(nodes: &mut [&mut Node]) {
    for node in nodes.iter_mut() {
        node.net
            .poll(Some(Duration::from_millis(2)), &mut node.events)
            .unwrap();
    }
}

/// Runs every node until node `who` has an event `pick` accepts; removes and returns it.
fn wait_event<T>(
    nodes: &mut [&mut Node],
    who: usize,
    mut pick: impl FnMut(&NetEvent) -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        let events = &mut nodes[who].events;
        for pos in 0..events.len() {
            if let Some(found) = pick(&events[pos]) {
                events.remove(pos);
                return found;
            }
        }
        assert!(
            start.elapsed() < DEADLINE,
            "event never came; node {who} saw {:?}",
            nodes[who].events
        );
        turn(nodes);
    }
}

/// Runs every node until `stream` sees the Net close it (EOF or reset).
fn wait_closed(nodes: &mut [&mut Node], stream: &mut TcpStream) {
    stream.set_nonblocking(true).unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Err(err) if err.kind() == ErrorKind::WouldBlock => {}
            Err(_) => return,
            Ok(_) => {}
        }
        assert!(start.elapsed() < DEADLINE, "connection was never closed");
        turn(nodes);
    }
}

fn peer_up(id: u64) -> impl FnMut(&NetEvent) -> Option<()> {
    move |e| matches!(e, NetEvent::PeerUp { id: up } if *up == id).then_some(())
}

fn peer_frame(from: u64) -> impl FnMut(&NetEvent) -> Option<Vec<u8>> {
    move |e| match e {
        NetEvent::PeerFrame { from: f, frame, .. } if *f == from => Some(frame.payload.clone()),
        _ => None,
    }
}

/// Two nodes that know each other, links up in both directions.
fn pair(backend: Backend) -> (Node, Node) {
    let (addr1, addr2) = (reserved_addr(), reserved_addr());
    let mut a = Node::bind(config(1, addr1, &[(2, addr2)], backend));
    let mut b = Node::bind(config(2, addr2, &[(1, addr1)], backend));
    wait_event(&mut [&mut a, &mut b], 0, peer_up(2));
    wait_event(&mut [&mut a, &mut b], 1, peer_up(1));
    (a, b)
}

#[test]
fn two_nets_exchange_frames_both_ways_in_order() {
    for backend in BACKENDS {
        let (mut a, mut b) = pair(backend);
        // Sizes from tiny to the limit: exercises coalescing, partial sends and reassembly.
        let payloads: Vec<Vec<u8>> = (0..200u32)
            .map(|i| vec![i as u8; ((i * 7919) % PAYLOAD_BYTES_MAX) as usize])
            .collect();
        let mut next_to_send = 0;
        for (i, payload) in payloads.iter().enumerate() {
            while next_to_send <= i {
                match a.net.send_peer(2, peer_message(1, &payloads[next_to_send])) {
                    Ok(()) => next_to_send += 1,
                    Err(SendError::Full) => turn(&mut [&mut a, &mut b]),
                    Err(err) => panic!("send_peer: {err}"),
                }
            }
            assert_eq!(
                &wait_event(&mut [&mut a, &mut b], 1, peer_frame(1)),
                payload
            );
        }
        b.net.send_peer(1, peer_message(2, b"reply")).unwrap();
        assert_eq!(
            wait_event(&mut [&mut a, &mut b], 0, peer_frame(2)),
            b"reply"
        );
    }
}

#[test]
fn a_restarted_peer_is_reconnected_and_reachable_again() {
    for backend in BACKENDS {
        let (mut a, b) = pair(backend);
        let b_cfg = config(
            2,
            b.net.local_addrs().peer,
            &[(1, a.net.local_addrs().peer)],
            backend,
        );
        drop(b);
        wait_event(&mut [&mut a], 0, |e| {
            matches!(e, NetEvent::PeerDown { id: 2 }).then_some(())
        });
        assert!(!a.net.peer_is_up(2));
        let mut b = Node::bind(b_cfg);
        wait_event(&mut [&mut a, &mut b], 0, peer_up(2));
        a.net.send_peer(2, peer_message(1, b"again")).unwrap();
        assert_eq!(
            wait_event(&mut [&mut a, &mut b], 1, peer_frame(1)),
            b"again"
        );
        wait_event(&mut [&mut a, &mut b], 1, peer_up(1));
        b.net.send_peer(1, peer_message(2, b"back")).unwrap();
        assert_eq!(wait_event(&mut [&mut a, &mut b], 0, peer_frame(2)), b"back");
    }
}

#[test]
fn a_peer_that_moved_is_dialled_at_its_new_address() {
    for backend in BACKENDS {
        // Node 1 knows node 2 at an address where nobody listens (its old machine).
        let (addr1, old, new) = (reserved_addr(), reserved_addr(), reserved_addr());
        let mut a = Node::bind(config(1, addr1, &[(2, old)], backend));
        let mut b = Node::bind(config(2, new, &[(1, addr1)], backend));
        // B's own link to A comes up; A's to B cannot, it dials the old address.
        wait_event(&mut [&mut a, &mut b], 1, peer_up(1));
        assert!(!a.net.peer_is_up(2));
        a.net.set_peer_addr(2, new);
        wait_event(&mut [&mut a, &mut b], 0, peer_up(2));
        a.net.send_peer(2, peer_message(1, b"found you")).unwrap();
        assert_eq!(
            wait_event(&mut [&mut a, &mut b], 1, peer_frame(1)),
            b"found you"
        );
    }
}

#[test]
fn a_peer_added_at_run_time_is_dialled_and_admitted_and_a_removed_one_is_cut_off() {
    for backend in BACKENDS {
        // Node 1 starts alone (a node joining a cluster); node 2 knows it.
        let (addr1, addr2) = (reserved_addr(), reserved_addr());
        let mut a = Node::bind(config(1, addr1, &[], backend));
        let mut b = Node::bind(config(2, addr2, &[(1, addr1)], backend));
        assert_eq!(
            a.net.send_peer(2, peer_message(1, b"x")),
            Err(SendError::UnknownPeer)
        );
        a.net.add_peer(2, addr2);
        wait_event(&mut [&mut a, &mut b], 0, peer_up(2));
        wait_event(&mut [&mut a, &mut b], 1, peer_up(1));
        b.net.send_peer(1, peer_message(2, b"admitted")).unwrap();
        assert_eq!(
            wait_event(&mut [&mut a, &mut b], 0, peer_frame(2)),
            b"admitted",
            "an added peer's hello is admitted"
        );
        a.net.remove_peer(2);
        assert!(!a.net.peer_is_up(2));
        assert_eq!(
            a.net.send_peer(2, peer_message(1, b"x")),
            Err(SendError::UnknownPeer)
        );
        // Node 2's link to node 1 was closed; its reconnection is refused from now on.
        wait_event(&mut [&mut a, &mut b], 1, |e| {
            matches!(e, NetEvent::PeerDown { id: 1 }).then_some(())
        });
        for _ in 0..50 {
            turn(&mut [&mut a, &mut b]);
        }
        let _ = b.net.send_peer(1, peer_message(2, b"refused"));
        for _ in 0..50 {
            turn(&mut [&mut a, &mut b]);
        }
        assert!(
            !a.events
                .iter()
                .any(|e| matches!(e, NetEvent::PeerFrame { from: 2, .. })),
            "a removed peer's frames are not admitted: {:?}",
            a.events
        );
    }
}

fn hello_from(from: u64) -> impl FnMut(&NetEvent) -> Option<PeerHello> {
    move |e| match e {
        NetEvent::PeerHello { from: f, hello } if *f == from => Some(*hello),
        _ => None,
    }
}

#[test]
fn hellos_carry_incarnations_and_another_than_the_recorded_one_is_refused() {
    for backend in BACKENDS {
        let (addr1, addr2) = (reserved_addr(), reserved_addr());
        let mut cfg1 = config(1, addr1, &[(2, addr2)], backend);
        cfg1.incarnation = 0x11;
        let mut cfg2 = config(2, addr2, &[(1, addr1)], backend);
        cfg2.incarnation = 0x22;
        let mut a = Node::bind(cfg1);
        a.net.set_peer_incarnation(2, 0x22);
        a.net.set_pristine(true);
        let mut b = Node::bind(cfg2);
        b.net.set_pristine(true);
        let said = wait_event(&mut [&mut a, &mut b], 1, hello_from(1));
        assert_eq!(
            said,
            PeerHello {
                incarnation: 0x11,
                recorded_for_you: 0x22,
                pristine: true
            },
            "a hello says who dials, what it records for the receiver, and that it is pristine"
        );
        assert_eq!(
            wait_event(&mut [&mut a, &mut b], 0, hello_from(2)).incarnation,
            0x22,
            "the recorded incarnation is admitted"
        );
        // Node 2's directory is replaced: a hello from another incarnation is refused.
        let peer_addr = a.net.local_addrs().peer;
        let other = PeerHello {
            incarnation: 0x99,
            recorded_for_you: 0,
            pristine: true,
        };
        let mut wiped = TcpStream::connect(peer_addr).unwrap();
        let hello = encoded(FrameType::PeerHello, CLUSTER, 2, &other.encode());
        wiped.write_all(&hello).unwrap();
        wait_closed(&mut [&mut a, &mut b], &mut wiped);
        assert!(
            !a.events.iter().any(
                |e| matches!(e, NetEvent::PeerHello { hello, .. } if hello.incarnation == 0x99)
            ),
            "the refused hello never reached the node"
        );
        // Recording another incarnation later closes the pristine connection that said the old
        // one.
        b.net.send_peer(1, peer_message(2, b"before")).unwrap();
        assert_eq!(
            wait_event(&mut [&mut a, &mut b], 0, peer_frame(2)),
            b"before"
        );
        a.net.set_peer_incarnation(2, 0x33);
        wait_event(&mut [&mut a, &mut b], 1, |e| {
            matches!(e, NetEvent::PeerDown { id: 1 }).then_some(())
        });
        for _ in 0..50 {
            turn(&mut [&mut a, &mut b]);
            let _ = b.net.send_peer(1, peer_message(2, b"after"));
        }
        assert!(
            !a.events
                .iter()
                .any(|e| matches!(e, NetEvent::PeerFrame { from: 2, .. })),
            "nothing from the unrecorded directory is admitted: {:?}",
            a.events
        );
        let refused = a.net.stats().closed.get("incarnation").copied();
        assert!(refused >= Some(2), "counted by reason: {refused:?}");
        // A node with a log under another incarnation is admitted: it was removed and joined
        // again, and this configuration is one its holder is still catching up through.
        let rejoined = PeerHello {
            incarnation: 0x77,
            recorded_for_you: 0,
            pristine: false,
        };
        let mut stream = TcpStream::connect(peer_addr).unwrap();
        let hello = encoded(FrameType::PeerHello, CLUSTER, 2, &rejoined.encode());
        stream.write_all(&hello).unwrap();
        assert_eq!(
            wait_event(&mut [&mut a, &mut b], 0, hello_from(2)),
            rejoined
        );
    }
}

/// A named bad input and a test of the close reason it must produce.
type BadInput = (&'static str, Vec<u8>, fn(&CloseReason) -> bool);

/// Bad inputs for the client port.
fn bad_client_inputs() -> Vec<BadInput> {
    let mut oversize = encoded(FrameType::Append, CLUSTER, 0, &[]);
    oversize[24..28].copy_from_slice(&(PAYLOAD_BYTES_MAX + 1).to_le_bytes());
    let mut wrong_version = client_request(b"v");
    wrong_version[4] = 99;
    vec![
        ("garbage", b"GET / HTTP/1.1\r\n\r\n".to_vec(), |r| {
            matches!(r, CloseReason::BadFrame(_))
        }),
        ("oversize", oversize, |r| {
            matches!(r, CloseReason::BadFrame(_))
        }),
        ("wrong version", wrong_version, |r| {
            matches!(r, CloseReason::BadFrame(_))
        }),
        (
            "wrong cluster",
            encoded(FrameType::Status, ClusterId(7), 0, b""),
            |r| matches!(r, CloseReason::WrongCluster { .. }),
        ),
        (
            "peer frame on the client port",
            peer_message(0, b"x"),
            |r| matches!(r, CloseReason::FrameTypeNotAllowed { .. }),
        ),
        (
            "node sender id on the client port",
            encoded(FrameType::Status, CLUSTER, 3, b""),
            |r| matches!(r, CloseReason::ClientSenderId(3)),
        ),
    ]
}

#[test]
fn a_client_that_does_not_read_its_answers_stops_being_read() {
    for backend in BACKENDS {
        let mut node = Node::bind(config(1, any_port(), &[], backend));
        let addr = node.net.local_addrs().client;
        // A client that keeps asking (one request a millisecond, bounded) and never reads.
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let writer = std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(&client_request(b"q")).unwrap();
            // The steady stream starts once the node has seen the first request (no burst
            // piled up before its first turn).
            let _ = go_rx.recv();
            for _ in 0..5_000 {
                if s.write_all(&client_request(b"q")).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            s
        });
        let answer = encoded(FrameType::StatusReply, CLUSTER, 1, &vec![0u8; 4 << 10]);
        let (mut asked, mut quiet_turns, mut id) = (0u64, 0, None);
        let start = Instant::now();
        // Answer every request; once the answers back up, the node stops reading the client,
        // so requests stop arriving before its queue is full.
        while quiet_turns < 100 {
            assert!(
                start.elapsed() < DEADLINE,
                "{backend:?}: requests kept coming"
            );
            turn(&mut [&mut node]);
            let mut arrived = 0;
            for event in node.events.drain(..) {
                if let NetEvent::ClientFrame { client, .. } = event {
                    arrived += 1;
                    if id.replace(client).is_none() {
                        go_tx.send(()).unwrap();
                    }
                    match node.net.send_client(client, answer.clone()) {
                        Ok(()) => {}
                        Err(e) => panic!("{backend:?}: answer {asked} refused ({e}): still read"),
                    }
                }
            }
            asked += arrived;
            let backlogged = id
                .and_then(|c| node.net.client_queued_bytes(c))
                .is_some_and(|q| q > 0);
            quiet_turns = if arrived == 0 && backlogged {
                quiet_turns + 1
            } else {
                0
            };
        }
        assert!(
            asked > 0 && asked < 5_000,
            "{backend:?}: {asked} requests read"
        );
        drop(writer);
    }
}

#[test]
fn idle_connections_cannot_lock_new_clients_out() {
    for backend in BACKENDS {
        let mut cfg = config(1, any_port(), &[], backend);
        cfg.clients_max = 3;
        cfg.client_evict_idle_min = Duration::ZERO;
        let mut node = Node::bind(cfg);
        let addr = node.net.local_addrs().client;
        // Three connections that only ever send a keepalive hold every slot.
        let keepalive = encoded(FrameType::Keepalive, CLUSTER, 0, b"");
        let mut squatters: Vec<TcpStream> = (0..3)
            .map(|_| {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(&keepalive).unwrap();
                s
            })
            .collect();
        // A new client still gets in and is heard; one squatter made room.
        let mut fresh = TcpStream::connect(addr).unwrap();
        fresh.write_all(&client_request(b"let me in")).unwrap();
        wait_event(&mut [&mut node], 0, |e| match e {
            NetEvent::ClientFrame { frame, .. } if frame.payload == b"let me in" => Some(()),
            _ => None,
        });
        wait_event(&mut [&mut node], 0, |e| match e {
            NetEvent::ClientClosed {
                reason: CloseReason::Evicted { .. },
                ..
            } => Some(()),
            _ => None,
        });
        // Exactly one squatter was closed (EOF); the others are still open (no answer to read).
        let mut evicted = 0;
        for s in squatters.iter_mut() {
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            if matches!(s.read(&mut [0u8; 1]), Ok(0)) {
                evicted += 1;
            }
        }
        assert_eq!(evicted, 1, "{backend:?}");
    }
}

#[test]
fn answers_earned_before_bad_input_are_delivered_then_the_connection_closes() {
    for backend in BACKENDS {
        let mut node = Node::bind(config(1, any_port(), &[], backend));
        let mut client = TcpStream::connect(node.net.local_addrs().client).unwrap();
        // A valid request and garbage in one write: the node sees the request, then the close.
        let mut bytes = client_request(b"question");
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        client.write_all(&bytes).unwrap();
        let id = wait_event(&mut [&mut node], 0, |e| match e {
            NetEvent::ClientFrame { client, frame } if frame.payload == b"question" => {
                Some(*client)
            }
            _ => None,
        });
        let answer = encoded(FrameType::StatusReply, CLUSTER, 1, b"answer");
        node.net.send_client(id, answer.clone()).unwrap();
        wait_event(&mut [&mut node], 0, |e| {
            matches!(e, NetEvent::ClientClosed { client, reason: CloseReason::BadFrame(_) } if *client == id)
                .then_some(())
        });
        // The answer arrived whole before the close.
        let mut received = Vec::new();
        client.set_read_timeout(Some(DEADLINE)).unwrap();
        client.read_to_end(&mut received).unwrap();
        assert_eq!(received, answer, "{backend:?}");
    }
}

#[test]
fn bad_input_on_the_client_port_closes_only_that_connection() {
    for backend in BACKENDS {
        let mut node = Node::bind(config(1, any_port(), &[], backend));
        let client_addr = node.net.local_addrs().client;
        let mut good = TcpStream::connect(client_addr).unwrap();
        good.write_all(&client_request(b"hello")).unwrap();
        let good_id = wait_event(&mut [&mut node], 0, |e| match e {
            NetEvent::ClientFrame { client, frame } if frame.payload == b"hello" => Some(*client),
            _ => None,
        });
        for (what, bytes, expected) in bad_client_inputs() {
            let mut bad = TcpStream::connect(client_addr).unwrap();
            bad.write_all(&bytes).unwrap();
            let reason = wait_event(&mut [&mut node], 0, |e| match e {
                NetEvent::ClientClosed { client, reason } if *client != good_id => {
                    Some(reason.to_string()).filter(|_| expected(reason))
                }
                NetEvent::ClientClosed { client, reason } if *client == good_id => {
                    panic!("{what}: the good client was closed: {reason}")
                }
                _ => None,
            });
            eprintln!("{backend:?} {what}: {reason}");
            wait_closed(&mut [&mut node], &mut bad);
        }
        // The good client still works both ways.
        good.write_all(&client_request(b"still here")).unwrap();
        wait_event(&mut [&mut node], 0, |e| match e {
            NetEvent::ClientFrame { client, frame } if *client == good_id => {
                assert_eq!(frame.payload, b"still here");
                Some(())
            }
            _ => None,
        });
        let reply = encoded(FrameType::StatusReply, CLUSTER, 1, b"ok");
        node.net.send_client(good_id, reply.clone()).unwrap();
        let mut got = vec![0u8; reply.len()];
        turn(&mut [&mut node]);
        good.set_read_timeout(Some(DEADLINE)).unwrap();
        good.read_exact(&mut got).unwrap();
        assert_eq!(got, reply);
    }
}

#[test]
fn bad_input_on_the_peer_port_closes_only_that_connection() {
    for backend in BACKENDS {
        let (mut a, mut b) = pair(backend);
        let peer_addr = a.net.local_addrs().peer;
        let hello = |sender| encoded(FrameType::PeerHello, CLUSTER, sender, b"");
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("garbage", vec![0xAB; 64]),
            (
                "wrong cluster",
                encoded(FrameType::PeerHello, ClusterId(7), 2, b""),
            ),
            ("unknown sender", hello(9)),
            ("own id", hello(1)),
            (
                "malformed hello",
                encoded(FrameType::PeerHello, CLUSTER, 2, b"short"),
            ),
            ("message before hello", peer_message(2, b"x")),
        ];
        for (what, bytes) in cases {
            let mut bad = TcpStream::connect(peer_addr).unwrap();
            bad.write_all(&bytes).unwrap();
            eprintln!("{backend:?}: {what}");
            wait_closed(&mut [&mut a, &mut b], &mut bad);
        }
        // Without a valid hello the real peer link was never disturbed: no PeerDown, and
        // frames still flow.
        assert!(!a
            .events
            .iter()
            .chain(&b.events)
            .any(|e| matches!(e, NetEvent::PeerDown { .. })));
        b.net.send_peer(1, peer_message(2, b"unharmed")).unwrap();
        assert_eq!(
            wait_event(&mut [&mut a, &mut b], 0, peer_frame(2)),
            b"unharmed"
        );
        // A valid hello as node 2 takes node 2's slot (the newest hello wins: a restarted
        // peer must get back in), then its bad frame closes it; the real node 2 reconnects.
        let impostors = [
            ("client frame on the peer port", client_request(b"")),
            ("sender changes", peer_message(3, b"")),
        ];
        for (what, bad_frame) in impostors {
            let mut bad = TcpStream::connect(peer_addr).unwrap();
            bad.write_all(&[hello(2), bad_frame].concat()).unwrap();
            eprintln!("{backend:?}: {what}");
            wait_closed(&mut [&mut a, &mut b], &mut bad);
        }
        // (A frame queued on the kicked link before node 2 notices is lost: send until one
        // arrives, as Raft retransmits.)
        let deadline = Instant::now() + DEADLINE;
        let back = |e: &NetEvent| matches!(e, NetEvent::PeerFrame { from: 2, frame, .. } if frame.payload == b"back");
        while !a.events.iter().any(back) {
            assert!(Instant::now() < deadline, "node 2 never got back in");
            let _ = b.net.send_peer(1, peer_message(2, b"back"));
            turn(&mut [&mut a, &mut b]);
        }
    }
}

#[test]
fn a_connection_that_says_nothing_is_closed_after_the_hello_timeout() {
    for backend in BACKENDS {
        let mut cfg = config(1, any_port(), &[], backend);
        cfg.hello_timeout = Duration::from_millis(200);
        let mut node = Node::bind(cfg);
        let mut silent_client = TcpStream::connect(node.net.local_addrs().client).unwrap();
        let mut silent_peer = TcpStream::connect(node.net.local_addrs().peer).unwrap();
        wait_event(&mut [&mut node], 0, |e| {
            matches!(
                e,
                NetEvent::ClientClosed {
                    reason: CloseReason::HelloTimeout(_),
                    ..
                }
            )
            .then_some(())
        });
        wait_closed(&mut [&mut node], &mut silent_client);
        wait_closed(&mut [&mut node], &mut silent_peer);
    }
}

#[test]
fn an_inbound_peer_connection_that_goes_quiet_is_closed_but_keepalives_hold_a_link() {
    for backend in BACKENDS {
        let (addr1, addr2) = (reserved_addr(), reserved_addr());
        let mut cfg1 = config(1, addr1, &[(2, addr2)], backend);
        cfg1.idle_timeout = Duration::from_millis(300);
        let mut a = Node::bind(cfg1);
        // A real peer (keepalives every idle/4) stays connected across several idle timeouts.
        let mut cfg2 = config(2, addr2, &[(1, addr1)], backend);
        cfg2.idle_timeout = Duration::from_millis(300);
        let mut b = Node::bind(cfg2);
        wait_event(&mut [&mut a, &mut b], 1, peer_up(1));
        // A hand-made peer that says hello and then nothing is dropped by the idle timeout.
        let mut quiet = TcpStream::connect(addr1).unwrap();
        quiet
            .write_all(&encoded(FrameType::PeerHello, CLUSTER, 2, b""))
            .unwrap();
        wait_closed(&mut [&mut a, &mut b], &mut quiet);
        assert!(b.net.peer_is_up(1), "keepalives hold b's link to a");
        b.net.send_peer(1, peer_message(2, b"alive")).unwrap();
        assert_eq!(
            wait_event(&mut [&mut a, &mut b], 0, peer_frame(2)),
            b"alive"
        );
    }
}

#[test]
fn a_full_peer_queue_refuses_and_a_stalled_peer_does_not_hold_up_another() {
    for backend in BACKENDS {
        // Peer 2 accepts connections in the kernel's backlog and never reads.
        let stalled = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr3 = reserved_addr();
        let addr1 = reserved_addr();
        let mut a = Node::bind(config(
            1,
            addr1,
            &[(2, stalled.local_addr().unwrap()), (3, addr3)],
            backend,
        ));
        let mut c = Node::bind(config(3, addr3, &[(1, addr1)], backend));
        wait_event(&mut [&mut a, &mut c], 0, peer_up(2));
        wait_event(&mut [&mut a, &mut c], 0, peer_up(3));
        let frame = peer_message(1, &vec![5; PAYLOAD_BYTES_MAX as usize]);
        let start = Instant::now();
        let mut accepted = 0usize;
        loop {
            match a.net.send_peer(2, frame.clone()) {
                Ok(()) => accepted += 1,
                Err(SendError::Full) => break,
                Err(err) => panic!("send_peer: {err}"),
            }
            assert!(
                start.elapsed() < DEADLINE,
                "the queue never filled ({accepted} frames)"
            );
            turn(&mut [&mut a, &mut c]);
        }
        // Still refused after more loop turns: the queue does not grow.
        turn(&mut [&mut a, &mut c]);
        assert_eq!(a.net.send_peer(2, frame.clone()), Err(SendError::Full));
        // Peer 3 is unaffected.
        a.net.send_peer(3, peer_message(1, b"to three")).unwrap();
        assert_eq!(
            wait_event(&mut [&mut a, &mut c], 1, peer_frame(1)),
            b"to three"
        );
        drop(stalled);
    }
}

/// A client that has sent one request, and the id the node knows it by.
fn subscribed_client(node: &mut Node) -> (TcpStream, ClientId) {
    let mut client = TcpStream::connect(node.net.local_addrs().client).unwrap();
    client.write_all(&client_request(b"subscribe")).unwrap();
    let id = wait_event(&mut [node], 0, |e| match e {
        NetEvent::ClientFrame { client, .. } => Some(*client),
        _ => None,
    });
    (client, id)
}

/// A maximal `Batches` frame.
fn big_batch() -> Vec<u8> {
    encoded(
        FrameType::Batches,
        CLUSTER,
        1,
        &vec![9; PAYLOAD_BYTES_MAX as usize],
    )
}

/// Sends `batch` to a client that does not read until the queue refuses; returns bytes queued.
fn fill_client_queue(node: &mut Node, id: ClientId, batch: &[u8]) -> usize {
    let start = Instant::now();
    let mut queued_bytes = 0;
    loop {
        match node.net.send_client(id, batch.to_vec()) {
            Ok(()) => queued_bytes += batch.len(),
            Err(SendError::Full) => return queued_bytes,
            Err(err) => panic!("send_client: {err}"),
        }
        assert!(start.elapsed() < DEADLINE, "the client queue never filled");
        turn(&mut [node]);
    }
}

#[test]
fn a_full_client_queue_refuses_then_reports_drained() {
    for backend in BACKENDS {
        let mut node = Node::bind(config(1, any_port(), &[], backend));
        let (mut client, id) = subscribed_client(&mut node);
        let batch = big_batch();
        let sent_bytes = fill_client_queue(&mut node, id, &batch);
        let start = Instant::now();
        assert!(node.net.client_queued_bytes(id).unwrap() > 0);
        // The client reads everything; the queue drains and the node is told.
        client.set_nonblocking(true).unwrap();
        let mut sink = vec![0u8; 1 << 20];
        let mut read_bytes = 0;
        let mut drained = false;
        while !drained || read_bytes < sent_bytes {
            match client.read(&mut sink) {
                Ok(n) => read_bytes += n,
                Err(err) if err.kind() == ErrorKind::WouldBlock => {}
                Err(err) => panic!("client read: {err}"),
            }
            turn(&mut [&mut node]);
            if let Some(pos) = node
                .events
                .iter()
                .position(|e| matches!(e, NetEvent::ClientDrained { client } if *client == id))
            {
                node.events.remove(pos);
                drained = true;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "never drained ({read_bytes}/{sent_bytes} read)"
            );
        }
        assert_eq!(
            read_bytes, sent_bytes,
            "every queued byte arrived, nothing more"
        );
        node.net.send_client(id, batch).unwrap();
    }
}

#[test]
fn a_client_that_stops_reading_is_closed_once_sends_stall() {
    for backend in BACKENDS {
        let mut cfg = config(1, any_port(), &[], backend);
        cfg.idle_timeout = Duration::from_millis(300);
        let mut node = Node::bind(cfg);
        let (_client, id) = subscribed_client(&mut node);
        let batch = big_batch();
        fill_client_queue(&mut node, id, &batch);
        wait_event(&mut [&mut node], 0, |e| match e {
            NetEvent::ClientClosed { client, reason } if *client == id => {
                assert!(matches!(reason, CloseReason::SendStalled(_)), "{reason}");
                Some(())
            }
            _ => None,
        });
        assert_eq!(node.net.send_client(id, batch), Err(SendError::Closed));
    }
}

#[test]
fn connections_beyond_the_limits_are_closed_and_the_admitted_ones_keep_working() {
    for backend in BACKENDS {
        let mut cfg = config(1, any_port(), &[(2, reserved_addr())], backend);
        cfg.clients_max = 1;
        cfg.peer_hello_pool_max = 1;
        let mut node = Node::bind(cfg);
        let (mut first_client, id) = subscribed_client(&mut node);
        let mut second_client = TcpStream::connect(node.net.local_addrs().client).unwrap();
        wait_closed(&mut [&mut node], &mut second_client);
        let peer_port = node.net.local_addrs().peer;
        let hello_as_2 = |stream: &mut TcpStream, payload: &[u8]| {
            let mut bytes = encoded(FrameType::PeerHello, CLUSTER, 2, b"");
            bytes.extend(peer_message(2, payload));
            stream.write_all(&bytes).unwrap();
        };
        let mut first_peer = TcpStream::connect(peer_port).unwrap();
        hello_as_2(&mut first_peer, b"hello");
        assert_eq!(wait_event(&mut [&mut node], 0, peer_frame(2)), b"hello");
        // Connections without a hello share a pool of one: the newest closes the oldest, and
        // the one that said hello is not in it.
        let mut silent = TcpStream::connect(peer_port).unwrap();
        let _newer = TcpStream::connect(peer_port).unwrap();
        wait_closed(&mut [&mut node], &mut silent);
        first_peer.write_all(&peer_message(2, b"admitted")).unwrap();
        assert_eq!(wait_event(&mut [&mut node], 0, peer_frame(2)), b"admitted");
        // A newer hello as node 2 takes its slot: the older connection is closed (a restarted
        // peer gets back in, whoever held its slot).
        let mut second_peer = TcpStream::connect(peer_port).unwrap();
        hello_as_2(&mut second_peer, b"replaced");
        assert_eq!(wait_event(&mut [&mut node], 0, peer_frame(2)), b"replaced");
        wait_closed(&mut [&mut node], &mut first_peer);
        first_client
            .write_all(&client_request(b"admitted"))
            .unwrap();
        wait_event(&mut [&mut node], 0, |e| match e {
            NetEvent::ClientFrame { client, frame } if *client == id => {
                assert_eq!(frame.payload, b"admitted");
                Some(())
            }
            _ => None,
        });
    }
}

#[test]
fn a_wake_from_another_thread_returns_poll_early() {
    for backend in BACKENDS {
        let mut node = Node::bind(config(1, any_port(), &[], backend));
        let waker = node.net.waker();
        let thread = std::thread::spawn(move || waker.wake());
        // With no peers and no connections nothing but the wake can end this poll.
        while node.events.is_empty() {
            node.net.poll(None, &mut node.events).unwrap();
        }
        assert!(
            matches!(node.events[..], [NetEvent::Woken]),
            "{:?}",
            node.events
        );
        thread.join().unwrap();
    }
}

#[test]
fn invalid_configurations_are_refused() {
    let mut cfg = config(1, any_port(), &[(1, any_port())], Backend::Poll);
    assert!(Net::bind(cfg.clone()).is_err(), "own id among the peers");
    cfg.peers.clear();
    cfg.client_queue_bytes_max = 10;
    assert!(Net::bind(cfg).is_err(), "a queue smaller than one frame");
}

#[test]
fn net_can_move_to_its_thread() {
    fn assert_send<T: Send>() {}
    assert_send::<Net>();
}

#[test]
fn kafka_connections_carry_size_prefixed_requests_and_raw_answers_and_a_bad_size_closes_one() {
    for backend in BACKENDS {
        let mut cfg = config(1, any_port(), &[], backend);
        cfg.kafka_listen = Some(any_port());
        cfg.kafka_request_bytes_max = 1000;
        let mut node = Node::bind(cfg);
        let kafka = node.net.local_addrs().kafka.expect("a Kafka listener");
        let mut stream = TcpStream::connect(kafka).unwrap();
        // Two requests in one write, the second split across writes.
        let mut bytes = Vec::new();
        for body in [&b"first"[..], b"second"] {
            bytes.extend_from_slice(&(body.len() as i32).to_be_bytes());
            bytes.extend_from_slice(body);
        }
        stream.write_all(&bytes[..12]).unwrap();
        let kafka_frame = |e: &NetEvent| match e {
            NetEvent::KafkaFrame { client, frame } => Some((*client, frame.clone())),
            _ => None,
        };
        let (client, first) = wait_event(&mut [&mut node], 0, kafka_frame);
        assert_eq!(first, b"first");
        stream.write_all(&bytes[12..]).unwrap();
        let (_, second) = wait_event(&mut [&mut node], 0, kafka_frame);
        assert_eq!(second, b"second");
        node.net
            .send_client_with(client, |b| {
                b.extend_from_slice(b"answer");
                Ok::<(), ()>(())
            })
            .unwrap();
        let mut answer = [0u8; 6];
        stream
            .set_read_timeout(Some(Duration::from_millis(2)))
            .unwrap();
        let start = Instant::now();
        let mut got = 0;
        while got < answer.len() {
            assert!(start.elapsed() < DEADLINE, "no answer");
            turn(&mut [&mut node]);
            if let Ok(n) = stream.read(&mut answer[got..]) {
                got += n;
            }
        }
        assert_eq!(&answer, b"answer");
        // A size beyond the limit closes that connection only, with the reason.
        let mut other = TcpStream::connect(kafka).unwrap();
        other.write_all(&1001i32.to_be_bytes()).unwrap();
        let reason = wait_event(&mut [&mut node], 0, |e| match e {
            NetEvent::KafkaClosed { reason, .. } => Some(reason.to_string()),
            _ => None,
        });
        assert!(reason.contains("exceeds the limit"), "{reason}");
        wait_closed(&mut [&mut node], &mut other);
        stream.write_all(&4i32.to_be_bytes()).unwrap();
        stream.write_all(b"more").unwrap();
        let (_, more) = wait_event(&mut [&mut node], 0, kafka_frame);
        assert_eq!(more, b"more", "the first connection is still served");
    }
}
