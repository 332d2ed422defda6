//! The data directory's identity file: which cluster and which node its data belongs to.
//!
//! A node started on another node's (or another cluster's) data would vote and acknowledge with
//! a log that is not its own, breaking Raft's safety; so the directory records its owner once,
//! durably, and every later start checks it and refuses a mismatch with an explanation.
//!
//! The file also holds the directory's **incarnation**, a random number drawn when the directory
//! is claimed: the cluster records it for each member, and a node that comes back under its id
//! on another directory (a wiped or replaced disk, which lost the vote and log its id stands
//! for) shows another incarnation and is refused (tools/node/README.md "Incarnations").

use std::io::Write;
use std::path::{Path, PathBuf};

use raftline_log::dir::{ensure_dir_durable, sync_dir};

const FILE_NAME: &str = "identity";
const TEMP_NAME: &str = "identity.tmp";

/// Who owns a data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The cluster's name (its id on the wire is derived from it).
    pub cluster_name: String,
    /// This node's id within the cluster.
    pub node_id: u64,
}

/// Why a data directory cannot be used by this node.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The directory belongs to another cluster or node.
    #[error(
        "data directory {dir} belongs to cluster {found_cluster:?} node {found_node}, not cluster \
         {wanted_cluster:?} node {wanted_node}: refusing to start (a node on another node's data \
         would break Raft's safety). Use that node's --id/--cluster-id, or another --data-dir"
    )]
    Mismatch {
        /// The directory.
        dir: PathBuf,
        /// Cluster recorded in the directory.
        found_cluster: String,
        /// Node recorded in the directory.
        found_node: u64,
        /// Cluster this process was started for.
        wanted_cluster: String,
        /// Node this process was started as.
        wanted_node: u64,
    },
    /// The directory holds files but no identity: not a raftline data directory we created.
    #[error(
        "data directory {dir} is not empty but has no identity file: refusing to adopt data of \
         unknown origin. Point --data-dir at an empty or new directory"
    )]
    Unknown {
        /// The directory.
        dir: PathBuf,
    },
    /// The identity file is unreadable or malformed.
    #[error("identity file {path} is malformed: {why}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// File system error.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> IdentityError {
    let what = what.into();
    move |source| IdentityError::Io { what, source }
}

impl Identity {
    fn render(&self, incarnation: u64) -> String {
        format!(
            "# raftline data directory identity; do not edit\ncluster = {}\nnode = {}\n\
             incarnation = {incarnation:016x}\n",
            self.cluster_name, self.node_id
        )
    }

    /// The identity and incarnation a file holds (`None`: written before incarnations).
    fn parse(text: &str, path: &Path) -> Result<(Identity, Option<u64>), IdentityError> {
        let malformed = |why: &str| IdentityError::Malformed {
            path: path.to_path_buf(),
            why: why.into(),
        };
        let (mut cluster, mut node, mut incarnation) = (None, None, None);
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            match line.split_once(" = ") {
                Some(("cluster", v)) => cluster = Some(v.to_string()),
                Some(("node", v)) => {
                    node = Some(v.parse().map_err(|_| malformed("node is not a number"))?)
                }
                Some(("incarnation", v)) => match u64::from_str_radix(v, 16) {
                    Ok(n) if n != 0 => incarnation = Some(n),
                    _ => return Err(malformed("incarnation is not a non-zero hex number")),
                },
                _ => return Err(malformed("unexpected line")),
            }
        }
        let identity = Identity {
            cluster_name: cluster.ok_or_else(|| malformed("no cluster line"))?,
            node_id: node.ok_or_else(|| malformed("no node line"))?,
        };
        Ok((identity, incarnation))
    }

    /// Claims `dir` for this identity: creates the directory and writes the identity durably
    /// with a new incarnation if it is new (or empty), checks it otherwise (a file written
    /// before incarnations gets one). Returns the directory's incarnation.
    pub fn claim(&self, dir: &Path) -> Result<u64, IdentityError> {
        ensure_dir_durable(dir).map_err(io(format!("creating {}", dir.display())))?;
        let path = dir.join(FILE_NAME);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let (found, incarnation) = Identity::parse(&text, &path)?;
                if &found != self {
                    return Err(IdentityError::Mismatch {
                        dir: dir.to_path_buf(),
                        found_cluster: found.cluster_name,
                        found_node: found.node_id,
                        wanted_cluster: self.cluster_name.clone(),
                        wanted_node: self.node_id,
                    });
                }
                match incarnation {
                    Some(incarnation) => Ok(incarnation),
                    None => self.write(dir, &path),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let stray = std::fs::read_dir(dir)
                    .map_err(io(format!("listing {}", dir.display())))?
                    .filter_map(Result::ok)
                    .any(|e| e.file_name() != TEMP_NAME);
                if stray {
                    return Err(IdentityError::Unknown {
                        dir: dir.to_path_buf(),
                    });
                }
                self.write(dir, &path)
            }
            Err(e) => Err(IdentityError::Io {
                what: format!("reading {}", path.display()),
                source: e,
            }),
        }
    }

    /// Writes the identity with a new incarnation to a temporary file, syncs it, renames it
    /// into place and syncs the directory, so a crash leaves either no identity or the whole
    /// one; returns the incarnation.
    fn write(&self, dir: &Path, path: &Path) -> Result<u64, IdentityError> {
        let incarnation = new_incarnation();
        let tmp = dir.join(TEMP_NAME);
        let mut file =
            std::fs::File::create(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
        file.write_all(self.render(incarnation).as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io(format!("writing {}", tmp.display())))?;
        std::fs::rename(&tmp, path).map_err(io(format!("renaming to {}", path.display())))?;
        sync_dir(dir).map_err(io(format!("syncing {}", dir.display())))?;
        Ok(incarnation)
    }
}

/// A random, non-zero incarnation. The standard library's hasher keys come from the operating
/// system's random source; two directories drawing the same 64 bits is not a case to handle.
fn new_incarnation() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    loop {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        let n = hasher.finish();
        if n != 0 {
            return n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(cluster: &str, node: u64) -> Identity {
        Identity {
            cluster_name: cluster.into(),
            node_id: node,
        }
    }

    #[test]
    fn a_directory_is_claimed_once_and_keeps_its_incarnation() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("node-1");
        let first = id("c", 1).claim(&data).unwrap();
        assert_ne!(first, 0);
        assert_eq!(id("c", 1).claim(&data).unwrap(), first);
        let wiped = dir.path().join("node-1-new-disk");
        assert_ne!(
            id("c", 1).claim(&wiped).unwrap(),
            first,
            "another directory of the same node is another incarnation"
        );
    }

    #[test]
    fn an_identity_written_before_incarnations_gets_one_that_sticks() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), "cluster = c\nnode = 1\n").unwrap();
        let given = id("c", 1).claim(dir.path()).unwrap();
        assert_eq!(id("c", 1).claim(dir.path()).unwrap(), given);
        let text = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        assert!(
            text.contains(&format!("incarnation = {given:016x}")),
            "{text}"
        );
    }

    #[test]
    fn a_malformed_incarnation_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let text = "cluster = c\nnode = 1\nincarnation = zz\n";
        std::fs::write(dir.path().join(FILE_NAME), text).unwrap();
        assert!(matches!(
            id("c", 1).claim(dir.path()),
            Err(IdentityError::Malformed { .. })
        ));
    }

    #[test]
    fn another_node_or_cluster_is_refused_with_both_identities_named() {
        let dir = tempfile::tempdir().unwrap();
        id("c", 1).claim(dir.path()).unwrap();
        let err = id("c", 2).claim(dir.path()).unwrap_err().to_string();
        assert!(err.contains("node 1") && err.contains("node 2"), "{err}");
        let err = id("other", 1).claim(dir.path()).unwrap_err().to_string();
        assert!(err.contains("\"c\"") && err.contains("\"other\""), "{err}");
    }

    #[test]
    fn a_non_empty_directory_without_identity_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hard_state"), b"x").unwrap();
        assert!(matches!(
            id("c", 1).claim(dir.path()),
            Err(IdentityError::Unknown { .. })
        ));
    }
}
