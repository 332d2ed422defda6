//! A node's `/metrics` as the benchmarks read it: one `GET /metrics` (HTTP/1.0, the node's tiny
//! responder), then values by series name.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::Context;

/// One scrape of a node's metrics.
pub struct NodeMetrics {
    addr: SocketAddr,
    body: String,
}

impl NodeMetrics {
    /// Reads the node's metrics at `addr` now (2 s bound for the connection and each read).
    pub fn scrape(addr: SocketAddr) -> anyhow::Result<NodeMetrics> {
        let timeout = Duration::from_secs(2);
        let mut stream = TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("connecting to the node's metrics at {addr}"))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: raftline\r\n\r\n")?;
        let mut body = String::new();
        stream
            .read_to_string(&mut body)
            .with_context(|| format!("reading metrics from {addr}"))?;
        Ok(NodeMetrics { addr, body })
    }

    /// The value of the series named exactly `name` (labels included, if it has any).
    pub fn value(&self, name: &str) -> anyhow::Result<f64> {
        self.body
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (key, value) = l.split_once(' ')?;
                (key == name).then(|| value.trim().parse::<f64>().ok())?
            })
            .with_context(|| format!("{name} missing from the metrics of {}", self.addr))
    }
}
