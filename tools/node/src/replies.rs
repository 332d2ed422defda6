//! Answers to clients: every response frame a node sends is encoded here, stamped with the
//! cluster and node id, straight into the connection's queue.

use raftline_netio::client_proto::{encode_response, ClientError, Response};
use raftline_netio::cluster_id::ClusterId;
use raftline_netio::net::{ClientId, Net, SendError, SendWithError};

/// Encodes and queues responses of one node.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Replier {
    /// Our cluster (stamped into every frame).
    pub cluster_id: ClusterId,
    /// Our node id (sender of every response).
    pub node_id: u64,
}

impl Replier {
    /// Queues `response` to `client`. A reply that does not fit closes the connection: the
    /// client stopped reading its answers.
    pub fn respond(&self, net: &mut Net, client: ClientId, response: &Response) {
        let (cluster_id, node_id) = (self.cluster_id, self.node_id);
        let encode = |frame: &mut Vec<u8>| encode_response(frame, cluster_id, node_id, response);
        match net.send_client_with(client, encode) {
            Ok(()) | Err(SendWithError::Refused(SendError::Closed)) => {}
            Err(SendWithError::Encode(e)) => {
                tracing::error!(error = %e, %client, "cannot encode a response");
            }
            Err(SendWithError::Refused(e)) => {
                net.close_client(client, &format!("response refused: {e}"));
            }
        }
    }

    /// Queues an `Error` answer to request `request_id`.
    pub fn error(&self, net: &mut Net, client: ClientId, request_id: u64, error: ClientError) {
        self.respond(net, client, &Response::Error { request_id, error });
    }
}
