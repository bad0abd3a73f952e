//! TLS with rustls (ring provider; no OpenSSL, so the static build keeps working).
//!
//! One place builds every TLS configuration the binary uses:
//!
//! * [`server_config`]: a replica serving HTTPS with `--tls-cert`/`--tls-key`. With
//!   `--tls-ca` it also asks connecting parties for a certificate and verifies any it gets
//!   against that CA; clients may still connect without one (the contract's routes stay
//!   open), but the internal endpoints then require a verified certificate, which makes
//!   replica-to-replica traffic mutual TLS.
//! * [`client_config`]: anything that connects to replicas over `https://`: the CA that
//!   signed the replicas' certificates, and optionally the certificate a replica presents
//!   to its peers.
//! * [`connector`]: the hyper connector that speaks `http://` and, given a client
//!   configuration, `https://`.
//!
//! Certificates name replicas by IP address (an `IP:PORT` is a replica's identity), so
//! they need IP subject alternative names.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Errors in loading certificates and keys.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{0} holds no PEM certificate")]
    NoCertificate(PathBuf),
    #[error("{0} holds no PEM private key")]
    NoKey(PathBuf),
    #[error("invalid TLS configuration: {0}")]
    Invalid(String),
}

/// The crypto provider every configuration uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| read_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_error(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_path_buf()));
    }
    Ok(certs)
}

/// The first private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoKey(path.to_path_buf()),
        other => read_error(path, other),
    })
}

fn read_error(path: &Path, error: impl std::fmt::Display) -> TlsError {
    TlsError::Read {
        path: path.to_path_buf(),
        reason: error.to_string(),
    }
}

fn roots(ca: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots
            .add(cert)
            .map_err(|e| TlsError::Invalid(format!("{}: {e}", ca.display())))?;
    }
    Ok(Arc::new(roots))
}

/// The server side of a replica: its certificate and key, and with `ca` the verifier of
/// the certificates its peers present (optional for clients, see the module doc).
pub fn server_config(
    cert: &Path,
    key: &Path,
    ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid(e.to_string()))?;
    let builder = match ca {
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider())
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::Invalid(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .map_err(|e| TlsError::Invalid(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client that trusts the replicas whose certificates `ca` signed and, with
/// `identity` (certificate and key files), presents that certificate when asked.
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid(e.to_string()))?
        .with_root_certificates(roots(ca)?);
    let config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|e| TlsError::Invalid(e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// A connector for `http://` and, when `tls` is given, `https://` URLs.
pub fn connector(
    mut http: HttpConnector,
    tls: Option<Arc<ClientConfig>>,
) -> HttpsConnector<HttpConnector> {
    http.enforce_http(false);
    http.set_nodelay(true);
    let tls = tls.unwrap_or_else(|| {
        // Without a CA nothing is trusted: an `https://` URL fails its handshake with a
        // clear error instead of silently trusting anyone.
        Arc::new(
            ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .expect("the ring provider supports the default protocol versions")
                .with_root_certificates(RootCertStore::empty())
                .with_no_client_auth(),
        )
    });
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(Arc::unwrap_or_clone(tls))
        .https_or_http()
        .enable_http1()
        .wrap_connector(http)
}

/// The URL of `path` at `replica`, which is `IP:PORT` (plain HTTP) or a URL base such as
/// `https://IP:PORT`.
pub fn url(replica: &str, path: &str) -> String {
    let base = replica.trim_end_matches('/');
    if base.starts_with("http://") || base.starts_with("https://") {
        format!("{base}{path}")
    } else {
        format!("http://{base}{path}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_a_scheme_and_default_to_http() {
        assert_eq!(url("127.0.0.1:1", "/view"), "http://127.0.0.1:1/view");
        assert_eq!(
            url("https://127.0.0.1:1/", "/view"),
            "https://127.0.0.1:1/view"
        );
        assert_eq!(url("http://[::1]:2", "/kvs/a"), "http://[::1]:2/kvs/a");
    }
}
