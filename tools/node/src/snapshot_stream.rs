//! A consumer's read of a snapshot: the records of the served snapshot file, decoded a chunk at
//! a time (a stream never holds more than one chunk and one frame's records, whatever the
//! snapshot's size), resumable at a record position of the same snapshot.
//!
//! The file was verified when it was written, installed or loaded at start (checksum over the
//! whole payload), and the open handle keeps it readable after a newer snapshot replaced it.

use raftline_log::snapshot::HEADER_BYTES;
use raftline_netio::client_proto::{SnapshotInfo, SnapshotRecord, SnapshotResume};

use crate::state::{PayloadError, PayloadHead};
use crate::storage::ServedSnapshot;

/// Bytes read from the file at a time.
const CHUNK_BYTES: usize = 256 << 10;

/// Why a snapshot cannot be streamed (the file changed under the node, or a writer bug).
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Reading the file failed.
    #[error("reading snapshot {index}: {source}")]
    Io {
        /// The snapshot.
        index: u64,
        /// Why.
        source: std::io::Error,
    },
    /// The file fails its checksum: nothing of it is served.
    #[error("snapshot {index}: {source}")]
    Corrupt {
        /// The snapshot.
        index: u64,
        /// What the check found.
        source: raftline_log::LogError,
    },
    /// The payload does not decode, or ends early.
    #[error("snapshot {index}: {source}")]
    Payload {
        /// The snapshot.
        index: u64,
        /// Why.
        source: PayloadError,
    },
}

/// The records of one snapshot, from a position on.
pub struct SnapshotStream {
    snapshot: ServedSnapshot,
    head: PayloadHead,
    info: SnapshotInfo,
    /// File offset of the first byte not yet in `buf`.
    file_pos: u64,
    /// Bytes read and not yet decoded, from `buf_pos`.
    buf: Vec<u8>,
    buf_pos: usize,
    /// Records handed out (the position of the next one).
    position: u64,
    /// Records taken by [`SnapshotStream::next_records`] whose frame could not be sent: they go
    /// first next time.
    unsent: Vec<SnapshotRecord>,
}

impl SnapshotStream {
    /// A stream of `snapshot` from record 0, or from `resume`'s position if it names this
    /// snapshot.
    pub fn open(
        snapshot: ServedSnapshot,
        resume: Option<SnapshotResume>,
    ) -> Result<SnapshotStream, StreamError> {
        let index = snapshot.meta().index;
        snapshot
            .verify()
            .map_err(|source| StreamError::Corrupt { index, source })?;
        let mut buf = Vec::new();
        let mut file_pos = HEADER_BYTES as u64;
        let head = loop {
            let got = read_chunk(&snapshot, &mut buf, &mut file_pos)?;
            let decoded = PayloadHead::decode(&buf)
                .map_err(|source| StreamError::Payload { index, source })?;
            match decoded {
                Some(head) => break head,
                None if got == 0 => {
                    let source = PayloadError::truncated();
                    return Err(StreamError::Payload { index, source });
                }
                None => {}
            }
        };
        let buf_pos = head.head_bytes;
        let mut stream = SnapshotStream {
            info: SnapshotInfo {
                index,
                term: snapshot.meta().term,
                cut_offset: head.next_offset,
                records: head.record_count,
                position: 0,
            },
            snapshot,
            head,
            file_pos,
            buf,
            buf_pos,
            position: 0,
            unsent: Vec::new(),
        };
        let skip = resume
            .filter(|r| r.index == index)
            .map_or(0, |r| r.position.min(stream.info.records));
        while stream.position < skip {
            stream.next_record()?;
        }
        stream.info.position = skip;
        Ok(stream)
    }

    /// Which snapshot, from where.
    pub fn info(&self) -> SnapshotInfo {
        self.info
    }

    /// Whether every record was handed out (and sent).
    pub fn done(&self) -> bool {
        self.position == self.info.records && self.unsent.is_empty()
    }

    /// The next records, at least one unless done, adding up to about `bytes_max` of
    /// [`SnapshotRecord::credit_bytes`].
    pub fn next_records(&mut self, bytes_max: u64) -> Result<Vec<SnapshotRecord>, StreamError> {
        let mut records = std::mem::take(&mut self.unsent);
        let mut bytes: u64 = records.iter().map(SnapshotRecord::credit_bytes).sum();
        while (records.is_empty() || bytes < bytes_max) && self.position < self.info.records {
            let record = self.next_record()?;
            bytes += record.credit_bytes();
            records.push(record);
        }
        Ok(records)
    }

    /// Gives back records whose frame the connection refused: they are sent first next time.
    pub fn unsend(&mut self, records: Vec<SnapshotRecord>) {
        debug_assert!(self.unsent.is_empty());
        self.unsent = records;
    }

    fn next_record(&mut self) -> Result<SnapshotRecord, StreamError> {
        let index = self.info.index;
        loop {
            let decoded = self
                .head
                .decode_record(&self.buf[self.buf_pos..])
                .map_err(|source| StreamError::Payload { index, source })?;
            if let Some((record, used)) = decoded {
                self.buf_pos += used;
                self.position += 1;
                return Ok(SnapshotRecord {
                    key: record.key,
                    value: record.value,
                    offset: record.offset,
                    timestamp_ms: record.timestamp_ms,
                });
            }
            self.buf.drain(..self.buf_pos);
            self.buf_pos = 0;
            if read_chunk(&self.snapshot, &mut self.buf, &mut self.file_pos)? == 0 {
                let source = PayloadError::truncated();
                return Err(StreamError::Payload { index, source });
            }
        }
    }
}

/// Appends the file's next chunk to `buf`; returns the bytes read (0 at the end).
fn read_chunk(
    snapshot: &ServedSnapshot,
    buf: &mut Vec<u8>,
    file_pos: &mut u64,
) -> Result<usize, StreamError> {
    let index = snapshot.meta().index;
    let left = snapshot.file_bytes().saturating_sub(*file_pos);
    let want = CHUNK_BYTES.min(usize::try_from(left).unwrap_or(CHUNK_BYTES));
    let start = buf.len();
    buf.resize(start + want, 0);
    let mut got = 0;
    while got < want {
        match snapshot.read_at(&mut buf[start + got..], *file_pos + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => return Err(StreamError::Io { index, source }),
        }
    }
    buf.truncate(start + got);
    *file_pos += got as u64;
    Ok(got)
}
