//! TLS to brokers: rustls over glommio's streams (futures-rustls). The broker's
//! certificate is verified against the CAs given (and the host of the address dialled);
//! for mutual TLS the client presents a certificate of its own, whose subject the broker
//! takes as the connection's principal.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_rustls::TlsConnector;
use glommio::net::TcpStream;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::error::{ClientError, ClientResult};
use crate::io::Stream;

/// How long a broker has to finish its side of the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a TLS connection to a broker needs: whom to trust, and what to present.
/// Shared by every connection (and, in the broker, every shard).
#[derive(Clone)]
pub struct TlsClient {
    connector: TlsConnector,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient").finish_non_exhaustive()
    }
}

/// The ring provider, which the broker's TLS uses too.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsClient {
    /// Trusting the CAs in the PEM file `ca_file`; presenting the certificate chain and
    /// key of `identity` (PEM files) when given.
    pub fn from_files(ca_file: &Path, identity: Option<(&Path, &Path)>) -> ClientResult<TlsClient> {
        let provider = provider();
        let builder = builder(&provider, ca_file)?;
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some((cert_file, key_file)) => {
                let chain = read_certificates(cert_file)?;
                let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
                    invalid(format!(
                        "reading the private key in {}: {e}",
                        key_file.display()
                    ))
                })?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    invalid(format!(
                        "{} and {}: {e}",
                        cert_file.display(),
                        key_file.display()
                    ))
                })?
            }
        };
        Ok(TlsClient::new(config))
    }

    /// Trusting the CAs in `ca_file`, presenting what `resolver` gives at each handshake
    /// (a broker's own certificate, reloaded when its files change).
    pub fn with_resolver(
        provider: Arc<rustls::crypto::CryptoProvider>,
        ca_file: &Path,
        resolver: Arc<dyn ResolvesClientCert>,
    ) -> ClientResult<TlsClient> {
        let config = builder(&provider, ca_file)?.with_client_cert_resolver(resolver);
        Ok(TlsClient::new(config))
    }

    fn new(config: rustls::ClientConfig) -> TlsClient {
        TlsClient {
            connector: TlsConnector::from(Arc::new(config)),
        }
    }

    /// The client side of a handshake on `stream`, to the broker at `address`
    /// (`HOST:PORT`; the certificate must name the host).
    pub async fn handshake(&self, stream: TcpStream, address: &str) -> std::io::Result<Stream> {
        let host = host_of(address);
        let name = ServerName::try_from(host.to_string()).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{host:?} is not a host name TLS can verify: {e}"),
            )
        })?;
        let handshake = self.connector.connect(name, stream);
        let timeout = async {
            glommio::timer::sleep(HANDSHAKE_TIMEOUT).await;
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            ))
        };
        let stream = futures_lite::future::or(handshake, timeout).await?;
        Ok(Stream::Tls(Box::new(stream.into())))
    }
}

/// A stream to the broker at `address`: TCP (without Nagle: requests are whole frames),
/// then TLS over it when `tls` is given.
pub async fn dial(address: &str, tls: Option<&TlsClient>) -> std::io::Result<Stream> {
    let stream = TcpStream::connect(address).await?;
    let _ = stream.set_nodelay(true);
    match tls {
        None => Ok(Stream::Plain(stream)),
        Some(tls) => tls.handshake(stream, address).await,
    }
}

fn builder(
    provider: &Arc<rustls::crypto::CryptoProvider>,
    ca_file: &Path,
) -> ClientResult<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certificates(ca_file)? {
        roots
            .add(cert)
            .map_err(|e| invalid(format!("a CA certificate in {}: {e}", ca_file.display())))?;
    }
    Ok(
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(format!("TLS protocol versions: {e}")))?
            .with_root_certificates(roots),
    )
}

/// The certificates of a PEM file (at least one).
pub fn read_certificates(path: &Path) -> ClientResult<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid(format!("reading certificates from {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(invalid(format!("{} holds no certificate", path.display())));
    }
    Ok(certs)
}

fn invalid(message: String) -> ClientError {
    ClientError::Invalid(message)
}

/// The host of `HOST:PORT` (an IPv6 address without its brackets).
fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn hosts_come_out_of_addresses() {
        assert_eq!(host_of("127.0.0.1:9192"), "127.0.0.1");
        assert_eq!(host_of("broker-1.example:9192"), "broker-1.example");
        assert_eq!(host_of("[::1]:9192"), "::1");
        assert_eq!(host_of("localhost"), "localhost");
    }
}
