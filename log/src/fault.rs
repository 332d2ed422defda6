//! Named crash points for fault tests: `RAFTLINE_CRASH_AT=<point>` in a node's environment makes
//! it abort (as `kill -9` would: no destructor, no flush) the first time it reaches that point.
//! Compiled into every build so the tests exercise the binary operators run; without the variable
//! a crash point costs one load of a cached flag. The points, in the order a snapshot's life
//! reaches them, are listed in [`CRASH_POINTS`] and documented in tools/node/README.md
//! ("Crash points").

use std::sync::OnceLock;

/// The environment variable naming the point to crash at.
pub const CRASH_AT_VAR: &str = "RAFTLINE_CRASH_AT";

/// Every crash point, so a misspelt `RAFTLINE_CRASH_AT` is refused rather than never reached.
pub const CRASH_POINTS: &[&str] = &[
    // Writing a snapshot (log/src/snapshot.rs).
    "snapshot-write-half",
    "snapshot-before-rename",
    "snapshot-before-dir-sync",
    // Compacting after it (tools/node/src/replica.rs, log/src/log.rs, snapshots.rs).
    "compact-before-truncate",
    "truncate-after-first-segment",
    "prune-after-first-snapshot",
    // Installing a snapshot received from the leader (tools/node/src/snapshots.rs,
    // log/src/snapshot.rs, log/src/group_commit.rs).
    "install-partial",
    "install-before-rename",
    "install-before-restart",
    "restart-before-delete",
];

fn armed() -> Option<&'static str> {
    static ARMED: OnceLock<Option<&'static str>> = OnceLock::new();
    *ARMED.get_or_init(|| {
        let wanted = std::env::var(CRASH_AT_VAR).ok()?;
        CRASH_POINTS.iter().copied().find(|p| *p == wanted)
    })
}

/// Checks `RAFTLINE_CRASH_AT` names a known crash point (a node calls this at start, so a typo
/// fails the test that set it instead of silently never crashing).
pub fn check_crash_at() -> Result<(), String> {
    match std::env::var(CRASH_AT_VAR) {
        Ok(wanted) if !CRASH_POINTS.contains(&wanted.as_str()) => Err(format!(
            "{CRASH_AT_VAR}={wanted} names no crash point; known: {}",
            CRASH_POINTS.join(", ")
        )),
        _ => Ok(()),
    }
}

/// Aborts the process if `RAFTLINE_CRASH_AT` names `point`.
pub fn crash_point(point: &'static str) {
    debug_assert!(
        CRASH_POINTS.contains(&point),
        "unlisted crash point {point}"
    );
    if armed() == Some(point) {
        eprintln!("raftline: crash point {point} reached: aborting");
        std::process::abort();
    }
}
