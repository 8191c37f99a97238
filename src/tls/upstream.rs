//! TLS from Steelyard to a pool's backends: a rustls client config per pool.
//!
//! Certificates are verified against the pool's `tls.ca` file, or else the operating system's
//! trusted roots (`rustls-native-certs`: the store operators already manage, private CAs
//! installed system-wide included). The name sent as SNI and verified is the pool's
//! `tls.server_name`, else the backend's host name, else its IP address. ALPN offers only the
//! pool's protocol (`h2` or `http/1.1`), and a backend that does not agree fails the
//! connection rather than silently speaking something else. `verify = false` accepts any
//! certificate but still checks that the handshake was signed by its key. A pool's `tls.cert`
//! and `tls.key` are presented to backends that ask for a client certificate (mutual TLS),
//! loaded and checked like a listener's certificates. TLS 1.2 and 1.3 with the ring provider,
//! like the listeners; session resumption on (rustls's in-memory cache), so pooled reconnects
//! skip the full handshake.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

use super::{load, provider, read_roots, TlsError};
use crate::config::{BackendConfig, UpstreamProtocol, UpstreamTlsConfig};

/// A pool's client config, with what `check` and reloads should warn about.
#[derive(Debug)]
pub struct Built {
    /// The config connections to the pool's backends handshake with.
    pub config: Arc<ClientConfig>,
    /// Settings that weaken security (`verify = false`) and a client certificate backends may
    /// refuse (expired, not yet valid, expiring soon).
    pub warnings: Vec<String>,
}

/// The rustls client config for a pool with TLS settings `tls` speaking `protocol`.
pub fn client_config(tls: &UpstreamTlsConfig, protocol: UpstreamProtocol) -> Result<Built, TlsError> {
    let error = |message: String| TlsError {
        at: tls.at.clone(),
        key: tls.key_name.clone(),
        message,
    };
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| error(format!("cannot build the TLS config: {e}")))?;
    let mut warnings = Vec::new();
    let client_certificate = match &tls.client_certificate {
        None => None,
        Some(files) => {
            let loaded = load(files, &provider)?;
            warnings.extend(loaded.warning);
            Some(Arc::new(ClientCertificate(loaded.key)))
        }
    };
    let builder = if tls.verify {
        let roots = match &tls.ca {
            Some(ca) => read_roots(ca).map_err(error)?,
            None => system_roots().map_err(error)?,
        };
        builder.with_root_certificates(roots)
    } else {
        warnings.push(format!(
            "{}: {}.verify = false: backends' certificates are not verified, so anyone on the path can impersonate them",
            tls.at, tls.key_name
        ));
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(Arc::clone(&provider))))
    };
    let mut config = match client_certificate {
        Some(resolver) => builder.with_client_cert_resolver(resolver),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![match protocol {
        UpstreamProtocol::H2 | UpstreamProtocol::H2c => b"h2".to_vec(),
        UpstreamProtocol::Http1 => b"http/1.1".to_vec(),
    }];
    Ok(Built {
        config: Arc::new(config),
        warnings,
    })
}

/// The operating system's trusted root certificates.
fn system_roots() -> Result<rustls::RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _unusable) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map_or_else(|| "none found".to_owned(), ToString::to_string);
        return Err(format!(
            "no trusted root certificates in the system store ({why}); install them (Debian: ca-certificates) or set ca"
        ));
    }
    Ok(roots)
}

/// The name `backend` is verified against and sent as SNI: the pool's `server_name`, else the
/// host name the backend was given by, else its IP address (verified against the
/// certificate's IP SANs; no SNI is sent for an address).
pub fn server_name(tls: &UpstreamTlsConfig, backend: &BackendConfig) -> ServerName<'static> {
    let host = backend.dns_name.as_deref().map(|hostport| {
        let host = hostport.rsplit_once(':').map_or(hostport, |(h, _)| h);
        host.trim_start_matches('[').trim_end_matches(']')
    });
    tls.server_name
        .as_deref()
        .or(host)
        .and_then(|name| ServerName::try_from(name.to_owned()).ok())
        .unwrap_or_else(|| ServerName::IpAddress(backend.address.ip().into()))
}

/// The pool's client certificate, presented whenever a backend asks for one (whatever CAs it
/// hints it trusts: the backend decides, and says so by refusing the handshake).
#[derive(Debug)]
struct ClientCertificate(Arc<CertifiedKey>);

impl ResolvesClientCert for ClientCertificate {
    fn resolve(&self, _root_hint_subjects: &[&[u8]], _sigschemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// `verify = false`: any certificate is accepted, but the handshake must still be signed by
/// the key of the certificate the backend presented.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(server_name: Option<&str>) -> UpstreamTlsConfig {
        UpstreamTlsConfig {
            server_name: server_name.map(str::to_owned),
            ca: None,
            verify: true,
            client_certificate: None,
            at: "t.toml:1:1".into(),
            key_name: "pools.p.tls".into(),
        }
    }

    fn backend(address: &str, dns_name: Option<&str>) -> BackendConfig {
        BackendConfig {
            address: address.parse().expect("address"),
            weight: 1,
            dns_name: dns_name.map(str::to_owned),
            backup: false,
        }
    }

    #[test]
    fn the_verified_name_is_the_setting_then_the_host_then_the_address() {
        let by_name = backend("127.0.0.1:8443", Some("api.internal:8443"));
        let by_ip = backend("[::1]:8443", None);
        assert_eq!(server_name(&tls(Some("svc.example")), &by_name).to_str(), "svc.example");
        assert_eq!(server_name(&tls(None), &by_name).to_str(), "api.internal");
        assert_eq!(server_name(&tls(None), &by_ip).to_str(), "::1");
    }

    #[test]
    fn a_missing_ca_file_is_located() {
        let mut t = tls(None);
        t.ca = Some("/nonexistent/ca.pem".into());
        let e = client_config(&t, UpstreamProtocol::Http1).expect_err("missing file");
        let text = e.to_string();
        assert!(
            text.starts_with("t.toml:1:1: pools.p.tls: cannot read CA certificates from /nonexistent/ca.pem"),
            "{text}"
        );
    }
}
