//! raftline's thread-per-core runtime: core pinning, per-core threads and the channels between
//! them (lands with the appliance issue).
