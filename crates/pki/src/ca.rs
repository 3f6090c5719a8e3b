//! The cluster CA: one P-256 key and self-signed certificate, made by the
//! first server (or by `skiff ca create` for a cluster of founding
//! servers) and kept in the replicated state so every server can sign.
//! Leaves are signed for one identity each, with lifetimes (leaf: a year,
//! CA: ten years, by default).

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::identity::Identity;
use crate::PkiError;

/// How long the CA is valid by default.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a leaf (server, node, user) is valid by default.
pub const LEAF_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// A certificate and its private key, both PEM.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CertKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CertKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is a secret: never in a log line or a panic message.
        f.debug_struct("CertKey")
            .field("cert_pem", &format!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"<secret>")
            .finish()
    }
}

/// The cluster CA.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ca(pub CertKey);

fn offset(from_now: Duration) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::seconds(from_now.as_secs() as i64)
}

fn rc(e: rcgen::Error) -> PkiError {
    PkiError::Certificate(e.to_string())
}

impl Ca {
    /// A new CA valid for `lifetime`.
    pub fn generate(lifetime: Duration) -> Result<Ca, PkiError> {
        Self::self_signed(KeyPair::generate().map_err(rc)?, lifetime)
    }

    /// The same CA (its key and name) in a new certificate valid for
    /// `lifetime` from now: every certificate it signed stays valid under
    /// it, and its pin (a hash of the public key) is unchanged, so join
    /// tokens keep working.
    pub fn renewed(&self, lifetime: Duration) -> Result<Ca, PkiError> {
        Self::self_signed(KeyPair::from_pem(&self.0.key_pem).map_err(rc)?, lifetime)
    }

    fn self_signed(key: KeyPair, lifetime: Duration) -> Result<Ca, PkiError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Skiff cluster CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = offset(Duration::ZERO) - BACKDATE;
        params.not_after = offset(lifetime);
        let cert = params.self_signed(&key).map_err(rc)?;
        Ok(Ca(CertKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }))
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.0.cert_pem
    }

    /// The pin joiners check: sha256 of the CA's SubjectPublicKeyInfo, hex.
    pub fn pin(&self) -> Result<String, PkiError> {
        pin_of(&self.0.cert_pem)
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, PkiError> {
        let key = KeyPair::from_pem(&self.0.key_pem).map_err(rc)?;
        Issuer::from_ca_cert_pem(&self.0.cert_pem, key).map_err(rc)
    }

    /// A fresh key and a certificate for `who`, valid for `lifetime`.
    pub fn issue(&self, who: &Identity, lifetime: Duration) -> Result<CertKey, PkiError> {
        let key = KeyPair::generate().map_err(rc)?;
        let cert = leaf_params(who, lifetime)?
            .signed_by(&key, &self.issuer()?)
            .map_err(rc)?;
        Ok(CertKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A fresh key and a certificate for a host that is both a TLS server
    /// and client at `ips` (no Skiff identity): for other programs a tool
    /// runs beside Skiff, such as raftbench's etcd.
    pub fn issue_for_host(
        &self,
        name: &str,
        ips: &[std::net::IpAddr],
        lifetime: Duration,
    ) -> Result<CertKey, PkiError> {
        let key = KeyPair::generate().map_err(rc)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.subject_alt_names = ips.iter().map(|ip| SanType::IpAddress(*ip)).collect();
        params.not_before = offset(Duration::ZERO) - BACKDATE;
        params.not_after = offset(lifetime);
        let cert = params.signed_by(&key, &self.issuer()?).map_err(rc)?;
        Ok(CertKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs a certificate signing request for `who`: only the requester's
    /// public key is taken from it; names, usages and lifetime are the
    /// CA's own choice.
    pub fn sign_request(
        &self,
        csr_pem: &str,
        who: &Identity,
        lifetime: Duration,
    ) -> Result<String, PkiError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::Certificate(format!("not a signing request: {e}")))?;
        csr.params = leaf_params(who, lifetime)?;
        Ok(csr.signed_by(&self.issuer()?).map_err(rc)?.pem())
    }
}

/// A key and a signing request for a certificate (the holder keeps its
/// key; the CA picks what the certificate says).
pub fn request() -> Result<(String, String), PkiError> {
    let key = KeyPair::generate().map_err(rc)?;
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .map_err(rc)?
        .pem()
        .map_err(rc)?;
    Ok((key.serialize_pem(), csr))
}

fn leaf_params(who: &Identity, lifetime: Duration) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, who.to_string());
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let uri = who
        .uri()
        .try_into()
        .map_err(|e: rcgen::Error| PkiError::Certificate(e.to_string()))?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    if let Some(dns) = who.dns_name() {
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
        params
            .subject_alt_names
            .push(SanType::DnsName(dns.try_into().map_err(rc)?));
    }
    if matches!(who, Identity::Node(_)) {
        let shared = crate::identity::AGENT_DNS.to_string();
        params
            .subject_alt_names
            .push(SanType::DnsName(shared.try_into().map_err(rc)?));
    }
    params.not_before = offset(Duration::ZERO) - BACKDATE;
    params.not_after = offset(lifetime);
    Ok(params)
}

/// sha256 of a certificate's SubjectPublicKeyInfo, hex (kubeadm's pin).
pub fn pin_of(cert_pem: &str) -> Result<String, PkiError> {
    let der = der_of(cert_pem)?;
    let (_, cert) = X509Certificate::from_der(&der)
        .map_err(|e| PkiError::Certificate(format!("not a certificate: {e}")))?;
    Ok(hex::encode(Sha256::digest(cert.public_key().raw)))
}

/// When a certificate (PEM) stops being valid, in seconds since the Unix
/// epoch.
pub fn expires_at(cert_pem: &str) -> Result<i64, PkiError> {
    let der = der_of(cert_pem)?;
    let (_, cert) = X509Certificate::from_der(&der)
        .map_err(|e| PkiError::Certificate(format!("not a certificate: {e}")))?;
    Ok(cert.validity().not_after.timestamp())
}

/// When a certificate (PEM) starts and stops being valid, in seconds
/// since the Unix epoch.
pub fn validity(cert_pem: &str) -> Result<(i64, i64), PkiError> {
    let der = der_of(cert_pem)?;
    let (_, cert) = X509Certificate::from_der(&der)
        .map_err(|e| PkiError::Certificate(format!("not a certificate: {e}")))?;
    Ok((
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    ))
}

/// How far back a certificate's start is set, for clocks a little behind.
const BACKDATE: time::Duration = time::Duration::minutes(5);

/// When a holder renews its certificate (PEM): two thirds into its
/// lifetime as issued (the backdated start not counted), in seconds since
/// the Unix epoch.
pub fn renew_at(cert_pem: &str) -> Result<i64, PkiError> {
    let (from, until) = validity(cert_pem)?;
    let issued = (from + BACKDATE.whole_seconds()).min(until);
    Ok(issued + (until - issued) * 2 / 3)
}

/// The DER of the first certificate in a PEM text.
pub fn der_of(cert_pem: &str) -> Result<Vec<u8>, PkiError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|e| PkiError::Certificate(format!("not PEM: {e}")))?;
    Ok(pem.contents)
}

#[cfg(test)]
mod renewal_tests {
    use super::*;

    #[test]
    fn a_renewed_ca_keeps_its_key_pin_and_leaves() {
        let ca = Ca::generate(Duration::from_secs(60)).unwrap();
        let leaf = ca
            .issue(&Identity::User("ann".into()), Duration::from_secs(3600))
            .unwrap();
        let again = ca.renewed(Duration::from_secs(7200)).unwrap();
        assert_eq!(again.pin().unwrap(), ca.pin().unwrap());
        assert_eq!(again.0.key_pem, ca.0.key_pem);
        assert!(validity(again.cert_pem()).unwrap().1 > validity(ca.cert_pem()).unwrap().1);
        // A leaf the old certificate signed verifies under the new one.
        let roots = {
            let mut r = rustls::RootCertStore::empty();
            r.add(rustls::pki_types::CertificateDer::from(
                der_of(again.cert_pem()).unwrap(),
            ))
            .unwrap();
            std::sync::Arc::new(r)
        };
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots,
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let der = rustls::pki_types::CertificateDer::from(der_of(&leaf.cert_pem).unwrap());
        verifier
            .verify_client_cert(&der, &[], rustls::pki_types::UnixTime::now())
            .unwrap();
    }

    /// Who still holds the old CA certificate after it expired (an agent
    /// that has not renewed since) still accepts what the renewed CA signs:
    /// a trust anchor is its name and key, its own dates are not checked.
    #[test]
    fn the_old_ca_certificate_still_anchors_after_it_expired() {
        let ca = Ca::generate(Duration::from_secs(1)).unwrap();
        let again = ca.renewed(Duration::from_secs(3600)).unwrap();
        let leaf = again
            .issue(&Identity::Node("n1".into()), Duration::from_secs(3600))
            .unwrap();
        let later = rustls::pki_types::UnixTime::since_unix_epoch(Duration::from_secs(
            validity(ca.cert_pem()).unwrap().1 as u64 + 60,
        ));
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(
                der_of(ca.cert_pem()).unwrap(),
            ))
            .unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let der = rustls::pki_types::CertificateDer::from(der_of(&leaf.cert_pem).unwrap());
        verifier.verify_client_cert(&der, &[], later).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_is_renewed_two_thirds_into_its_lifetime_as_issued() {
        let ca = Ca::generate(CA_LIFETIME).unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let leaf = ca
            .issue(&Identity::Node("n".into()), Duration::from_secs(900))
            .unwrap();
        let (from, until) = validity(&leaf.cert_pem).unwrap();
        assert!(from <= now - 299, "started early, for clock skew");
        let at = renew_at(&leaf.cert_pem).unwrap();
        // 600 s after issue, not counting the backdated 5 minutes.
        assert!((now + 598..=now + 602).contains(&at), "{at} vs {now}");
        assert!(at < until);
    }

    #[test]
    fn a_leaf_names_its_identity_and_the_pin_is_the_cas_key() {
        let ca = Ca::generate(CA_LIFETIME).unwrap();
        let node = Identity::Node("gpu_1".into());
        let leaf = ca.issue(&node, LEAF_LIFETIME).unwrap();
        assert_eq!(
            Identity::of_certificate(&der_of(&leaf.cert_pem).unwrap()).unwrap(),
            node
        );
        let pin = ca.pin().unwrap();
        assert_eq!(pin.len(), 64);
        assert_ne!(pin, Ca::generate(CA_LIFETIME).unwrap().pin().unwrap());
        let year =
            expires_at(&leaf.cert_pem).unwrap() - time::OffsetDateTime::now_utc().unix_timestamp();
        assert!((364 * 86400..=366 * 86400).contains(&year), "{year}");
        assert!(
            !format!("{leaf:?}").contains("PRIVATE"),
            "keys stay out of Debug"
        );
    }

    #[test]
    fn a_signing_request_gets_the_cas_names_not_its_own() {
        let ca = Ca::generate(CA_LIFETIME).unwrap();
        let (_key, csr) = request().unwrap();
        let cert = ca
            .sign_request(&csr, &Identity::Server(2), LEAF_LIFETIME)
            .unwrap();
        assert_eq!(
            Identity::of_certificate(&der_of(&cert).unwrap()).unwrap(),
            Identity::Server(2)
        );
        assert!(ca
            .sign_request(
                "-----BEGIN CERTIFICATE REQUEST-----\nnope\n-----END CERTIFICATE REQUEST-----\n",
                &Identity::Server(2),
                LEAF_LIFETIME
            )
            .is_err());
    }
}
