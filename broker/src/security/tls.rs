//! TLS for every listener: rustls over glommio's streams (futures-rustls), the
//! certificate reloaded from its files without a restart, and client certificates
//! (mTLS) whose subject becomes the connection's principal.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use futures_rustls::TlsAcceptor;
use glommio::net::TcpStream;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

use weir_client::TlsClient;
use weir_client::io::Stream;

use super::Principal;

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether clients present certificates (Kafka's `ssl.client.auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    None,
    Requested,
    Required,
}

impl ClientAuth {
    pub fn parse(text: &str) -> Option<ClientAuth> {
        match text {
            "none" => Some(ClientAuth::None),
            "requested" => Some(ClientAuth::Requested),
            "required" => Some(ClientAuth::Required),
            _ => None,
        }
    }
}

/// What `TlsServer::new` needs.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The CAs client certificates must chain to; needed unless `client_auth` is none.
    pub client_ca_file: Option<PathBuf>,
    pub client_auth: ClientAuth,
}

/// The broker's TLS side, shared by every shard and listener.
pub struct TlsServer {
    acceptor: TlsAcceptor,
    certificate: Arc<ReloadingCertificate>,
    /// The CAs client certificates chain to, which other brokers' certificates do too.
    client_ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServer")
            .field("certificate", &self.certificate)
            .finish_non_exhaustive()
    }
}

impl TlsServer {
    pub fn new(settings: &TlsSettings) -> anyhow::Result<TlsServer> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certificate = Arc::new(ReloadingCertificate::load(
            provider.clone(),
            &settings.cert_file,
            &settings.key_file,
        )?);
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        let verifier = match (settings.client_auth, &settings.client_ca_file) {
            (ClientAuth::None, _) => WebPkiClientVerifier::no_client_auth(),
            (_, None) => anyhow::bail!("tls_client_auth needs tls_client_ca_file"),
            (auth, Some(ca_file)) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in read_certificates(ca_file)? {
                    roots
                        .add(cert)
                        .with_context(|| format!("a CA certificate in {}", ca_file.display()))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
                let verifier = if auth == ClientAuth::Requested {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                verifier
                    .build()
                    .context("the client certificate verifier")?
            }
        };
        let config = builder
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(certificate.clone());
        Ok(TlsServer {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            certificate,
            client_ca_file: settings.client_ca_file.clone(),
        })
    }

    /// Runs the server side of a handshake; the principal is the client certificate's
    /// subject, or anonymous without one.
    pub async fn accept(&self, stream: TcpStream) -> std::io::Result<(Stream, Principal)> {
        let handshake = self.acceptor.accept(stream);
        let stream = futures_lite::future::or(handshake, async {
            glommio::timer::sleep(HANDSHAKE_TIMEOUT).await;
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            ))
        })
        .await?;
        let principal = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|cert| subject_name(cert))
            .map_or_else(Principal::anonymous, Principal::user);
        Ok((Stream::Tls(Box::new(stream.into())), principal))
    }

    /// What this broker dials other brokers with: their certificates checked against
    /// `tls_client_ca_file`, and this broker's own certificate presented (reloaded with
    /// it), so that they know it for a broker by its subject.
    pub fn peer_client(&self) -> anyhow::Result<TlsClient> {
        let ca_file = self.client_ca_file.as_deref().context(
            "brokers dial each other over SSL and check each other's certificates: set \
             tls_client_ca_file",
        )?;
        TlsClient::with_resolver(
            weir_client::tls::provider(),
            ca_file,
            self.certificate.clone(),
        )
        .context("the TLS client brokers dial each other with")
    }

    /// The principal this broker's certificate makes it on other brokers' listeners.
    pub fn principal(&self) -> Option<String> {
        let key = self.certificate.key()?;
        let subject = subject_name(key.end_entity_cert().ok()?)?;
        Some(Principal::user(subject).to_string())
    }

    /// Reloads the certificate if its files changed; keeps the old one (and says so) if
    /// the new files do not load.
    pub fn reload_if_changed(&self) {
        self.certificate.reload_if_changed();
    }
}

/// How this broker dials the others on each protocol: over TLS with its own
/// certificate (the listeners brokers reach each other on are SSL), or in plaintext.
#[derive(Debug, Clone, Default)]
pub struct PeerTls {
    pub native: Option<Arc<TlsClient>>,
    pub kafka: Option<Arc<TlsClient>>,
}

impl PeerTls {
    /// For a broker whose `native_listen` and `kafka_listen` are SSL as `native` and
    /// `kafka` say (the other brokers' are served alike).
    pub fn new(server: Option<&TlsServer>, native: bool, kafka: bool) -> anyhow::Result<PeerTls> {
        if !native && !kafka {
            return Ok(PeerTls::default());
        }
        let server = server.context("brokers dial each other over SSL: set tls_cert_file")?;
        let client = Arc::new(server.peer_client()?);
        Ok(PeerTls {
            native: native.then(|| client.clone()),
            kafka: kafka.then_some(client),
        })
    }
}

/// The subject of a DER certificate as Kafka prints a TLS principal's name (RFC 2253:
/// the last RDN first, `CN=writer,OU=apps,O=weir`).
pub fn subject_name(der: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let registry = x509_parser::objects::oid_registry();
    let rdns: Vec<String> = cert
        .subject()
        .iter_rdn()
        .map(|rdn| {
            rdn.iter()
                .map(|attribute| {
                    let kind = x509_parser::objects::oid2abbrev(attribute.attr_type(), registry)
                        .map_or_else(|_| attribute.attr_type().to_id_string(), str::to_string);
                    let value = attribute
                        .as_str()
                        .map_or_else(|_| "?".to_string(), escape_rdn_value);
                    format!("{kind}={value}")
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    Some(rdns.into_iter().rev().collect::<Vec<_>>().join(","))
}

/// RFC 2253's escapes for an attribute value.
fn escape_rdn_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for (index, c) in value.chars().enumerate() {
        let leading = index == 0 && (c == ' ' || c == '#');
        let trailing = index + 1 == value.chars().count() && c == ' ';
        if leading || trailing || matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn read_certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    Ok(weir_client::tls::read_certificates(path)?)
}

/// The server certificate, reloaded when its files change (checked by
/// `reload_if_changed`, which the broker calls every `tls_reload_interval_ms`).
/// Handshakes in progress keep the key they started with.
struct ReloadingCertificate {
    provider: Arc<CryptoProvider>,
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Loaded>,
}

struct Loaded {
    key: Arc<CertifiedKey>,
    modified: (Option<SystemTime>, Option<SystemTime>),
}

impl std::fmt::Debug for ReloadingCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCertificate")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

impl ReloadingCertificate {
    fn load(
        provider: Arc<CryptoProvider>,
        cert_file: &Path,
        key_file: &Path,
    ) -> anyhow::Result<ReloadingCertificate> {
        let loaded = load_key(&provider, cert_file, key_file)?;
        Ok(ReloadingCertificate {
            provider,
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            current: RwLock::new(loaded),
        })
    }

    fn key(&self) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|current| current.key.clone())
    }

    fn reload_if_changed(&self) {
        let modified = (modified(&self.cert_file), modified(&self.key_file));
        let changed = self
            .current
            .read()
            .map_or(true, |current| current.modified != modified);
        if !changed {
            return;
        }
        match load_key(&self.provider, &self.cert_file, &self.key_file) {
            Ok(loaded) => {
                tracing::info!(cert = %self.cert_file.display(), "TLS certificate reloaded");
                if let Ok(mut current) = self.current.write() {
                    *current = loaded;
                }
            }
            Err(error) => {
                // Mid-rotation (the certificate written, the key not yet) or broken:
                // keep serving with the old pair and look again next time.
                tracing::warn!(error = format!("{error:#}"), "TLS certificate not reloaded");
                if let Ok(mut current) = self.current.write() {
                    current.modified = modified;
                }
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.key()
    }
}

/// The same certificate, presented when this broker dials another.
impl ResolvesClientCert for ReloadingCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.key()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn load_key(
    provider: &CryptoProvider,
    cert_file: &Path,
    key_file: &Path,
) -> anyhow::Result<Loaded> {
    let modified = (modified(cert_file), modified(key_file));
    let certs = read_certificates(cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .with_context(|| format!("reading the private key in {}", key_file.display()))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .with_context(|| format!("loading the private key in {}", key_file.display()))?;
    let key = CertifiedKey::new(certs, signing);
    key.keys_match().with_context(|| {
        format!(
            "{} and {} do not match",
            cert_file.display(),
            key_file.display()
        )
    })?;
    Ok(Loaded {
        key: Arc::new(key),
        modified,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_print_last_rdn_first() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let mut name = rcgen::DistinguishedName::new();
        name.push(rcgen::DnType::OrganizationName, "weir");
        name.push(rcgen::DnType::OrganizationalUnitName, "apps, east");
        name.push(rcgen::DnType::CommonName, "writer");
        params.distinguished_name = name;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            subject_name(cert.der()).unwrap(),
            "CN=writer,OU=apps\\, east,O=weir"
        );
    }
}
