//! Property test: random append / truncate-suffix / truncate-prefix / restart / reopen sequences agree
//! with an in-memory model of the log. Replay a failure with PROPTEST_RNG_SEED=<seed>.

mod common;

use common::*;
use proptest::prelude::*;
use raftline_log::{BackendKind, Log, LogError};

#[derive(Debug, Clone)]
enum Step {
    /// Append `records` records; `bump_term` starts a new term first.
    Append {
        records: usize,
        bump_term: bool,
    },
    /// Cut the last `back` entries.
    TruncateSuffix {
        back: u64,
    },
    /// Drop segments below `first + ahead`.
    TruncatePrefix {
        ahead: u64,
    },
    /// Restart after a snapshot `ahead` entries past the end.
    Restart {
        ahead: u64,
    },
    Reopen,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0usize..6, any::<bool>()).prop_map(|(records, bump_term)| Step::Append { records, bump_term }),
        1 => (0u64..20).prop_map(|back| Step::TruncateSuffix { back }),
        1 => (0u64..30).prop_map(|ahead| Step::TruncatePrefix { ahead }),
        1 => Just(Step::Reopen),
        1 => (0u64..10).prop_map(|ahead| Step::Restart { ahead }),
    ]
}

/// The model: entries `first..` as (tag, term, record count), offsets dense from `start_offset`.
struct Model {
    first: u64,
    prev_term: u64,
    start_offset: u64,
    entries: Vec<(u64, u64, u64)>,
    term: u64,
    next_tag: u64,
}

impl Model {
    fn last(&self) -> u64 {
        self.first + self.entries.len() as u64 - 1
    }
    fn next_offset(&self) -> u64 {
        self.start_offset + self.entries.iter().map(|e| e.2).sum::<u64>()
    }
}

fn check(log: &Log, m: &Model) {
    assert_eq!(log.first_index(), m.first);
    assert_eq!(log.last_index(), m.last());
    assert_eq!(log.next_offset(), m.next_offset());
    assert_eq!(log.durable_index(), m.last());
    assert_eq!(log.term_at(m.first - 1), Some(m.prev_term));
    let tags: Vec<u64> = m.entries.iter().map(|e| e.0).collect();
    assert_eq!(all_tags(log), tags);
    for (i, e) in m.entries.iter().enumerate() {
        assert_eq!(log.term_at(m.first + i as u64), Some(e.1));
    }
    assert_eq!(log.term_at(m.last() + 1), None);
}

fn run(steps: Vec<Step>) {
    let dir = scratch();
    let cfg = config(dir.path(), BackendKind::UringDirect);
    let mut log = Log::open(cfg.clone()).unwrap();
    let mut m = Model {
        first: 1,
        prev_term: 0,
        start_offset: 0,
        entries: vec![],
        term: 1,
        next_tag: 0,
    };
    for s in steps {
        match s {
            Step::Append { records, bump_term } => {
                m.term += u64::from(bump_term);
                let tag = m.next_tag;
                m.next_tag += 1;
                let b = if records == 0 {
                    raftline_log::Batch::encode(&[]).unwrap()
                } else {
                    batch(tag, records)
                };
                let t = log.append(Some(m.last() + 1), m.term, b).unwrap();
                t.wait().unwrap();
                m.entries.push((
                    if records == 0 { u64::MAX } else { tag },
                    m.term,
                    records as u64,
                ));
            }
            Step::TruncateSuffix { back } => {
                let from = (m.last() + 1).saturating_sub(back).max(m.first);
                if from <= m.first {
                    assert!(matches!(
                        log.truncate_suffix(m.first - 1, m.first - 1),
                        Err(LogError::TruncateCommitted { .. })
                    ));
                    continue;
                }
                log.truncate_suffix(from, m.first - 1)
                    .unwrap()
                    .wait()
                    .unwrap();
                m.entries.truncate((from - m.first) as usize);
            }
            Step::TruncatePrefix { ahead } => {
                let below = (m.first + ahead).min(m.last() + 1);
                log.truncate_prefix(below).unwrap();
                let new_first = log.first_index();
                assert!(
                    new_first >= m.first && new_first <= below,
                    "dropped past {below}"
                );
                let dropped = (new_first - m.first) as usize;
                for e in m.entries.drain(..dropped) {
                    m.start_offset += e.2;
                    m.prev_term = e.1;
                }
                m.first = new_first;
            }
            Step::Restart { ahead } => {
                let (last_index, next_offset) = (m.last() + ahead, m.next_offset() + 10 * ahead);
                log.restart_after_snapshot(last_index, m.term, next_offset)
                    .unwrap()
                    .wait()
                    .unwrap();
                m.first = last_index + 1;
                m.prev_term = m.term;
                m.start_offset = next_offset;
                m.entries.clear();
            }
            Step::Reopen => {
                drop(log);
                log = Log::open(cfg.clone()).unwrap();
            }
        }
        check(&log, &m);
    }
    drop(log);
    check(&Log::open(cfg).unwrap(), &m);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn log_agrees_with_model_under_random_operations(steps in proptest::collection::vec(step(), 1..60)) {
        run(steps);
    }
}
