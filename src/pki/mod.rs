//! Certificates and keys: the cluster CA, leaf certificates it issues, fingerprints.
//!
//! Keys are ECDSA P-256 (PKCS#8 PEM). Everything here is pure: callers decide where the PEM
//! goes (see `bootstrap`).

pub mod tls;

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

/// Validity of everything the agent issues. MicroK8s signs node certificates for 3650 days too;
/// there is no rotation yet, so a shorter life would silently break clusters.
pub const VALIDITY_DAYS: i64 = 3650;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot generate key or certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{what} is not valid PEM: {reason}")]
    BadPem { what: String, reason: String },
    #[error("{what} contains no certificate")]
    NoCertificate { what: String },
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct PemPair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// What a leaf certificate is for.
#[derive(Debug, Clone, Default)]
pub struct LeafSpec {
    pub common_name: String,
    pub organization: Option<String>,
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub server: bool,
    pub client: bool,
}

/// A certificate authority able to issue certificates.
pub struct Authority {
    params: CertificateParams,
    key: KeyPair,
    cert_pem: String,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

impl Authority {
    /// Creates a new self-signed CA.
    pub fn generate(common_name: &str) -> Result<Authority, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(common_name, None);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params);
        let cert = params.clone().self_signed(&key)?;
        Ok(Authority {
            cert_pem: cert.pem(),
            params,
            key,
        })
    }

    /// Loads an existing CA (ours or MicroK8s's) from PEM.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Authority, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::BadPem {
            what: "CA key".into(),
            reason: e.to_string(),
        })?;
        let params =
            CertificateParams::from_ca_cert_pem(cert_pem).map_err(|e| PkiError::BadPem {
                what: "CA certificate".into(),
                reason: e.to_string(),
            })?;
        Ok(Authority {
            params,
            key,
            cert_pem: cert_pem.to_string(),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Issues a leaf certificate with a fresh key.
    pub fn issue(&self, spec: &LeafSpec) -> Result<PemPair, PkiError> {
        let key = KeyPair::generate()?;
        let params = leaf_params(spec);
        let issuer = self.params.clone().self_signed(&self.key)?;
        let cert = params.signed_by(&key, &issuer, &self.key)?;
        Ok(PemPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Creates a self-signed certificate (the dqlite cluster certificate is one: every member
/// trusts exactly it, as go-dqlite's app layer does).
pub fn self_signed(spec: &LeafSpec) -> Result<PemPair, PkiError> {
    let key = KeyPair::generate()?;
    let cert = leaf_params(spec).self_signed(&key)?;
    Ok(PemPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A certificate signing request for `spec` with a fresh key: `(csr_pem, key_pem)`.
pub fn csr(spec: &LeafSpec) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    // A CSR carries only the subject and SANs; usages and validity are the signer's choice.
    let full = leaf_params(spec);
    let mut params = CertificateParams::default();
    params.distinguished_name = full.distinguished_name;
    params.subject_alt_names = full.subject_alt_names;
    let csr = params.serialize_request(&key)?;
    Ok((csr.pem()?, key.serialize_pem()))
}

/// A fresh private key alone (the service-account signing key).
pub fn private_key_pem() -> Result<String, PkiError> {
    Ok(KeyPair::generate()?.serialize_pem())
}

fn leaf_params(spec: &LeafSpec) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(&spec.common_name, spec.organization.as_deref());
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    if spec.server {
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    if spec.client {
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ClientAuth);
    }
    for name in &spec.dns_names {
        if let Ok(name) = name.as_str().try_into() {
            params.subject_alt_names.push(SanType::DnsName(name));
        }
    }
    for ip in &spec.ips {
        params.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    set_validity(&mut params);
    params
}

fn dn(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(o) = organization {
        dn.push(DnType::OrganizationName, o);
    }
    dn
}

fn set_validity(params: &mut CertificateParams) {
    let now = OffsetDateTime::now_utc();
    // Backdate a little so a peer with a slightly slow clock accepts the certificate.
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(VALIDITY_DAYS);
    params.serial_number = Some(random_serial());
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // no leading zero octet to strip
    SerialNumber::from(bytes.to_vec())
}

/// DER of the first certificate in a PEM bundle.
pub fn first_cert_der(pem: &str, what: &str) -> Result<Vec<u8>, PkiError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let der = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| PkiError::NoCertificate { what: what.into() })?
        .map_err(|e| PkiError::BadPem {
            what: what.into(),
            reason: format!("{e:?}"),
        })?;
    Ok(der.to_vec())
}

/// Lower-case hex SHA-256 of the DER of the first certificate in `pem`.
pub fn cert_sha256_hex(pem: &str, what: &str) -> Result<String, PkiError> {
    Ok(crate::util::hex::sha256_hex(&first_cert_der(pem, what)?))
}

/// MicroK8s's join check: the first 12 hex characters of the server certificate's SHA-256.
pub fn fingerprint12(server_crt_pem: &str) -> Result<String, PkiError> {
    let mut full = cert_sha256_hex(server_crt_pem, "server certificate")?;
    full.truncate(12);
    Ok(full)
}

impl Authority {
    /// Signs a PEM CSR (its self-signature is verified), keeping its subject and SANs, for
    /// client and server use. The caller decides whether the subject is acceptable.
    /// Signs a CSR (its key and SANs) for the subject `CN=common_name[, O=organization]`,
    /// whatever subject the request itself carries: the caller has checked these values.
    /// A `server` certificate may also authenticate a TLS server; otherwise it is a client
    /// certificate only.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        common_name: &str,
        organization: Option<&str>,
        server: bool,
    ) -> Result<String, PkiError> {
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            PkiError::BadPem {
                what: "certificate signing request".into(),
                reason: e.to_string(),
            }
        })?;
        csr.params.distinguished_name = dn(common_name, organization);
        csr.params.is_ca = IsCa::ExplicitNoCa;
        csr.params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        csr.params.extended_key_usages = if server {
            vec![
                ExtendedKeyUsagePurpose::ClientAuth,
                ExtendedKeyUsagePurpose::ServerAuth,
            ]
        } else {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        };
        set_validity(&mut csr.params);
        let issuer = self.params.clone().self_signed(&self.key)?;
        Ok(csr.signed_by(&issuer, &self.key)?.pem())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_leaf_is_signed_by_loaded_ca() {
        let ca = Authority::generate("10.152.183.1").unwrap();
        let reloaded = Authority::load(ca.cert_pem(), &ca.key_pem()).unwrap();
        let leaf = reloaded
            .issue(&LeafSpec {
                common_name: "127.0.0.1".into(),
                ips: vec!["127.0.0.1".parse().unwrap()],
                server: true,
                ..Default::default()
            })
            .unwrap();
        let ca_der = first_cert_der(ca.cert_pem(), "ca").unwrap();
        let leaf_der = first_cert_der(&leaf.cert_pem, "leaf").unwrap();
        let (_, ca_x) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        let (_, leaf_x) = x509_parser::parse_x509_certificate(&leaf_der).unwrap();
        assert_eq!(leaf_x.issuer(), ca_x.subject());
        leaf_x.verify_signature(Some(ca_x.public_key())).unwrap();
    }

    #[test]
    fn fingerprint_is_twelve_hex_chars_of_der_sha256() {
        let pair = self_signed(&LeafSpec {
            common_name: "x".into(),
            dns_names: vec!["x".into()],
            server: true,
            ..Default::default()
        })
        .unwrap();
        let fp = fingerprint12(&pair.cert_pem).unwrap();
        assert_eq!(fp.len(), 12);
        let der = first_cert_der(&pair.cert_pem, "x").unwrap();
        assert!(crate::util::hex::sha256_hex(&der).starts_with(&fp));
    }

    #[test]
    fn csr_round_trip_through_the_ca() {
        let ca = Authority::generate("ca").unwrap();
        let (csr, _key) = csr(&LeafSpec {
            common_name: "system:node:w1".into(),
            organization: Some("system:nodes".into()),
            dns_names: vec!["w1".into()],
            ips: vec!["10.0.0.9".parse().unwrap()],
            ..Default::default()
        })
        .unwrap();
        let pem = ca
            .sign_csr(&csr, "system:node:w1", Some("system:nodes"), true)
            .unwrap();
        let der = first_cert_der(&pem, "leaf").unwrap();
        let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(x.subject().to_string().contains("system:node:w1"));
    }

    #[test]
    fn garbage_pem_is_an_error_not_a_panic() {
        assert!(first_cert_der("not a pem", "server certificate").is_err());
        assert!(Authority::load("junk", "junk").is_err());
    }
}
