//! The deploy files in tools/deploy are checked by the tools that consume them (systemd's
//! verifier, a Kubernetes schema validator, promtool) and against a running node: every metric
//! the alert rules and the dashboard name is one a node exports, and every system call a node
//! makes is one the seccomp profile allows. `.ci/run` installs the checkers.

mod cluster_support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cluster_support::{append_window, free_port, http_get, Cluster, Outcome, CLUSTER};

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

/// Runs a checker; fails with its output, or with how to install it.
fn check(program: &str, args: &[&str], install: &str) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} is needed for this test ({e}): {install}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{program} {args:?} failed:\n{text}");
    text
}

#[test]
fn the_systemd_unit_verifies() {
    let dir = tempfile::tempdir().unwrap();
    // The unit names the installed binary; verify it against the one just built.
    let unit = std::fs::read_to_string(deploy("systemd/raftline.service"))
        .unwrap()
        .replace("/usr/local/bin/raftline", env!("CARGO_BIN_EXE_raftline"));
    assert!(unit.contains("Type=notify"), "{unit}");
    let path = dir.path().join("raftline.service");
    std::fs::write(&path, unit).unwrap();
    let out = check(
        "systemd-analyze",
        &["verify", path.to_str().unwrap()],
        "apt-get install systemd",
    );
    assert!(
        !out.contains("raftline.service"),
        "warnings about the unit:\n{out}"
    );
}

#[test]
fn the_kubernetes_manifests_validate_strictly() {
    let manifests = deploy("kubernetes/raftline.yaml");
    check(
        "python3",
        &[
            "-m",
            "kubernetes_validate",
            "--strict",
            "--quiet",
            manifests.to_str().unwrap(),
        ],
        "python3 -m pip install kubernetes-validate",
    );
}

/// The StatefulSet's command line (its `args` script, a folded YAML scalar) as the pod's shell
/// gets it: Kubernetes' `$(VAR)` expanded for namespace `default`, `$$` unescaped.
fn statefulset_script() -> String {
    let manifest = std::fs::read_to_string(deploy("kubernetes/raftline.yaml")).unwrap();
    let mut lines = manifest.lines().skip_while(|l| l.trim() != "args:").skip(1);
    assert_eq!(lines.next().map(str::trim), Some("- >-"), "{manifest}");
    let folded: Vec<&str> = lines
        .take_while(|l| l.starts_with(&" ".repeat(14)))
        .map(str::trim)
        .collect();
    let script = folded
        .join(" ")
        .replace("$(CLUSTER_ID)", "prod")
        .replace("$(NAMESPACE)", "default");
    assert!(
        !script.replace("$$", "").contains("$("),
        "a variable left unexpanded: {script}"
    );
    script.replace("$$", "$")
}

#[test]
fn the_statefulset_bootstraps_with_its_first_three_pods_and_the_others_join_by_name() {
    let script =
        statefulset_script().replace("/usr/local/bin/raftline", env!("CARGO_BIN_EXE_raftline"));
    let plan = |pod: u64| {
        let out = Command::new("/bin/sh")
            .args(["-c", &format!("{script} --dry-run")])
            .env("HOSTNAME", format!("raftline-{pod}"))
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "pod {pod}: {text}\n{script}");
        text
    };
    for pod in 0..3 {
        let text = plan(pod);
        assert!(
            text.contains(&format!(
                "node {} would bootstrap cluster \"prod\" with voters [1, 2, 3]",
                pod + 1
            )),
            "{text}"
        );
    }
    for pod in 3..5 {
        let text = plan(pod);
        let name = format!("raftline-{pod}.raftline-peers.default.svc");
        assert!(
            text.contains(&format!(
                "node {} would join cluster \"prod\" through raftline.default.svc:7401 as a \
                 learner, announcing peer address {name}:7301 and client address {name}:7401",
                pod + 1
            )),
            "{text}"
        );
    }
}

#[test]
fn the_alert_rules_pass_promtool() {
    let rules = deploy("prometheus/alerts.yml");
    check(
        "promtool",
        &["check", "rules", rules.to_str().unwrap()],
        "apt-get install --no-install-recommends prometheus",
    );
}

/// `raftline_…` names in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("raftline_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn every_metric_the_alerts_and_the_dashboard_use_is_exported() {
    // Emulation on, so its marker metric is exported too (the alert catches it in production).
    let cluster = Cluster::start_with(3, "auto", &["--emulate-disk", "nvme"]);
    let leader = cluster.wait_leader();
    let tags: Vec<u64> = (1..=20).collect();
    let outcomes = append_window(cluster.node(leader).client, &tags, 2, 4);
    assert!(outcomes
        .values()
        .all(|o| matches!(o, Outcome::Acked { .. })));
    let mut exported = BTreeSet::new();
    for n in &cluster.nodes {
        let page = http_get(n.metrics, "/metrics");
        for line in page.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut words = rest.split_whitespace();
                let (name, kind) = (words.next().unwrap(), words.next().unwrap());
                exported.insert(name.to_string());
                if kind == "histogram" {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        exported.insert(format!("{name}{suffix}"));
                    }
                }
            }
        }
    }
    for file in ["prometheus/alerts.yml", "grafana/raftline.json"] {
        let used = metric_names(&std::fs::read_to_string(deploy(file)).unwrap());
        assert!(!used.is_empty(), "{file} names no metric");
        let missing: Vec<_> = used.difference(&exported).collect();
        assert!(
            missing.is_empty(),
            "{file} uses metrics no node exports: {missing:?}"
        );
    }
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy("grafana/raftline.json")).unwrap())
            .unwrap();
    assert!(dashboard["panels"].as_array().unwrap().len() >= 10);
}

/// The process ids of `pid`'s children.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

#[test]
fn the_seccomp_profile_allows_every_system_call_a_node_makes() {
    let profile: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy("seccomp/raftline-io-uring.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(profile["defaultAction"], "SCMP_ACT_ERRNO");
    let allowed: BTreeSet<String> = profile["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|rule| rule["action"] == "SCMP_ACT_ALLOW")
        .flat_map(|rule| rule["names"].as_array().unwrap().iter())
        .map(|n| n.as_str().unwrap().to_string())
        .collect();
    for io_uring in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
        assert!(allowed.contains(io_uring), "{io_uring} not allowed");
    }

    // One node doing everything a node does: elect itself, append, group-commit, snapshot,
    // drop and recycle segments, stream to a consumer, answer status, drain on SIGTERM.
    let dir = tempfile::tempdir().unwrap();
    let summary = dir.path().join("syscalls.txt");
    let (peer, client, metrics) = (free_port(), free_port(), free_port());
    // With its peer TLS files: loading them and watching them for changes are a node's too.
    let ca = raftline_bench::dev_certs::DevCa::new("seccomp test CA").unwrap();
    let tls = ca.write_node_files(&dir.path().join("tls"), 1).unwrap();
    let mut strace = Command::new("strace")
        .args(["-f", "-qq", "-c", "-o"])
        .arg(&summary)
        .arg(env!("CARGO_BIN_EXE_raftline"))
        .args(["server", "--id", "1", "--cluster-id", CLUSTER])
        .args(["--peers", &format!("1={peer}")])
        .args(["--peer-clients", &format!("1={client}")])
        .args(["--client-listen", &client.to_string()])
        .args(["--metrics-listen", &metrics.to_string()])
        .args(["--segment-mib", "1", "--batch-kib-max", "64"])
        .args(["--snapshot-every-mib", "1", "--retain-mib", "0"])
        .args(raftline_bench::dev_certs::server_args(&tls))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("node.log")).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("strace is needed for this test ({e}): apt-get install strace"));
    let deadline = Instant::now() + cluster_support::DEADLINE;
    while cluster_support::status(client).map_or(true, |s| s.leader_id != Some(1)) {
        assert!(
            Instant::now() < deadline,
            "the traced node never led:\n{}",
            std::fs::read_to_string(dir.path().join("node.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let tags: Vec<u64> = (1..=400).collect();
    let outcomes = append_window(client, &tags, 100, 8);
    assert!(outcomes
        .values()
        .all(|o| matches!(o, Outcome::Acked { .. })));
    let status = cluster_support::status(client).unwrap();
    assert!(status.log_start_offset > 0, "no compaction: {status:?}");
    let tail = cluster_support::read_range(client, status.log_start_offset, status.log_end_offset);
    assert_eq!(
        tail.len() as u64,
        status.log_end_offset - status.log_start_offset
    );
    http_get(metrics, "/metrics");
    let node = children(strace.id());
    assert_eq!(node.len(), 1, "strace runs one node");
    unsafe { libc::kill(node[0] as i32, libc::SIGTERM) };
    assert!(strace.wait().unwrap().success());

    let report = std::fs::read_to_string(&summary).unwrap();
    let made: BTreeSet<String> = report
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .filter_map(|l| l.split_whitespace().last().map(str::to_string))
        .filter(|name| name != "total")
        .collect();
    assert!(made.contains("io_uring_enter"), "{report}");
    let refused: Vec<_> = made.difference(&allowed).collect();
    assert!(
        refused.is_empty(),
        "system calls the profile would refuse: {refused:?}\n{report}"
    );
}
