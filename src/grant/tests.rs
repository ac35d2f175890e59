//! Every refusal of the v1/v2 join and of sign-cert, driven through a test node: the answer
//! is the expected refusal, the state directory is byte for byte (and mode for mode) what it
//! was, no service was touched and no command ran, and the token still works.

use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::Ordering;

use super::join::{join_v1, join_v2, Origin};
use super::sign_cert::sign_cert;
use super::GrantError;
use crate::cluster::bootstrap::{bootstrap, BootstrapOptions};
use crate::cluster::datastore::{Member, Role};
use crate::cluster::node::testing::Fakes;
use crate::cluster::node::Node;
use crate::format::wire::{JoinRequest, SignCertRequest};
use crate::pki::LeafSpec;
use crate::state::testing::snapshot;
use crate::sys::host::HostIdentity;

const TOKEN: &str = "0123456789abcdef0123456789abcdef";
const JOINER: &str = "127.0.0.9";

/// A bootstrapped control plane at 127.0.0.1:25000 with one join token.
fn control_plane(dir: &Path) -> (Node, Fakes) {
    let (node, fakes) = Node::for_test(dir);
    node.state().ensure_layout().unwrap();
    let host = HostIdentity {
        hostname: "cp".into(),
        addresses: vec!["127.0.0.1".parse().unwrap()],
    };
    let opts = BootstrapOptions {
        bind: node.settings().bind,
        failure_domain: 1,
    };
    bootstrap(node.state(), &host, &opts).unwrap();
    node.tokens().add_join_token(TOKEN, None).unwrap();
    fakes.datastore.set(vec![member("127.0.0.1:19001", 1)]);
    (node, fakes)
}

fn member(address: &str, id: u64) -> Member {
    Member {
        address: address.into(),
        id,
        role: Role::Voter,
    }
}

fn origin() -> Origin {
    Origin {
        remote_ip: JOINER.parse().unwrap(),
        host: "127.0.0.1".into(),
    }
}

fn request(worker: bool) -> JoinRequest {
    JoinRequest {
        token: TOKEN.into(),
        hostname: "joiner".into(),
        port: "25000".into(),
        worker: Some(serde_json::Value::Bool(worker)),
        callback: String::new(),
        can_handle_x509_auth: true,
        can_handle_custom_etcd: false,
    }
}

fn set_apiserver_arg(node: &Node, flag: &str, value: &str) {
    node.state()
        .update_args("kube-apiserver", |f| f.set(flag, value))
        .unwrap();
}

/// Runs `refused` against a fresh node prepared by `prepare` and checks that it is refused as
/// `expected` says and that nothing changed.
fn assert_refused_without_a_trace<F, Fut, T>(
    what: &str,
    prepare: impl FnOnce(&Node, &Fakes),
    refused: F,
    expected: impl Fn(&GrantError) -> bool,
) where
    F: FnOnce(Node) -> Fut,
    Fut: std::future::Future<Output = Result<T, GrantError>>,
    T: std::fmt::Debug,
{
    let dir = tempfile::tempdir().unwrap();
    let (node, fakes) = control_plane(dir.path());
    prepare(&node, &fakes);
    let before = snapshot(dir.path());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let result = rt.block_on(refused(node.clone()));
    match &result {
        Err(e) if expected(e) => {}
        other => panic!("{what}: unexpected answer {other:?}"),
    }
    assert_eq!(
        snapshot(dir.path()),
        before,
        "{what}: the state directory changed"
    );
    assert!(
        fakes.services.calls().is_empty(),
        "{what}: touched services"
    );
    assert!(fakes.runner.argvs().is_empty(), "{what}: ran a command");
}

#[test]
fn every_v2_refusal_leaves_the_node_as_it_was() {
    let v2 = |req: JoinRequest, origin: Origin| {
        move |node: Node| async move { join_v2(&node, req, origin).await }
    };
    let with = |f: fn(&mut JoinRequest)| {
        let mut req = request(false);
        f(&mut req);
        req
    };
    let nothing = |_: &Node, _: &Fakes| {};

    assert_refused_without_a_trace(
        "invalid token",
        nothing,
        v2(with(|r| r.token = "x".repeat(32)), origin()),
        |e| matches!(e, GrantError::InvalidToken),
    );
    assert_refused_without_a_trace(
        "whitespace token",
        nothing,
        v2(with(|r| r.token = "   ".into()), origin()),
        |e| matches!(e, GrantError::InvalidToken),
    );
    assert_refused_without_a_trace(
        "not an HA cluster",
        |node, _| {
            node.state()
                .remove(&node.state().layout().marker("ha-cluster"))
                .unwrap()
        },
        v2(request(false), origin()),
        |e| matches!(e, GrantError::NotHa),
    );
    assert_refused_without_a_trace(
        "wrong port",
        nothing,
        v2(with(|r| r.port = "25001".into()), origin()),
        |e| matches!(e, GrantError::PortMismatch(p) if p == "25000"),
    );
    assert_refused_without_a_trace(
        "joining from the address it contacts",
        nothing,
        v2(
            request(false),
            Origin {
                remote_ip: "127.0.0.1".parse().unwrap(),
                host: "127.0.0.1".into(),
            },
        ),
        |e| matches!(e, GrantError::SameIp(_)),
    );
    assert_refused_without_a_trace(
        "hostname that does not resolve to the joiner",
        |node, _| set_apiserver_arg(node, "--kubelet-preferred-address-types", "Hostname"),
        v2(request(false), origin()),
        |e| matches!(e, GrantError::HostnameMismatch { hostname, .. } if hostname == "joiner"),
    );
    assert_refused_without_a_trace(
        "joiner already a datastore member",
        |_, fakes| {
            fakes.datastore.set(vec![
                member("127.0.0.1:19001", 1),
                member(&format!("{JOINER}:19001"), 2),
            ])
        },
        v2(request(false), origin()),
        |e| matches!(e, GrantError::Refused(m) if m.contains("already known to dqlite")),
    );
    assert_refused_without_a_trace(
        "datastore unavailable",
        |_, fakes| fakes.datastore.unavailable.store(true, Ordering::SeqCst),
        v2(request(false), origin()),
        |e| matches!(e, GrantError::Refused(m) if m.starts_with("Failed to retrieve dqlite cluster nodes")),
    );
    assert_refused_without_a_trace(
        "custom etcd for a joiner that cannot handle it",
        |node, _| set_apiserver_arg(node, "--etcd-servers", "https://10.0.0.1:2379"),
        v2(request(false), origin()),
        |e| matches!(e, GrantError::Refused(m) if m.contains("custom etcd")),
    );
    assert_refused_without_a_trace(
        "x509 required",
        nothing,
        v2(with(|r| r.can_handle_x509_auth = false), origin()),
        |e| matches!(e, GrantError::Refused(m) if m.contains("requires x509")),
    );
    assert_refused_without_a_trace(
        "token auth without an admin token",
        |node, _| {
            set_apiserver_arg(
                node,
                "--token-auth-file",
                "${SNAP_DATA}/credentials/known_tokens.csv",
            )
        },
        v2(request(false), origin()),
        |e| matches!(e, GrantError::Refused(m) if m.contains("admin")),
    );
    assert_refused_without_a_trace(
        "unreadable CA key",
        |node, _| {
            node.state()
                .remove(&node.state().layout().ca_key())
                .unwrap()
        },
        v2(request(false), origin()),
        |e| matches!(e, GrantError::Internal(_)),
    );
}

#[test]
fn a_granted_v2_join_spends_the_token_once() {
    let dir = tempfile::tempdir().unwrap();
    let (node, _) = control_plane(dir.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let answer = rt
        .block_on(join_v2(&node, request(false), origin()))
        .unwrap();
    assert_eq!(answer.voters, vec!["127.0.0.1:19001".to_string()]);
    assert!(answer.ca_key.is_some() && !answer.cluster_cert.is_empty());
    let again = rt.block_on(join_v2(&node, request(false), origin()));
    assert!(matches!(again, Err(GrantError::InvalidToken)), "{again:?}");

    // A worker grant adds the certificate-request tokens and names no keys.
    node.tokens().add_join_token(TOKEN, None).unwrap();
    let worker = rt
        .block_on(join_v2(&node, request(true), origin()))
        .unwrap();
    assert!(worker.ca_key.is_none() && worker.cluster_key.is_empty());
    assert_eq!(
        worker.control_plane_nodes,
        Some(vec!["127.0.0.1".to_string()])
    );
    assert!(node
        .tokens()
        .check_cert_request_token(&format!("{TOKEN}-kubelet"))
        .unwrap());
}

fn v1_request() -> JoinRequest {
    JoinRequest {
        callback: "callback-token-of-the-joiner".into(),
        ..request(false)
    }
}

#[test]
fn every_v1_refusal_leaves_the_node_as_it_was() {
    let v1 =
        |req: JoinRequest| move |node: Node| async move { join_v1(&node, req, origin()).await };
    let not_ha = |node: &Node, _: &Fakes| {
        node.state()
            .remove(&node.state().layout().marker("ha-cluster"))
            .unwrap()
    };
    assert_refused_without_a_trace(
        "v1 invalid token",
        not_ha,
        v1(JoinRequest {
            token: "y".repeat(32),
            ..v1_request()
        }),
        |e| matches!(e, GrantError::InvalidToken),
    );
    assert_refused_without_a_trace(
        "v1 on an HA cluster",
        |_, _| {},
        v1(v1_request()),
        |e| matches!(e, GrantError::Refused(m) if m.contains("This is an HA MicroK8s cluster")),
    );
    assert_refused_without_a_trace(
        "v1 without x509 or a token file",
        not_ha,
        v1(JoinRequest {
            can_handle_x509_auth: false,
            ..v1_request()
        }),
        |e| matches!(e, GrantError::Refused(m) if m.contains("requires x509")),
    );
    assert_refused_without_a_trace(
        "v1 token mode without a kube-proxy token",
        |node, fakes| {
            not_ha(node, fakes);
            set_apiserver_arg(node, "--token-auth-file", "known_tokens.csv");
        },
        v1(JoinRequest {
            can_handle_x509_auth: false,
            ..v1_request()
        }),
        |e| matches!(e, GrantError::Refused(m) if m.contains("kube-proxy")),
    );
    assert_refused_without_a_trace(
        "v1 callback that would break callback-tokens.txt",
        not_ha,
        v1(JoinRequest {
            callback: "two words".into(),
            ..v1_request()
        }),
        |e| matches!(e, GrantError::BadRequest(_)),
    );
    assert_refused_without_a_trace(
        "v1 port that is not a port",
        not_ha,
        v1(JoinRequest {
            port: "0".into(),
            ..v1_request()
        }),
        |e| matches!(e, GrantError::BadRequest(m) if m.contains("TCP port")),
    );
}

#[test]
fn a_granted_v1_join_records_the_callback_and_spends_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let (node, _) = control_plane(dir.path());
    node.state()
        .remove(&node.state().layout().marker("ha-cluster"))
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let answer = rt.block_on(join_v1(&node, v1_request(), origin())).unwrap();
    assert_eq!(answer.api_authn_mode, "Cert");
    let callbacks = node
        .state()
        .read_string(&node.state().layout().credential("callback-tokens.txt"))
        .unwrap();
    assert_eq!(
        callbacks,
        format!("{JOINER}:25000 callback-token-of-the-joiner\n")
    );
    assert!(node.tokens().check_join_token(TOKEN).unwrap().is_none());
}

fn csr(cn: &str, org: Option<&str>, ips: &[&str]) -> String {
    crate::pki::csr(&LeafSpec {
        common_name: cn.into(),
        organization: org.map(str::to_string),
        dns_names: Vec::new(),
        ips: ips.iter().map(|s| s.parse::<IpAddr>().unwrap()).collect(),
        ..Default::default()
    })
    .unwrap()
    .0
}

#[test]
fn every_sign_cert_refusal_leaves_the_node_as_it_was() {
    let kubelet_token = format!("{TOKEN}-kubelet");
    let proxy_token = format!("{TOKEN}-proxy");
    let sign = |token: &str, request: String| {
        let req = SignCertRequest {
            token: token.to_string(),
            request,
        };
        move |node: Node| async move { sign_cert(&node, req).await }
    };
    let with_tokens = |node: &Node, _: &Fakes| {
        node.tokens()
            .add_cert_request_token(&format!("{TOKEN}-kubelet"))
            .unwrap();
        node.tokens()
            .add_cert_request_token(&format!("{TOKEN}-proxy"))
            .unwrap();
    };
    let kubelet_csr = || csr("system:node:w1", Some("system:nodes"), &["10.0.0.7"]);

    assert_refused_without_a_trace(
        "unknown certificate-request token",
        with_tokens,
        sign("nope-kubelet", kubelet_csr()),
        |e| matches!(e, GrantError::InvalidToken),
    );
    assert_refused_without_a_trace(
        "not a CSR",
        with_tokens,
        sign(&kubelet_token, "garbage".into()),
        |e| matches!(e, GrantError::BadRequest(_)),
    );
    assert_refused_without_a_trace(
        "a kubelet token asking for system:masters",
        with_tokens,
        sign(&kubelet_token, csr("admin", Some("system:masters"), &[])),
        |e| matches!(e, GrantError::Forbidden(_)),
    );
    assert_refused_without_a_trace(
        "a kube-proxy certificate with SANs",
        with_tokens,
        sign(&proxy_token, csr("system:kube-proxy", None, &["10.0.0.7"])),
        |e| matches!(e, GrantError::Forbidden(m) if m.contains("client certificate only")),
    );
    assert_refused_without_a_trace(
        "a kubelet certificate naming a control plane's IP",
        with_tokens,
        sign(
            &kubelet_token,
            csr("system:node:w1", Some("system:nodes"), &["127.0.0.1"]),
        ),
        |e| matches!(e, GrantError::Forbidden(_)),
    );
    assert_refused_without_a_trace(
        "members unreadable (the request cannot be checked)",
        |node, fakes| {
            with_tokens(node, fakes);
            fakes.datastore.unavailable.store(true, Ordering::SeqCst);
        },
        sign(&kubelet_token, kubelet_csr()),
        |e| matches!(e, GrantError::Refused(_)),
    );
}

#[test]
fn a_signed_certificate_spends_one_use_of_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let (node, _) = control_plane(dir.path());
    let token = format!("{TOKEN}-kubelet");
    node.tokens().add_cert_request_token(&token).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let req = || SignCertRequest {
        token: token.clone(),
        request: csr("system:node:w1", Some("system:nodes"), &["10.0.0.7"]),
    };
    let signed = rt.block_on(sign_cert(&node, req())).unwrap();
    assert!(signed
        .certificate
        .starts_with("-----BEGIN CERTIFICATE-----"));
    let again = rt.block_on(sign_cert(&node, req()));
    assert!(matches!(again, Err(GrantError::InvalidToken)), "{again:?}");
}
