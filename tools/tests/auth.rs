//! Client authorisation against real `raftline server` processes started with `--auth-file`:
//! each connection holds the role its token maps to (read < produce < admin), a request above it
//! is refused `Forbidden` and not served, a bad token is `BadCredentials` (the third closes the
//! connection), a connection without a token may only authenticate; the CLI's `--token` (and
//! `RAFTLINE_TOKEN`) end to end; TLS on the client port: a client that does not trust the node's
//! CA fails the handshake, one that does is served, and a verified client certificate the auth
//! file names holds its role without a token.

mod cluster_support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use cluster_support::{closed_within, http_get, tagged_batch, Cluster, Conn, CLUSTER, DEADLINE};
use raftline_netio::client::{status_of, ClientConfig, Error};
use raftline_netio::client_proto::{
    AccessRole, AckMode, ClientError, Request, Response, StartFrom,
};
use raftline_netio::cluster_id::ClusterId;
use raftline_netio::net::{client_config as tls_client_config, load_certs, load_key, load_roots};

const READ_TOKEN: &str = "reader-secret";
const PRODUCE_TOKEN: &str = "producer-secret";
const ADMIN_TOKEN: &str = "admin-secret";

/// An auth file granting the three tokens their roles, with each digest made by
/// `raftline auth hash-token` (the file holds no token), and each `(name, role)` of
/// `certificates` to client certificates naming it.
fn write_auth_file(dir: &tempfile::TempDir, certificates: &[(&str, &str)]) -> PathBuf {
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
    for (name, role) in certificates {
        text += &format!("[[certificate]]\nname = \"{name}\"\nrole = \"{role}\"\n");
    }
    let path = dir.path().join("auth.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A one-node cluster with the auth file; returns it once its node leads.
fn start_with_auth() -> (Cluster, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = write_auth_file(&dir, &[]);
    let cluster = Cluster::start_with(1, "auto", &["--auth-file", file.to_str().unwrap()]);
    let mut config = client_config(&cluster);
    config.token = Some(READ_TOKEN.into());
    await_leader(&cluster, &config);
    (cluster, dir)
}

/// The Rust client's configuration for `cluster` (no token, no TLS).
fn client_config(cluster: &Cluster) -> ClientConfig {
    let mut config = ClientConfig::new(
        vec![cluster.node(1).client.to_string()],
        ClusterId::from_name(CLUSTER),
    );
    config.failover_timeout = Duration::from_secs(2);
    config
}

/// Returns once node 1 leads, asked through `config` (its token and TLS).
fn await_leader(cluster: &Cluster, config: &ClientConfig) {
    let deadline = Instant::now() + DEADLINE;
    let address = cluster.node(1).client.to_string();
    loop {
        match status_of(&address, config) {
            Ok(status) if status.leader_id == Some(1) => return,
            other => assert!(
                Instant::now() < deadline,
                "no leader: {other:?}\n{}",
                cluster.logs()
            ),
        }
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
    let file = write_auth_file(&dir, &[]);
    let out = Command::new(env!("CARGO_BIN_EXE_raftline"))
        .arg("server")
        .args([
            "--id",
            "1",
            "--cluster-id",
            CLUSTER,
            "--peers",
            "1=127.0.0.1:1",
            "--peer-insecure",
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

/// A certificate authority made for one test, and certificates it signs into `dir`.
struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    dir: PathBuf,
    name: String,
}

impl TestCa {
    fn new(dir: &tempfile::TempDir, name: &str) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let issuer =
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let ca = TestCa {
            issuer,
            dir: dir.path().to_path_buf(),
            name: name.to_string(),
        };
        std::fs::write(ca.ca_file(), ca.issuer.pem()).unwrap();
        ca
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.pem", self.name))
    }

    /// A certificate naming `name` (a DNS name or an IP address), for a server and a client:
    /// its certificate and key files.
    fn leaf(&self, name: &str) -> (PathBuf, PathBuf) {
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let stem = self.dir.join(format!("{}-{name}", self.name));
        let (cert_file, key_file) = (stem.with_extension("pem"), stem.with_extension("key"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (cert_file, key_file)
    }

    /// A client configuration trusting this CA, presenting `identity` (certificate, key).
    fn client(&self, cluster: &Cluster, identity: Option<&(PathBuf, PathBuf)>) -> ClientConfig {
        let roots = std::sync::Arc::new(load_roots(&self.ca_file()).unwrap());
        let identity =
            identity.map(|(cert, key)| (load_certs(cert).unwrap(), load_key(key).unwrap()));
        let mut config = client_config(cluster);
        config.tls = Some(tls_client_config(roots, identity).unwrap());
        config
    }
}

/// A one-node cluster whose client port runs TLS with a certificate for 127.0.0.1 from `ca`,
/// with the auth file (certificate entries `certificates`) and `extra` flags.
fn start_with_tls(
    dir: &tempfile::TempDir,
    ca: &TestCa,
    certificates: &[(&str, &str)],
    extra: &[&str],
) -> Cluster {
    let auth = write_auth_file(dir, certificates);
    let (cert, key) = ca.leaf("127.0.0.1");
    let path = |p: &PathBuf| p.to_str().unwrap().to_string();
    let mut args = vec![
        "--auth-file".to_string(),
        path(&auth),
        "--client-cert-file".into(),
        path(&cert),
        "--client-key-file".into(),
        path(&key),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cluster = Cluster::start_with(1, "auto", &args);
    let mut config = ca.client(&cluster, None);
    config.token = Some(READ_TOKEN.into());
    await_leader(&cluster, &config);
    cluster
}

#[test]
fn a_client_that_does_not_trust_the_nodes_ca_fails_the_handshake_and_one_that_does_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(&dir, "cluster");
    let cluster = start_with_tls(&dir, &ca, &[], &[]);
    let address = cluster.node(1).client.to_string();
    let stranger = TestCa::new(&dir, "stranger");
    let mut untrusting = stranger.client(&cluster, None);
    untrusting.token = Some(READ_TOKEN.into());
    match status_of(&address, &untrusting) {
        Err(Error::Io { source, .. }) => {
            assert!(source.to_string().contains("UnknownIssuer"), "{source}")
        }
        other => panic!("a client not trusting the node's CA got {other:?}"),
    }
    // Plaintext gets nothing from a TLS port.
    let mut plain = client_config(&cluster);
    plain.token = Some(READ_TOKEN.into());
    assert!(status_of(&address, &plain).is_err());
    let mut trusting = ca.client(&cluster, None);
    trusting.token = Some(READ_TOKEN.into());
    assert_eq!(status_of(&address, &trusting).unwrap().node_id, 1);
    // The CLI: records produced and read back over TLS with tokens.
    let tls_ca = ca.ca_file();
    let tls_ca = tls_ca.to_str().unwrap();
    let (ok, _, err, _) = cli(
        &cluster,
        &[
            "produce",
            "--generate",
            "3",
            "--tls-ca",
            tls_ca,
            "--token",
            PRODUCE_TOKEN,
        ],
        &[],
    );
    assert!(ok, "{err}");
    let (ok, out, err, _) = cli(
        &cluster,
        &[
            "tail", "--max", "3", "--tls-ca", tls_ca, "--token", READ_TOKEN,
        ],
        &[],
    );
    assert!(ok && out.lines().count() == 3, "{out}{err}");
}

#[test]
fn a_client_certificate_the_auth_file_names_holds_its_role_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(&dir, "cluster");
    let trusted = ca.ca_file();
    let certificates = [("producer.client", "produce"), ("reader.client", "read")];
    let extra = ["--client-trusted-ca-file", trusted.to_str().unwrap()];
    let cluster = start_with_tls(&dir, &ca, &certificates, &extra);
    let producer = ca.leaf("producer.client");
    let path = |p: &PathBuf| p.to_str().unwrap().to_string();
    let tls_args = |(cert, key): &(PathBuf, PathBuf)| {
        vec![
            "--tls-ca".to_string(),
            path(&trusted),
            "--tls-cert".into(),
            path(cert),
            "--tls-key".into(),
            path(key),
        ]
    };
    let mut args = vec!["produce".to_string(), "--generate".into(), "2".into()];
    args.extend(tls_args(&producer));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, _, err, _) = cli(&cluster, &args, &[]);
    assert!(ok, "the producer certificate could not produce: {err}");
    // A reader's certificate reads but cannot append; no certificate (admitted: they are
    // optional) holds nothing.
    let reader = ca.leaf("reader.client");
    let mut client = raftline_netio::client::Client::connect(ca.client(&cluster, Some(&reader)))
        .expect("the reader certificate cannot even ask for the status");
    let record = raftline_log::Record {
        key: None,
        value: b"v".to_vec(),
        timestamp_ms: 0,
        headers: vec![],
    };
    match client.append(&[record]) {
        Err(Error::Refused {
            error: ClientError::Forbidden { needed, held },
            ..
        }) => assert_eq!(
            (needed, held),
            (AccessRole::Produce, Some(AccessRole::Read))
        ),
        other => panic!("a reader certificate's append got {other:?}"),
    }
    let address = cluster.node(1).client.to_string();
    match status_of(&address, &ca.client(&cluster, None)) {
        Err(Error::Refused {
            error: ClientError::Forbidden { held: None, .. },
            ..
        }) => {}
        other => panic!("a client without certificate or token got {other:?}"),
    }
    // A certificate from another CA is refused in the handshake.
    let stranger = TestCa::new(&dir, "stranger").leaf("producer.client");
    let roots = std::sync::Arc::new(load_roots(&trusted).unwrap());
    let identity = (
        load_certs(&stranger.0).unwrap(),
        load_key(&stranger.1).unwrap(),
    );
    let mut forged = client_config(&cluster);
    forged.tls = Some(tls_client_config(roots, Some(identity)).unwrap());
    assert!(
        status_of(&address, &forged).is_err(),
        "a stranger's certificate was admitted"
    );
}

#[test]
fn a_node_that_requires_client_certificates_refuses_a_client_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(&dir, "cluster");
    let trusted = ca.ca_file();
    let certificates = [("reader.client", "read")];
    let auth = write_auth_file(&dir, &certificates);
    let (cert, key) = ca.leaf("127.0.0.1");
    let cluster = Cluster::start_with(
        1,
        "auto",
        &[
            "--auth-file",
            auth.to_str().unwrap(),
            "--client-cert-file",
            cert.to_str().unwrap(),
            "--client-key-file",
            key.to_str().unwrap(),
            "--client-trusted-ca-file",
            trusted.to_str().unwrap(),
            "--client-cert-required",
        ],
    );
    let reader = ca.leaf("reader.client");
    await_leader(&cluster, &ca.client(&cluster, Some(&reader)));
    let mut without = ca.client(&cluster, None);
    without.token = Some(ADMIN_TOKEN.into());
    let address = cluster.node(1).client.to_string();
    assert!(
        status_of(&address, &without).is_err(),
        "a client without a certificate was served"
    );
}

#[test]
fn a_node_joins_a_cluster_that_requires_tls_and_tokens_with_its_join_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(&dir, "clients");
    let mut cluster = start_with_tls(&dir, &ca, &[], &[]);
    let path = |p: &PathBuf| p.to_str().unwrap().to_string();
    let join_args = |token: &str| {
        let file = dir.path().join(format!("join-token-{token}"));
        std::fs::write(&file, format!("{token}\n")).unwrap();
        vec![
            "--join-tls-ca".to_string(),
            path(&ca.ca_file()),
            "--join-token-file".to_string(),
            path(&file),
        ]
    };

    // A produce token may not add a member: the join is refused at once and the node exits.
    let refused = cluster.add_joiner(1);
    cluster.nodes[refused as usize - 1].args = join_args(PRODUCE_TOKEN);
    cluster.spawn(refused);
    let exit = cluster.await_exit(refused, DEADLINE).unwrap_or_else(|| {
        panic!(
            "the join with a produce token went on\n{}",
            cluster.log_of(refused)
        )
    });
    assert!(!exit.success());
    assert!(
        cluster.log_of(refused).contains("admin"),
        "the refusal names the role needed\n{}",
        cluster.log_of(refused)
    );

    // With the admin token over TLS, it is added as a learner.
    let joiner = cluster.add_joiner(1);
    cluster.nodes[joiner as usize - 1].args = join_args(ADMIN_TOKEN);
    cluster.spawn(joiner);
    let mut admin = ca.client(&cluster, None);
    admin.token = Some(ADMIN_TOKEN.into());
    let deadline = Instant::now() + DEADLINE;
    loop {
        let list = raftline_netio::client::admin::members(&admin).unwrap();
        if list
            .members
            .iter()
            .any(|m| m.member.id == joiner && !m.member.voter)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node {joiner} never joined: {list:?}\n{}",
            cluster.log_of(joiner)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
