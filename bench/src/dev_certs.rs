//! Throwaway certificates for local clusters and tests: a CA made on the spot and, per node, a
//! certificate naming it (`raftline-node-N`, for both TLS ends), so that `raftline dev`, the
//! benchmarks and the tests run the peer port's mutual TLS, the path an operator runs. Never for
//! production: the CA key lies beside the certificates (tools/deploy/README.md says how to make
//! real ones).

use std::path::{Path, PathBuf};

use anyhow::Context;
use raftline_netio::net::{node_name, PeerTlsFiles};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A certificate authority that exists for one cluster's run.
pub struct DevCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its private key, PEM-encoded.
pub struct CertPem {
    /// The certificate.
    pub cert: String,
    /// Its private key (PKCS#8).
    pub key: String,
}

impl DevCa {
    /// A fresh CA called `name` (ECDSA P-256).
    pub fn new(name: &str) -> anyhow::Result<DevCa> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        Ok(DevCa { issuer })
    }

    /// The CA's certificate, PEM-encoded (what peers trust).
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for node `id`: DNS name `raftline-node-N`, usable as TLS server and client.
    pub fn node_cert(&self, id: u64) -> anyhow::Result<CertPem> {
        let name = node_name(id);
        let mut params = CertificateParams::new(vec![name.clone()])?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertPem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }

    /// Writes node `id`'s certificate and key and this CA's certificate into `dir` (created if
    /// missing) as [`node_files`] names them.
    pub fn write_node_files(&self, dir: &Path, id: u64) -> anyhow::Result<PeerTlsFiles> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let files = node_files(dir, id);
        let pem = self.node_cert(id)?;
        write(&files.cert, &pem.cert)?;
        write(&files.key, &pem.key)?;
        write(&files.trusted_ca, &self.cert_pem())?;
        Ok(files)
    }
}

/// Where node `id`'s files are in `dir`: `node-N.pem`, `node-N.key`, and `ca.pem` (shared).
pub fn node_files(dir: &Path, id: u64) -> PeerTlsFiles {
    PeerTlsFiles {
        cert: dir.join(format!("node-{id}.pem")),
        key: dir.join(format!("node-{id}.key")),
        trusted_ca: dir.join("ca.pem"),
    }
}

/// Writes `text` to `path` whole: through a temporary file renamed into place, so a node
/// starting (or reloading) meanwhile never reads a truncated file (the CA bundle is written
/// again for every node while earlier ones may be starting).
pub fn write(path: &PathBuf, text: &str) -> anyhow::Result<()> {
    let mut tmp = path.clone().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

/// The `raftline server` flags that name `files`.
pub fn server_args(files: &PeerTlsFiles) -> Vec<String> {
    let path = |p: &Path| p.display().to_string();
    vec![
        "--peer-cert-file".into(),
        path(&files.cert),
        "--peer-key-file".into(),
        path(&files.key),
        "--peer-trusted-ca-file".into(),
        path(&files.trusted_ca),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_files_load_as_peer_tls_and_name_their_node() {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::new("test CA").unwrap();
        let files = ca.write_node_files(dir.path(), 2).unwrap();
        files.load().unwrap();
        let cert = std::fs::read_to_string(&files.cert).unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
        let key = std::fs::read_to_string(&files.key).unwrap();
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
        assert_eq!(
            server_args(&files)[1],
            dir.path().join("node-2.pem").display().to_string()
        );
    }
}
