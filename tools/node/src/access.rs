//! Who may do what on the client port. An [`AccessPolicy`] (the operator's auth file) maps
//! tokens — kept only as SHA-256 digests — and client-certificate names to roles (`read` <
//! `produce` < `admin`); [`Access`] holds each connection's role and is the one check every
//! client request passes before the node serves it ([`Access::judge`], called from the event
//! loop). Without a policy every request is served (a node on a trusted network).
//!
//! A connection starts without a role: it may only send `Authenticate` (any other request is
//! answered `Forbidden`), unless its TLS client certificate names an entry of the policy. A
//! token that matches no entry is answered `BadCredentials`; the [`AUTH_FAILURES_MAX`]th on one
//! connection closes it. Token digests are compared in constant time against every entry, so
//! the answer's timing says nothing about which entry (or how much of one) a guess matched.

use std::collections::{BTreeMap, HashMap};

use raftline_netio::client_proto::{AccessRole, ClientError, Request, Response};
use raftline_netio::net::ClientId;
use sha2::{Digest, Sha256};

/// Failed `Authenticate` requests one connection may make; the last of them closes it.
pub const AUTH_FAILURES_MAX: u32 = 3;

/// Bytes of a token digest (SHA-256).
pub const TOKEN_DIGEST_BYTES: usize = 32;

/// A token's SHA-256 digest: what an auth file holds instead of the token.
pub type TokenDigest = [u8; TOKEN_DIGEST_BYTES];

/// The SHA-256 digest of `token` (its UTF-8 bytes).
pub fn token_digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// `digest` as 64 lowercase hex digits (the auth file's notation).
pub fn digest_hex(digest: &TokenDigest) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses 64 hex digits into a digest.
pub fn parse_digest_hex(text: &str) -> Result<TokenDigest, String> {
    let text = text.trim();
    if text.len() != 2 * TOKEN_DIGEST_BYTES || !text.is_ascii() {
        return Err(format!(
            "a token digest is {} hex digits (SHA-256), not {:?}",
            2 * TOKEN_DIGEST_BYTES,
            text
        ));
    }
    let mut digest = [0u8; TOKEN_DIGEST_BYTES];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
            .map_err(|_| format!("{text:?} is not hex digits"))?;
    }
    Ok(digest)
}

/// Equality of two digests in time independent of where they differ.
fn digests_equal(a: &TokenDigest, b: &TokenDigest) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// One token of the policy.
#[derive(Clone)]
struct TokenEntry {
    /// Names the token in logs (the operator's label; never the secret).
    name: String,
    digest: TokenDigest,
    role: AccessRole,
}

/// The operator's auth file: roles by token digest and by client-certificate name.
#[derive(Clone, Default)]
pub struct AccessPolicy {
    tokens: Vec<TokenEntry>,
    certificates: BTreeMap<String, AccessRole>,
}

impl std::fmt::Debug for AccessPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tokens: Vec<(&str, AccessRole)> = self
            .tokens
            .iter()
            .map(|t| (t.name.as_str(), t.role))
            .collect();
        f.debug_struct("AccessPolicy")
            .field("tokens", &tokens)
            .field("certificates", &self.certificates)
            .finish()
    }
}

impl AccessPolicy {
    /// Grants `role` to the token whose SHA-256 digest is `digest` (`name` labels it in logs).
    pub fn add_token(&mut self, name: &str, digest: TokenDigest, role: AccessRole) {
        self.tokens.push(TokenEntry {
            name: name.to_string(),
            digest,
            role,
        });
    }

    /// Grants `role` to connections whose verified client certificate names `name` (a DNS
    /// subject alternative name; the subject's common name is not looked at, as TLS 1.3 name
    /// checks do not).
    pub fn add_certificate(&mut self, name: &str, role: AccessRole) {
        self.certificates.insert(name.to_string(), role);
    }

    /// Tokens in the policy.
    pub fn tokens(&self) -> usize {
        self.tokens.len()
    }

    /// Certificate names in the policy.
    pub fn certificates(&self) -> usize {
        self.certificates.len()
    }

    /// The role `token` maps to, with its entry's name. Every entry is compared (in constant
    /// time); the highest role among matching entries wins.
    fn role_of_token(&self, token: &str) -> Option<(AccessRole, &str)> {
        let digest = token_digest(token);
        let mut found: Option<(AccessRole, &str)> = None;
        for entry in &self.tokens {
            if digests_equal(&entry.digest, &digest) && found.is_none_or(|(r, _)| entry.role > r) {
                found = Some((entry.role, &entry.name));
            }
        }
        found
    }

    /// The highest role among the entries whose name a certificate carries (`is_named`: whether
    /// the verified certificate names it).
    pub fn role_of_certificate(
        &self,
        mut is_named: impl FnMut(&str) -> bool,
    ) -> Option<AccessRole> {
        self.certificates
            .iter()
            .filter(|(name, _)| is_named(name))
            .map(|(_, &role)| role)
            .max()
    }
}

/// What [`Access::judge`] decided about one request.
#[derive(Debug, PartialEq)]
pub(crate) enum Verdict {
    /// Serve it.
    Serve(Request),
    /// A token was accepted (or there is no policy): answer `Authenticated`.
    Authenticated(Response),
    /// Refused: answer the `Error`; `close` the connection after it (too many bad tokens).
    Refused {
        /// The `Error` answer.
        answer: Response,
        /// The metric's label: `unauthenticated`, `forbidden` or `bad_credentials`.
        reason: &'static str,
        /// Close the connection once the answer is sent.
        close: bool,
    },
}

/// What one connection holds.
#[derive(Debug, Default, Clone, Copy)]
struct Holding {
    role: Option<AccessRole>,
    failures: u32,
}

/// Each client connection's role, and the check of every request against it.
#[derive(Debug, Default)]
pub(crate) struct Access {
    policy: Option<AccessPolicy>,
    conns: HashMap<ClientId, Holding>,
}

impl Access {
    /// Checks requests against `policy` (`None`: every request is served).
    pub(crate) fn new(policy: Option<AccessPolicy>) -> Access {
        Access {
            policy,
            conns: HashMap::new(),
        }
    }

    /// Decides what becomes of `request` from `client`. `is_named` tells whether the
    /// connection's verified client certificate names a given name (asked at its first request
    /// only: a connection's certificate does not change).
    pub(crate) fn judge(
        &mut self,
        client: ClientId,
        request: Request,
        is_named: impl FnMut(&str) -> bool,
    ) -> Verdict {
        let Some(policy) = &self.policy else {
            return match request {
                Request::Authenticate { request_id, .. } => {
                    Verdict::Authenticated(Response::Authenticated {
                        request_id,
                        role: AccessRole::Admin,
                    })
                }
                request => Verdict::Serve(request),
            };
        };
        let holding = self.conns.entry(client).or_insert_with(|| Holding {
            role: policy.role_of_certificate(is_named),
            failures: 0,
        });
        let request = match request {
            Request::Authenticate { request_id, token } => {
                return match policy.role_of_token(&token) {
                    Some((role, name)) => {
                        tracing::debug!(%client, token = name, %role, "client authenticated");
                        holding.role = Some(role);
                        Verdict::Authenticated(Response::Authenticated { request_id, role })
                    }
                    None => {
                        holding.failures += 1;
                        Verdict::Refused {
                            answer: Response::Error {
                                request_id,
                                error: ClientError::BadCredentials,
                            },
                            reason: "bad_credentials",
                            close: holding.failures >= AUTH_FAILURES_MAX,
                        }
                    }
                };
            }
            request => request,
        };
        let needed = request
            .role_needed()
            .expect("only Authenticate needs no role");
        let held = holding.role;
        if held.is_some_and(|role| role >= needed) {
            return Verdict::Serve(request);
        }
        Verdict::Refused {
            answer: Response::Error {
                request_id: request.id(),
                error: ClientError::Forbidden { needed, held },
            },
            reason: if held.is_some() {
                "forbidden"
            } else {
                "unauthenticated"
            },
            close: false,
        }
    }

    /// Forgets a closed connection.
    pub(crate) fn closed(&mut self, client: ClientId) {
        self.conns.remove(&client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_round_trips_through_hex_and_matches_its_token_only() {
        let digest = token_digest("s3cret");
        let hex = digest_hex(&digest);
        assert_eq!(hex.len(), 64);
        assert_eq!(parse_digest_hex(&hex), Ok(digest));
        // The SHA-256 of "abc", from FIPS 180-2.
        assert_eq!(
            digest_hex(&token_digest("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(parse_digest_hex("abc").is_err());
        assert!(parse_digest_hex(&"zz".repeat(32)).is_err());
        let mut policy = AccessPolicy::default();
        policy.add_token("ci", digest, AccessRole::Produce);
        assert_eq!(
            policy.role_of_token("s3cret").map(|(r, _)| r),
            Some(AccessRole::Produce)
        );
        assert_eq!(policy.role_of_token("s3cret ").map(|(r, _)| r), None);
    }

    fn authenticate(token: &str) -> Request {
        Request::Authenticate {
            request_id: 1,
            token: token.into(),
        }
    }

    fn append() -> Request {
        Request::Append {
            request_id: 2,
            ack: Default::default(),
            batch: Vec::new(),
        }
    }

    #[test]
    fn a_connection_is_served_up_to_the_role_its_token_maps_to() {
        let mut policy = AccessPolicy::default();
        policy.add_token("reader", token_digest("r"), AccessRole::Read);
        let mut access = Access::new(Some(policy));
        let (client, no_cert) = (ClientId(1), |_: &str| false);
        let status = Request::Status { request_id: 3 };
        let refused = |needed, held, reason| Verdict::Refused {
            answer: Response::Error {
                request_id: if needed == AccessRole::Read { 3 } else { 2 },
                error: ClientError::Forbidden { needed, held },
            },
            reason,
            close: false,
        };
        assert_eq!(
            access.judge(client, status.clone(), no_cert),
            refused(AccessRole::Read, None, "unauthenticated")
        );
        assert_eq!(
            access.judge(client, authenticate("r"), no_cert),
            Verdict::Authenticated(Response::Authenticated {
                request_id: 1,
                role: AccessRole::Read
            })
        );
        assert_eq!(
            access.judge(client, status.clone(), no_cert),
            Verdict::Serve(status)
        );
        assert_eq!(
            access.judge(client, append(), no_cert),
            refused(AccessRole::Produce, Some(AccessRole::Read), "forbidden")
        );
    }

    #[test]
    fn bad_tokens_are_refused_and_the_last_allowed_closes_the_connection() {
        let mut policy = AccessPolicy::default();
        policy.add_token("admin", token_digest("a"), AccessRole::Admin);
        let mut access = Access::new(Some(policy));
        let no_cert = |_: &str| false;
        for attempt in 1..=AUTH_FAILURES_MAX {
            let verdict = access.judge(ClientId(1), authenticate("guess"), no_cert);
            let Verdict::Refused { reason, close, .. } = verdict else {
                panic!("a bad token was not refused: {verdict:?}");
            };
            assert_eq!(reason, "bad_credentials");
            assert_eq!(close, attempt == AUTH_FAILURES_MAX, "attempt {attempt}");
        }
        // Another connection has its own count, and a closed one is forgotten.
        let verdict = access.judge(ClientId(2), authenticate("guess"), no_cert);
        assert!(matches!(verdict, Verdict::Refused { close: false, .. }));
        access.closed(ClientId(2));
        assert!(!access.conns.contains_key(&ClientId(2)));
    }

    #[test]
    fn without_a_policy_everything_is_served_and_any_token_holds_admin() {
        let mut access = Access::new(None);
        let no_cert = |_: &str| false;
        assert_eq!(
            access.judge(ClientId(1), append(), no_cert),
            Verdict::Serve(append())
        );
        assert_eq!(
            access.judge(ClientId(1), authenticate("anything"), no_cert),
            Verdict::Authenticated(Response::Authenticated {
                request_id: 1,
                role: AccessRole::Admin
            })
        );
    }

    #[test]
    fn a_mapped_certificate_needs_no_token() {
        let mut policy = AccessPolicy::default();
        policy.add_certificate("producer.example", AccessRole::Produce);
        let mut access = Access::new(Some(policy));
        assert_eq!(
            access.judge(ClientId(1), append(), |name| name == "producer.example"),
            Verdict::Serve(append())
        );
    }

    #[test]
    fn a_certificate_takes_the_highest_role_any_of_its_names_maps_to() {
        let mut policy = AccessPolicy::default();
        policy.add_certificate("reader.example", AccessRole::Read);
        policy.add_certificate("ops.example", AccessRole::Admin);
        assert_eq!(
            policy.role_of_certificate(|name| ["reader.example", "ops.example"].contains(&name)),
            Some(AccessRole::Admin)
        );
        assert_eq!(policy.role_of_certificate(|name| name == "stranger"), None);
    }
}
