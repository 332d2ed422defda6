//! raftline's storage engine: a segmented, checksummed, sector-aligned log with group commit,
//! crash recovery, snapshots and prefix truncation.
