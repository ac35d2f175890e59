//! `certs/csr.conf.template`: the openssl request configuration from which the snap renders
//! the API server's certificate. The snap's `render_csr_conf` numbers the host's own IPs from
//! `IP.3` on, skipping numbers the template already uses, and puts them at `#MOREIPS`.

/// SANs every API server certificate carries.
pub const DEFAULT_DNS: [&str; 5] = [
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster",
    "kubernetes.default.svc.cluster.local",
];
pub const DEFAULT_IPS: [&str; 2] = ["127.0.0.1", "10.152.183.1"];

/// The template with the default SANs and `extra` (an IP goes to `IP.n`, anything else to
/// `DNS.n`), numbered from 1 as in the snap's own template.
pub fn render(extra: &[String]) -> String {
    let mut dns: Vec<&str> = DEFAULT_DNS.to_vec();
    let mut ips: Vec<&str> = DEFAULT_IPS.to_vec();
    for san in extra {
        if san.parse::<std::net::IpAddr>().is_ok() {
            ips.push(san);
        } else {
            dns.push(san);
        }
    }
    let mut alt_names = String::new();
    for (i, name) in dns.iter().enumerate() {
        alt_names.push_str(&format!("DNS.{} = {name}\n", i + 1));
    }
    for (i, ip) in ips.iter().enumerate() {
        alt_names.push_str(&format!("IP.{} = {ip}\n", i + 1));
    }
    format!(
        "[ req ]\n\
         default_bits = 2048\n\
         prompt = no\n\
         default_md = sha256\n\
         req_extensions = req_ext\n\
         distinguished_name = dn\n\
         \n\
         [ dn ]\n\
         C = GB\n\
         ST = Canonical\n\
         L = Canonical\n\
         O = Canonical\n\
         OU = Canonical\n\
         CN = 127.0.0.1\n\
         \n\
         [ req_ext ]\n\
         subjectAltName = @alt_names\n\
         \n\
         [ alt_names ]\n\
         {alt_names}\
         #MOREIPS\n\
         \n\
         [ v3_ext ]\n\
         authorityKeyIdentifier=keyid,issuer:always\n\
         basicConstraints=CA:FALSE\n\
         keyUsage=keyEncipherment,dataEncipherment,digitalSignature\n\
         extendedKeyUsage=serverAuth,clientAuth\n\
         subjectAltName=@alt_names\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_sans_follow_the_defaults() {
        let text = render(&["10.10.10.10".into(), "microk8s.example.com".into()]);
        assert!(text.contains(
            "DNS.5 = kubernetes.default.svc.cluster.local\nDNS.6 = microk8s.example.com\n"
        ));
        assert!(text.contains("IP.2 = 10.152.183.1\nIP.3 = 10.10.10.10\n#MOREIPS\n"));
        assert!(text.starts_with("[ req ]\n"));
        assert!(text.ends_with("subjectAltName=@alt_names\n"));
    }

    #[test]
    fn no_extra_sans_is_the_stock_template() {
        let text = render(&[]);
        assert!(text.contains("DNS.5 = kubernetes.default.svc.cluster.local\nIP.1 = 127.0.0.1\nIP.2 = 10.152.183.1\n#MOREIPS\n"));
    }
}
