//! The flags every client command shares: where the cluster is and which cluster it is.

use std::time::Duration;

use clap::Args;
use raftline_netio::client::ClientConfig;
use raftline_netio::cluster_id::ClusterId;

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
}

impl ClusterArgs {
    /// The client configuration these flags describe.
    pub fn client_config(&self) -> ClientConfig {
        let mut config =
            ClientConfig::new(self.bootstrap.clone(), ClusterId::from_name(&self.cluster));
        config.request_timeout = Duration::from_millis(self.timeout_ms);
        config.failover_timeout = Duration::from_millis(self.failover_ms);
        config.connect_timeout = config.connect_timeout.min(config.request_timeout);
        config.token = self.token.clone();
        config
    }
}
