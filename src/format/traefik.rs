//! `traefik.yaml` (static config) and `provider.yaml` (the upstream list) in MicroK8s's
//! formats, and upstream addresses. Pure: text in, values out.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;

use serde_yaml::Value;

/// `entryPoints.apiserver.address` when traefik.yaml does not say.
pub const DEFAULT_ADDRESS: &str = ":16443";

/// What the proxy reads from traefik.yaml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticConfig {
    /// Listen address as written (`:16443`, `IP:PORT`).
    pub address: String,
    /// `providers.file.filename`, as written.
    pub provider_file: Option<PathBuf>,
    /// `providers.file.watch`.
    pub watch: bool,
    /// Keys we do not understand (MicroK8s warns about them too); the caller logs them.
    pub ignored_keys: Vec<String>,
}

/// Parses traefik.yaml. Unknown keys are collected, not errors; wrong types are errors.
pub fn parse_static(text: &str) -> Result<StaticConfig, String> {
    let root: Value = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    let mut config = StaticConfig {
        address: DEFAULT_ADDRESS.to_string(),
        provider_file: None,
        watch: false,
        ignored_keys: Vec::new(),
    };
    let root = match root {
        Value::Null => return Ok(config),
        Value::Mapping(m) => m,
        _ => return Err("the document is not a mapping".into()),
    };
    for (key, value) in &root {
        match key.as_str() {
            Some("entryPoints") => {
                for (name, entry) in mapping(value, "entryPoints")? {
                    if name.as_str() != Some("apiserver") {
                        config
                            .ignored_keys
                            .push(format!("entryPoints.{}", key_text(name)));
                        continue;
                    }
                    for (k, v) in mapping(entry, "entryPoints.apiserver")? {
                        match k.as_str() {
                            Some("address") => {
                                config.address = string(v, "entryPoints.apiserver.address")?
                            }
                            _ => config
                                .ignored_keys
                                .push(format!("entryPoints.apiserver.{}", key_text(k))),
                        }
                    }
                }
            }
            Some("providers") => {
                for (name, provider) in mapping(value, "providers")? {
                    if name.as_str() != Some("file") {
                        config
                            .ignored_keys
                            .push(format!("providers.{}", key_text(name)));
                        continue;
                    }
                    for (k, v) in mapping(provider, "providers.file")? {
                        match k.as_str() {
                            Some("filename") => {
                                config.provider_file =
                                    Some(PathBuf::from(string(v, "providers.file.filename")?))
                            }
                            Some("watch") => {
                                config.watch = v.as_bool().ok_or(
                                    "providers.file.watch must be true or false".to_string(),
                                )?
                            }
                            _ => config
                                .ignored_keys
                                .push(format!("providers.file.{}", key_text(k))),
                        }
                    }
                }
            }
            _ => config.ignored_keys.push(key_text(key)),
        }
    }
    Ok(config)
}

fn mapping<'a>(value: &'a Value, what: &str) -> Result<Vec<(&'a Value, &'a Value)>, String> {
    match value {
        Value::Null => Ok(Vec::new()),
        Value::Mapping(m) => Ok(m.iter().collect()),
        _ => Err(format!("{what} must be a mapping")),
    }
}

fn string(value: &Value, what: &str) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(format!("{what} must be a string")),
    }
}

fn key_text(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        other => serde_yaml::to_string(other)
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
    }
}

/// Reads `tcp.services.kube-apiserver.loadBalancer.servers[].address` as written. A missing
/// path or `servers:` with only comments under it (MicroK8s's template) is an empty list.
pub fn parse_provider(text: &str) -> Result<Vec<String>, String> {
    let root: Value = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    let servers = [
        "tcp",
        "services",
        "kube-apiserver",
        "loadBalancer",
        "servers",
    ]
    .iter()
    .try_fold(&root, |node, key| node.get(key));
    let servers = match servers {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Sequence(items)) => items,
        Some(_) => {
            return Err("tcp.services.kube-apiserver.loadBalancer.servers is not a list".into())
        }
    };
    servers
        .iter()
        .map(|server| match server.get("address") {
            Some(v) => string(v, "servers[].address"),
            None => Err("an entry of servers has no address".into()),
        })
        .collect()
}

/// Renders provider.yaml exactly as MicroK8s's agent writes it (yaml.v2 layout: sequences are
/// not indented under their key; an address starting with `[` is single-quoted). The addresses
/// must be valid upstreams (`host:port`, `[v6]:port`), as [`Upstream`] renders them.
pub fn render_provider<A: AsRef<str>>(upstreams: &[A]) -> String {
    let mut out = String::from(
        "tcp:\n  routers:\n    Router-1:\n      rule: HostSNI(`*`)\n      service: kube-apiserver\n      tls:\n        passthrough: true\n  services:\n    kube-apiserver:\n      loadBalancer:\n        servers:\n",
    );
    for upstream in upstreams {
        let address = upstream.as_ref();
        if address.starts_with('[') {
            out.push_str(&format!("        - address: '{address}'\n"));
        } else {
            out.push_str(&format!("        - address: {address}\n"));
        }
    }
    out
}

/// `args/traefik/traefik.yaml`: the listen address and where the provider file is.
pub fn render_traefik(provider: &std::path::Path) -> String {
    format!(
        "entryPoints:\n  apiserver:\n    address: \":16443\"\nproviders:\n  file:\n    filename: {}\n    watch: true\n",
        provider.display()
    )
}

/// One upstream API server: `host:port` with an IPv6 host bracketed. The text is canonical, so
/// equal upstreams compare equal and lists sort as MicroK8s sorts them (lexicographically).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Upstream {
    text: String,
    port: u16,
}

impl Upstream {
    /// Parses `host:port`, `[v6]:port`, a URL (`https://host:port/...`, only the host part is
    /// used, as MicroK8s does) or an unbracketed `v6:port` (which MicroK8s's Endpoints fallback
    /// wrote; the last colon separates the port).
    pub fn parse(input: &str) -> Result<Upstream, String> {
        let err = |reason: &str| format!("invalid upstream address {input:?}: {reason}");
        let mut s = input.trim();
        if let Some((_, rest)) = s.split_once("://") {
            s = rest.split('/').next().unwrap_or(rest);
            if let Some((_, host)) = s.rsplit_once('@') {
                s = host;
            }
        }
        if s.is_empty() {
            return Err(err("empty"));
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (host, port) = rest
                .split_once("]:")
                .ok_or_else(|| err("expected [IPv6]:PORT"))?;
            let ip: Ipv6Addr = host.parse().map_err(|_| err("not an IPv6 address"))?;
            (IpAddr::V6(ip).to_string(), port)
        } else {
            let (host, port) = s.rsplit_once(':').ok_or_else(|| err("missing port"))?;
            if host.contains(':') {
                let ip: Ipv6Addr = host.parse().map_err(|_| err("not host:port"))?;
                (IpAddr::V6(ip).to_string(), port)
            } else if let Ok(ip) = host.parse::<IpAddr>() {
                (ip.to_string(), port)
            } else if is_dns_name(host) {
                (host.to_ascii_lowercase(), port)
            } else {
                return Err(err("not an IP address or host name"));
            }
        };
        let port: u16 = port.parse().map_err(|_| err("invalid port"))?;
        if port == 0 {
            return Err(err("port 0"));
        }
        Ok(Upstream::from_parts(&host, port))
    }

    /// From an already valid host (IP without brackets, or DNS name) and port.
    pub(crate) fn from_parts(host: &str, port: u16) -> Upstream {
        let text = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Upstream { text, port }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The host without brackets.
    pub fn host(&self) -> &str {
        let host = &self.text[..self.text.len() - self.port.to_string().len() - 1];
        host.trim_start_matches('[').trim_end_matches(']')
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The socket address when the host is an IP literal (no DNS needed).
    pub fn socket_addr(&self) -> Option<std::net::SocketAddr> {
        self.host()
            .parse::<IpAddr>()
            .ok()
            .map(|ip| std::net::SocketAddr::new(ip, self.port))
    }
}

impl AsRef<str> for Upstream {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn is_dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// Parses every address; invalid ones are returned separately so the caller can warn about
/// them. The valid ones come back sorted and without duplicates.
pub fn parse_upstreams(addresses: &[String]) -> (Vec<Upstream>, Vec<String>) {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for address in addresses {
        match Upstream::parse(address) {
            Ok(u) => good.push(u),
            Err(e) => bad.push(e),
        }
    }
    good.sort();
    good.dedup();
    (good, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ups(list: &[&str]) -> Vec<Upstream> {
        list.iter().map(|s| Upstream::parse(s).unwrap()).collect()
    }

    #[test]
    fn microk8s_traefik_template() {
        let text = "entryPoints:\n  apiserver:\n    address: \":16443\"\nproviders:\n  file:\n    filename: /var/snap/microk8s/x1/args/traefik/provider.yaml\n    watch: true\n";
        let c = parse_static(text).unwrap();
        assert_eq!(c.address, ":16443");
        assert_eq!(
            c.provider_file,
            Some(PathBuf::from(
                "/var/snap/microk8s/x1/args/traefik/provider.yaml"
            ))
        );
        assert!(c.watch);
        assert!(c.ignored_keys.is_empty());
    }

    #[test]
    fn static_defaults_and_unknown_keys() {
        let c = parse_static("").unwrap();
        assert_eq!(c.address, DEFAULT_ADDRESS);
        assert_eq!(c.provider_file, None);
        assert!(!c.watch);
        let c = parse_static(
            "log:\n  level: DEBUG\nentryPoints:\n  web:\n    address: \":80\"\n  apiserver:\n    address: 127.0.0.1:16443\n    http: {}\nproviders:\n  docker: {}\n",
        )
        .unwrap();
        assert_eq!(c.address, "127.0.0.1:16443");
        assert_eq!(
            c.ignored_keys,
            vec![
                "log",
                "entryPoints.web",
                "entryPoints.apiserver.http",
                "providers.docker"
            ]
        );
    }

    #[test]
    fn static_type_errors() {
        assert!(parse_static("- a\n").is_err());
        assert!(parse_static("providers:\n  file:\n    watch: maybe\n").is_err());
        assert!(parse_static("entryPoints: 3\n").is_err());
        assert!(parse_static("entryPoints: [\n").is_err());
    }

    #[test]
    fn microk8s_provider_template_with_one_server() {
        // What join.py writes: the template loaded, one server set, dumped by PyYAML.
        let text = "tcp:\n  routers:\n    Router-1:\n      rule: HostSNI(`*`)\n      service: kube-apiserver\n      tls:\n        passthrough: true\n  services:\n    kube-apiserver:\n      loadBalancer:\n        servers:\n        - address: 10.130.0.2:16443\n";
        assert_eq!(parse_provider(text).unwrap(), vec!["10.130.0.2:16443"]);
    }

    #[test]
    fn provider_template_without_servers_is_empty() {
        let text = "tcp:\n  services:\n    kube-apiserver:\n      loadBalancer:\n        servers:\n# APISERVERS\n#      - address: \"10.130.0.2:16443\"\n";
        assert_eq!(parse_provider(text).unwrap(), Vec::<String>::new());
        assert_eq!(parse_provider("").unwrap(), Vec::<String>::new());
        assert!(parse_provider(
            "tcp:\n  services:\n    kube-apiserver:\n      loadBalancer:\n        servers: 3\n"
        )
        .is_err());
        assert!(parse_provider("tcp:\n  services:\n    kube-apiserver:\n      loadBalancer:\n        servers:\n        - url: x\n").is_err());
    }

    #[test]
    fn render_is_microk8s_layout() {
        let text = render_provider(&ups(&["10.0.0.4:16443", "10.0.0.5:16443"]));
        assert_eq!(
            text,
            "tcp:\n  routers:\n    Router-1:\n      rule: HostSNI(`*`)\n      service: kube-apiserver\n      tls:\n        passthrough: true\n  services:\n    kube-apiserver:\n      loadBalancer:\n        servers:\n        - address: 10.0.0.4:16443\n        - address: 10.0.0.5:16443\n"
        );
    }

    #[test]
    fn provider_round_trip() {
        let list = ups(&["10.0.0.4:16443", "[fd00::1]:16443", "api.example.com:6443"]);
        let text = render_provider(&list);
        assert!(text.contains("- address: '[fd00::1]:16443'\n"), "{text}");
        let back = parse_provider(&text).unwrap();
        let (parsed, bad) = parse_upstreams(&back);
        assert!(bad.is_empty());
        let mut sorted = list.clone();
        sorted.sort();
        assert_eq!(parsed, sorted);
        // Rendering what we parsed gives the same bytes again.
        assert_eq!(render_provider(&parsed), render_provider(&sorted));
    }

    #[test]
    fn upstream_forms() {
        let cases = [
            ("10.0.0.4:16443", "10.0.0.4:16443"),
            (" 10.0.0.4:16443 ", "10.0.0.4:16443"),
            ("https://10.0.0.4:16443", "10.0.0.4:16443"),
            ("https://10.0.0.4:16443/path", "10.0.0.4:16443"),
            ("[::1]:16443", "[::1]:16443"),
            ("[FD00:0::1]:1", "[fd00::1]:1"),
            // MicroK8s's Endpoints fallback wrote IPv6 without brackets.
            (
                "fe80::e0b9:bfff:fe90:8d37:16643",
                "[fe80::e0b9:bfff:fe90:8d37]:16643",
            ),
            ("Master-1.Example.com:16443", "master-1.example.com:16443"),
        ];
        for (input, want) in cases {
            assert_eq!(Upstream::parse(input).unwrap().as_str(), want, "{input}");
        }
        for bad in [
            "",
            "10.0.0.4",
            "10.0.0.4:",
            "10.0.0.4:0",
            "10.0.0.4:65536",
            "10.0.0.4:x",
            "[::1]",
            "[zz::1]:5",
            "bad_host:1",
            "-x:1",
            "https://",
        ] {
            assert!(Upstream::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn upstream_parts() {
        let u = Upstream::parse("[fd00::1]:16443").unwrap();
        assert_eq!(u.host(), "fd00::1");
        assert_eq!(u.port(), 16443);
        assert_eq!(u.socket_addr().unwrap().to_string(), "[fd00::1]:16443");
        let u = Upstream::parse("api.example.com:6443").unwrap();
        assert_eq!(u.host(), "api.example.com");
        assert_eq!(u.socket_addr(), None);
    }

    #[test]
    fn parse_upstreams_sorts_dedups_and_reports_bad() {
        let input: Vec<String> = ["3.3.3.3:16443", "1.1.1.1:16443", "nope", "1.1.1.1:16443"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (good, bad) = parse_upstreams(&input);
        assert_eq!(good, ups(&["1.1.1.1:16443", "3.3.3.3:16443"]));
        assert_eq!(bad.len(), 1);
        assert!(bad[0].contains("nope"));
    }

    #[test]
    fn provider_lists_every_control_plane() {
        let text = render_provider(&["10.0.0.4:16443", "[fd00::1]:16443"]);
        let v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        let servers = &v["tcp"]["services"]["kube-apiserver"]["loadBalancer"]["servers"];
        assert_eq!(servers[0]["address"].as_str(), Some("10.0.0.4:16443"));
        assert_eq!(servers[1]["address"].as_str(), Some("[fd00::1]:16443"));
    }

    #[test]
    fn traefik_file_names_the_provider_and_parses_back() {
        let text = render_traefik(std::path::Path::new("/s/args/traefik/provider.yaml"));
        let parsed = parse_static(&text).unwrap();
        assert_eq!(parsed.address, ":16443");
        assert!(parsed.watch);
    }
}
