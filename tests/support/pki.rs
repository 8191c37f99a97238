//! A test certificate authority (rcgen) that writes PEM files and makes rustls configs.

use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::CertificateDer;
use tokio_rustls::TlsConnector;

/// A test CA and the files of certificates it signed.
pub struct Pki {
    pub ca: CertificateDer<'static>,
    pub issuer: CertifiedIssuer<'static, KeyPair>,
    pub dir: PathBuf,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // A name of its own: two test CAs must not pass for each other's issuer.
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("Steelyard test CA {name}"));
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA");
        let dir = std::env::temp_dir().join(format!("steelyard-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        Pki {
            ca: issuer.der().clone(),
            issuer,
            dir,
        }
    }

    /// Writes `FILE.pem` and `FILE.key` for a certificate covering `names`; returns its DER.
    pub fn issue(&self, file: &str, names: &[&str]) -> CertificateDer<'static> {
        self.issue_with(file, names, |_| {})
    }

    /// [`Pki::issue`] with the certificate's parameters adjusted by `adjust`.
    pub fn issue_with(
        &self,
        file: &str,
        names: &[&str],
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> CertificateDer<'static> {
        let key = KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("params");
        adjust(&mut params);
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        std::fs::write(self.dir.join(format!("{file}.pem")), cert.pem()).expect("write cert");
        std::fs::write(self.dir.join(format!("{file}.key")), key.serialize_pem()).expect("write key");
        cert.der().clone()
    }

    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    /// A client trusting this CA, offering `alpn`.
    pub fn connector(&self, alpn: &[&[u8]]) -> TlsConnector {
        self.connector_as(alpn, None)
    }

    /// [`Pki::connector`] that presents a client certificate with this common name, if any.
    pub fn connector_as(&self, alpn: &[&[u8]], client: Option<&str>) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).expect("root");
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
        let mut config = match client {
            None => builder.with_no_client_auth(),
            Some(name) => {
                let key = KeyPair::generate().expect("key");
                let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
                params.distinguished_name.push(rcgen::DnType::CommonName, name);
                let cert = params.signed_by(&key, &self.issuer).expect("sign");
                let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
                builder
                    .with_client_auth_cert(vec![cert.der().clone()], key)
                    .expect("client auth")
            }
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsConnector::from(Arc::new(config))
    }
}

impl Pki {
    /// A server config presenting certificate `file` (written by [`Pki::issue`]), offering
    /// `alpn`.
    pub fn server_config(&self, file: &str, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        let (chain, key) = self.chain_and_key(file);
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .expect("server config");
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// [`Pki::server_config`] that requires a client certificate signed by `clients` (mutual
    /// TLS).
    pub fn server_config_requiring_clients(
        &self,
        file: &str,
        alpn: &[&[u8]],
        clients: &Pki,
    ) -> Arc<rustls::ServerConfig> {
        let (chain, key) = self.chain_and_key(file);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(clients.ca.clone()).expect("client root");
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                .build()
                .expect("client verifier");
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .expect("server config");
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// The chain and key of certificate `file` (written by [`Pki::issue`]).
    fn chain_and_key(&self, file: &str) -> (Vec<CertificateDer<'static>>, rustls::pki_types::PrivateKeyDer<'static>) {
        use rustls::pki_types::pem::PemObject;
        let chain = CertificateDer::pem_file_iter(self.dir.join(format!("{file}.pem")))
            .expect("cert file")
            .collect::<Result<Vec<_>, _>>()
            .expect("certs");
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(self.dir.join(format!("{file}.key"))).expect("key");
        (chain, key)
    }

    /// Writes the CA certificate as `ca.pem`; returns its path.
    pub fn write_ca(&self) -> String {
        let path = self.dir.join("ca.pem");
        std::fs::write(&path, self.issuer.pem()).expect("write ca");
        path.display().to_string()
    }
}
