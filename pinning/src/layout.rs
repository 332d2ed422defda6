//! Which core runs what on a node, decided once at start-up and printed.

use std::fmt;
use std::io;
use std::thread::JoinHandle;

use crate::affinity::{available_cores, spawn_pinned};

/// A job a node's threads do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The Raft core and the network event loop (peer and client sockets): one thread, no locks.
    Raft,
    /// The log's group-commit writer with its own io_uring for the disk.
    LogWriter,
    /// Metrics endpoint and signal handling: off the data path, never pinned.
    Control,
}

impl Role {
    /// Every role, in the order the table prints them.
    pub const ALL: [Role; 3] = [Role::Raft, Role::LogWriter, Role::Control];

    /// Short name used in the table and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Role::Raft => "raft",
            Role::LogWriter => "log-writer",
            Role::Control => "control",
        }
    }

    /// The OS thread name a node gives the thread of this role.
    pub fn thread_name(self) -> &'static str {
        match self {
            Role::Raft => "raftline-raft",
            Role::LogWriter => "raftline-log",
            Role::Control => "raftline-ctl",
        }
    }

    fn duty(self) -> &'static str {
        match self {
            Role::Raft => "Raft core + network event loop (peer and client sockets)",
            Role::LogWriter => "log group-commit writer (own io_uring for the disk)",
            Role::Control => "metrics endpoint, signal handling (unpinned std threads)",
        }
    }
}

/// Why a core list cannot make a layout.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    /// `--cores` named no core.
    #[error("no cores given: name at least one core, e.g. --cores 0,1")]
    NoCores,
    /// A core was named twice.
    #[error("core {0} is named twice in the core list")]
    DuplicateCore(usize),
}

/// The assignment of roles to the cores a node was given (`--cores 0,1`).
///
/// The Raft thread takes the first core. The log writer takes the second core if there is one,
/// else shares the first: on a machine with fewer cores than nodes the kernel time-slices, which
/// is slower but correct. Cores beyond the second are left unused; the layout says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    cores: Vec<usize>,
    available: Vec<usize>,
}

impl Layout {
    /// Builds the layout for `cores`, checked against the cores this process may run on.
    pub fn new(cores: &[usize]) -> Result<Layout, LayoutError> {
        Layout::with_available(cores, available_cores())
    }

    fn with_available(cores: &[usize], available: Vec<usize>) -> Result<Layout, LayoutError> {
        if cores.is_empty() {
            return Err(LayoutError::NoCores);
        }
        for (i, core) in cores.iter().enumerate() {
            if cores[..i].contains(core) {
                return Err(LayoutError::DuplicateCore(*core));
            }
        }
        Ok(Layout {
            cores: cores.to_vec(),
            available,
        })
    }

    /// The core `role` is pinned to; `None` for unpinned roles.
    pub fn core_of(&self, role: Role) -> Option<usize> {
        match role {
            Role::Raft => Some(self.cores[0]),
            Role::LogWriter => Some(*self.cores.get(1).unwrap_or(&self.cores[0])),
            Role::Control => None,
        }
    }

    /// The cores given, in order.
    pub fn cores(&self) -> &[usize] {
        &self.cores
    }

    /// Cores given that this process may not run on: their threads will run unpinned.
    pub fn unavailable_cores(&self) -> Vec<usize> {
        self.cores
            .iter()
            .copied()
            .filter(|core| !self.available.contains(core))
            .collect()
    }

    /// Spawns the thread of `role`, named and pinned (best effort) as the layout says.
    pub fn spawn<F, T>(&self, role: Role, body: F) -> io::Result<JoinHandle<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        spawn_pinned(role.thread_name(), self.core_of(role), body)
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let given: Vec<String> = self.cores.iter().map(usize::to_string).collect();
        writeln!(f, "thread layout (cores given: {})", given.join(","))?;
        writeln!(f, "  {:<11} {:<22} {:<14} duty", "role", "core", "thread")?;
        for role in Role::ALL {
            let core = match self.core_of(role) {
                None => "-".to_owned(),
                Some(core) if !self.available.contains(&core) => {
                    format!("{core} (unavailable)")
                }
                Some(core) if role == Role::LogWriter && self.cores.len() == 1 => {
                    format!("{core} (shared)")
                }
                Some(core) => core.to_string(),
            };
            writeln!(
                f,
                "  {:<11} {:<22} {:<14} {}",
                role.name(),
                core,
                role.thread_name(),
                role.duty()
            )?;
        }
        if self.cores.len() > 2 {
            let idle: Vec<String> = self.cores[2..].iter().map(usize::to_string).collect();
            writeln!(
                f,
                "  cores {} are given but unused by this layout",
                idle.join(",")
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_cores_split_raft_and_log_writer() {
        let layout = Layout::with_available(&[0, 1], vec![0, 1]).unwrap();
        assert_eq!(layout.core_of(Role::Raft), Some(0));
        assert_eq!(layout.core_of(Role::LogWriter), Some(1));
        assert_eq!(layout.core_of(Role::Control), None);
    }

    #[test]
    fn one_core_is_shared_by_raft_and_log_writer() {
        let layout = Layout::with_available(&[1], vec![0, 1]).unwrap();
        assert_eq!(layout.core_of(Role::Raft), Some(1));
        assert_eq!(layout.core_of(Role::LogWriter), Some(1));
        assert!(layout.to_string().contains("1 (shared)"), "{layout}");
    }

    #[test]
    fn empty_and_duplicate_core_lists_are_refused() {
        assert_eq!(
            Layout::with_available(&[], vec![0]),
            Err(LayoutError::NoCores)
        );
        assert_eq!(
            Layout::with_available(&[0, 0], vec![0]),
            Err(LayoutError::DuplicateCore(0))
        );
    }

    #[test]
    fn unavailable_cores_are_reported_and_marked_in_the_table() {
        let layout = Layout::with_available(&[0, 5], vec![0, 1]).unwrap();
        assert_eq!(layout.unavailable_cores(), vec![5]);
        assert!(layout.to_string().contains("5 (unavailable)"), "{layout}");
    }

    #[test]
    fn table_names_every_role_and_thread() {
        let table = Layout::with_available(&[0, 1, 2], vec![0, 1, 2])
            .unwrap()
            .to_string();
        for role in Role::ALL {
            assert!(table.contains(role.name()), "{table}");
            assert!(table.contains(role.thread_name()), "{table}");
        }
        assert!(table.contains("cores 2 are given but unused"), "{table}");
    }
}
