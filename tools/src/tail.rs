//! `raftline tail`: print committed records from an offset, optionally following new ones.

use std::io::{BufWriter, ErrorKind, Write};
use std::process::ExitCode;
use std::str::FromStr;

use clap::Args;
use raftline_netio::client::{ConsumedRecord, Subscription};
use raftline_netio::client_proto::StartFrom;

use crate::cluster_args::ClusterArgs;

/// The long `--help` of `raftline tail`.
pub const LONG_ABOUT: &str = "Print committed records, one per line: the offset, a tab, the \
value (with --keys: offset, key, value; bytes that are not UTF-8 are shown as \u{FFFD}).\n\n\
Records are read from any node (followers serve committed data too). Without --follow, tail \
stops at the end of the data committed when it started; with --follow it keeps printing new \
records until interrupted. If the node fails, tail resumes on another node after the last \
record it printed: no record is printed twice or skipped.";

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
}

/// Runs `raftline tail`.
pub fn run(args: TailArgs) -> anyhow::Result<ExitCode> {
    let config = args.cluster.client_config();
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
