//! The flags every client command shares: where the cluster is, which cluster it is, and the
//! client's credentials (token, TLS).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use raftline_netio::client::ClientConfig;
use raftline_netio::cluster_id::ClusterId;
use raftline_netio::net::{client_config, load_certs, load_key, load_roots};

/// Client addresses of the `raftline dev` cluster.
pub const DEV_BOOTSTRAP: &str = "127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403";

/// Where to reach the cluster.
#[derive(Args, Debug, Clone)]
pub struct ClusterArgs {
    /// Client addresses (host:port, comma-separated) of some of the cluster's nodes; any one
    /// that answers is enough to find the others. Defaults to the `raftline dev` cluster.
    #[arg(long, value_delimiter = ',', value_name = "HOST:PORT,...", default_value = DEV_BOOTSTRAP)]
    pub bootstrap: Vec<String>,
    /// Name of the cluster, as given to its servers' --cluster-id; nodes of another cluster
    /// are refused.
    #[arg(long = "cluster-id", value_name = "NAME", default_value = raftline_bench::local_cluster::DEV_CLUSTER)]
    pub cluster: String,
    /// Longest wait for one answer from a node, in milliseconds (an append's answer waits for
    /// its commit).
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    pub timeout_ms: u64,
    /// How long to keep looking for a leader (or another node) after a failure, in
    /// milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    pub failover_ms: u64,
    /// Token to authenticate with on every connection, for nodes started with --auth-file (a
    /// node without one accepts any token).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "RAFTLINE_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Talk TLS to the nodes (their --client-cert-file), trusting this CA bundle (PEM); each
    /// node's certificate must name the host it is reached at.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Present this client certificate (PEM) to nodes that ask for one
    /// (--client-trusted-ca-file); with a role in their auth file it needs no token.
    #[arg(long, value_name = "FILE", requires_all = ["tls_ca", "tls_key"])]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl ClusterArgs {
    /// The client configuration these flags describe (TLS files read now).
    pub fn client_config(&self) -> anyhow::Result<ClientConfig> {
        let mut config =
            ClientConfig::new(self.bootstrap.clone(), ClusterId::from_name(&self.cluster));
        config.request_timeout = Duration::from_millis(self.timeout_ms);
        config.failover_timeout = Duration::from_millis(self.failover_ms);
        config.connect_timeout = config.connect_timeout.min(config.request_timeout);
        config.token = self.token.clone();
        if let Some(ca) = &self.tls_ca {
            let roots = Arc::new(load_roots(ca)?);
            let identity = match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => Some((load_certs(cert)?, load_key(key)?)),
                _ => None,
            };
            config.tls = Some(client_config(roots, identity)?);
        }
        Ok(config)
    }
}
