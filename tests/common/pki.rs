//! Certificates made at test time (rcgen): a CA, a replica certificate for `127.0.0.1`
//! that it signed (usable as server and as client certificate, as replicas use it), and
//! an unrelated CA.

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use causalkv::server::tls;
use causalkv::tools::client::Client;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};
use tokio_rustls::TlsAcceptor;

const TIMEOUT: Duration = Duration::from_secs(5);

/// PEM files in a scratch directory: a CA, a replica certificate and key for 127.0.0.1
/// signed by that CA, and a second CA that signed nothing here.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("causalkv-pki")
            .join(format!("{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create scratch directory");

        let (ca_params, ca_key) = ca("causalkv test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign the CA");
        fs::write(dir.join("ca.pem"), ca_cert.pem()).expect("write ca.pem");

        let mut params = CertificateParams::new(vec![]).expect("replica parameters");
        params
            .distinguished_name
            .push(DnType::CommonName, "causalkv test replica");
        params.subject_alt_names = vec![SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST))];
        // Replicas present the same certificate as servers and, to their peers, as clients.
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().expect("replica key");
        let cert = params
            .signed_by(&key, &ca_cert, &ca_key)
            .expect("sign the replica certificate");
        fs::write(dir.join("replica.pem"), cert.pem()).expect("write replica.pem");
        fs::write(dir.join("replica.key"), key.serialize_pem()).expect("write replica.key");

        let (other_params, other_key) = ca("some other CA");
        let other = other_params.self_signed(&other_key).expect("other CA");
        fs::write(dir.join("other-ca.pem"), other.pem()).expect("write other-ca.pem");
        Pki { dir }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The replica certificate (PEM).
    pub fn cert(&self) -> PathBuf {
        self.dir.join("replica.pem")
    }

    /// The replica certificate's key (PEM).
    pub fn key(&self) -> PathBuf {
        self.dir.join("replica.key")
    }

    pub fn other_ca(&self) -> PathBuf {
        self.dir.join("other-ca.pem")
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        let config = tls::server_config(
            &self.dir.join("replica.pem"),
            &self.dir.join("replica.key"),
            None,
        )
        .expect("server configuration");
        TlsAcceptor::from(config)
    }

    pub fn client(&self, ca: &Path) -> Client {
        let config = tls::client_config(ca, None).expect("client configuration");
        Client::with_tls(TIMEOUT, Some(config)).expect("client")
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn ca(name: &str) -> (CertificateParams, KeyPair) {
    let mut params = CertificateParams::new(vec![]).expect("CA parameters");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    (params, KeyPair::generate().expect("CA key"))
}
