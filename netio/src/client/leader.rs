//! Finding and following the leader: ask nodes for their status, follow the leader they name.

use std::time::Instant;

use crate::client::connection::Connection;
use crate::client::{ask_status, ClientConfig, Error};
use crate::client_proto::{NodeRole, NodeStatus};

/// What asking one node found.
enum Probe {
    /// It leads: here is the connection to it.
    Leader(Connection),
    /// It does not lead; `leader` is the client address of the leader it knows of; `conn` stays
    /// open to ask it again in the next round.
    NotLeader {
        why: String,
        leader: Option<String>,
        conn: Connection,
    },
}

/// The connection to the node believed to lead, re-established on demand.
pub(crate) struct LeaderLink {
    config: ClientConfig,
    conn: Option<Connection>,
    hint: Option<String>,
    next_request_id: u64,
}

impl LeaderLink {
    /// A link that connects on first use.
    pub(crate) fn new(config: ClientConfig) -> LeaderLink {
        LeaderLink {
            config,
            conn: None,
            hint: None,
            next_request_id: 1,
        }
    }

    /// A fresh request id (never 0, which names the connection).
    pub(crate) fn next_id(&mut self) -> u64 {
        let id = self.next_request_id;
        self.next_request_id += 1;
        id
    }

    /// The leader connection, found first if there is none.
    pub(crate) fn connection(&mut self) -> Result<&mut Connection, Error> {
        if self.conn.is_none() {
            self.conn = Some(self.find_leader()?);
        }
        Ok(self.conn.as_mut().expect("just connected"))
    }

    /// Forgets the connection; the next use looks for the leader, trying `hint` first.
    pub(crate) fn reset(&mut self, hint: Option<String>) {
        self.conn = None;
        if hint.is_some() {
            self.hint = hint;
        }
    }

    /// Asks nodes (the hint first, then every bootstrap node, then any leader they name) until
    /// one says it leads, all bounded by the fail-over timeout.
    ///
    /// Between rounds: while some node answers without leading, an election is under way (a
    /// leader died or lost its quorum); it ends within an election timeout or two, so the next
    /// round comes after `backoff_min` and the connections to the nodes that answered are kept
    /// and asked again (no connection churn on a cluster that is busy electing). Only when no
    /// node answers at all does the pause double, up to `backoff_max`.
    fn find_leader(&mut self) -> Result<Connection, Error> {
        let deadline = Instant::now() + self.config.failover_timeout;
        let mut backoff = self.config.backoff_min;
        let mut last = String::from("no bootstrap address given");
        let mut answered: Vec<Connection> = Vec::new();
        loop {
            let mut candidates: Vec<String> = self.hint.take().into_iter().collect();
            candidates.extend(self.config.bootstrap.iter().cloned());
            let mut tried: Vec<String> = Vec::new();
            let mut kept: Vec<Connection> = Vec::new();
            let mut i = 0;
            while i < candidates.len() && Instant::now() < deadline {
                let address = candidates[i].clone();
                i += 1;
                if tried.contains(&address) {
                    continue;
                }
                tried.push(address.clone());
                let open = answered
                    .iter()
                    .position(|c| c.address() == address)
                    .map(|at| answered.swap_remove(at));
                match self.probe(&address, open) {
                    Ok(Probe::Leader(conn)) => return Ok(conn),
                    Ok(Probe::NotLeader { why, leader, conn }) => {
                        last = why;
                        kept.push(conn);
                        if let Some(leader) = leader {
                            candidates.insert(i, leader);
                        }
                    }
                    Err(e) if e.is_access_refused() => return Err(e),
                    Err(e) => last = e.to_string(),
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::NoLeader {
                    addresses: self.config.bootstrap.join(","),
                    last,
                });
            }
            let pause = if kept.is_empty() {
                let pause = backoff;
                backoff = (backoff * 2).min(self.config.backoff_max);
                pause
            } else {
                backoff = self.config.backoff_min;
                self.config.backoff_min
            };
            answered = kept;
            std::thread::sleep(pause.min(deadline - now));
        }
    }

    /// Asks `address` its status, on `open` (a connection kept from the last round) or else a
    /// new connection: the connection if it leads, else why not and the leader it names.
    fn probe(&mut self, address: &str, open: Option<Connection>) -> Result<Probe, Error> {
        let id = self.next_id();
        let (conn, status) = match open {
            Some(mut conn) => match ask_status(&mut conn, &self.config, id) {
                Ok(status) => (conn, status),
                // The node closed the kept connection (restart, idle timeout): ask afresh.
                Err(_) => self.ask_new(address)?,
            },
            None => self.ask_new(address)?,
        };
        if status.role == NodeRole::Leader {
            return Ok(Probe::Leader(conn));
        }
        let why = format!(
            "{address} is node {} ({:?}, term {}), leader {}",
            status.node_id,
            status.role,
            status.term,
            status.leader_client_address.as_deref().unwrap_or("unknown")
        );
        Ok(Probe::NotLeader {
            why,
            leader: status.leader_client_address,
            conn,
        })
    }

    fn ask_new(&mut self, address: &str) -> Result<(Connection, NodeStatus), Error> {
        let mut conn = Connection::open(address, &self.config)?;
        let id = self.next_id();
        let status = ask_status(&mut conn, &self.config, id)?;
        Ok((conn, status))
    }
}
