//! Client behaviour against scripted dqlite peers ([`crate::dqlite::fake`]) over real sockets
//! (plain TCP, mutual TLS, an abstract Unix socket). The peers answer with the same codec, so
//! retry and discovery paths that a live cluster produces only by chance are covered
//! deterministically. The live-cluster tests are in tests/dqlite_client.rs.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex};

use tokio::net::TcpListener;

use super::*;
use crate::dqlite::fake::*;
use crate::dqlite::proto::BOOTSTRAP_ID;
use crate::dqlite::tls::{client_config, server_config};
use crate::pki::{self, LeafSpec};

/// A distinct loopback address per listener, derived from the process id.
fn loopback() -> IpAddr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    IpAddr::V4(Ipv4Addr::new(
        127,
        (200 + pid % 50) as u8,
        (pid / 50 % 250) as u8,
        (n % 250 + 2) as u8,
    ))
}

async fn bind() -> (TcpListener, String) {
    let listener = TcpListener::bind((loopback(), 0)).await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    (listener, address)
}

fn fast() -> Options {
    Options {
        dial_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(2),
        change_timeout: Duration::from_secs(2),
        call_timeout: Duration::from_secs(5),
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        probe_concurrency: 4,
    }
}

fn cluster_cert(dns: &str) -> pki::PemPair {
    pki::self_signed(&LeafSpec {
        common_name: "k8s".into(),
        dns_names: vec![dns.into()],
        server: true,
        client: true,
        ..Default::default()
    })
    .unwrap()
}

#[tokio::test]
async fn mutual_tls_with_the_cluster_certificate() {
    let pair = cluster_cert("dqlite-cluster");
    let (listener, address) = bind().await;
    let server = server_config(&pair.cert_pem, &pair.key_pem).unwrap();
    spawn_tls(listener, server, leader_of_one(&address));

    let tls = client_config(&pair.cert_pem, &pair.key_pem).unwrap();
    let client = Client::new([address.as_str()], Some(tls.clone()), fast()).unwrap();
    let leader = client.leader().await.unwrap();
    assert_eq!(
        leader,
        LeaderInfo {
            id: BOOTSTRAP_ID,
            address: address.clone()
        }
    );
    assert_eq!(client.cluster().await.unwrap().len(), 1);
    let meta = client.describe(&address).await.unwrap();
    assert_eq!(
        meta,
        Metadata {
            failure_domain: 3,
            weight: 9
        }
    );
    let mut conn = connect(&address, Some(&tls), Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(conn.register(Duration::from_secs(2)).await.unwrap(), 15000);

    // A different self-signed certificate with the same name is refused by the server
    // (and the client refuses the server's certificate).
    let other = cluster_cert("dqlite-cluster");
    let other_tls = client_config(&other.cert_pem, &other.key_pem).unwrap();
    let refused = async {
        let mut c = connect(&address, Some(&other_tls), Duration::from_secs(2)).await?;
        c.leader(Duration::from_secs(2)).await
    };
    assert!(refused.await.is_err());

    // Plain TCP against the TLS listener gets nowhere.
    let plain = async {
        let mut c = connect(&address, None, Duration::from_secs(2)).await?;
        c.leader(Duration::from_secs(2)).await
    };
    assert!(plain.await.is_err());
}

#[tokio::test]
async fn tls_server_rejects_clients_without_certificate() {
    let pair = cluster_cert("dqlite-cluster");
    let (listener, address) = bind().await;
    let server = server_config(&pair.cert_pem, &pair.key_pem).unwrap();
    spawn_tls(listener, server, leader_of_one(&address));

    // Trusts the server but presents no client certificate.
    let cert = rustls_pki_types::CertificateDer::from_pem_slice(pair.cert_pem.as_bytes()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(crate::pki::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let anonymous = ClientTls {
        config: Arc::new(config),
        server_name: rustls_pki_types::ServerName::try_from("dqlite-cluster").unwrap(),
    };
    let attempt = async {
        let mut c = connect(&address, Some(&anonymous), Duration::from_secs(2)).await?;
        c.leader(Duration::from_secs(2)).await
    };
    assert!(attempt.await.is_err());
}

use rustls_pki_types::pem::PemObject;

#[tokio::test]
async fn busy_is_retried() {
    let (listener, address) = bind().await;
    let adds = Arc::new(AtomicUsize::new(0));
    let base = leader_of_one(&address);
    let counter = adds.clone();
    spawn_plain(
        listener,
        Arc::new(move |req| match req {
            Request::Add { .. } if counter.fetch_add(1, Ordering::SeqCst) < 2 => {
                Action::Reply(Response::Failure {
                    code: code::BUSY,
                    message: "a configuration change is already in progress".into(),
                })
            }
            other => base(other),
        }),
    );
    let client = Client::new([address.as_str()], None, fast()).unwrap();
    client.add(42, "127.0.0.1:1", Role::Spare).await.unwrap();
    assert_eq!(adds.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn hard_failures_are_not_retried() {
    let (listener, address) = bind().await;
    let removes = Arc::new(AtomicUsize::new(0));
    let base = leader_of_one(&address);
    let counter = removes.clone();
    spawn_plain(
        listener,
        Arc::new(move |req| match req {
            Request::Remove { .. } => {
                counter.fetch_add(1, Ordering::SeqCst);
                Action::Reply(Response::Failure {
                    code: 1,
                    message: "server ID is not valid".into(),
                })
            }
            other => base(other),
        }),
    );
    let client = Client::new([address.as_str()], None, fast()).unwrap();
    let err = client.remove(77).await.unwrap_err();
    assert_eq!(err.failure_code(), Some(1));
    assert!(err.to_string().contains("server ID is not valid"), "{err}");
    assert_eq!(removes.load(Ordering::SeqCst), 1);
}

/// Node A leads first, then answers "not leader" and names B; the client, seeded with A
/// only, must end up on B (learned from A's redirect and from CLUSTER).
#[tokio::test]
async fn not_leader_moves_to_the_new_leader() {
    let (la, a) = bind().await;
    let (lb, b) = bind().await;
    let moved = Arc::new(AtomicUsize::new(0));
    let members = {
        let (a, b) = (a.clone(), b.clone());
        move || {
            Response::Nodes(vec![
                NodeInfo {
                    id: 1,
                    address: a.clone(),
                    role: Role::Voter,
                },
                NodeInfo {
                    id: 2,
                    address: b.clone(),
                    role: Role::Voter,
                },
            ])
        }
    };
    let seen_on_b = Arc::new(StdMutex::new(Vec::new()));
    {
        let (a, b, moved, members) = (a.clone(), b.clone(), moved.clone(), members.clone());
        spawn_plain(
            la,
            Arc::new(move |req| {
                let has_moved = moved.load(Ordering::SeqCst) > 0;
                Action::Reply(match req {
                    Request::Leader if has_moved => Response::Node {
                        id: 2,
                        address: b.clone(),
                    },
                    Request::Leader => Response::Node {
                        id: 1,
                        address: a.clone(),
                    },
                    Request::Cluster => members(),
                    _ => {
                        moved.fetch_add(1, Ordering::SeqCst);
                        Response::Failure {
                            code: code::NOT_LEADER,
                            message: "not leader".into(),
                        }
                    }
                })
            }),
        );
    }
    {
        let (b, seen, members) = (b.clone(), seen_on_b.clone(), members.clone());
        spawn_plain(
            lb,
            Arc::new(move |req| {
                Action::Reply(match req {
                    Request::Leader => Response::Node {
                        id: 2,
                        address: b.clone(),
                    },
                    Request::Cluster => members(),
                    other => {
                        seen.lock().unwrap().push(other);
                        Response::Empty
                    }
                })
            }),
        );
    }
    let client = Client::new([a.as_str()], None, fast()).unwrap();
    assert_eq!(client.leader().await.unwrap().id, 1);
    client.assign(9, Role::StandBy).await.unwrap();
    assert_eq!(
        *seen_on_b.lock().unwrap(),
        vec![Request::Assign {
            id: 9,
            role: Role::StandBy
        }]
    );
    assert_eq!(
        client.leader().await.unwrap(),
        LeaderInfo { id: 2, address: b }
    );
}

/// A node naming itself under another address string is not the leader: identity is by
/// exact address (dqlite.md §1.8).
#[tokio::test]
async fn leader_must_name_its_own_address() {
    let (listener, address) = bind().await;
    let other = format!("{address}0"); // not this node
    spawn_plain(
        listener,
        Arc::new(move |_| {
            Action::Reply(Response::Node {
                id: 5,
                address: other.clone(),
            })
        }),
    );
    let mut opts = fast();
    opts.call_timeout = Duration::from_millis(600);
    let client = Client::new([address.as_str()], None, opts).unwrap();
    let err = client.leader().await.unwrap_err();
    assert!(matches!(err, ClientError::Deadline { .. }), "{err}");
}

/// The first ADD is applied but its answer is lost (connection closed); the retry is
/// refused as duplicate; CLUSTER shows the member, so add() succeeds.
#[tokio::test]
async fn lost_answer_then_duplicate_is_success() {
    let (listener, address) = bind().await;
    let applied = Arc::new(StdMutex::new(Vec::<NodeInfo>::new()));
    let me = address.clone();
    let state = applied.clone();
    spawn_plain(
        listener,
        Arc::new(move |req| match req {
            Request::Leader => Action::Reply(Response::Node {
                id: 1,
                address: me.clone(),
            }),
            Request::Cluster => Action::Reply(Response::Nodes(state.lock().unwrap().clone())),
            Request::Add { id, address } => {
                let mut nodes = state.lock().unwrap();
                if nodes.iter().any(|n| n.id == id) {
                    return Action::Reply(Response::Failure {
                        code: 1,
                        message: "server ID already in use".into(),
                    });
                }
                nodes.push(NodeInfo {
                    id,
                    address,
                    role: Role::Spare,
                });
                Action::Close
            }
            _ => Action::Reply(Response::Empty),
        }),
    );
    let client = Client::new([address.as_str()], None, fast()).unwrap();
    client.add(7, "127.0.0.1:7", Role::Spare).await.unwrap();
    // Without a lost answer, a duplicate stays an error.
    let err = client.add(7, "127.0.0.1:7", Role::Spare).await.unwrap_err();
    assert_eq!(err.failure_code(), Some(1));
}

#[tokio::test]
async fn silent_peer_hits_the_deadline() {
    let (listener, address) = bind().await;
    // Accepts and reads, never answers.
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let opts = Options {
        request_timeout: Duration::from_millis(200),
        call_timeout: Duration::from_millis(700),
        ..fast()
    };
    let client = Client::new([address.as_str()], None, opts).unwrap();
    let started = Instant::now();
    let err = client.cluster().await.unwrap_err();
    assert!(matches!(err, ClientError::Deadline { .. }), "{err}");
    assert!(err.to_string().contains("did not answer"), "{err}");
    // Bounded by the call deadline (generous margin for a loaded machine).
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn connection_is_unusable_after_a_timeout() {
    let (listener, address) = bind().await;
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let mut conn = connect(&address, None, Duration::from_secs(2))
        .await
        .unwrap();
    let err = conn.leader(Duration::from_millis(50)).await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
    assert!(conn.is_broken());
    let err = conn.leader(Duration::from_secs(1)).await.unwrap_err();
    assert!(matches!(err, ClientError::Broken { .. }), "{err}");
}

#[tokio::test]
async fn invalid_arguments_fail_before_any_io() {
    // Nothing listens on this seed; validation must answer first.
    let client = Client::new(["127.0.0.1:1"], None, fast()).unwrap();
    for err in [
        client.add(0, "127.0.0.1:5", Role::Voter).await.unwrap_err(),
        client.add(5, "", Role::Voter).await.unwrap_err(),
        client.assign(0, Role::Spare).await.unwrap_err(),
        client.remove(0).await.unwrap_err(),
        client.transfer(0).await.unwrap_err(),
    ] {
        assert!(matches!(err, ClientError::Invalid(_)), "{err}");
    }
    assert!(matches!(
        Client::new(Vec::<String>::new(), None, fast()),
        Err(ClientError::NoSeeds)
    ));
}

#[tokio::test]
async fn abstract_unix_socket() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("cluster-agent-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let std_listener = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::UnixListener::from_std(std_listener).unwrap();
    let address = format!("@{name}");
    let handler = leader_of_one(&address);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve_conn(s, handler.clone()));
        }
    });
    let client = Client::new([address.as_str()], None, fast()).unwrap();
    assert_eq!(client.leader().await.unwrap().address, address);
    client.weight(&address, 4).await.unwrap();
}

#[test]
fn probe_order_puts_voters_first() {
    let known = vec![
        NodeInfo {
            id: 1,
            address: "s".into(),
            role: Role::Spare,
        },
        NodeInfo {
            id: 2,
            address: "b".into(),
            role: Role::StandBy,
        },
        NodeInfo {
            id: 3,
            address: "v".into(),
            role: Role::Voter,
        },
    ];
    let seeds = vec!["seed".to_string(), "v".to_string()];
    assert_eq!(candidates(&seeds, &known), ["v", "seed", "b", "s"]);
}

/// After leadership moves, a read must come from the new leader: the old one, now a
/// follower, still answers CLUSTER (with its own, possibly stale, view) instead of
/// redirecting.
#[tokio::test]
async fn reads_follow_a_leadership_move() {
    let (first, first_addr) = bind().await;
    let (second, second_addr) = bind().await;
    let moved = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let one = |id: u64, address: &str| NodeInfo {
        id,
        address: address.to_string(),
        role: Role::Voter,
    };
    let (a, b, m) = (first_addr.clone(), second_addr.clone(), moved.clone());
    spawn_plain(
        first,
        Arc::new(move |req| {
            let (id, address) = if m.load(Ordering::SeqCst) {
                (2, b.clone())
            } else {
                (1, a.clone())
            };
            Action::Reply(match req {
                Request::Leader => Response::Node { id, address },
                Request::Cluster => Response::Nodes(vec![one(1, &a)]),
                _ => Response::Empty,
            })
        }),
    );
    let (a, b) = (first_addr.clone(), second_addr.clone());
    spawn_plain(
        second,
        Arc::new(move |req| {
            Action::Reply(match req {
                Request::Leader => Response::Node {
                    id: 2,
                    address: b.clone(),
                },
                Request::Cluster => Response::Nodes(vec![one(1, &a), one(2, &b)]),
                _ => Response::Empty,
            })
        }),
    );
    let client = Client::new([first_addr.clone()], None, fast()).unwrap();
    assert_eq!(client.cluster().await.unwrap().len(), 1);
    moved.store(true, Ordering::SeqCst);
    let view = client.cluster().await.unwrap();
    assert_eq!(view.len(), 2, "a follower's view was returned: {view:?}");
}

/// A request whose deadline passed while it waited for the connection is never sent.
#[tokio::test]
async fn nothing_is_sent_after_the_deadline() {
    let (listener, address) = bind().await;
    let seen = Arc::new(StdMutex::new(Vec::<Request>::new()));
    let (record, inner) = (seen.clone(), leader_of_one(&address));
    spawn_plain(
        listener,
        Arc::new(move |req| {
            record.lock().unwrap().push(req.clone());
            inner(req)
        }),
    );
    let client = Client::new([address.clone()], None, fast()).unwrap();
    client.leader().await.unwrap();
    let late = client
        .leader_call(Request::Remove { id: 5 }, Instant::now())
        .await;
    assert!(
        matches!(late, Err(ClientError::Deadline { .. })),
        "{:?}",
        late.err()
    );
    // A later round trip on the same connection: had REMOVE been written, the server would
    // have seen it first.
    client.leader().await.unwrap();
    let got = seen.lock().unwrap().clone();
    assert!(
        !got.contains(&Request::Remove { id: 5 }),
        "sent after its deadline: {got:?}"
    );
}

/// A leader whose configuration and leadership the test changes, counting ASSIGNs.
struct Scripted {
    config: StdMutex<Vec<NodeInfo>>,
    leads: std::sync::atomic::AtomicBool,
    assigns: std::sync::atomic::AtomicUsize,
}

fn scripted_peer(address: &str, scripted: Arc<Scripted>) -> Handler {
    let me = address.to_string();
    Arc::new(move |req| {
        use std::sync::atomic::Ordering::SeqCst;
        match req {
            Request::Leader if scripted.leads.load(SeqCst) => Action::Reply(Response::Node {
                id: 1,
                address: me.clone(),
            }),
            Request::Leader => Action::Reply(Response::Node {
                id: 0,
                address: String::new(),
            }),
            Request::Cluster => {
                Action::Reply(Response::Nodes(scripted.config.lock().unwrap().clone()))
            }
            Request::Assign { .. } => {
                scripted.assigns.fetch_add(1, SeqCst);
                if scripted.leads.load(SeqCst) {
                    Action::Reply(Response::Empty)
                } else {
                    Action::Reply(Response::Failure {
                        code: super::code::NOT_LEADER,
                        message: "not leader".into(),
                    })
                }
            }
            _ => Action::Reply(Response::Empty),
        }
    })
}

#[tokio::test]
async fn a_planned_assign_is_dropped_when_its_basis_moved_and_never_retried() {
    use std::sync::atomic::Ordering::SeqCst;
    let (listener, address) = bind().await;
    let node = |id: u64, role: Role| NodeInfo {
        id,
        address: format!("127.0.0.1:{id}"),
        role,
    };
    let scripted = Arc::new(Scripted {
        config: StdMutex::new(vec![
            NodeInfo {
                id: 1,
                address: address.clone(),
                role: Role::Voter,
            },
            node(2, Role::Voter),
            node(3, Role::Spare),
        ]),
        leads: std::sync::atomic::AtomicBool::new(true),
        assigns: std::sync::atomic::AtomicUsize::new(0),
    });
    spawn_plain(listener, scripted_peer(&address, scripted.clone()));
    let client = Client::new([address.as_str()], None, fast()).unwrap();

    let planned = client.plan_basis().await.unwrap();
    assert_eq!(
        client
            .assign_planned(&planned, 3, Role::Voter)
            .await
            .unwrap(),
        Assigned::Applied
    );
    assert_eq!(scripted.assigns.load(SeqCst), 1);

    // The configuration moved on after the plan: dropped, nothing sent.
    scripted.config.lock().unwrap()[2].role = Role::StandBy;
    let dropped = client
        .assign_planned(&planned, 3, Role::Voter)
        .await
        .unwrap();
    assert!(
        matches!(dropped, Assigned::Dropped(ref why) if why.contains("configuration")),
        "{dropped:?}"
    );
    assert_eq!(scripted.assigns.load(SeqCst), 1);

    // The planning leader lost leadership: dropped, and not carried anywhere else.
    let planned = client.plan_basis().await.unwrap();
    scripted.leads.store(false, SeqCst);
    let dropped = client
        .assign_planned(&planned, 3, Role::Spare)
        .await
        .unwrap();
    assert!(matches!(dropped, Assigned::Dropped(_)), "{dropped:?}");
    assert_eq!(
        scripted.assigns.load(SeqCst),
        1,
        "no ASSIGN once it no longer leads"
    );
    // Leadership back (a later term, say): the old plan still does not go out, the cached
    // connection is gone.
    scripted.leads.store(true, SeqCst);
    let dropped = client
        .assign_planned(&planned, 3, Role::Spare)
        .await
        .unwrap();
    assert!(matches!(dropped, Assigned::Dropped(_)), "{dropped:?}");
    assert_eq!(scripted.assigns.load(SeqCst), 1);
}

#[test]
fn deadlines_follow_the_network_latency() {
    let opts = Options::for_latency(Duration::from_millis(150));
    assert!(opts.dial_timeout <= Duration::from_secs(1), "{opts:?}");
    assert!(opts.request_timeout <= Duration::from_secs(2), "{opts:?}");
    assert!(opts.change_timeout >= Duration::from_secs(15));
    let wan = Options::for_latency(Duration::from_secs(1));
    assert!(wan.request_timeout > opts.request_timeout);
}
