//! TLS material: loading certkeys from PEM, building rustls server configs for SSL listeners and
//! client configs toward SSL services.
//!
//! Everything here runs in `commit`'s prepare phase and can fail with an `EngineError`; nothing
//! here touches sockets. The crypto provider is always passed explicitly (ring), never taken from
//! a process-wide default, so tests and the binary behave the same.

use std::fmt;
use std::fs::File;
use std::io::{self, BufReader};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::config::snapshot::{CertKeySpec, ServiceSpec, TlsVersions};
use crate::engine::EngineError;

/// A certkey as loaded from its files.
#[derive(Clone)]
pub(crate) struct LoadedCertKey {
    /// The certificate chain (leaf first).
    pub chain: Vec<CertificateDer<'static>>,
    /// Chain plus signing key, when the certkey has a key (server certificates).
    pub certified: Option<Arc<CertifiedKey>>,
}

/// Serves one fixed certified key (a listener's bound certkey).
#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

/// Backend verifier used unless `-serverAuth ENABLED`: accepts any certificate, as NetScaler
/// does toward services by default (the lab's brokers carry self-signed certificates), but
/// still checks the handshake signatures so the peer must hold the certificate's key.
#[derive(Debug)]
struct AcceptAnyServerCert {
    algs: WebPkiSupportedAlgorithms,
}

/// The provider every TLS object in the engine uses.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// === loading ===

/// Reads and checks a certkey: the certificate parses, the key parses (RSA, ECDSA or Ed25519, any
/// PEM wrapping), and the key matches the certificate's public key.
pub(crate) fn load_certkey(
    spec: &CertKeySpec,
    provider: &CryptoProvider,
) -> Result<LoadedCertKey, EngineError> {
    let invalid = |reason: String| EngineError::InvalidCert {
        certkey: spec.name.clone(),
        reason,
    };
    let open = |path: &std::path::Path| {
        File::open(path)
            .map(BufReader::new)
            .map_err(|_| EngineError::CertNotFound {
                certkey: spec.name.clone(),
                path: path.display().to_string(),
            })
    };
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut open(&spec.cert)?)
        .collect::<Result<_, io::Error>>()
        .map_err(|e| invalid(e.to_string()))?;
    let Some(leaf) = chain.first() else {
        return Err(invalid(format!(
            "no PEM certificate in {}",
            spec.cert.display()
        )));
    };
    x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| invalid(format!("{}: {e}", spec.cert.display())))?;

    let certified = match &spec.key {
        None => None,
        Some(key_path) => {
            let key = rustls_pemfile::private_key(&mut open(key_path)?)
                .map_err(|e| invalid(e.to_string()))?
                .ok_or_else(|| invalid(format!("no PEM private key in {}", key_path.display())))?;
            let signer = provider
                .key_provider
                .load_private_key(key)
                .map_err(|e| invalid(e.to_string()))?;
            let ck = CertifiedKey::new(chain.clone(), signer);
            ck.keys_match().map_err(|_| EngineError::CertKeyMismatch {
                certkey: spec.name.clone(),
            })?;
            Some(Arc::new(ck))
        }
    };
    Ok(LoadedCertKey { chain, certified })
}

/// The rustls versions enabled by `tls`; only TLS 1.2 and 1.3 exist in rustls.
fn versions(tls: &TlsVersions) -> Vec<&'static rustls::SupportedProtocolVersion> {
    let mut v = Vec::new();
    if tls.tls13 {
        v.push(&rustls::version::TLS13);
    }
    if tls.tls12 {
        v.push(&rustls::version::TLS12);
    }
    v
}

/// Server config for a listener; `Ok(None)` when no version nsemu can offer is enabled.
pub(crate) fn server_config(
    key: Arc<CertifiedKey>,
    tls: &TlsVersions,
    provider: &Arc<CryptoProvider>,
) -> Result<Option<Arc<ServerConfig>>, EngineError> {
    let vers = versions(tls);
    if vers.is_empty() {
        return Ok(None);
    }
    let mut cfg = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&vers)
        .map_err(|e| EngineError::Tls {
            reason: e.to_string(),
        })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(FixedCert(key)));
    // Offer no ALPN; MQTT clients do not need it. Session resumption (stateful cache) stays on.
    cfg.alpn_protocols.clear();
    Ok(Some(Arc::new(cfg)))
}

/// Client config toward one service. Built once per service spec and reused for every
/// connection, so rustls' in-memory session cache gives backend session resumption.
/// `roots` are the CA certificates bound to the service (used only with `server_auth`).
pub(crate) fn client_config(
    spec: &ServiceSpec,
    roots: &[CertificateDer<'static>],
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<ClientConfig>, EngineError> {
    let err = |e: String| EngineError::Tls { reason: e };
    // `set ssl service -tls12/-tls13`: offer only what the admin left enabled.
    let vers = versions(&spec.tls);
    if vers.is_empty() {
        return Err(err(format!(
            "service {}: no TLS protocol version enabled (nsemu offers TLS1.2 and TLS1.3)",
            spec.name
        )));
    }
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&vers)
        .map_err(|e| err(e.to_string()))?;
    let cfg = if spec.server_auth {
        let mut store = RootCertStore::empty();
        for c in roots {
            store.add(c.clone()).map_err(|e| err(e.to_string()))?;
        }
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
                .build()
                .map_err(|e| err(format!("service {}: {e}", spec.name)))?;
        builder.with_webpki_verifier(verifier).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert {
                algs: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth()
    };
    Ok(Arc::new(cfg))
}

/// The name a backend handshake uses: the common name when verifying, else the server's domain
/// name (sent as SNI), else its IP (rustls sends no SNI for IP names).
pub(crate) fn backend_server_name(spec: &ServiceSpec, ip: std::net::IpAddr) -> ServerName<'static> {
    use crate::config::snapshot::Target;
    let dns = if spec.server_auth {
        spec.common_name.clone()
    } else {
        None
    }
    .or_else(|| match &spec.target {
        Target::Domain { name, .. } => Some(name.clone()),
        Target::Ip(_) => None,
    });
    dns.and_then(|n| ServerName::try_from(n).ok())
        .unwrap_or(ServerName::IpAddress(ip.into()))
}

// === impl FixedCert ===

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

// === impl AcceptAnyServerCert ===

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
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
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

impl fmt::Debug for LoadedCertKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedCertKey")
            .field("chain_len", &self.chain.len())
            .field("has_key", &self.certified.is_some())
            .finish()
    }
}
