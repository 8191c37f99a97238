//! TLS termination: a listener's certificates, chosen by SNI, as a rustls server config.
//! TLS to backends is in [`upstream`].
//!
//! Every certificate of a listener's `tls.certificates` is loaded and checked (the files read,
//! the key matching the certificate, its DNS names read from the SANs); a name two
//! certificates both claim is an error. SNI picks the certificate: an exact name first, then a
//! wildcard (`*.example.com` covers `a.example.com`, one label only), else the first
//! certificate, which also serves clients that send no SNI. ALPN offers `h2` and `http/1.1`;
//! TLS 1.2 and 1.3 only, with rustls's ring provider and its safe cipher suites; session
//! tickets are on. The config is built on the control thread, at start and on every reload;
//! connections keep the one they started with.

pub mod upstream;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig};
use rustls::sign::CertifiedKey;

use crate::config::{CertificateFiles, ClientAuth, TlsConfig};

/// Why a listener's TLS config could not be built. Displays as `FILE:LINE:COL: key: why`.
#[derive(Debug, thiserror::Error)]
#[error("{at}: {key}: {message}")]
pub struct TlsError {
    /// Where the certificate entry is in the config file.
    pub at: String,
    /// Its key, e.g. `listeners[0].tls.certificates[1]`.
    pub key: String,
    /// What is wrong, naming the file.
    pub message: String,
}

impl TlsError {
    fn of(files: &CertificateFiles, message: String) -> TlsError {
        TlsError {
            at: files.at.clone(),
            key: files.key_name.clone(),
            message,
        }
    }
}

/// The provider every TLS config uses: ring (builds with a C compiler alone).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A loaded certificate with the DNS names it covers (lowercase; wildcards as `*.suffix`).
#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    names: Vec<String>,
    /// Why it may not work for clients (expired, not yet valid, expiring soon).
    warning: Option<String>,
}

/// Certificates expiring sooner than this get a warning.
const EXPIRY_WARNING_DAYS: i64 = 14;

/// A warning about `der`'s validity period, if it is outside it or close to its end.
fn validity_warning(der: &CertificateDer<'_>, now_unix: i64) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let validity = cert.validity();
    let date = |t: &x509_parser::time::ASN1Time| {
        let d = t.to_datetime();
        format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
    };
    let not_after = validity.not_after.timestamp();
    if now_unix > not_after {
        return Some(format!("expired on {}", date(&validity.not_after)));
    }
    if now_unix < validity.not_before.timestamp() {
        return Some(format!("not valid before {}", date(&validity.not_before)));
    }
    let days = (not_after - now_unix) / 86_400;
    (days < EXPIRY_WARNING_DAYS).then(|| format!("expires in {days} days, on {}", date(&validity.not_after)))
}

fn load(files: &CertificateFiles, provider: &CryptoProvider) -> Result<Loaded, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| {
            TlsError::of(
                files,
                format!("cannot read certificates from {}: {e}", files.cert.display()),
            )
        })?;
    if chain.is_empty() {
        return Err(TlsError::of(
            files,
            format!("{} holds no PEM certificate", files.cert.display()),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        TlsError::of(
            files,
            format!("cannot read a private key from {}: {e}", files.key.display()),
        )
    })?;
    let names: Vec<String> = webpki::EndEntityCert::try_from(&chain[0])
        .map_err(|e| {
            TlsError::of(
                files,
                format!("{}: the first certificate does not parse: {e:?}", files.cert.display()),
            )
        })?
        .valid_dns_names()
        .map(str::to_ascii_lowercase)
        .collect();
    let mismatch = || {
        TlsError::of(
            files,
            format!(
                "the key in {} does not belong to {}",
                files.key.display(),
                files.cert.display()
            ),
        )
    };
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => mismatch(),
        e => TlsError::of(files, format!("{}: unusable key: {e}", files.key.display())),
    })?;
    // `from_der` lets a key whose public half it cannot derive pass: check it explicitly.
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => return Err(mismatch()),
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let warning = certified
        .end_entity_cert()
        .ok()
        .and_then(|leaf| validity_warning(leaf, now))
        .map(|why| format!("{}: {}: {} {why}", files.at, files.key_name, files.cert.display()));
    Ok(Loaded {
        key: Arc::new(certified),
        names,
        warning,
    })
}

/// Chooses the certificate for a client by its SNI.
#[derive(Debug)]
pub struct CertStore {
    /// Certificates clients may refuse, as `FILE:LINE:COL: key: file why`.
    pub warnings: Vec<String>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` stored under `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl CertStore {
    /// Loads every certificate of `config`; the first is the default.
    pub fn load(config: &TlsConfig) -> Result<CertStore, TlsError> {
        let provider = provider();
        let mut exact: HashMap<String, (Arc<CertifiedKey>, usize)> = HashMap::new();
        let mut wildcard: HashMap<String, (Arc<CertifiedKey>, usize)> = HashMap::new();
        let mut default = None;
        let mut warnings = Vec::new();
        for (i, files) in config.certificates.iter().enumerate() {
            let loaded = load(files, &provider)?;
            warnings.extend(loaded.warning.clone());
            for name in &loaded.names {
                let (table, key) = match name.strip_prefix("*.") {
                    Some(parent) => (&mut wildcard, parent.to_owned()),
                    None => (&mut exact, name.clone()),
                };
                if let Some((_, earlier)) = table.get(&key) {
                    if *earlier != i {
                        return Err(TlsError::of(
                            files,
                            format!(
                                "{} claims {name:?}, which {} already serves",
                                files.cert.display(),
                                config.certificates[*earlier].key_name
                            ),
                        ));
                    }
                }
                table.insert(key, (Arc::clone(&loaded.key), i));
            }
            default.get_or_insert(loaded.key);
        }
        let Some(default) = default else {
            return Err(TlsError {
                at: String::new(),
                key: "tls.certificates".into(),
                message: "no certificate".into(),
            });
        };
        Ok(CertStore {
            warnings,
            exact: exact.into_iter().map(|(k, (v, _))| (k, v)).collect(),
            wildcard: wildcard.into_iter().map(|(k, (v, _))| (k, v)).collect(),
            default,
        })
    }

    /// The certificate for server name `sni` (already lowercase, as rustls hands it over).
    pub fn choose(&self, sni: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = sni else { return &self.default };
        if let Some(key) = self.exact.get(name) {
            return key;
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .unwrap_or(&self.default)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(self.choose(hello.server_name())))
    }
}

/// The verifier of client certificates against `auth`'s CAs.
fn client_verifier(auth: &ClientAuth) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let error = |message: String| TlsError {
        at: auth.at.clone(),
        key: "tls.client_ca".into(),
        message,
    };
    let roots = read_roots(&auth.ca).map_err(error)?;
    let builder = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    let builder = if auth.required {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    builder
        .build()
        .map_err(|e| error(format!("cannot verify client certificates: {e}")))
}

/// The CA certificates in the PEM file at `path`; `Err` says what is wrong, naming the file.
fn read_roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read CA certificates from {}: {e}", path.display()))?;
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(roots)
}

/// The subject of a verified client certificate (`CN=client-1, O=...`), for the access log.
pub fn client_subject(certs: Option<&[CertificateDer<'_>]>) -> Option<String> {
    let leaf = certs?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    Some(cert.subject().to_string())
}

/// A listener's TLS config, with what `check` and reloads should warn about.
#[derive(Debug)]
pub struct Built {
    /// The config new connections handshake with.
    pub config: Arc<ServerConfig>,
    /// Certificates clients may refuse (expired, not yet valid, expiring within 14 days).
    pub warnings: Vec<String>,
}

/// The rustls server config of a listener with `config`: certificates loaded and checked,
/// ALPN `h2` then `http/1.1`, TLS 1.2 and 1.3, session tickets on.
pub fn server_config(config: &TlsConfig) -> Result<Built, TlsError> {
    let mut store = CertStore::load(config)?;
    let warnings = std::mem::take(&mut store.warnings);
    let located = |message: String| TlsError {
        at: config.certificates.first().map(|c| c.at.clone()).unwrap_or_default(),
        key: "tls".into(),
        message,
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| located(format!("cannot build the TLS config: {e}")))?;
    let builder = match &config.client_auth {
        None => builder.with_no_client_auth(),
        Some(auth) => builder.with_client_cert_verifier(client_verifier(auth)?),
    };
    let mut server = builder.with_cert_resolver(Arc::new(store));
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    server.ticketer =
        rustls::crypto::ring::Ticketer::new().map_err(|e| located(format!("cannot start session tickets: {e}")))?;
    Ok(Built {
        config: Arc::new(server),
        warnings,
    })
}
