//! `raftline server --auth-file`: the TOML file of who may do what on the client port, read into
//! the node's [`AccessPolicy`]; and `raftline auth hash-token`, which makes the digest a token
//! entry holds (the file never holds a token itself).
//!
//! ```toml
//! [[token]]
//! name = "ci-producer"     # labels the token in logs
//! sha256 = "<64 hex digits: `raftline auth hash-token`>"
//! role = "produce"         # read < produce < admin
//!
//! [[certificate]]
//! name = "consumer.example.com"  # a DNS name a verified client certificate carries (SAN)
//! role = "read"
//! ```

use std::io::BufRead;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use raftline_netio::client_proto::AccessRole;
use raftline_node::access::{digest_hex, parse_digest_hex, token_digest, AccessPolicy};
use serde::Deserialize;

/// The file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
    #[serde(default)]
    certificate: Vec<CertificateEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    sha256: String,
    role: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CertificateEntry {
    name: String,
    role: String,
}

/// Reads the auth file at `path`.
pub fn read_auth_file(path: &Path) -> anyhow::Result<AccessPolicy> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the auth file {}", path.display()))?;
    parse_auth_file(&text).with_context(|| format!("in the auth file {}", path.display()))
}

fn parse_auth_file(text: &str) -> anyhow::Result<AccessPolicy> {
    let file: AuthFile = toml::from_str(text)?;
    let role = |name: &str, role: &str| -> anyhow::Result<AccessRole> {
        role.parse().with_context(|| format!("entry {name:?}"))
    };
    let mut policy = AccessPolicy::default();
    for entry in &file.token {
        let digest = parse_digest_hex(&entry.sha256)
            .map_err(anyhow::Error::msg)
            .with_context(|| {
                format!(
                    "token {:?}: sha256 must be the token's digest (make it with `raftline auth \
                     hash-token`), never the token",
                    entry.name
                )
            })?;
        policy.add_token(&entry.name, digest, role(&entry.name, &entry.role)?);
    }
    for entry in &file.certificate {
        policy.add_certificate(&entry.name, role(&entry.name, &entry.role)?);
    }
    if policy.tokens() == 0 && policy.certificates() == 0 {
        bail!("it grants nothing: no [[token]] and no [[certificate]] entry (every request would be refused)");
    }
    Ok(policy)
}

/// `raftline auth ...`.
#[derive(Subcommand)]
pub enum AuthCommand {
    /// Print the SHA-256 digest of a token, for a `[[token]]` entry of an auth file.
    HashToken(HashTokenArgs),
}

/// `raftline auth hash-token`.
#[derive(Args)]
pub struct HashTokenArgs {
    /// The token. Omit it to read it from the first line of stdin (keeps it out of the shell
    /// history and the process list).
    token: Option<String>,
}

/// Runs `raftline auth ...`.
pub fn run(command: AuthCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuthCommand::HashToken(args) => {
            let token = match args.token {
                Some(token) => token,
                None => {
                    let mut line = String::new();
                    std::io::stdin().lock().read_line(&mut line)?;
                    line.trim_end_matches(['\n', '\r']).to_string()
                }
            };
            if token.is_empty() {
                bail!("the token is empty");
            }
            println!("{}", digest_hex(&token_digest(&token)));
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_auth_file_with_tokens_and_certificates_parses() {
        let digest = digest_hex(&token_digest("t"));
        let text = format!(
            "[[token]]\nname = \"ci\"\nsha256 = \"{digest}\"\nrole = \"produce\"\n\
             [[certificate]]\nname = \"ops.example\"\nrole = \"admin\"\n"
        );
        let policy = parse_auth_file(&text).unwrap();
        assert_eq!((policy.tokens(), policy.certificates()), (1, 1));
        assert_eq!(
            policy.role_of_certificate(|name| name == "ops.example"),
            Some(AccessRole::Admin)
        );
    }

    #[test]
    fn a_plaintext_token_an_unknown_role_or_an_empty_file_is_refused() {
        let plain = "[[token]]\nname = \"ci\"\nsha256 = \"hunter2\"\nrole = \"read\"\n";
        let e = format!("{:#}", parse_auth_file(plain).unwrap_err());
        assert!(e.contains("never the token"), "{e}");
        let digest = digest_hex(&token_digest("t"));
        let role = format!("[[token]]\nname = \"ci\"\nsha256 = \"{digest}\"\nrole = \"root\"\n");
        let e = format!("{:#}", parse_auth_file(&role).unwrap_err());
        assert!(e.contains("unknown role \"root\""), "{e}");
        let e = format!("{:#}", parse_auth_file("").unwrap_err());
        assert!(e.contains("grants nothing"), "{e}");
    }
}
