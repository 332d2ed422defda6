//! `raftline tail`: print committed records from an offset, optionally following new ones.

use std::io::{BufWriter, ErrorKind, Write};
use std::process::ExitCode;
use std::str::FromStr;

use clap::Args;
use raftline_netio::client::{
    ConsumedRecord, StateEvent, StateMode, StateSubscription, Subscription,
};
use raftline_netio::client_proto::StartFrom;

use crate::cluster_args::ClusterArgs;

/// The long `--help` of `raftline tail`.
pub const LONG_ABOUT: &str = "Print committed records, one per line: the offset, a tab, the \
value (with --keys: offset, key, value; bytes that are not UTF-8 are shown as \u{FFFD}).\n\n\
Records are read from any node (followers serve committed data too). Without --follow, tail \
stops at the end of the data committed when it started; with --follow it keeps printing new \
records until interrupted. If the node fails, tail resumes on another node after the last \
record it printed: no record is printed twice or skipped.\n\nWith --with-snapshot, tail first prints the state the compacted part of the log describes (the newest snapshot of a node: the latest record of every key below the snapshot's cut, with its original offset; an empty value is a delete), between a `# reset` and a `# caught up at offset N` line, then the log from that offset: from `earliest` it always starts with the state; from an offset only when that offset was compacted away. If the node fails during the snapshot, tail resumes on another node holding the same snapshot, or prints a new `# reset` and the other node's snapshot from the start (discard what came before it). With --state, tail prints only the key/value state as of the latest commit (`key<TAB>value`, by key; deleted keys left out) and exits.";

/// Where `tail` starts.
#[derive(Debug, Clone, Copy)]
pub struct FromArg(pub StartFrom);

impl FromStr for FromArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "earliest" => Ok(FromArg(StartFrom::Earliest)),
            "latest" => Ok(FromArg(StartFrom::Latest)),
            n => n
                .parse()
                .map(|n| FromArg(StartFrom::Offset(n)))
                .map_err(|_| format!("`{n}` is not an offset: use earliest, latest or a number")),
        }
    }
}

/// Flags of `raftline tail`.
#[derive(Args, Debug)]
pub struct TailArgs {
    /// Where the cluster is.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// First record to print: `earliest` (the oldest retained), `latest` (only records
    /// committed from now on) or an offset.
    #[arg(
        long,
        default_value = "earliest",
        value_name = "earliest|latest|OFFSET"
    )]
    pub from: FromArg,
    /// Keep printing records as they are committed (until Ctrl-C).
    #[arg(long, short)]
    pub follow: bool,
    /// Stop after this many records.
    #[arg(long, value_name = "N")]
    pub max: Option<u64>,
    /// Print each record's key as a column (`-` when it has none).
    #[arg(long)]
    pub keys: bool,
    /// Read across compaction: first the state below the log's start (a snapshot's records),
    /// then the log from the snapshot's cut.
    #[arg(long, conflicts_with = "state")]
    pub with_snapshot: bool,
    /// Print the key/value state as of the latest commit (snapshot + log) and exit.
    #[arg(long, conflicts_with_all = ["follow", "max", "from"])]
    pub state: bool,
}

/// Runs `raftline tail`.
pub fn run(args: TailArgs) -> anyhow::Result<ExitCode> {
    if args.state || args.with_snapshot {
        return run_with_state(args);
    }
    let config = args.cluster.client_config()?;
    let mut subscription = Subscription::open(config, args.from.0)?;
    let end = (!args.follow).then(|| subscription.end_offset_at_start());
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut printed = 0u64;
    loop {
        if args.max.is_some_and(|max| printed >= max) {
            break;
        }
        if let Some(end) = end {
            if subscription.next_offset().is_some_and(|next| next >= end) {
                break;
            }
        }
        // Flush what is printed before blocking for more, so a follower sees records promptly.
        let record = match subscription.next_record(Some(std::time::Duration::ZERO))? {
            Some(record) => record,
            None => {
                if let Err(e) = out.flush() {
                    return broken_pipe_is_success(e);
                }
                match subscription.next_record(None)? {
                    Some(record) => record,
                    None => continue,
                }
            }
        };
        if let Err(e) = print(&mut out, &record, args.keys) {
            return broken_pipe_is_success(e);
        }
        printed += 1;
    }
    match out.flush() {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => broken_pipe_is_success(e),
    }
}

/// `--with-snapshot` and `--state`: a state subscription, printed as it comes or materialised.
fn run_with_state(args: TailArgs) -> anyhow::Result<ExitCode> {
    let mode = match args.from.0 {
        StartFrom::Earliest => StateMode::Always,
        _ if args.state => StateMode::Always,
        _ => StateMode::IfCompacted,
    };
    let from = if args.state {
        StartFrom::Earliest
    } else {
        args.from.0
    };
    let mut subscription = StateSubscription::open(args.cluster.client_config()?, from, mode)?;
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut state: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = Default::default();
    let mut printed = 0u64;
    let written = (|| -> anyhow::Result<()> {
        loop {
            if args.max.is_some_and(|max| printed >= max) {
                return Ok(());
            }
            if !args.follow {
                let end = subscription.log_end_offset_at_start();
                if let (Some(end), Some(next)) = (end, subscription.next_offset()) {
                    if next >= end {
                        return Ok(());
                    }
                }
            }
            let event = match subscription.next_event(Some(std::time::Duration::ZERO))? {
                Some(event) => event,
                None => {
                    out.flush()?;
                    match subscription.next_event(None)? {
                        Some(event) => event,
                        None => continue,
                    }
                }
            };
            if args.state {
                apply(&mut state, event);
                continue;
            }
            match event {
                StateEvent::Reset(info) => writeln!(
                    out,
                    "# reset: snapshot at index {} (term {}), {} records below offset {}",
                    info.index, info.term, info.records, info.cut_offset
                )?,
                StateEvent::SnapshotRecord(r) => {
                    let (key, value) = (
                        String::from_utf8_lossy(&r.key),
                        String::from_utf8_lossy(&r.value),
                    );
                    writeln!(out, "{}\t{key}\t{value}", r.offset)?;
                    printed += 1;
                }
                StateEvent::CaughtUp { offset } => writeln!(out, "# caught up at offset {offset}")?,
                StateEvent::Record(r) => {
                    print(&mut out, &r, args.keys)?;
                    printed += 1;
                }
            }
        }
    })();
    if let Err(e) = written {
        return match e.downcast::<std::io::Error>() {
            Ok(io) => broken_pipe_is_success(io),
            Err(e) => Err(e),
        };
    }
    if args.state {
        for (key, value) in &state {
            let result = writeln!(
                out,
                "{}\t{}",
                String::from_utf8_lossy(key),
                String::from_utf8_lossy(value)
            );
            if let Err(e) = result {
                return broken_pipe_is_success(e);
            }
        }
    }
    match out.flush() {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => broken_pipe_is_success(e),
    }
}

/// Applies one event to a key → value state (an empty value deletes).
fn apply(state: &mut std::collections::BTreeMap<Vec<u8>, Vec<u8>>, event: StateEvent) {
    let (key, value) = match event {
        StateEvent::Reset(_) => {
            state.clear();
            return;
        }
        StateEvent::CaughtUp { .. } => return,
        StateEvent::SnapshotRecord(r) => (r.key, r.value),
        StateEvent::Record(r) => match r.record.key {
            Some(key) => (key, r.record.value),
            None => return,
        },
    };
    if value.is_empty() {
        state.remove(&key);
    } else {
        state.insert(key, value);
    }
}

fn print(out: &mut impl Write, r: &ConsumedRecord, keys: bool) -> std::io::Result<()> {
    let value = String::from_utf8_lossy(&r.record.value);
    if keys {
        let key = r
            .record
            .key
            .as_deref()
            .map_or("-".into(), String::from_utf8_lossy);
        writeln!(out, "{}\t{key}\t{value}", r.offset)
    } else {
        writeln!(out, "{}\t{value}", r.offset)
    }
}

/// `raftline tail | head` closes the pipe early: that is a normal end, not an error.
fn broken_pipe_is_success(e: std::io::Error) -> anyhow::Result<ExitCode> {
    if e.kind() == ErrorKind::BrokenPipe {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftline_log::Record;

    #[test]
    fn from_accepts_earliest_latest_and_offsets_and_explains_anything_else() {
        assert!(matches!(
            "earliest".parse::<FromArg>(),
            Ok(FromArg(StartFrom::Earliest))
        ));
        assert!(matches!(
            "latest".parse::<FromArg>(),
            Ok(FromArg(StartFrom::Latest))
        ));
        assert!(matches!(
            "42".parse::<FromArg>(),
            Ok(FromArg(StartFrom::Offset(42)))
        ));
        let err = "soon".parse::<FromArg>().unwrap_err();
        assert!(err.contains("earliest, latest or a number"), "{err}");
    }

    #[test]
    fn records_print_as_offset_tab_value_with_optional_key() {
        let r = ConsumedRecord {
            offset: 9,
            record: Record {
                key: Some(b"k".to_vec()),
                value: b"v\xff".to_vec(),
                timestamp_ms: 0,
                headers: vec![],
            },
        };
        let mut out = Vec::new();
        print(&mut out, &r, false).unwrap();
        print(&mut out, &r, true).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "9\tv\u{FFFD}\n9\tk\tv\u{FFFD}\n"
        );
    }
}
