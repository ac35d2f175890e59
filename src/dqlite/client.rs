//! Async dqlite membership client: one [`Connection`] per socket (strict request → response,
//! a deadline on every call, unusable after any error), and a [`Client`] that finds the
//! leader, sends membership changes to it and retries what is worth retrying.
//!
//! Behaviour (dqlite.md §1.6, §1.8):
//! - Leader discovery probes every known address in parallel (voters first, at most
//!   [`Options::probe_concurrency`] at once) with LEADER. A node is accepted as leader only
//!   when it names itself (same address string as dialled); a node naming another address
//!   sends us there once, and that node must name itself too. `(0, "")` means "unknown".
//!   After a leader is found, CLUSTER refreshes the address list, so the client keeps
//!   finding the leader when its seeds are gone.
//! - "not leader" / "leadership lost" (10250, 10506 and the legacy codes): forget the
//!   leader, find it again, retry. "configuration change in progress" (5): retry. I/O
//!   errors and timeouts: drop the connection, find the leader again, retry. Retries back
//!   off exponentially ([`Options::backoff_min`] to [`Options::backoff_max`]) and stop at
//!   the call's deadline ([`Options::call_timeout`]).
//! - A change whose first attempt got no answer (timeout, broken connection, leadership
//!   lost) may have been applied. If a retry is then refused with a hard error ("server ID
//!   already in use", "server role is not valid", "server ID is not valid"), the client
//!   reads the configuration and reports success when it already shows the wanted state.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Mutex, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::proto::{self, code, Metadata, NodeInfo, ProtoError, Request, Response, Role};
use super::tls::ClientTls;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid request: {0}")]
    Invalid(#[from] ProtoError),
    #[error("no seed address given")]
    NoSeeds,
    #[error("cannot connect to dqlite node {address}: {source}")]
    Connect {
        address: String,
        source: std::io::Error,
    },
    #[error("TLS handshake with dqlite node {address} failed: {source}")]
    Tls {
        address: String,
        source: std::io::Error,
    },
    #[error("I/O error with dqlite node {address}: {source}")]
    Io {
        address: String,
        source: std::io::Error,
    },
    #[error("dqlite node {address} closed the connection")]
    Closed { address: String },
    #[error("dqlite node {address} did not answer {request} within {timeout:?}")]
    Timeout {
        address: String,
        request: &'static str,
        timeout: Duration,
    },
    #[error("dqlite node {address} sent a malformed message: {source}")]
    Malformed { address: String, source: ProtoError },
    #[error("dqlite node {address} answered {request} with an unexpected {got}")]
    Unexpected {
        address: String,
        request: &'static str,
        got: &'static str,
    },
    #[error("dqlite node {address} refused {request}: {message} (code {code})")]
    Failure {
        address: String,
        request: &'static str,
        code: u64,
        message: String,
    },
    #[error("connection to dqlite node {address} is unusable after an earlier error")]
    Broken { address: String },
    #[error("no dqlite leader found among {tried} address(es): {detail}")]
    NoLeader { tried: usize, detail: String },
    #[error("{op} did not complete within {timeout:?}; last error: {last}")]
    Deadline {
        op: &'static str,
        timeout: Duration,
        last: String,
    },
}

impl ClientError {
    /// The FAILURE code, when the server refused the request.
    pub fn failure_code(&self) -> Option<u64> {
        match self {
            ClientError::Failure { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Anything a [`Connection`] can run over: TCP, TLS over TCP, a Unix socket.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// A type-erased stream, so TCP and TLS connections have one type.
pub type BoxStream = Box<dyn Stream>;

/// One protocol connection to one node. Requests run one at a time (`&mut self`); after an
/// I/O error, a timeout or a malformed answer the connection refuses further calls, because
/// a late answer could otherwise be taken for the next request's.
pub struct Connection<S> {
    stream: S,
    address: String,
    buf: Vec<u8>,
    broken: bool,
}

impl<S> std::fmt::Debug for Connection<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("address", &self.address)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// Sends the protocol version word on a fresh stream. `address` is the node's address
    /// as the cluster knows it (used to recognise the leader and in errors).
    pub async fn handshake(
        mut stream: S,
        address: impl Into<String>,
        timeout: Duration,
    ) -> Result<Connection<S>, ClientError> {
        let address = address.into();
        let write = async {
            stream.write_all(&proto::handshake()).await?;
            stream.flush().await
        };
        match tokio::time::timeout(timeout, write).await {
            Err(_) => Err(ClientError::Timeout {
                address,
                request: "handshake",
                timeout,
            }),
            Ok(Err(source)) => Err(ClientError::Io { address, source }),
            Ok(Ok(())) => Ok(Connection {
                stream,
                address,
                buf: Vec::new(),
                broken: false,
            }),
        }
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Sends one request and reads its answer. FAILURE answers are returned as
    /// `Ok(Response::Failure)`; only transport and framing problems are errors.
    pub async fn call(
        &mut self,
        req: &Request,
        timeout: Duration,
    ) -> Result<Response, ClientError> {
        if self.broken || !self.buf.is_empty() {
            self.broken = true;
            return Err(ClientError::Broken {
                address: self.address.clone(),
            });
        }
        let frame = req.encode()?;
        let result = tokio::time::timeout(timeout, self.exchange(&frame)).await;
        match result {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => {
                self.broken = true;
                Err(e)
            }
            Err(_) => {
                self.broken = true;
                Err(ClientError::Timeout {
                    address: self.address.clone(),
                    request: req.name(),
                    timeout,
                })
            }
        }
    }

    async fn exchange(&mut self, frame: &[u8]) -> Result<Response, ClientError> {
        let io = |address: &str, source| ClientError::Io {
            address: address.to_string(),
            source,
        };
        self.stream
            .write_all(frame)
            .await
            .map_err(|e| io(&self.address, e))?;
        self.stream
            .flush()
            .await
            .map_err(|e| io(&self.address, e))?;
        let mut chunk = [0u8; 4096];
        loop {
            match proto::decode(&self.buf) {
                Ok(Some((resp, used))) => {
                    self.buf.drain(..used);
                    return Ok(resp);
                }
                Ok(None) => {}
                Err(source) => {
                    return Err(ClientError::Malformed {
                        address: self.address.clone(),
                        source,
                    })
                }
            }
            let n = self
                .stream
                .read(&mut chunk)
                .await
                .map_err(|e| io(&self.address, e))?;
            if n == 0 {
                return Err(ClientError::Closed {
                    address: self.address.clone(),
                });
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// [`call`](Self::call), turning FAILURE into [`ClientError::Failure`].
    async fn call_ok(&mut self, req: &Request, timeout: Duration) -> Result<Response, ClientError> {
        match self.call(req, timeout).await? {
            Response::Failure { code, message } => Err(ClientError::Failure {
                address: self.address.clone(),
                request: req.name(),
                code,
                message,
            }),
            other => Ok(other),
        }
    }

    fn unexpected(&self, req: &Request, got: &Response) -> ClientError {
        ClientError::Unexpected {
            address: self.address.clone(),
            request: req.name(),
            got: got.name(),
        }
    }

    /// LEADER: the leader this node knows of, `None` when it knows none.
    pub async fn leader(&mut self, timeout: Duration) -> Result<Option<LeaderInfo>, ClientError> {
        let req = Request::Leader;
        match self.call_ok(&req, timeout).await? {
            Response::Node { id, address } if id == 0 && address.is_empty() => Ok(None),
            Response::Node { id, address } => Ok(Some(LeaderInfo { id, address })),
            other => Err(self.unexpected(&req, &other)),
        }
    }

    /// CLUSTER (format 1): this node's view of the configuration.
    pub async fn cluster(&mut self, timeout: Duration) -> Result<Vec<NodeInfo>, ClientError> {
        let req = Request::Cluster;
        match self.call_ok(&req, timeout).await? {
            Response::Nodes(nodes) => Ok(nodes),
            other => Err(self.unexpected(&req, &other)),
        }
    }

    /// DESCRIBE: failure domain and weight of this node.
    pub async fn describe(&mut self, timeout: Duration) -> Result<Metadata, ClientError> {
        let req = Request::Describe;
        match self.call_ok(&req, timeout).await? {
            Response::Metadata(m) => Ok(m),
            other => Err(self.unexpected(&req, &other)),
        }
    }

    /// CLIENT: registers as a client, returns the heartbeat timeout in ms.
    pub async fn register(&mut self, timeout: Duration) -> Result<u64, ClientError> {
        let req = Request::Client { id: 0 };
        match self.call_ok(&req, timeout).await? {
            Response::Welcome {
                heartbeat_timeout_ms,
            } => Ok(heartbeat_timeout_ms),
            other => Err(self.unexpected(&req, &other)),
        }
    }

    /// Any request answered by EMPTY (ADD, ASSIGN, REMOVE, TRANSFER, WEIGHT), one attempt.
    pub async fn exec(&mut self, req: &Request, timeout: Duration) -> Result<(), ClientError> {
        match self.call_ok(req, timeout).await? {
            Response::Empty => Ok(()),
            other => Err(self.unexpected(req, &other)),
        }
    }
}

/// Opens a protocol connection: TCP (optionally TLS) for `host:port`, or a Linux abstract
/// Unix socket for `@name` (only reachable from the process that hosts the node). The
/// timeout covers connect, TLS handshake and the version word.
pub async fn connect(
    address: &str,
    tls: Option<&ClientTls>,
    timeout: Duration,
) -> Result<Connection<BoxStream>, ClientError> {
    let started = Instant::now();
    let stream = match tokio::time::timeout(timeout, open_stream(address, tls)).await {
        Ok(res) => res?,
        Err(_) => {
            return Err(ClientError::Timeout {
                address: address.to_string(),
                request: "connect",
                timeout,
            })
        }
    };
    let left = timeout.saturating_sub(started.elapsed());
    Connection::handshake(stream, address, left).await
}

async fn open_stream(address: &str, tls: Option<&ClientTls>) -> Result<BoxStream, ClientError> {
    let connect_err = |source| ClientError::Connect {
        address: address.to_string(),
        source,
    };
    if address.starts_with('@') {
        let stream = crate::dqlite::host::connect_local(address)
            .await
            .map_err(connect_err)?;
        return Ok(Box::new(stream));
    }
    let tcp = tokio::net::TcpStream::connect(address)
        .await
        .map_err(connect_err)?;
    tcp.set_nodelay(true).map_err(connect_err)?;
    match tls {
        None => Ok(Box::new(tcp)),
        Some(tls) => {
            let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
            let stream = connector
                .connect(tls.server_name.clone(), tcp)
                .await
                .map_err(|source| ClientError::Tls {
                    address: address.to_string(),
                    source,
                })?;
            Ok(Box::new(stream))
        }
    }
}

/// What a role change was planned on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub leader: LeaderInfo,
    pub config: Vec<NodeInfo>,
}

/// What became of a planned role change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assigned {
    Applied,
    /// Not applied (or not known to be), and not to be retried: why.
    Dropped(String),
}

/// Same members, addresses and roles, in any order.
fn same_configuration(a: &[NodeInfo], b: &[NodeInfo]) -> bool {
    let key = |nodes: &[NodeInfo]| {
        let mut v: Vec<(u64, String, Role)> = nodes
            .iter()
            .map(|n| (n.id, n.address.clone(), n.role))
            .collect();
        v.sort_by_key(|x| x.0);
        v
    };
    key(a) == key(b)
}

/// The leader as a node reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderInfo {
    pub id: u64,
    pub address: String,
}

/// Timeouts and retry bounds.
#[derive(Debug, Clone)]
pub struct Options {
    /// TCP connect + TLS handshake + version word (go-dqlite: 5 s).
    pub dial_timeout: Duration,
    /// One read's answer (LEADER, CLUSTER, DESCRIBE): a connection silent this long is
    /// abandoned and the leader looked up again.
    pub request_timeout: Duration,
    /// One configuration change's answer (ADD, ASSIGN, REMOVE, TRANSFER). Promoting a
    /// lagging member to voter can take ~50 s on 1.11 before failing, so this is long on
    /// purpose; the call deadline bounds the total.
    pub change_timeout: Duration,
    /// Whole public operation, retries included.
    pub call_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Parallel probes during leader discovery.
    pub probe_concurrency: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            dial_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(15),
            change_timeout: Duration::from_secs(15),
            call_timeout: Duration::from_secs(60),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            probe_concurrency: 10,
        }
    }
}

impl Options {
    /// Deadlines for members whose one-way latency is about `latency` (raft's heartbeat is
    /// 1.5 × and its election timeout 15 × it): a dial gets 6 ×, a read 13 × (0.9 s and
    /// 1.95 s at the 150 ms default), so a silent peer is given up well before a new leader
    /// is elected; a configuration change keeps its long wait.
    pub fn for_latency(latency: Duration) -> Options {
        let dial_timeout = (latency * 6).clamp(Duration::from_millis(300), Duration::from_secs(30));
        let request_timeout =
            (latency * 13).clamp(Duration::from_millis(500), Duration::from_secs(60));
        Options {
            dial_timeout,
            request_timeout,
            change_timeout: Duration::from_secs(15).max(request_timeout),
            ..Options::default()
        }
    }
}

/// Membership client for one cluster. Operations on the leader are serialised through an
/// internal lock (one configuration change at a time is all raft allows anyway); share it
/// with an `Arc`.
pub struct Client {
    tls: Option<ClientTls>,
    opts: Options,
    state: Mutex<State>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("tls", &self.tls.is_some())
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

struct State {
    seeds: Vec<String>,
    /// Members from the last CLUSTER answer: more addresses to probe, and their roles.
    known: Vec<NodeInfo>,
    leader: Option<(LeaderInfo, Connection<BoxStream>)>,
}

/// What came back from the leader after retries.
struct Outcome {
    address: String,
    response: Response,
    /// An earlier attempt may have been applied without us seeing the answer.
    ambiguous: bool,
}

impl Client {
    /// A client that will look for the leader among `seeds` (and, once found, among every
    /// member of the configuration). Does no I/O.
    pub fn new<I, A>(seeds: I, tls: Option<ClientTls>, opts: Options) -> Result<Client, ClientError>
    where
        I: IntoIterator<Item = A>,
        A: Into<String>,
    {
        let mut list: Vec<String> = Vec::new();
        for s in seeds {
            let s = s.into();
            if !s.is_empty() && !list.contains(&s) {
                list.push(s);
            }
        }
        if list.is_empty() {
            return Err(ClientError::NoSeeds);
        }
        Ok(Client {
            tls,
            opts,
            state: Mutex::new(State {
                seeds: list,
                known: Vec::new(),
                leader: None,
            }),
        })
    }

    /// A client with default options, already connected to the leader.
    pub async fn connect_any<I, A>(seeds: I, tls: Option<ClientTls>) -> Result<Client, ClientError>
    where
        I: IntoIterator<Item = A>,
        A: Into<String>,
    {
        let client = Client::new(seeds, tls, Options::default())?;
        client.leader().await?;
        Ok(client)
    }

    pub fn options(&self) -> &Options {
        &self.opts
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.opts.call_timeout
    }

    fn request_timeout(&self, deadline: Instant) -> Duration {
        self.opts
            .request_timeout
            .min(deadline.saturating_duration_since(Instant::now()))
    }

    /// The current leader, confirmed by its own LEADER answer.
    pub async fn leader(&self) -> Result<LeaderInfo, ClientError> {
        let deadline = self.deadline();
        let mut backoff = Backoff::new(&self.opts);
        let mut last: Option<ClientError> = None;
        loop {
            let mut state = self.state.lock().await;
            if let Some((_, conn)) = state.leader.as_mut() {
                let t = self.request_timeout(deadline);
                match conn.leader(t).await {
                    Ok(Some(info)) if info.address == conn.address() => return Ok(info),
                    Ok(_) => debug!(address = %conn.address(), "cached leader is no longer leader"),
                    Err(e) => last = Some(e),
                }
                state.leader = None;
            }
            match self.discover(&mut state, deadline).await {
                Ok(()) => {
                    if let Some((info, _)) = state.leader.as_ref() {
                        return Ok(info.clone());
                    }
                }
                Err(e) => last = Some(e),
            }
            drop(state);
            if !backoff.wait(deadline).await {
                return Err(deadline_error("LEADER", &self.opts, last));
            }
        }
    }

    /// The configuration as the leader sees it (format 1: with roles).
    pub async fn cluster(&self) -> Result<Vec<NodeInfo>, ClientError> {
        self.cluster_until(self.deadline()).await
    }

    async fn cluster_until(&self, deadline: Instant) -> Result<Vec<NodeInfo>, ClientError> {
        let out = self.leader_call(Request::Cluster, deadline).await?;
        match out.response {
            Response::Nodes(nodes) => {
                self.state.lock().await.known = nodes.clone();
                Ok(nodes)
            }
            other => Err(hard_error(&out.address, &Request::Cluster, other)),
        }
    }

    /// Adds a member (raft adds it as spare), then gives it `role` if that is not spare.
    /// Promoting to voter makes the leader wait for the node to catch up, so the node should
    /// be running.
    pub async fn add(&self, id: u64, address: &str, role: Role) -> Result<(), ClientError> {
        let deadline = self.deadline();
        let req = Request::Add {
            id,
            address: address.to_string(),
        };
        req.validate()?;
        let verify = |nodes: &[NodeInfo]| nodes.iter().any(|n| n.id == id && n.address == address);
        self.change(req, deadline, verify).await?;
        if role != Role::Spare {
            self.assign_until(id, role, deadline).await?;
        }
        Ok(())
    }

    /// Changes a member's role.
    pub async fn assign(&self, id: u64, role: Role) -> Result<(), ClientError> {
        self.assign_until(id, role, self.deadline()).await
    }

    async fn assign_until(
        &self,
        id: u64,
        role: Role,
        deadline: Instant,
    ) -> Result<(), ClientError> {
        let req = Request::Assign { id, role };
        let verify = |nodes: &[NodeInfo]| nodes.iter().any(|n| n.id == id && n.role == role);
        self.change(req, deadline, verify).await
    }

    /// ASSIGN, only where and as it was planned: on the connection to `planned.leader`
    /// (the one the plan's configuration came from), once that leader still names itself
    /// and the configuration is still `planned.config`. Sent once: a leader that lost
    /// leadership, a configuration that moved on, or no answer drops the change, which is
    /// never carried to another leader (the next round plans again from what is then true).
    /// The 1.11 protocol does not expose raft's term; the same leader answering on the same
    /// connection with the same configuration stands in for it.
    pub async fn assign_planned(
        &self,
        planned: &Planned,
        id: u64,
        role: Role,
    ) -> Result<Assigned, ClientError> {
        let req = Request::Assign { id, role };
        req.validate()?;
        let mut state = self.state.lock().await;
        let Some((info, conn)) = state.leader.as_mut() else {
            return Ok(Assigned::Dropped("no leader connection".into()));
        };
        if info.id != planned.leader.id || conn.is_broken() {
            return Ok(Assigned::Dropped("the leader changed".into()));
        }
        let t = self.opts.request_timeout;
        match conn.leader(t).await {
            Ok(Some(now)) if now.id == planned.leader.id && now.address == conn.address() => {}
            _ => {
                state.leader = None;
                return Ok(Assigned::Dropped(
                    "the planning leader no longer leads".into(),
                ));
            }
        }
        match conn.cluster(t).await {
            Ok(nodes) if same_configuration(&nodes, &planned.config) => {}
            Ok(nodes) => {
                state.known = nodes;
                return Ok(Assigned::Dropped("the configuration changed".into()));
            }
            Err(_) => {
                state.leader = None;
                return Ok(Assigned::Dropped("the leader stopped answering".into()));
            }
        }
        let address = conn.address().to_string();
        match conn.call(&req, self.opts.change_timeout).await {
            Ok(Response::Empty) => Ok(Assigned::Applied),
            Ok(Response::Failure { code, .. }) if code::is_not_leader(code) => {
                state.leader = None;
                Ok(Assigned::Dropped("leadership was lost".into()))
            }
            Ok(Response::Failure { code, .. }) if code == code::BUSY => Ok(Assigned::Dropped(
                "another configuration change is in progress".into(),
            )),
            Ok(other) => Err(hard_error(&address, &req, other)),
            Err(e @ ClientError::Invalid(_)) => Err(e),
            Err(_) => {
                // Maybe applied, maybe not: the next round reads the configuration again.
                state.leader = None;
                Ok(Assigned::Dropped("no answer from the leader".into()))
            }
        }
    }

    /// The leader and its configuration, read on one connection: what a plan is made on.
    pub async fn plan_basis(&self) -> Result<Planned, ClientError> {
        let leader = self.leader().await?;
        let config = self.cluster().await?;
        Ok(Planned { leader, config })
    }

    /// Removes a member, whatever its role.
    pub async fn remove(&self, id: u64) -> Result<(), ClientError> {
        let req = Request::Remove { id };
        let verify = |nodes: &[NodeInfo]| !nodes.iter().any(|n| n.id == id);
        self.change(req, self.deadline(), verify).await
    }

    /// Hands leadership to voter `id`. Returns once the old leader has stepped down; use
    /// [`leader`](Self::leader) to see the new one.
    pub async fn transfer(&self, id: u64) -> Result<(), ClientError> {
        self.transfer_to(Some(id)).await
    }

    /// Hands leadership to a voter raft picks.
    pub async fn transfer_any(&self) -> Result<(), ClientError> {
        self.transfer_to(None).await
    }

    async fn transfer_to(&self, target: Option<u64>) -> Result<(), ClientError> {
        let deadline = self.deadline();
        let req = Request::Transfer { target };
        req.validate()?;
        let out = self.leader_call(req.clone(), deadline).await;
        // Whatever happened, the connection we hold may now point at a follower.
        self.state.lock().await.leader = None;
        let out = out?;
        match out.response {
            Response::Empty => Ok(()),
            other => {
                let err = hard_error(&out.address, &req, other);
                if let (true, Some(id)) = (out.ambiguous, target) {
                    if let Ok(leader) = self.leader().await {
                        if leader.id == id {
                            return Ok(());
                        }
                    }
                }
                Err(err)
            }
        }
    }

    /// DESCRIBE on the node at `address` (not necessarily the leader): its failure domain
    /// and weight. One attempt, bounded by the dial and request timeouts: callers use it as
    /// a liveness probe.
    pub async fn describe(&self, address: &str) -> Result<Metadata, ClientError> {
        let mut conn = connect(address, self.tls.as_ref(), self.opts.dial_timeout).await?;
        conn.describe(self.opts.request_timeout).await
    }

    /// WEIGHT on the node at `address`: its election weight, kept in memory by that node
    /// only (reset to 0 when it restarts). One attempt.
    pub async fn weight(&self, address: &str, weight: u64) -> Result<(), ClientError> {
        let mut conn = connect(address, self.tls.as_ref(), self.opts.dial_timeout).await?;
        conn.exec(&Request::Weight { weight }, self.opts.request_timeout)
            .await
    }

    /// Sends a configuration change to the leader with retries; on a hard refusal after an
    /// ambiguous attempt, accepts the configuration if `verify` says it is already as
    /// wanted.
    async fn change<F>(&self, req: Request, deadline: Instant, verify: F) -> Result<(), ClientError>
    where
        F: Fn(&[NodeInfo]) -> bool,
    {
        req.validate()?;
        let out = self.leader_call(req.clone(), deadline).await?;
        match out.response {
            Response::Empty => Ok(()),
            other => {
                let err = hard_error(&out.address, &req, other);
                if out.ambiguous {
                    if let Ok(nodes) = self.cluster_until(deadline).await {
                        if verify(&nodes) {
                            debug!(request = req.name(), "earlier attempt had been applied");
                            return Ok(());
                        }
                    }
                }
                Err(err)
            }
        }
    }

    /// Sends `req` to the leader until it is answered with something other than a
    /// retryable failure, or the deadline passes.
    async fn leader_call(&self, req: Request, deadline: Instant) -> Result<Outcome, ClientError> {
        req.validate()?;
        let mutating = !matches!(req, Request::Cluster | Request::Leader);
        let mut backoff = Backoff::new(&self.opts);
        let mut ambiguous = false;
        let mut last: Option<ClientError> = None;
        loop {
            let mut state = self.state.lock().await;
            // The lock is FIFO: a caller may get it after its deadline. Nothing is sent then
            // (a late ADD or REMOVE could be applied while the caller reports failure).
            if Instant::now() >= deadline {
                return Err(deadline_error(req.name(), &self.opts, last));
            }
            // A follower answers reads like CLUSTER itself instead of redirecting, so a read
            // on a cached connection first checks that it still leads (go-dqlite does the
            // same when it looks for the leader).
            if !mutating {
                if let Some((_, conn)) = state.leader.as_mut() {
                    let t = self.request_timeout(deadline);
                    let still_leads = matches!(
                        conn.leader(t).await,
                        Ok(Some(info)) if info.address == conn.address()
                    );
                    if !still_leads {
                        debug!(address = %conn.address(), "cached leader no longer leads; finding it again");
                        state.leader = None;
                    }
                }
            }
            let ready = match state.leader.as_ref() {
                Some((_, conn)) if !conn.is_broken() => Ok(()),
                _ => self.discover(&mut state, deadline).await,
            };
            if let Err(e) = ready {
                last = Some(e);
            } else if let Some((_, conn)) = state.leader.as_mut() {
                let address = conn.address().to_string();
                let t = if mutating {
                    self.opts
                        .change_timeout
                        .min(deadline.saturating_duration_since(Instant::now()))
                } else {
                    self.request_timeout(deadline)
                };
                match conn.call(&req, t).await {
                    Ok(Response::Failure { code, message }) if code::is_not_leader(code) => {
                        debug!(%address, code, request = req.name(), "not leader; finding the leader again");
                        if code != code::NOT_LEADER && code != code::NOT_LEADER_LEGACY {
                            ambiguous |= mutating;
                        }
                        state.leader = None;
                        last = Some(ClientError::Failure {
                            address,
                            request: req.name(),
                            code,
                            message,
                        });
                    }
                    Ok(Response::Failure { code, message }) if code == code::BUSY => {
                        debug!(%address, request = req.name(), "configuration change in progress; retrying");
                        last = Some(ClientError::Failure {
                            address,
                            request: req.name(),
                            code,
                            message,
                        });
                    }
                    Ok(response) => {
                        return Ok(Outcome {
                            address,
                            response,
                            ambiguous,
                        })
                    }
                    Err(e @ ClientError::Invalid(_)) => return Err(e),
                    Err(e) => {
                        debug!(%address, error = %e, request = req.name(), "leader connection failed");
                        ambiguous |= mutating;
                        state.leader = None;
                        last = Some(e);
                    }
                }
            }
            drop(state);
            if !backoff.wait(deadline).await {
                return Err(deadline_error(req.name(), &self.opts, last));
            }
        }
    }

    /// One discovery round over every known address. On success `state.leader` holds a
    /// confirmed leader connection and `state.known` the leader's configuration.
    async fn discover(&self, state: &mut State, deadline: Instant) -> Result<(), ClientError> {
        state.leader = None;
        let candidates = candidates(&state.seeds, &state.known);
        let tried = candidates.len();
        let limit = Arc::new(Semaphore::new(self.opts.probe_concurrency.max(1)));
        let mut probes = JoinSet::new();
        for address in candidates {
            let tls = self.tls.clone();
            let opts = self.opts.clone();
            let limit = limit.clone();
            probes.spawn(async move {
                let _permit = limit.acquire_owned().await;
                let result = probe(&address, tls.as_ref(), &opts, deadline).await;
                (address, result)
            });
        }
        let mut errors: Vec<String> = Vec::new();
        while let Some(joined) = probes.join_next().await {
            let Ok((address, result)) = joined else {
                continue;
            };
            match result {
                Ok(Some((info, mut conn))) => {
                    probes.abort_all();
                    // Learn every member's address, so later rounds survive dead seeds.
                    let t = self.request_timeout(deadline);
                    match conn.cluster(t).await {
                        Ok(nodes) => state.known = nodes,
                        Err(e) => {
                            warn!(address = %info.address, error = %e, "leader did not answer CLUSTER");
                            return Err(e);
                        }
                    }
                    debug!(leader = %info.address, id = info.id, "found dqlite leader");
                    state.leader = Some((info, conn));
                    return Ok(());
                }
                Ok(None) => errors.push(format!("{address}: knows no leader")),
                Err(e) => errors.push(e.to_string()),
            }
        }
        Err(ClientError::NoLeader {
            tried,
            detail: errors.join("; "),
        })
    }
}

/// Probe order: known voters, seeds, then known stand-bys and spares; no duplicates.
fn candidates(seeds: &[String], known: &[NodeInfo]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |a: &str| {
        if !a.is_empty() && !out.iter().any(|x| x == a) {
            out.push(a.to_string());
        }
    };
    for n in known.iter().filter(|n| n.role == Role::Voter) {
        push(&n.address);
    }
    for s in seeds {
        push(s);
    }
    for role in [Role::StandBy, Role::Spare] {
        for n in known.iter().filter(|n| n.role == role) {
            push(&n.address);
        }
    }
    out
}

/// Asks one node who leads; follows one redirect. `Ok(Some)` only for a node that names
/// itself.
async fn probe(
    address: &str,
    tls: Option<&ClientTls>,
    opts: &Options,
    deadline: Instant,
) -> Result<Option<(LeaderInfo, Connection<BoxStream>)>, ClientError> {
    let left = || deadline.saturating_duration_since(Instant::now());
    let mut conn = connect(address, tls, opts.dial_timeout.min(left())).await?;
    let named = match conn.leader(opts.request_timeout.min(left())).await? {
        None => return Ok(None),
        Some(info) if info.address == address => return Ok(Some((info, conn))),
        Some(info) => info,
    };
    drop(conn);
    let mut conn = connect(&named.address, tls, opts.dial_timeout.min(left())).await?;
    match conn.leader(opts.request_timeout.min(left())).await? {
        Some(info) if info.address == named.address => Ok(Some((info, conn))),
        _ => Ok(None),
    }
}

fn hard_error(address: &str, req: &Request, resp: Response) -> ClientError {
    match resp {
        Response::Failure { code, message } => ClientError::Failure {
            address: address.to_string(),
            request: req.name(),
            code,
            message,
        },
        other => ClientError::Unexpected {
            address: address.to_string(),
            request: req.name(),
            got: other.name(),
        },
    }
}

fn deadline_error(op: &'static str, opts: &Options, last: Option<ClientError>) -> ClientError {
    ClientError::Deadline {
        op,
        timeout: opts.call_timeout,
        last: last.map_or_else(|| "none".to_string(), |e| e.to_string()),
    }
}

/// Exponential backoff bounded by a deadline.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(opts: &Options) -> Backoff {
        Backoff {
            next: opts.backoff_min,
            max: opts.backoff_max.max(opts.backoff_min),
        }
    }

    /// Sleeps the next step (cut at the deadline). False when the deadline has passed.
    async fn wait(&mut self, deadline: Instant) -> bool {
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        let step = self.next.min(deadline - now);
        self.next = (self.next * 2).min(self.max);
        tokio::time::sleep(step).await;
        Instant::now() < deadline
    }
}

#[cfg(test)]
mod tests;
