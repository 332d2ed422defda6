//! raftline's wire protocol, peer transport and client protocol (lands with the appliance issue).
