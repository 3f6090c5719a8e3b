//! Finding the cluster CA before trusting anything, as kubeadm's discovery
//! does: a TLS handshake that accepts whatever chain the server shows, a
//! pin (from the join token) that must match one certificate of it, and
//! only then a verified connection with that CA as the one root. Nothing
//! is sent over the unverified handshake; it is closed at once.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::ca::pin_of;
use crate::PkiError;

/// Accepts any chain, and keeps it.
#[derive(Debug)]
struct Collect {
    chain: std::sync::Mutex<Vec<Vec<u8>>>,
    schemes: Vec<SignatureScheme>,
}

impl ServerCertVerifier for Collect {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = self.chain.lock().unwrap_or_else(|p| p.into_inner());
        chain.push(end_entity.to_vec());
        chain.extend(intermediates.iter().map(|c| c.to_vec()));
        Ok(ServerCertVerified::assertion())
    }

    // Nothing read over this connection is trusted: the chain is checked
    // by its pin, and the next connection verifies it for real.
    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}

/// The chain (DER, leaf first) the TLS server at `addr` (`host:port`)
/// presents.
pub async fn presented_chain(addr: &str) -> Result<Vec<Vec<u8>>, PkiError> {
    let provider = Arc::new(crate::tls13_provider());
    let collect = Arc::new(Collect {
        chain: std::sync::Mutex::new(Vec::new()),
        schemes: provider
            .signature_verification_algorithms
            .supported_schemes(),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PkiError::Certificate(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(collect.clone())
        .with_no_client_auth();
    let net = |e: std::io::Error| PkiError::Io {
        path: addr.to_string(),
        source: e,
    };
    let tcp = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .map_err(|_| net(std::io::ErrorKind::TimedOut.into()))?
    .map_err(net)?;
    let name = ServerName::try_from(crate::SERVER_DNS).expect("a DNS name");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tls = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        connector.connect(name, tcp),
    )
    .await
    .map_err(|_| net(std::io::ErrorKind::TimedOut.into()))?
    .map_err(net)?;
    drop(tls);
    let chain = collect
        .chain
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(chain)
}

/// The certificate of `chain` whose public key has `pin`, as PEM: the CA
/// to trust. Refused when none matches (the server is not the cluster the
/// token was made for).
pub fn pinned_ca(chain: &[Vec<u8>], pin: &str) -> Result<String, PkiError> {
    for der in chain {
        let pem = to_pem(der);
        if pin_of(&pem).is_ok_and(|p| p.eq_ignore_ascii_case(pin)) {
            return Ok(pem);
        }
    }
    Err(PkiError::Certificate(
        "the server's certificates do not match the token's pin: it is not the cluster the token was made for".into(),
    ))
}

fn to_pem(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{der_of, Ca, CA_LIFETIME};

    #[test]
    fn the_pinned_certificate_is_found_and_a_stranger_is_refused() {
        let ca = Ca::generate(CA_LIFETIME).unwrap();
        let other = Ca::generate(CA_LIFETIME).unwrap();
        let chain = vec![
            der_of(other.cert_pem()).unwrap(),
            der_of(ca.cert_pem()).unwrap(),
        ];
        let found = pinned_ca(&chain, &ca.pin().unwrap()).unwrap();
        assert_eq!(der_of(&found).unwrap(), der_of(ca.cert_pem()).unwrap());
        let stranger = Ca::generate(CA_LIFETIME).unwrap().pin().unwrap();
        assert!(pinned_ca(&chain, &stranger).is_err());
    }
}
