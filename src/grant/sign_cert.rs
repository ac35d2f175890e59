//! `POST /cluster/api/v1.0/sign-cert`: signs a worker's CSR with the cluster CA.
//!
//! MicroK8s signs whatever subject the CSR carries (a `system:masters` client certificate
//! included). We sign only the identity the one-time token was issued for:
//! `<join>-kubelet` → `CN=system:node:<name>, O=system:nodes`; `<join>-proxy` →
//! `CN=system:kube-proxy`; a bare `<join>` token (v1 joins) → a non-`system:` CN without
//! organisation. Only a kubelet certificate may carry SANs (its node name and IP addresses)
//! and serve TLS; the others are client certificates. The subject may hold nothing but
//! readable CN and O values, and the
//! certificate's subject is built from the checked values, never copied from the request.
//! The token is consumed only when the CSR is acceptable.

use super::GrantError;
use crate::cluster::node::Node;
use crate::format::wire::{SignCertRequest, SignCertResponse};
use crate::sys::blocking::blocking;

/// The subject of a CSR, as far as the policy cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub common_names: Vec<String>,
    pub organizations: Vec<String>,
}

/// What a certificate request token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowed {
    Kubelet,
    KubeProxy,
    Other,
}

pub fn allowed_for(token: &str) -> Allowed {
    let t = token.trim();
    if t.ends_with("-kubelet") {
        Allowed::Kubelet
    } else if t.ends_with("-proxy") {
        Allowed::KubeProxy
    } else {
        Allowed::Other
    }
}

/// Checks a CSR subject against what the token allows.
pub fn check_subject(allowed: Allowed, subject: &Subject) -> Result<(), String> {
    let [cn] = subject.common_names.as_slice() else {
        return Err("the certificate request must carry exactly one common name".into());
    };
    let orgs = &subject.organizations;
    let ok = match allowed {
        Allowed::Kubelet => {
            cn.strip_prefix("system:node:")
                .is_some_and(|n| !n.is_empty())
                && orgs.as_slice() == ["system:nodes"]
        }
        Allowed::KubeProxy => cn == "system:kube-proxy" && orgs.is_empty(),
        Allowed::Other => !cn.starts_with("system:") && cn != "admin" && orgs.is_empty(),
    };
    if ok {
        Ok(())
    } else {
        let wanted = match allowed {
            Allowed::Kubelet => "CN=system:node:<name>, O=system:nodes",
            Allowed::KubeProxy => "CN=system:kube-proxy",
            Allowed::Other => "a CN outside system: and no organisation",
        };
        Err(format!(
            "Certificate request refused: subject CN={} O={} is not allowed for this token (expected {wanted})",
            cn,
            orgs.join(",")
        ))
    }
}

/// Parses a PEM CSR, verifying its self-signature, and returns its subject.
pub fn csr_subject(pem: &str) -> Result<Subject, String> {
    use rustls_pki_types::pem::PemObject;
    use x509_parser::prelude::FromDer;
    let der = rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
        .map_err(|_| "the request is not a PEM certificate signing request".to_string())?;
    let (_, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(der.as_ref())
            .map_err(|e| format!("the certificate signing request cannot be parsed: {e}"))?;
    // Every attribute must be a CN or an O in a string type we can read: anything else
    // (another attribute, or a value in a type skipped here, e.g. a BMPString O) could carry
    // an identity the policy never saw. The certificate's subject is then built from the
    // checked values alone (`Authority::sign_csr`), never copied from the request.
    let mut checked = Subject {
        common_names: Vec::new(),
        organizations: Vec::new(),
    };
    for attribute in csr.certification_request_info.subject.iter_attributes() {
        let oid = attribute.attr_type();
        let into = if *oid == x509_parser::oid_registry::OID_X509_COMMON_NAME {
            &mut checked.common_names
        } else if *oid == x509_parser::oid_registry::OID_X509_ORGANIZATION_NAME {
            &mut checked.organizations
        } else {
            return Err(format!(
                "the certificate request subject may carry only CN and O, not {oid}"
            ));
        };
        let value = attribute.as_str().map_err(|_| {
            format!("the certificate request subject has a {oid} value that is not a plain string")
        })?;
        into.push(value.to_string());
    }
    Ok(checked)
}

/// What the subject alternative names of a CSR allow: `Ok(true)` for a kubelet's serving
/// certificate (DNS names equal to its node name; IP addresses that are not unspecified,
/// multicast or one of `reserved`, the control planes' addresses, so a worker
/// cannot obtain a certificate that passes for an API server), `Ok(false)` for a client-only
/// certificate (no SANs at all: kube-proxy, v1 client certificates).
pub fn check_sans(
    allowed: Allowed,
    common_name: &str,
    csr_pem: &str,
    reserved: &[std::net::IpAddr],
) -> Result<bool, String> {
    let params = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|e| format!("the certificate signing request cannot be parsed: {e}"))?;
    let sans = &params.params.subject_alt_names;
    match allowed {
        Allowed::Kubelet => {
            let node_name = common_name.strip_prefix("system:node:").unwrap_or_default();
            for san in sans {
                match san {
                    rcgen::SanType::IpAddress(ip)
                        if !ip.is_unspecified()
                            && !ip.is_multicast()
                            && !reserved.contains(ip) => {}
                    rcgen::SanType::DnsName(name) if name.as_str() == node_name => {}
                    other => {
                        return Err(format!(
                            "Certificate request refused: a kubelet certificate may name only its node ({node_name}) and its own IP addresses, not {other:?}"
                        ))
                    }
                }
            }
            Ok(true)
        }
        Allowed::KubeProxy | Allowed::Other if sans.is_empty() => Ok(false),
        Allowed::KubeProxy | Allowed::Other => Err(
            "Certificate request refused: this token allows a client certificate only, without subject alternative names".into(),
        ),
    }
}

pub async fn sign_cert(node: &Node, req: SignCertRequest) -> Result<SignCertResponse, GrantError> {
    // The control planes' addresses, which no kubelet certificate may carry. Failing closed:
    // without them the request cannot be checked.
    let reserved: Vec<std::net::IpAddr> = node
        .datastore()
        .members()
        .await
        .map_err(|e| {
            GrantError::Refused(format!(
                "Failed to sign certificate: cannot read the cluster members to check the request: {e}"
            ))
        })?
        .iter()
        .filter_map(|m| m.host().parse().ok())
        .collect();
    let node = node.clone();
    blocking(move || -> Result<_, GrantError> {
        if !node.tokens().check_cert_request_token(&req.token)? {
            return Err(GrantError::InvalidToken);
        }
        let subject = csr_subject(&req.request).map_err(GrantError::BadRequest)?;
        let allowed = allowed_for(&req.token);
        check_subject(allowed, &subject).map_err(GrantError::Forbidden)?;
        let common_name = subject.common_names.first().map_or("", String::as_str);
        let server = check_sans(allowed, common_name, &req.request, &reserved)
            .map_err(GrantError::Forbidden)?;
        let layout = node.state().layout();
        let ca_pem = node.state().read_string(&layout.ca_crt())?;
        let key_pem = node.state().read_string(&layout.ca_key())?;
        let ca = crate::pki::Authority::load(&ca_pem, &key_pem)
            .map_err(|e| GrantError::Internal(e.to_string()))?;
        let organization = subject.organizations.first().map(String::as_str);
        let certificate = ca
            .sign_csr(&req.request, common_name, organization, server)
            .map_err(|e| GrantError::BadRequest(format!("Failed to sign certificate: {e}")))?;
        if !node.tokens().consume_cert_request_token(&req.token)? {
            return Err(GrantError::InvalidToken);
        }
        Ok(SignCertResponse { certificate })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(cn: &[&str], o: &[&str]) -> Subject {
        Subject {
            common_names: cn.iter().map(|s| s.to_string()).collect(),
            organizations: o.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn policy() {
        use Allowed::*;
        assert!(check_subject(Kubelet, &subject(&["system:node:w1"], &["system:nodes"])).is_ok());
        assert!(
            check_subject(Kubelet, &subject(&["system:node:w1"], &["system:masters"])).is_err()
        );
        assert!(check_subject(
            Kubelet,
            &subject(&["system:node:w1"], &["system:nodes", "system:masters"])
        )
        .is_err());
        assert!(check_subject(Kubelet, &subject(&["system:node:"], &["system:nodes"])).is_err());
        assert!(check_subject(Kubelet, &subject(&["system:kube-proxy"], &[])).is_err());
        assert!(check_subject(KubeProxy, &subject(&["system:kube-proxy"], &[])).is_ok());
        assert!(check_subject(KubeProxy, &subject(&["admin"], &["system:masters"])).is_err());
        assert!(check_subject(Other, &subject(&["flanneld"], &[])).is_ok());
        assert!(check_subject(Other, &subject(&["admin"], &[])).is_err());
        assert!(check_subject(Other, &subject(&["system:node:x"], &["system:nodes"])).is_err());
        assert!(check_subject(Other, &subject(&[], &[])).is_err());
    }

    #[test]
    fn token_kinds() {
        assert_eq!(allowed_for("abc-kubelet"), Allowed::Kubelet);
        assert_eq!(allowed_for("abc-proxy"), Allowed::KubeProxy);
        assert_eq!(allowed_for("abc"), Allowed::Other);
    }

    fn csr_with(attributes: Vec<(rcgen::DnType, rcgen::DnValue)>) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        let mut dn = rcgen::DistinguishedName::new();
        for (kind, value) in attributes {
            dn.push(kind, value);
        }
        params.distinguished_name = dn;
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    /// An organisation in a string type the policy cannot read must not slip through into
    /// the signed certificate (a kube-proxy token turned into `system:masters`).
    #[test]
    fn unreadable_or_unexpected_subject_attributes_are_refused() {
        use rcgen::{BmpString, DnType, DnValue};
        let sneaky = csr_with(vec![
            (
                DnType::CommonName,
                DnValue::Utf8String("system:kube-proxy".into()),
            ),
            (
                DnType::OrganizationName,
                DnValue::BmpString(BmpString::try_from("system:masters").unwrap()),
            ),
        ]);
        assert!(csr_subject(&sneaky).is_err());
        let extra = csr_with(vec![
            (
                DnType::CommonName,
                DnValue::Utf8String("system:kube-proxy".into()),
            ),
            (
                DnType::OrganizationalUnitName,
                DnValue::Utf8String("system:masters".into()),
            ),
        ]);
        assert!(csr_subject(&extra).is_err());
        let plain = csr_with(vec![(
            DnType::CommonName,
            DnValue::PrintableString("system:kube-proxy".try_into().unwrap()),
        )]);
        assert_eq!(
            csr_subject(&plain).unwrap(),
            subject(&["system:kube-proxy"], &[])
        );
    }

    /// Whatever the request says, the certificate carries only the checked subject.
    #[test]
    fn the_signed_subject_is_the_checked_one() {
        use rcgen::{DnType, DnValue};
        let ca = crate::pki::Authority::generate("ca").unwrap();
        let csr = csr_with(vec![
            (DnType::CommonName, DnValue::Utf8String("w1".into())),
            (DnType::OrganizationName, DnValue::Utf8String("x".into())),
        ]);
        let pem = ca.sign_csr(&csr, "system:node:w1", None, false).unwrap();
        let der = crate::pki::first_cert_der(&pem, "leaf").unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(cert.subject().to_string(), "CN=system:node:w1");
    }

    fn csr_for(cn: &str, dns: &[&str], ips: &[&str]) -> String {
        crate::pki::csr(&crate::pki::LeafSpec {
            common_name: cn.into(),
            dns_names: dns.iter().map(|d| d.to_string()).collect(),
            ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
            ..Default::default()
        })
        .unwrap()
        .0
    }

    /// A worker's one-time tokens cannot buy a serving certificate for another name (the
    /// API server's, say): kubelets may name only their node, kube-proxy nothing.
    #[test]
    fn subject_alternative_names_follow_the_token() {
        use Allowed::*;
        let kubelet = "system:node:w1";
        let control_plane: Vec<std::net::IpAddr> = vec!["10.0.0.1".parse().unwrap()];
        let sans = |allowed, cn, csr: &str| check_sans(allowed, cn, csr, &control_plane);
        for ip in ["10.0.0.1", "0.0.0.0", "224.0.0.1"] {
            let foreign = csr_for(kubelet, &["w1"], &[ip]);
            assert!(sans(Kubelet, kubelet, &foreign).is_err(), "{ip}");
        }
        let good = csr_for(kubelet, &["w1"], &["10.0.0.9", "fd00::9"]);
        assert_eq!(sans(Kubelet, kubelet, &good), Ok(true));
        let api = csr_for(kubelet, &["w1", "kubernetes.default.svc"], &[]);
        assert!(sans(Kubelet, kubelet, &api).is_err());
        let plain = csr_for("system:kube-proxy", &[], &[]);
        assert_eq!(sans(KubeProxy, "system:kube-proxy", &plain), Ok(false));
        let named = csr_for("system:kube-proxy", &[], &["10.152.183.1"]);
        assert!(sans(KubeProxy, "system:kube-proxy", &named).is_err());
        assert!(sans(Other, "flanneld", &named).is_err());

        // A client-only certificate cannot serve TLS.
        let ca = crate::pki::Authority::generate("ca").unwrap();
        let pem = ca
            .sign_csr(&plain, "system:kube-proxy", None, false)
            .unwrap();
        let der = crate::pki::first_cert_der(&pem, "leaf").unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
    }

    #[test]
    fn garbage_csr_is_an_error() {
        assert!(csr_subject("CSR DATA").is_err());
        assert!(csr_subject(
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
        )
        .is_err());
    }
}
