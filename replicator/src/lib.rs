//! raftline's Raft: a sans-I/O consensus core (messages and ticks in, actions out) and the
//! deterministic simulator that tests it under faults.
