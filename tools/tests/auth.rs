//! Client authorisation against real `raftline server` processes started with `--auth-file`:
//! each connection holds the role its token maps to (read < produce < admin), a request above it
//! is refused `Forbidden` and not served, a bad token is `BadCredentials` (the third closes the
//! connection), a connection without a token may only authenticate; the CLI's `--token` (and
//! `RAFTLINE_TOKEN`) end to end.

mod cluster_support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use cluster_support::{closed_within, http_get, tagged_batch, Cluster, Conn, CLUSTER, DEADLINE};
use raftline_netio::client_proto::{
    AccessRole, AckMode, ClientError, Request, Response, StartFrom,
};

const READ_TOKEN: &str = "reader-secret";
const PRODUCE_TOKEN: &str = "producer-secret";
const ADMIN_TOKEN: &str = "admin-secret";

/// An auth file granting the three tokens their roles, with each digest made by
/// `raftline auth hash-token` (the file holds no token).
fn write_auth_file(dir: &tempfile::TempDir) -> PathBuf {
    let mut text = String::new();
    for (name, token, role) in [
        ("reader", READ_TOKEN, "read"),
        ("producer", PRODUCE_TOKEN, "produce"),
        ("operator", ADMIN_TOKEN, "admin"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_raftline"))
            .args(["auth", "hash-token", token])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let digest = String::from_utf8(out.stdout).unwrap();
        assert!(!digest.contains(token));
        text += &format!(
            "[[token]]\nname = \"{name}\"\nsha256 = \"{}\"\nrole = \"{role}\"\n",
            digest.trim()
        );
    }
    let path = dir.path().join("auth.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A one-node cluster with the auth file; returns it once its node leads.
fn start_with_auth() -> (Cluster, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = write_auth_file(&dir);
    let cluster = Cluster::start_with(1, "auto", &["--auth-file", file.to_str().unwrap()]);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let leads = authenticated(&cluster, READ_TOKEN).and_then(|mut conn| {
            conn.send(&Request::Status { request_id: 1 })?;
            match conn.recv()? {
                Response::StatusReply { status, .. } => Ok(status.leader_id == Some(1)),
                other => Err(std::io::Error::other(format!("{other:?}"))),
            }
        });
        if leads.unwrap_or(false) {
            return (cluster, dir);
        }
        assert!(Instant::now() < deadline, "no leader\n{}", cluster.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A connection to node 1 authenticated with `token` (the answer checked).
fn authenticated(cluster: &Cluster, token: &str) -> std::io::Result<Conn> {
    let mut conn = Conn::connect(cluster.node(1).client)?;
    conn.send(&Request::Authenticate {
        request_id: 9,
        token: token.into(),
    })?;
    match conn.recv()? {
        Response::Authenticated { request_id: 9, .. } => Ok(conn),
        other => Err(std::io::Error::other(format!("{other:?}"))),
    }
}

fn append(conn: &mut Conn, request_id: u64) -> Response {
    conn.send(&Request::Append {
        request_id,
        ack: AckMode::Quorum,
        batch: tagged_batch(request_id, 2),
    })
    .unwrap();
    conn.recv().unwrap()
}

fn forbidden(request_id: u64, needed: AccessRole, held: Option<AccessRole>) -> Response {
    Response::Error {
        request_id,
        error: ClientError::Forbidden { needed, held },
    }
}

/// The node's `raftline_client_requests_refused_total` for `reason`.
fn refused_metric(cluster: &Cluster, reason: &str) -> u64 {
    let text = http_get(cluster.node(1).metrics, "/metrics");
    let prefix = format!("raftline_client_requests_refused_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |n| n.trim().parse().unwrap())
}

#[test]
fn a_read_token_tails_but_its_append_is_forbidden_and_nothing_is_stored() {
    let (cluster, _dir) = start_with_auth();
    let mut reader = authenticated(&cluster, READ_TOKEN).unwrap();
    assert_eq!(
        append(&mut reader, 1),
        forbidden(1, AccessRole::Produce, Some(AccessRole::Read))
    );
    reader
        .send(&Request::Subscribe {
            subscription_id: 2,
            from: StartFrom::Offset(0),
            window_bytes: 1 << 20,
        })
        .unwrap();
    let Response::Subscribed { end_offset, .. } = reader.recv().unwrap() else {
        panic!("the read token cannot subscribe");
    };
    assert_eq!(end_offset, 0, "the forbidden append was stored");
    // A producer's records reach the reader's subscription; they are the first in the log.
    let mut producer = authenticated(&cluster, PRODUCE_TOKEN).unwrap();
    assert!(matches!(
        append(&mut producer, 3),
        Response::Appended {
            base_offset: 0,
            last_offset: 1,
            ..
        }
    ));
    match reader.recv().unwrap() {
        Response::Batches {
            subscription_id: 2,
            batches,
        } => {
            let batch = raftline_log::Batch::decode(batches).unwrap();
            assert_eq!(batch.header().base_offset, 0);
            assert_eq!(
                batch.records().unwrap()[0].timestamp_ms,
                3,
                "the producer's"
            );
        }
        other => panic!("expected the producer's batch, got {other:?}"),
    }
    assert_eq!(refused_metric(&cluster, "forbidden"), 1);
}

#[test]
fn a_connection_without_a_token_may_only_authenticate() {
    let (cluster, _dir) = start_with_auth();
    let mut conn = Conn::connect(cluster.node(1).client).unwrap();
    conn.send(&Request::Status { request_id: 1 }).unwrap();
    assert_eq!(conn.recv().unwrap(), forbidden(1, AccessRole::Read, None));
    conn.send(&Request::Subscribe {
        subscription_id: 2,
        from: StartFrom::Earliest,
        window_bytes: 1 << 20,
    })
    .unwrap();
    assert_eq!(conn.recv().unwrap(), forbidden(2, AccessRole::Read, None));
    assert_eq!(
        append(&mut conn, 3),
        forbidden(3, AccessRole::Produce, None)
    );
    // Still open: the token comes late, and then the connection is served.
    conn.send(&Request::Authenticate {
        request_id: 4,
        token: PRODUCE_TOKEN.into(),
    })
    .unwrap();
    assert_eq!(
        conn.recv().unwrap(),
        Response::Authenticated {
            request_id: 4,
            role: AccessRole::Produce
        }
    );
    assert!(matches!(
        append(&mut conn, 5),
        Response::Appended { base_offset: 0, .. }
    ));
    assert_eq!(refused_metric(&cluster, "unauthenticated"), 3);
}

#[test]
fn bad_tokens_are_refused_and_the_third_closes_the_connection() {
    let (cluster, _dir) = start_with_auth();
    let mut conn = Conn::connect(cluster.node(1).client).unwrap();
    for attempt in 1..=3 {
        conn.send(&Request::Authenticate {
            request_id: attempt,
            token: format!("{ADMIN_TOKEN}-guess-{attempt}"),
        })
        .unwrap();
        assert_eq!(
            conn.recv().unwrap(),
            Response::Error {
                request_id: attempt,
                error: ClientError::BadCredentials
            }
        );
    }
    assert!(
        closed_within(&mut conn.stream, Duration::from_secs(5)),
        "the node kept a connection guessing tokens"
    );
    assert_eq!(refused_metric(&cluster, "bad_credentials"), 3);
}

#[test]
fn admin_requests_need_the_admin_token() {
    let (cluster, _dir) = start_with_auth();
    let mut producer = authenticated(&cluster, PRODUCE_TOKEN).unwrap();
    let admin_requests = [
        Request::SnapshotNow { request_id: 1 },
        Request::MemberList { request_id: 2 },
        Request::MemberRemove {
            request_id: 3,
            id: 1,
            force: true,
        },
        Request::LeaderTransfer {
            request_id: 4,
            to: None,
        },
    ];
    for request in &admin_requests {
        producer.send(request).unwrap();
        assert_eq!(
            producer.recv().unwrap(),
            forbidden(request.id(), AccessRole::Admin, Some(AccessRole::Produce)),
            "{request:?}"
        );
    }
    assert!(matches!(
        append(&mut producer, 5),
        Response::Appended { .. }
    ));
    let mut admin = authenticated(&cluster, ADMIN_TOKEN).unwrap();
    admin.send(&Request::SnapshotNow { request_id: 6 }).unwrap();
    assert!(
        matches!(
            admin.recv().unwrap(),
            Response::SnapshotTaken { request_id: 6, .. }
        ),
        "the admin token cannot take a snapshot"
    );
    admin.send(&Request::MemberList { request_id: 7 }).unwrap();
    assert!(matches!(
        admin.recv().unwrap(),
        Response::MemberListReply { request_id: 7, .. }
    ));
}

/// Runs `raftline` with `args` (the cluster's address and id added) and `env`; (success,
/// stdout, stderr, how long it took).
fn cli(cluster: &Cluster, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String, Duration) {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_raftline"))
        .args(args)
        .args(["--bootstrap", &cluster.node(1).client.to_string()])
        .args(["--cluster-id", CLUSTER])
        .env_remove("RAFTLINE_TOKEN")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        started.elapsed(),
    )
}

#[test]
fn the_cli_authenticates_with_its_token_and_reports_refusals_at_once() {
    let (cluster, _dir) = start_with_auth();
    let (ok, _, err, _) = cli(
        &cluster,
        &["produce", "--generate", "5", "--token", PRODUCE_TOKEN],
        &[],
    );
    assert!(ok, "{err}");
    let (ok, out, err, _) = cli(
        &cluster,
        &["tail", "--max", "5"],
        &[("RAFTLINE_TOKEN", READ_TOKEN)],
    );
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 5, "{out}");
    // Refusals no other node would lift fail at once, not after the fail-over timeout (10 s).
    let quick = Duration::from_secs(5);
    let (ok, _, err, took) = cli(
        &cluster,
        &["produce", "--generate", "1", "--token", READ_TOKEN],
        &[],
    );
    assert!(!ok && err.contains("needs the produce role"), "{err}");
    assert!(took < quick, "{took:?}");
    let (ok, out, err, took) = cli(&cluster, &["status"], &[]);
    assert!(!ok && out.contains("has not authenticated"), "{out}");
    assert!(err.contains("--token"), "{err}");
    assert!(took < quick, "{took:?}");
    let (ok, _, err, took) = cli(&cluster, &["tail", "--token", "wrong"], &[]);
    assert!(!ok && err.contains("bad credentials"), "{err}");
    assert!(took < quick, "{took:?}");
    let (ok, _, err, _) = cli(
        &cluster,
        &["snapshot", "now", "--token", PRODUCE_TOKEN],
        &[],
    );
    assert!(!ok && err.contains("needs the admin role"), "{err}");
    let (ok, _, err, _) = cli(&cluster, &["snapshot", "now", "--token", ADMIN_TOKEN], &[]);
    assert!(ok, "{err}");
    let (ok, out, err, _) = cli(&cluster, &["status"], &[("RAFTLINE_TOKEN", READ_TOKEN)]);
    assert!(ok && out.contains("leader"), "{out}{err}");
}

#[test]
fn an_auth_file_with_a_kafka_listener_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_auth_file(&dir);
    let out = Command::new(env!("CARGO_BIN_EXE_raftline"))
        .arg("server")
        .args([
            "--id",
            "1",
            "--cluster-id",
            CLUSTER,
            "--peers",
            "1=127.0.0.1:1",
        ])
        .args([
            "--client-listen",
            "127.0.0.1:2",
            "--kafka-listen",
            "127.0.0.1:3",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--auth-file")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the Kafka port has no authentication"),
        "{stderr}"
    );
}
