//! Conformance of the :25000 API with MicroK8s's wire protocol, and our hardening, against
//! real daemons on 127.x.y.z addresses.
// Tests set up their fixtures and tools directly; the layer rules are for src/.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    clippy::disallowed_types
)]

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

struct Api {
    node: Node,
}

impl Api {
    fn start() -> Api {
        Self::start_with(&[])
    }

    /// These tests write `cluster.yaml` by hand, so no embedded member may rewrite it.
    fn start_with(extra: &[&str]) -> Api {
        let mut args = vec!["--datastore", "external"];
        args.extend_from_slice(extra);
        Api {
            node: Node::start_with(&args),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}{}", self.node.bind(), path)
    }

    /// A client connecting from `from` (a loopback address other than the node's).
    fn client_from(&self, from: Ipv4Addr) -> reqwest::blocking::Client {
        self.client_builder_from(from).build().unwrap()
    }

    /// [`Api::client_from`] before it is built, for clients that need more settings.
    fn client_builder_from(&self, from: Ipv4Addr) -> reqwest::blocking::ClientBuilder {
        let ca = std::fs::read(self.node.state.join("certs/ca.crt")).unwrap();
        reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .local_address(IpAddr::V4(from))
    }

    fn post(&self, from: Ipv4Addr, path: &str, body: &str) -> (u16, String) {
        let resp = self
            .client_from(from)
            .post(self.url(path))
            .body(body.to_string())
            .send()
            .unwrap();
        (resp.status().as_u16(), resp.text().unwrap())
    }

    fn post_json(&self, from: Ipv4Addr, path: &str, body: &Value) -> (u16, Value) {
        let (status, text) = self.post(from, path, &body.to_string());
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    fn add_node(&self, extra: &[&str]) -> String {
        let mut args = vec!["add-node", "--format", "token"];
        args.extend_from_slice(extra);
        let out = cli(&self.node, &args);
        assert!(
            out.status.success(),
            "add-node failed: {}",
            text(&out.stderr)
        );
        text(&out.stdout).trim().to_string()
    }

    fn join_body(&self, token: &str, worker: bool) -> Value {
        json!({"token": token, "hostname": "joiner", "port": "25000", "worker": worker,
               "can_handle_x509_auth": true, "can_handle_custom_etcd": true})
    }

    fn file(&self, rel: &str) -> String {
        std::fs::read_to_string(self.node.state.join(rel)).unwrap_or_default()
    }

    fn write(&self, rel: &str, content: &str) {
        let p = self.node.state.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
}

fn keys(v: &Value) -> Vec<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

const JOIN: &str = "/cluster/api/v2.0/join";

#[test]
fn v2_control_plane_join_response() {
    let api = Api::start();
    api.write(
        "var/kubernetes/backend/cluster.yaml",
        "- Address: 10.10.10.10:19001\n  ID: 1\n  Role: 0\n- Address: 10.10.10.11:19001\n  ID: 2\n  Role: 0\n- Address: 10.10.10.100:19001\n  ID: 3\n  Role: 2\n",
    );
    let token = api.add_node(&[]);
    let from = unique_loopback();
    let (status, body) = api.post_json(from, JOIN, &api.join_body(&token, false));
    assert_eq!(status, 200, "{body}");
    let raw_keys = keys(&body);
    // serde_json::Value sorts keys; check presence and the exact set instead.
    let mut want = vec![
        "ca",
        "callback_token",
        "apiport",
        "api_authz_mode",
        "kubelet_args",
        "hostname_override",
        "voters",
        "service_account_key",
        "ca_key",
        "cluster_cert",
        "cluster_key",
        "control_plane_nodes",
        "cluster_cidr",
    ];
    want.sort();
    assert_eq!(raw_keys, want);
    assert_eq!(body["ca"], api.file("certs/ca.crt"));
    assert_eq!(body["ca_key"], api.file("certs/ca.key"));
    assert_eq!(
        body["service_account_key"],
        api.file("certs/serviceaccount.key")
    );
    assert_eq!(
        body["cluster_cert"],
        api.file("var/kubernetes/backend/cluster.crt")
    );
    assert_eq!(
        body["cluster_key"],
        api.file("var/kubernetes/backend/cluster.key")
    );
    assert_eq!(
        body["callback_token"],
        api.file("credentials/callback-token.txt").trim()
    );
    assert_eq!(
        body["voters"],
        json!(["10.10.10.10:19001", "10.10.10.11:19001"])
    );
    assert_eq!(body["control_plane_nodes"], Value::Null);
    assert_eq!(body["hostname_override"], from.to_string());
    assert_eq!(body["apiport"], "16443");
    assert_eq!(body["cluster_cidr"], "10.1.0.0/16");
    assert_eq!(body["kubelet_args"], api.file("args/kubelet"));
    assert!(api.node.state.join("var/lock/no-cert-reissue").exists());
    // The single-use token is gone.
    let (status, body) = api.post_json(unique_loopback(), JOIN, &api.join_body(&token, false));
    assert_eq!((status, body), (500, json!({"error": "Invalid token"})));
}

#[test]
fn v2_worker_join_response_and_cert_request_tokens() {
    let api = Api::start();
    let token = api.add_node(&[]);
    let (status, text) = api.post(
        unique_loopback(),
        JOIN,
        &api.join_body(&token, true).to_string(),
    );
    assert_eq!(status, 200, "{text}");
    // Field order and nulls as MicroK8s's Go structs.
    let order: Vec<usize> = [
        "\"ca\":",
        "\"callback_token\":",
        "\"apiport\":",
        "\"api_authz_mode\":",
        "\"kubelet_args\":",
        "\"hostname_override\":",
        "\"service_account_key\":\"\"",
        "\"ca_key\":null",
        "\"control_plane_nodes\":[",
        "\"cluster_cidr\":",
    ]
    .iter()
    .map(|k| {
        text.find(k)
            .unwrap_or_else(|| panic!("{k} missing in {text}"))
    })
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert!(body.get("voters").is_none());
    assert!(body.get("cluster_cert").is_none());
    assert_eq!(
        body["control_plane_nodes"],
        json!([api.node.ip.to_string()])
    );
    let certs = api.file("credentials/certs-request-tokens.txt");
    assert_eq!(certs, format!("{token}-kubelet\n{token}-proxy\n"));
}

#[test]
fn worker_value_is_lenient_like_microk8s() {
    let api = Api::start();
    for (raw, worker) in [
        (json!("as-worker"), true),
        (json!("as-controlplane"), false),
        (json!(null), false),
        (json!("true"), false),
    ] {
        let token = api.add_node(&[]);
        let mut body = api.join_body(&token, false);
        body["worker"] = raw.clone();
        let (status, resp) = api.post_json(unique_loopback(), JOIN, &body);
        assert_eq!(status, 200, "{raw}: {resp}");
        assert_eq!(resp["ca_key"].is_null(), worker, "{raw}");
    }
}

#[test]
fn failed_preflight_keeps_the_token() {
    let api = Api::start();
    let token = api.add_node(&[]);
    let from = unique_loopback();
    let mut body = api.join_body(&token, false);
    body["port"] = json!("12345");
    let (status, resp) = api.post_json(from, JOIN, &body);
    assert_eq!(
        (status, resp),
        (
            502,
            json!({"error": "The port of the cluster agent port has to be set to 25000"})
        )
    );
    // Same IP as the node we contact.
    let (status, resp) = api.post_json(api.node.ip, JOIN, &api.join_body(&token, false));
    assert_eq!(
        (status, resp),
        (
            503,
            json!({"error": format!("The joining node has the same IP ({}) as the node we contact", api.node.ip)})
        )
    );
    // A token-auth cluster without an admin token: refused after the checks but before the
    // grant, so nothing is consumed or written.
    let args = api.file("args/kube-apiserver");
    api.write(
        "args/kube-apiserver",
        &format!("{args}--token-auth-file=${{SNAP_DATA}}/credentials/known_tokens.csv\n"),
    );
    let before = snapshot(&api.node.state);
    let (status, resp) = api.post_json(from, JOIN, &api.join_body(&token, false));
    assert_eq!(status, 500);
    assert!(resp["error"]
        .as_str()
        .unwrap()
        .starts_with("Failed to retrieve token for admin user"));
    assert_eq!(before, snapshot(&api.node.state));
    api.write(
        "credentials/known_tokens.csv",
        "admin-token,admin,admin,\"system:masters\"\n",
    );
    // Retried with the causes fixed, the same token works.
    let (status, resp) = api.post_json(from, JOIN, &api.join_body(&token, false));
    assert_eq!(status, 200);
    assert_eq!(resp["admin_token"], "admin-token");
}

#[test]
fn not_ha_hostname_and_already_known_refusals() {
    let api = Api::start();
    let token = api.add_node(&[]);
    let from = unique_loopback();

    api.write(
        "var/kubernetes/backend/cluster.yaml",
        &format!("- Address: {from}:19001\n  ID: 9\n  Role: 0\n"),
    );
    let (status, resp) = api.post_json(from, JOIN, &api.join_body(&token, false));
    assert_eq!(status, 500);
    assert_eq!(
        resp["error"],
        format!("Failed to retrieve dqlite cluster nodes: the joining node ({from}) is already known to dqlite")
    );
    std::fs::remove_file(api.node.state.join("var/kubernetes/backend/cluster.yaml")).unwrap();

    let args = api.file("args/kube-apiserver").replace(
        "--kubelet-preferred-address-types=InternalIP,Hostname,InternalDNS,ExternalDNS,ExternalIP",
        "--kubelet-preferred-address-types=Hostname,InternalIP",
    );
    api.write("args/kube-apiserver", &args);
    let (status, resp) = api.post_json(from, JOIN, &api.join_body(&token, false));
    assert_eq!(status, 400);
    assert_eq!(
        resp["error"],
        format!("The hostname (joiner) of the joining node does not resolve to the IP \"{from}\". Refusing join")
    );

    std::fs::remove_file(api.node.state.join("var/lock/ha-cluster")).unwrap();
    let (status, resp) = api.post_json(from, JOIN, &api.join_body(&token, false));
    assert_eq!(
        (status, resp),
        (
            501,
            json!({"error": "Not possible to join. This is not an HA MicroK8s cluster"})
        )
    );

    // A callback or port that would forge lines in callback-tokens.txt is refused.
    let before = snapshot(&api.node.state);
    for (callback, port) in [
        ("cb\n6.6.6.6:25000 evil", "25000"),
        ("cb", "25000\nx"),
        ("", "25000"),
    ] {
        let (status, resp) = api.post_json(
            from,
            "/cluster/api/v1.0/join",
            &json!({"token": token, "hostname": "joiner", "port": port, "callback": callback, "can_handle_x509_auth": true}),
        );
        assert_eq!(status, 400, "{callback:?} {port:?}: {resp}");
    }
    assert_eq!(before, snapshot(&api.node.state));

    // v1 join works on a non-HA node (legacy shape).
    let (status, resp) = api.post_json(
        from,
        "/cluster/api/v1.0/join",
        &json!({"token": token, "hostname": "joiner", "port": "25000", "callback": "cb-token", "can_handle_x509_auth": true}),
    );
    assert_eq!(status, 200, "{resp}");
    let mut want = vec![
        "ca",
        "etcd",
        "api_authn_mode",
        "apiport",
        "kubeproxy",
        "kubelet",
        "kubelet_args",
        "hostname_override",
        "cluster_cidr",
    ];
    want.sort();
    assert_eq!(keys(&resp), want);
    assert_eq!(resp["api_authn_mode"], "Cert");
    assert_eq!(resp["kubelet"], token);
    assert_eq!(resp["hostname_override"], from.to_string());
    assert!(resp["kubelet_args"]
        .as_str()
        .unwrap()
        .ends_with(&format!("\n--hostname-override={from}")));
    assert_eq!(
        api.file("credentials/callback-tokens.txt"),
        format!("{from}:25000 cb-token\n")
    );
}

#[test]
fn v1_join_refuses_on_ha_clusters() {
    let api = Api::start();
    let token = api.add_node(&[]);
    let (status, resp) = api.post_json(
        unique_loopback(),
        "/cluster/api/v1.0/join",
        &api.join_body(&token, false),
    );
    assert_eq!(status, 500);
    assert!(resp["error"]
        .as_str()
        .unwrap()
        .starts_with("Failed to join the cluster. This is an HA MicroK8s cluster."));
    // The refusal did not consume the token.
    let (status, _) = api.post_json(unique_loopback(), JOIN, &api.join_body(&token, true));
    assert_eq!(status, 200);
}

/// v1 join from a node that cannot do x509 (MicroK8s's `Success/TokenAuth`): static tokens
/// from `known_tokens.csv`, a new kubelet token for the joiner, the API server restarted;
/// without a token file such a joiner is refused and nothing changes.
#[test]
fn v1_join_token_auth_mode() {
    let api = Api::start();
    std::fs::remove_file(api.node.state.join("var/lock/ha-cluster")).unwrap();
    let token = api.add_node(&[]);
    let from = unique_loopback();
    let body = json!({"token": token, "hostname": "joiner", "port": "25000", "callback": "cb-token", "can_handle_x509_auth": false});

    // No --token-auth-file: refused before anything is written or consumed.
    let before = snapshot(&api.node.state);
    let (status, resp) = api.post_json(from, "/cluster/api/v1.0/join", &body);
    assert_eq!(status, 500);
    assert_eq!(resp["error"], "Joining this MicroK8s cluster requires x509 authentication. update MicroK8s to version 1.28 or newer and retry the join operation");
    assert_eq!(before, snapshot(&api.node.state));

    let args = api.file("args/kube-apiserver");
    api.write(
        "args/kube-apiserver",
        &format!("{args}--token-auth-file=${{SNAP_DATA}}/credentials/known_tokens.csv\n"),
    );
    // A token file without kube-proxy's token: refused, token kept.
    api.write(
        "credentials/known_tokens.csv",
        "admin-token,admin,admin,\"system:masters\"\n",
    );
    let (status, resp) = api.post_json(from, "/cluster/api/v1.0/join", &body);
    assert_eq!(status, 500);
    assert!(resp["error"]
        .as_str()
        .unwrap()
        .starts_with("Failed to retrieve kube-proxy token"));

    api.write(
        "credentials/known_tokens.csv",
        "admin-token,admin,admin,\"system:masters\"\nkube-proxy-token,system:kube-proxy,kube-proxy\n",
    );
    let (status, resp) = api.post_json(from, "/cluster/api/v1.0/join", &body);
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["api_authn_mode"], "Token");
    assert_eq!(resp["kubeproxy"], "kube-proxy-token");
    let kubelet = resp["kubelet"].as_str().unwrap();
    assert_eq!(kubelet.len(), 32);
    let known = api.file("credentials/known_tokens.csv");
    let line = known.lines().last().unwrap();
    assert!(
        line.starts_with(&format!("{kubelet},system:node:{from},kubelet-")),
        "{known}"
    );
    assert!(line.ends_with(",\"system:nodes\""), "{known}");
    // Only the join token itself becomes a certificate-request token.
    let requests = api.file("credentials/certs-request-tokens.txt");
    assert_eq!(requests.lines().collect::<Vec<_>>(), vec![token.as_str()]);
    // The API server is restarted to read the new token (service manager `none`: logged).
    let log = api.node.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("not touching services") && l.contains("apiserver")),
        "{log}"
    );
}

#[test]
fn ttl_single_use_and_persistent_tokens() {
    let api = Api::start();
    let ttl = api.add_node(&["--token-ttl", "3600"]);
    for _ in 0..3 {
        let (status, _) = api.post_json(unique_loopback(), JOIN, &api.join_body(&ttl, true));
        assert_eq!(status, 200);
    }
    let persistent = "p".repeat(40);
    api.write(
        "credentials/persistent-cluster-tokens.txt",
        &format!("{persistent}\n"),
    );
    for _ in 0..3 {
        let (status, _) = api.post_json(unique_loopback(), JOIN, &api.join_body(&persistent, true));
        assert_eq!(status, 200);
    }
    // An expired TTL token is refused.
    let expired = "e".repeat(32);
    let mut tokens = api.file("credentials/cluster-tokens.txt");
    tokens.push_str(&format!("{expired}|1000\n"));
    api.write("credentials/cluster-tokens.txt", &tokens);
    let (status, _) = api.post_json(unique_loopback(), JOIN, &api.join_body(&expired, true));
    assert_eq!(status, 500);
}

#[test]
fn whitespace_tokens_never_authenticate() {
    let api = Api::start();
    api.add_node(&[]); // cluster-tokens.txt ends with a newline, as MicroK8s's files do
    api.write("credentials/certs-request-tokens.txt", "\n");
    for t in [" ", "", "\t\n"] {
        let (status, resp) = api.post_json(unique_loopback(), JOIN, &api.join_body(t, true));
        assert_eq!(
            (status, resp),
            (500, json!({"error": "Invalid token"})),
            "{t:?}"
        );
        let (status, _) = api.post_json(
            unique_loopback(),
            "/cluster/api/v1.0/sign-cert",
            &json!({"token": t, "request": "x"}),
        );
        assert_eq!(status, 500, "{t:?}");
        let (status, _) = api.post_json(
            unique_loopback(),
            "/cluster/api/v1.0/configure",
            &json!({"callback": t}),
        );
        assert_eq!(status, 500, "{t:?}");
    }
}

#[test]
fn concurrent_joins_with_one_single_use_token_grant_exactly_one() {
    let api = Api::start();
    let token = api.add_node(&[]);
    let body = api.join_body(&token, true).to_string();
    let handles: Vec<_> = (0..16)
        .map(|_| {
            let client = api.client_from(unique_loopback());
            let url = api.url(JOIN);
            let body = body.clone();
            std::thread::spawn(move || {
                client
                    .post(url)
                    .body(body)
                    .send()
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let statuses: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 500),
        "{statuses:?}"
    );
}

#[test]
fn concurrent_joins_with_one_scoped_token_grant_exactly_one_and_the_wrong_role_none() {
    let api = Api::start();
    let token = api.add_node(&["--role", "worker"]);
    let race = |worker: bool| -> Vec<u16> {
        let body = api.join_body(&token, worker).to_string();
        let handles: Vec<_> = (0..16)
            .map(|_| {
                let client = api.client_from(unique_loopback());
                let (url, body) = (api.url(JOIN), body.clone());
                std::thread::spawn(move || {
                    client
                        .post(url)
                        .body(body)
                        .send()
                        .unwrap()
                        .status()
                        .as_u16()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    };
    // Control-plane joins with a worker token: every one refused (403), nothing consumed.
    let statuses = race(false);
    assert!(statuses.iter().all(|s| *s == 403), "{statuses:?}");
    assert!(api.file("credentials/cluster-tokens.txt").contains(&token));
    // Worker joins: exactly one is granted.
    let statuses = race(true);
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 500),
        "{statuses:?}"
    );
    let audit = api.file("var/log/cluster-agent-audit.jsonl");
    assert_eq!(audit.matches("\"wrong_role\"").count(), 16, "{audit}");
    assert!(!audit.contains(&token));
}

#[test]
fn rate_limit_kicks_in_and_expires() {
    let api = Api::start_with(&["--auth-failure-limit", "3", "--auth-failure-window", "2s"]);
    let token = api.add_node(&["--token-ttl", "3600"]);
    let from = unique_loopback();
    for _ in 0..3 {
        let (status, _) = api.post_json(from, JOIN, &api.join_body(&"x".repeat(32), true));
        assert_eq!(status, 500);
    }
    // Blocked now, even with a valid token; other sources are not affected.
    let (status, resp) = api.post_json(from, JOIN, &api.join_body(&token, true));
    assert_eq!(status, 429, "{resp}");
    let (status, _) = api.post_json(unique_loopback(), JOIN, &api.join_body(&token, true));
    assert_eq!(status, 200);
    // Successful joins never count towards the limit.
    let other = unique_loopback();
    for _ in 0..5 {
        let (status, _) = api.post_json(other, JOIN, &api.join_body(&token, true));
        assert_eq!(status, 200);
    }
    eventually("rate limit to expire", Duration::from_secs(10), || {
        let (status, _) = api.post_json(from, JOIN, &api.join_body(&token, true));
        (status == 200).then_some(())
    });
}

/// A CSR as a worker makes it: a kubelet names its node (`w1`), others name nothing.
fn csr(cn: &str, org: Option<&str>) -> String {
    csr_naming(
        cn,
        org,
        if cn.starts_with("system:node:") {
            &["w1"]
        } else {
            &[]
        },
    )
}

fn csr_naming(cn: &str, org: Option<&str>, dns: &[&str]) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let dns: Vec<String> = dns.iter().map(|d| d.to_string()).collect();
    let mut params = rcgen::CertificateParams::new(dns).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    if let Some(o) = org {
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, o);
    }
    params.serialize_request(&key).unwrap().pem().unwrap()
}

#[test]
fn sign_cert_signs_only_the_allowed_identity_once() {
    let api = Api::start();
    let token = api.add_node(&[]);
    let from = unique_loopback();
    let (status, _) = api.post_json(from, JOIN, &api.join_body(&token, true));
    assert_eq!(status, 200);
    let sign = "/cluster/api/v1.0/sign-cert";

    // A cluster-admin certificate is refused, and the token survives the refusal.
    let (status, resp) = api.post_json(from, sign, &json!({"token": format!("{token}-kubelet"), "request": csr("admin", Some("system:masters"))}));
    assert_eq!(status, 403, "{resp}");
    assert!(resp["error"].as_str().unwrap().contains("not allowed"));
    let (status, resp) = api.post_json(
        from,
        sign,
        &json!({"token": format!("{token}-kubelet"), "request": "CSR DATA"}),
    );
    assert_eq!(status, 400, "{resp}");

    let (status, resp) = api.post_json(from, sign, &json!({"token": format!("{token}-kubelet"), "request": csr("system:node:w1", Some("system:nodes"))}));
    assert_eq!(status, 200, "{resp}");
    let pem = resp["certificate"].as_str().unwrap();
    let leaf = api.node.state.join("kubelet-test.crt");
    std::fs::write(&leaf, pem).unwrap();
    let out = std::process::Command::new("openssl")
        .args([
            "verify",
            "-CAfile",
            api.node.state.join("certs/ca.crt").to_str().unwrap(),
            leaf.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let subject = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-in", leaf.to_str().unwrap()])
        .output()
        .unwrap();
    let subject = text(&subject.stdout);
    assert!(
        subject.contains("system:node:w1") && subject.contains("system:nodes"),
        "{subject}"
    );

    // One-time: the second use is refused.
    let (status, resp) = api.post_json(from, sign, &json!({"token": format!("{token}-kubelet"), "request": csr("system:node:w1", Some("system:nodes"))}));
    assert_eq!((status, resp), (500, json!({"error": "Invalid token"})));
    // The proxy token allows only a kube-proxy client certificate: naming a server (here
    // the API server's service name) is refused and keeps the token.
    let (status, resp) = api.post_json(
        from,
        sign,
        &json!({"token": format!("{token}-proxy"), "request": csr_naming("system:kube-proxy", None, &["kubernetes.default.svc"])}),
    );
    assert_eq!(status, 403, "{resp}");
    let (status, _) = api.post_json(
        from,
        sign,
        &json!({"token": format!("{token}-proxy"), "request": csr("system:kube-proxy", None)}),
    );
    assert_eq!(status, 200);
}

#[test]
fn configure_updates_args_with_the_callback_token() {
    let api = Api::start();
    let callback = api
        .file("credentials/callback-token.txt")
        .trim()
        .to_string();
    api.write(
        "args/kube-proxy",
        "--key=value2\n# keep me\n--feature-gates=A=true,B=false\n",
    );
    let path = "/cluster/api/v1.0/configure";
    let before = api.file("args/kube-proxy");
    let (status, _) = api.post_json(unique_loopback(), path, &json!({"callback": "wrong", "service": [{"name": "kube-proxy", "arguments_remove": ["--key"]}]}));
    assert_eq!(status, 500);
    assert_eq!(api.file("args/kube-proxy"), before);
    let (status, resp) = api.post_json(unique_loopback(), path, &json!({"callback": callback, "service": [{"name": "../../etc/x", "arguments_remove": ["--key"]}]}));
    assert_eq!(status, 400, "{resp}");
    // A value with a newline would add a flag of its own: refused, nothing written.
    let (status, resp) = api.post_json(unique_loopback(), path, &json!({"callback": callback, "service": [{"name": "kube-proxy", "arguments_update": [{"--v": "2\n--hostname-override=evil"}]}]}));
    assert_eq!(status, 400, "{resp}");
    assert_eq!(api.file("args/kube-proxy"), before);
    let (status, resp) = api.post_json(
        unique_loopback(),
        path,
        &json!({"callback": callback, "service": [{"name": "kube-proxy", "arguments_update": [{"--key": "new"}, {"--v": "2"}], "arguments_remove": ["--feature-gates"], "restart": "yes"}], "addon": []}),
    );
    assert_eq!((status, resp), (200, json!({"result": "ok"})));
    assert_eq!(api.file("args/kube-proxy"), "--key=new\n# keep me\n--v=2\n");
}

#[test]
fn upgrade_image_import_and_dqlite_remove_auth() {
    let api = Api::start();
    let callback = api
        .file("credentials/callback-token.txt")
        .trim()
        .to_string();
    let from = unique_loopback();
    let (status, resp) = api.post_json(
        from,
        "/cluster/api/v1.0/upgrade",
        &json!({"callback": callback, "upgrade": "001-x", "phase": "explode"}),
    );
    assert_eq!(status, 500);
    assert_eq!(
        resp["error"],
        "Failed to run upgrade \"001-x\" phase \"explode\": unknown upgrade phase \"explode\""
    );
    let (status, _) = api.post_json(
        from,
        "/cluster/api/v1.0/upgrade",
        &json!({"callback": "nope", "upgrade": "u", "phase": "prepare"}),
    );
    assert_eq!(status, 500);

    let client = api.client_from(from);
    let resp = client
        .post(api.url("/cluster/api/v2.0/image/import"))
        .body("IMAGEDATA")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = client
        .post(api.url("/cluster/api/v2.0/image/import"))
        .header("X-MicroK8s-Callback-Token", &callback)
        .body("IMAGEDATA")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 500, "no containerd outside the snap");

    let remove = "/cluster/api/v2.0/dqlite/remove";
    let resp = client.get(api.url(remove)).send().unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.text().unwrap(), "");
    let resp = client
        .post(api.url(remove))
        .header("capi-auth-token", "t")
        .body(r#"{"remove_endpoint":"1.1.1.1:1234"}"#)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 500, "token file missing");
}

#[test]
fn dqlite_remove_checks_the_capi_token() {
    let dir = tempfile::tempdir().unwrap();
    let capi = dir.path().join("token");
    std::fs::write(&capi, "capi-secret\n").unwrap();
    let api = Api::start_with(&["--capi-token-file", capi.to_str().unwrap()]);
    let client = api.client_from(unique_loopback());
    let url = api.url("/cluster/api/v2.0/dqlite/remove");
    for bad in [None, Some(" "), Some("wrong")] {
        let mut req = client
            .post(&url)
            .body(r#"{"remove_endpoint":"1.1.1.1:1234"}"#);
        if let Some(t) = bad {
            req = req.header("capi-auth-token", t);
        }
        let resp = req.send().unwrap();
        assert_eq!(resp.status(), 401, "{bad:?}");
        assert!(
            !resp.text().unwrap().contains("wrong"),
            "the token is not echoed"
        );
    }
    let resp = client
        .post(&url)
        .header("capi-auth-token", "capi-secret")
        .body("{bad json")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 400);
}

#[test]
fn malformed_requests_get_clear_errors_and_change_nothing() {
    let api = Api::start();
    let token = api.add_node(&[]);
    let before = snapshot(&api.node.state);
    let from = unique_loopback();
    let cases: Vec<(String, u16)> = vec![
        (String::new(), 400),
        ("{".into(), 400),
        ("{} trailing".into(), 400),
        (r#"{"token": 42}"#.into(), 400),
        (
            r#"{"token": "x", "can_handle_x509_auth": "true"}"#.into(),
            400,
        ),
        ("[]".into(), 400),
        (
            format!(
                r#"{{"token":"{token}","pad":"{}"}}"#,
                "x".repeat(100 * 1024)
            ),
            413,
        ),
    ];
    for (body, want) in cases {
        let (status, resp) = api.post(from, JOIN, &body);
        assert_eq!(status, want, "{}: {resp}", &body[..body.len().min(40)]);
        let v: Value = serde_json::from_str(&resp).unwrap();
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{resp}");
    }
    let (status, resp) = api.post(from, JOIN, "");
    assert_eq!(
        (status, resp.as_str()),
        (400, r#"{"error":"Unexpected end of JSON input"}"#)
    );
    let client = api.client_from(from);
    for path in [
        JOIN,
        "/cluster/api/v1.0/join",
        "/cluster/api/v1.0/sign-cert",
        "/cluster/api/v1.0/configure",
        "/cluster/api/v1.0/upgrade",
        "/cluster/api/v2.0/image/import",
        "/health",
    ] {
        let method = if path == "/health" {
            reqwest::Method::POST
        } else {
            reqwest::Method::GET
        };
        let resp = client.request(method, api.url(path)).send().unwrap();
        assert_eq!(resp.status(), 404, "{path}");
        assert_eq!(resp.text().unwrap(), "", "{path}");
        // HEAD is a wrong method too.
        let resp = client.head(api.url(path)).send().unwrap();
        assert_eq!(resp.status(), 404, "HEAD {path}");
    }
    for path in ["/", "/cluster/api/v2.0/join/", "/cluster/api/v3/nope"] {
        let resp = client.post(api.url(path)).body("{}").send().unwrap();
        assert_eq!(resp.status(), 404);
        assert_eq!(resp.text().unwrap(), r#"{"error":"Not found"}"#);
    }
    let after = snapshot(&api.node.state);
    assert_eq!(before, after, "a rejected request changed files");
    // The token is still usable.
    let (status, _) = api.post_json(from, JOIN, &api.join_body(&token, true));
    assert_eq!(status, 200);
}

#[test]
fn audit_log_and_metrics_never_show_tokens() {
    let api = Api::start();
    let token = api.add_node(&[]);
    let from = unique_loopback();
    api.post_json(
        from,
        JOIN,
        &api.join_body("wrong-token-wrong-token-wrong-token", true),
    );
    api.post_json(from, JOIN, &api.join_body(&token, true));
    let audit = api.file("var/log/cluster-agent-audit.jsonl");
    let lines: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{audit}");
    assert_eq!(lines[0]["result"], "created");
    assert_eq!(lines[0]["source"], "local");
    assert_eq!(lines[0]["route"], "add-node");
    assert_eq!(lines[1]["result"], "invalid_token");
    assert_eq!(lines[2]["result"], "granted");
    assert_eq!(lines[2]["source"], from.to_string());
    assert_eq!(lines[2]["route"], JOIN);
    assert_eq!(lines[0]["token_id"], lines[2]["token_id"]);
    assert!(!audit.contains(&token) && !audit.contains("wrong-token"));
    assert!(!api.node.log_text().contains(&token));
    let metrics = api
        .client_from(from)
        .get(api.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains("cluster_agent_join_attempts_total{result=\"granted\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("cluster_agent_join_attempts_total{result=\"invalid_token\"} 1"));
    assert!(metrics.contains("cluster_agent_tokens_issued_total 1"));
    assert!(metrics.contains(
        "cluster_agent_request_duration_seconds_count{route=\"/cluster/api/v2.0/join\"} 2"
    ));
}

#[test]
fn add_node_output_shapes() {
    let api = Api::start();
    let run = |extra: &[&str]| {
        let mut args = vec!["add-node"];
        args.extend_from_slice(extra);
        let out = cli(&api.node, &args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let server_crt = std::fs::read_to_string(api.node.state.join("certs/server.crt")).unwrap();
    let check = cluster_agent::pki::fingerprint12(&server_crt).unwrap();
    let bind = api.node.bind();

    let pretty = run(&[]);
    let lines: Vec<&str> = pretty.lines().collect();
    assert_eq!(
        lines[0],
        "From the node you wish to join to this cluster, run the following:"
    );
    let url = lines[1].strip_prefix("cluster-agent join ").unwrap();
    let (addr, rest) = url.split_once('/').unwrap();
    assert_eq!(addr, bind);
    let (token, fp) = rest.split_once('/').unwrap();
    assert_eq!(token.len(), 32);
    assert_eq!(fp, check);
    assert_eq!(
        lines[4],
        format!("cluster-agent join {url} --worker").replace(token, token)
    );

    let short = run(&["--format", "short"]);
    assert!(short.starts_with(&format!("cluster-agent join {bind}/")));
    assert_eq!(short.lines().count(), 1);
    let tc = run(&["--format", "token-check"]);
    assert!(tc.trim().ends_with(&format!("/{check}")));
    let custom = "c".repeat(32);
    assert_eq!(
        run(&["--format", "token", "--token", &custom]).trim(),
        custom
    );
    let v: Value = serde_json::from_str(&run(&["--format", "json", "-l", "60"])).unwrap();
    let tok = v["token"].as_str().unwrap();
    assert!(tok.ends_with(&format!("/{check}")));
    assert_eq!(v["urls"][0], format!("{bind}/{tok}"));
    let conn =
        cluster_agent::format::connection::parse(v["token_string"].as_str().unwrap()).unwrap();
    match conn {
        cluster_agent::format::connection::Connection::Token(t) => {
            assert_eq!(t.addresses, vec![bind.clone()]);
            let ca = std::fs::read_to_string(api.node.state.join("certs/ca.crt")).unwrap();
            assert_eq!(
                t.ca_sha256,
                cluster_agent::pki::cert_sha256_hex(&ca, "ca").unwrap()
            );
        }
        other => panic!("{other:?}"),
    }
    let y: serde_yaml::Value = serde_yaml::from_str(&run(&["--format", "yaml"])).unwrap();
    assert!(y["token"].as_str().unwrap().ends_with(&check));
    assert!(y["urls"][0].as_str().unwrap().starts_with(&bind));
    // The TTL token was stored with its expiry.
    let tokens = api.file("credentials/cluster-tokens.txt");
    assert!(
        tokens
            .lines()
            .any(|l| l.starts_with(&format!("{}|", tok.split('/').next().unwrap()))),
        "{tokens}"
    );

    let out = cli(&api.node, &["add-node", "--token", "short"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("Invalid token size.  It must be 32 characters long."));
}

#[test]
fn add_node_without_a_daemon_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = cli_in(dir.path(), &["add-node"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot reach the cluster-agent daemon") && err.contains("cluster-agent.sock"),
        "{err}"
    );
    assert!(!err.contains("panicked"));
}

/// A Python interpreter that has `requests` (MicroK8s's scripts use it): Debian's, which
/// `.ci/run` gives the package, else whatever `python3` is first on PATH.
fn python_with_requests() -> Option<&'static str> {
    ["/usr/bin/python3", "python3"].into_iter().find(|py| {
        std::process::Command::new(py)
            .args(["-c", "import requests"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// An over-limit body is answered 413 with its JSON error to every kind of client, also to
/// those that send their whole body before they read (HTTP/2, Python's `requests`).
#[test]
fn over_limit_bodies_get_their_413_over_http2_and_from_python_requests() {
    let api = Api::start();
    let from = unique_loopback();
    // Larger than what the kernel buffers on loopback: the client is still sending when the
    // server has seen enough to refuse.
    let big = format!(r#"{{"token":"t","pad":"{}"}}"#, "x".repeat(12 << 20));
    let h2 = api
        .client_builder_from(from)
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = h2.post(api.url(JOIN)).body(big.clone()).send().unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 413);
    let v: Value = resp.json().unwrap();
    assert!(v["error"].as_str().unwrap().contains("too large"), "{v}");

    let (status, answer) = api.post(from, JOIN, &big);
    assert_eq!(status, 413, "HTTP/1.1: {answer}");

    let Some(python) = python_with_requests() else {
        println!("SKIP: no python3 with requests (apt-get install python3-requests)");
        return;
    };
    let script = r#"
import sys, requests
r = requests.post(sys.argv[1], data=b'{"token":"t","pad":"' + b'x' * (12 << 20) + b'"}', verify=sys.argv[2], timeout=10)
print(r.status_code)
print(r.json()["error"])
"#;
    let out = std::process::Command::new(python)
        .args([
            "-c",
            script,
            &api.url(JOIN),
            api.node.state.join("certs/ca.crt").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let printed = text(&out.stdout);
    assert!(out.status.success(), "{printed}{}", text(&out.stderr));
    assert!(
        printed.starts_with("413\n") && printed.contains("too large"),
        "{printed}"
    );
}

/// A body that stops arriving is cut after its deadline with a JSON 408.
#[test]
fn a_stalled_upload_gets_408() {
    let api = Api::start_with(&["--timeout", "4"]);
    let script = r#"
import socket, ssl, sys
host, port = sys.argv[1].rsplit(":", 1)
ctx = ssl.create_default_context(cafile=sys.argv[2])
with socket.create_connection((host, int(port)), timeout=20) as raw:
    with ctx.wrap_socket(raw, server_hostname=host) as s:
        s.sendall(b"POST /cluster/api/v2.0/join HTTP/1.1\r\nHost: " + host.encode() +
                  b"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"tok")
        answer = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            answer += chunk
print(answer.decode(errors="replace"))
"#;
    let python = if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let started = std::time::Instant::now();
    let out = std::process::Command::new(python)
        .args([
            "-c",
            script,
            &api.node.bind(),
            api.node.state.join("certs/ca.crt").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let answer = text(&out.stdout);
    assert!(out.status.success(), "{answer}{}", text(&out.stderr));
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains(r#"{"error":"The request body did not arrive within"#),
        "{answer}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}
