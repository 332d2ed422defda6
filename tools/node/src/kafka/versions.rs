//! ApiVersions: which APIs and versions this node serves. Kafka 4.1's floors, which keep
//! librdkafka 2.0, kafka-python 2.x and Java 3.x clients working; the highest versions are the
//! ones this slice implements.

use bytes::Bytes;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse};
use kafka_protocol::protocol::Decodable;

use super::{check_version, code, encode_response, Asked};

/// Every API served, with its lowest and highest version.
pub(super) const SERVED: [(ApiKey, i16, i16); 6] = [
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::InitProducerId, 0, 4),
];

/// The versions a served API is answered at.
pub(super) fn range(api_key: ApiKey) -> (i16, i16) {
    let (_, min, max) = SERVED
        .iter()
        .find(|(k, _, _)| *k == api_key)
        .expect("a served API");
    (*min, *max)
}

/// Answers ApiVersions. A version newer than ours gets the v0 answer with UNSUPPORTED_VERSION
/// and the list, so the client can retry with one we serve (Kafka's rule; the ApiVersions
/// response header is always v0).
pub(super) fn api_versions(asked: Asked, buf: &mut Bytes) -> Result<Vec<u8>, String> {
    let (_, max) = range(ApiKey::ApiVersions);
    let mut response = ApiVersionsResponse::default();
    response.api_keys = SERVED
        .iter()
        .map(|&(key, min, max)| {
            let mut v = ApiVersion::default();
            v.api_key = key as i16;
            v.min_version = min;
            v.max_version = max;
            v
        })
        .collect();
    if asked.version > max {
        response.error_code = code::UNSUPPORTED_VERSION;
        return encode_response(
            Asked {
                version: 0,
                ..asked
            },
            &response,
        );
    }
    check_version(asked, 0, max)?;
    ApiVersionsRequest::decode(buf, asked.version)
        .map_err(|e| format!("undecodable ApiVersions v{}: {e}", asked.version))?;
    response.error_code = code::NONE;
    encode_response(asked, &response)
}
