//! The dqlite wire protocol (version 1), membership subset, sans-IO.
//!
//! Every message is an 8-byte header (u32 LE body length in 8-byte words, u8 type, u8
//! schema, u16 zero) followed by a body made of whole words. Integers are little-endian;
//! text is UTF-8 plus a NUL, zero-padded to the next word boundary. Facts and captured
//! bytes: `shared/reference/dqlite.md` §1.
//!
//! This module does no I/O. Encoders return whole frames; decoders look at a byte slice and
//! answer "incomplete" (`Ok(None)`) without consuming anything until a whole frame is there.
//! Both directions are implemented (requests and responses) so tests can play either side.

use std::fmt;

/// Protocol version word sent by the client right after connecting.
pub const PROTOCOL_VERSION: u64 = 1;
/// Length of a message header in bytes.
pub const HEADER_LEN: usize = 8;
/// Largest body accepted by the decoders. Membership responses are tiny (a NODES entry is
/// at most a few hundred bytes); a bigger frame means a confused or hostile peer, and we
/// must not let it make us buffer without limit.
pub const MAX_BODY_LEN: usize = 1 << 20;

/// The node id dqlite bootstraps a fresh single-voter cluster with (go-dqlite's
/// `BootstrapID`).
pub const BOOTSTRAP_ID: u64 = 0x2dc1_7185_8c31_55be;

/// FAILURE codes the client reacts to (dqlite.md §1.6).
pub mod code {
    /// SQLITE_BUSY from raft's "configuration change already in progress".
    pub const BUSY: u64 = 5;
    /// SQLITE_IOERR_NOT_LEADER.
    pub const NOT_LEADER: u64 = 10250;
    /// SQLITE_IOERR_LEADERSHIP_LOST.
    pub const LEADERSHIP_LOST: u64 = 10506;
    /// Pre-1.0 spellings of the two above, still recognised by go-dqlite.
    pub const NOT_LEADER_LEGACY: u64 = 8202;
    pub const LEADERSHIP_LOST_LEGACY: u64 = 8458;

    /// The request went to a node that is not (or no longer) the leader: find the leader
    /// again and retry.
    pub fn is_not_leader(code: u64) -> bool {
        matches!(
            code,
            NOT_LEADER | LEADERSHIP_LOST | NOT_LEADER_LEGACY | LEADERSHIP_LOST_LEGACY
        )
    }
}

/// Request type codes.
pub mod request_type {
    pub const LEADER: u8 = 0;
    pub const CLIENT: u8 = 1;
    pub const ADD: u8 = 12;
    pub const ASSIGN: u8 = 13;
    pub const REMOVE: u8 = 14;
    pub const CLUSTER: u8 = 16;
    pub const TRANSFER: u8 = 17;
    pub const DESCRIBE: u8 = 18;
    pub const WEIGHT: u8 = 19;
}

/// Response type codes.
pub mod response_type {
    pub const FAILURE: u8 = 0;
    pub const NODE: u8 = 1;
    pub const WELCOME: u8 = 2;
    pub const NODES: u8 = 3;
    pub const EMPTY: u8 = 8;
    pub const METADATA: u8 = 10;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("node id 0 is not valid")]
    ZeroId,
    #[error("role {0} is not valid (0 voter, 1 stand-by, 2 spare)")]
    BadRole(u64),
    #[error("unknown role {0:?} (voter, stand-by, spare)")]
    UnknownRoleName(String),
    #[error("address is empty")]
    EmptyAddress,
    #[error("text contains a NUL byte")]
    NulInText,
    #[error("refusing to send an empty body (it crashes dqlite 1.11 nodes)")]
    EmptyBody,
    #[error("body of {0} bytes exceeds the {MAX_BODY_LEN}-byte limit")]
    TooLarge(usize),
    #[error("message header has non-zero flags {0:#06x}")]
    BadFlags(u16),
    #[error("unknown or unsupported message type {0}")]
    UnknownType(u8),
    #[error("body ends before field {0}")]
    Truncated(&'static str),
    #[error("text field {0} has no NUL terminator")]
    Unterminated(&'static str),
    #[error("text field {0} is not UTF-8")]
    NotUtf8(&'static str),
}

/// A member's role, with dqlite's numbering (which differs from raft's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Voter,
    StandBy,
    Spare,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Voter, Role::StandBy, Role::Spare];

    pub fn code(self) -> u64 {
        match self {
            Role::Voter => 0,
            Role::StandBy => 1,
            Role::Spare => 2,
        }
    }

    pub fn from_code(code: u64) -> Result<Role, ProtoError> {
        match code {
            0 => Ok(Role::Voter),
            1 => Ok(Role::StandBy),
            2 => Ok(Role::Spare),
            other => Err(ProtoError::BadRole(other)),
        }
    }

    /// go-dqlite's spelling, also printed by the `dqlite` shell.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Voter => "voter",
            Role::StandBy => "stand-by",
            Role::Spare => "spare",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = ProtoError;
    fn from_str(s: &str) -> Result<Role, ProtoError> {
        match s {
            "voter" => Ok(Role::Voter),
            "stand-by" | "standby" => Ok(Role::StandBy),
            "spare" => Ok(Role::Spare),
            other => Err(ProtoError::UnknownRoleName(other.to_string())),
        }
    }
}

/// One member of the raft configuration.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeInfo {
    pub id: u64,
    pub address: String,
    pub role: Role,
}

/// Layout of a CLUSTER answer. We always ask for `V1`; `V0` exists for decoding tests and
/// for peers that were asked with format 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterFormat {
    /// id + address.
    V0,
    /// id + address + role.
    V1,
}

impl ClusterFormat {
    pub fn code(self) -> u64 {
        match self {
            ClusterFormat::V0 => 0,
            ClusterFormat::V1 => 1,
        }
    }
}

/// Client → server messages of the membership subset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Who is the leader (as this node believes)?
    Leader,
    /// Register as a client; go-dqlite sends id 0. Not needed for membership requests.
    Client { id: u64 },
    /// The raft configuration; we always send format 1.
    Cluster,
    /// Add a member as spare. Leader only.
    Add { id: u64, address: String },
    /// Change a member's role. Leader only. Always sent with both words.
    Assign { id: u64, role: Role },
    /// Remove a member. Leader only.
    Remove { id: u64 },
    /// Hand leadership to `target`, or let raft pick a voter when `None`. Leader only.
    Transfer { target: Option<u64> },
    /// Failure domain and weight of the node we are connected to (format 0).
    Describe,
    /// Set the weight of the node we are connected to.
    Weight { weight: u64 },
}

impl Request {
    /// Short name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Leader => "LEADER",
            Request::Client { .. } => "CLIENT",
            Request::Cluster => "CLUSTER",
            Request::Add { .. } => "ADD",
            Request::Assign { .. } => "ASSIGN",
            Request::Remove { .. } => "REMOVE",
            Request::Transfer { .. } => "TRANSFER",
            Request::Describe => "DESCRIBE",
            Request::Weight { .. } => "WEIGHT",
        }
    }

    pub fn type_code(&self) -> u8 {
        use request_type as t;
        match self {
            Request::Leader => t::LEADER,
            Request::Client { .. } => t::CLIENT,
            Request::Cluster => t::CLUSTER,
            Request::Add { .. } => t::ADD,
            Request::Assign { .. } => t::ASSIGN,
            Request::Remove { .. } => t::REMOVE,
            Request::Transfer { .. } => t::TRANSFER,
            Request::Describe => t::DESCRIBE,
            Request::Weight { .. } => t::WEIGHT,
        }
    }

    /// Checks the arguments a server would accept but misinterpret: id 0 (accepted by ADD
    /// and then stuck in the configuration), empty or NUL-containing addresses.
    pub fn validate(&self) -> Result<(), ProtoError> {
        match self {
            Request::Add { id, address } => {
                nonzero(*id)?;
                if address.is_empty() {
                    return Err(ProtoError::EmptyAddress);
                }
                if address.as_bytes().contains(&0) {
                    return Err(ProtoError::NulInText);
                }
                Ok(())
            }
            Request::Assign { id, .. } | Request::Remove { id } => nonzero(*id),
            Request::Transfer { target: Some(id) } => nonzero(*id),
            _ => Ok(()),
        }
    }

    /// The whole frame, header included.
    pub fn encode(&self) -> Result<Vec<u8>, ProtoError> {
        self.validate()?;
        let mut body = Vec::with_capacity(32);
        match self {
            Request::Leader | Request::Describe => put_u64(&mut body, 0),
            Request::Client { id } => put_u64(&mut body, *id),
            Request::Cluster => put_u64(&mut body, ClusterFormat::V1.code()),
            Request::Add { id, address } => {
                put_u64(&mut body, *id);
                put_text(&mut body, address)?;
            }
            Request::Assign { id, role } => {
                put_u64(&mut body, *id);
                put_u64(&mut body, role.code());
            }
            Request::Remove { id } => put_u64(&mut body, *id),
            Request::Transfer { target } => put_u64(&mut body, target.unwrap_or(0)),
            Request::Weight { weight } => put_u64(&mut body, *weight),
        }
        frame(self.type_code(), &body)
    }
}

fn nonzero(id: u64) -> Result<(), ProtoError> {
    if id == 0 {
        Err(ProtoError::ZeroId)
    } else {
        Ok(())
    }
}

/// Server → client messages of the membership subset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Failure {
        code: u64,
        message: String,
    },
    /// Answer to LEADER: `(0, "")` means "no leader known here".
    Node {
        id: u64,
        address: String,
    },
    Welcome {
        heartbeat_timeout_ms: u64,
    },
    Nodes(Vec<NodeInfo>),
    Empty,
    Metadata(Metadata),
}

/// A node's answer to DESCRIBE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Metadata {
    pub failure_domain: u64,
    pub weight: u64,
}

impl Response {
    pub fn name(&self) -> &'static str {
        match self {
            Response::Failure { .. } => "FAILURE",
            Response::Node { .. } => "NODE",
            Response::Welcome { .. } => "WELCOME",
            Response::Nodes(_) => "NODES",
            Response::Empty => "EMPTY",
            Response::Metadata(_) => "METADATA",
        }
    }

    pub fn type_code(&self) -> u8 {
        use response_type as t;
        match self {
            Response::Failure { .. } => t::FAILURE,
            Response::Node { .. } => t::NODE,
            Response::Welcome { .. } => t::WELCOME,
            Response::Nodes(_) => t::NODES,
            Response::Empty => t::EMPTY,
            Response::Metadata(_) => t::METADATA,
        }
    }

    /// The whole frame as a server would send it (NODES in format 1). Used by tests that
    /// play the server.
    pub fn encode(&self) -> Result<Vec<u8>, ProtoError> {
        let mut body = Vec::with_capacity(64);
        match self {
            Response::Failure { code, message } => {
                put_u64(&mut body, *code);
                put_text(&mut body, message)?;
            }
            Response::Node { id, address } => {
                put_u64(&mut body, *id);
                put_text(&mut body, address)?;
            }
            Response::Welcome {
                heartbeat_timeout_ms,
            } => put_u64(&mut body, *heartbeat_timeout_ms),
            Response::Nodes(nodes) => {
                put_u64(&mut body, nodes.len() as u64);
                for n in nodes {
                    put_u64(&mut body, n.id);
                    put_text(&mut body, &n.address)?;
                    put_u64(&mut body, n.role.code());
                }
            }
            Response::Empty => put_u64(&mut body, 0),
            Response::Metadata(m) => {
                put_u64(&mut body, m.failure_domain);
                put_u64(&mut body, m.weight);
            }
        }
        frame(self.type_code(), &body)
    }
}

/// The 8 bytes a client sends right after connecting.
pub fn handshake() -> [u8; 8] {
    PROTOCOL_VERSION.to_le_bytes()
}

/// A parsed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub msg_type: u8,
    pub schema: u8,
    pub body_len: usize,
}

/// Reads a header and checks that the whole frame is in `buf`. `Ok(None)`: need more bytes.
/// Returns the header and the total frame length.
pub fn frame_header(buf: &[u8]) -> Result<Option<(Header, usize)>, ProtoError> {
    let Some(head) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let words = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let flags = u16::from_le_bytes([head[6], head[7]]);
    // words fits in usize on every platform we build for; the limit check keeps the
    // multiplication far from overflow.
    let body_len = (words as usize).saturating_mul(8);
    if body_len > MAX_BODY_LEN {
        return Err(ProtoError::TooLarge(body_len));
    }
    if flags != 0 {
        return Err(ProtoError::BadFlags(flags));
    }
    let total = HEADER_LEN + body_len;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some((
        Header {
            msg_type: head[4],
            schema: head[5],
            body_len,
        },
        total,
    )))
}

/// Decodes one response from the front of `buf` (NODES read as format 1, which is what
/// [`Request::Cluster`] asks for). `Ok(None)`: incomplete, nothing consumed. `Ok(Some((r,
/// n)))`: the first `n` bytes were one message.
pub fn decode(buf: &[u8]) -> Result<Option<(Response, usize)>, ProtoError> {
    decode_with(buf, ClusterFormat::V1)
}

/// As [`decode`], with an explicit layout for NODES.
pub fn decode_with(
    buf: &[u8],
    format: ClusterFormat,
) -> Result<Option<(Response, usize)>, ProtoError> {
    let Some((header, total)) = frame_header(buf)? else {
        return Ok(None);
    };
    let mut r = Reader::new(&buf[HEADER_LEN..total]);
    use response_type as t;
    let response = match header.msg_type {
        t::FAILURE => Response::Failure {
            code: r.u64("code")?,
            message: r.text("message")?,
        },
        t::NODE => Response::Node {
            id: r.u64("id")?,
            address: r.text("address")?,
        },
        t::WELCOME => Response::Welcome {
            heartbeat_timeout_ms: r.u64("heartbeat_timeout")?,
        },
        t::NODES => {
            let count = r.u64("count")?;
            // Each entry takes at least 16 bytes (id + shortest text), 24 with a role:
            // never trust the count for an allocation.
            let min_entry = match format {
                ClusterFormat::V0 => 16,
                ClusterFormat::V1 => 24,
            };
            if count > (r.remaining() / min_entry) as u64 {
                return Err(ProtoError::Truncated("nodes"));
            }
            let mut nodes = Vec::with_capacity(count as usize);
            for _ in 0..count {
                let id = r.u64("node id")?;
                let address = r.text("node address")?;
                let role = match format {
                    ClusterFormat::V0 => Role::Voter,
                    ClusterFormat::V1 => Role::from_code(r.u64("node role")?)?,
                };
                nodes.push(NodeInfo { id, address, role });
            }
            Response::Nodes(nodes)
        }
        t::EMPTY => {
            r.u64("unused")?;
            Response::Empty
        }
        t::METADATA => Response::Metadata(Metadata {
            failure_domain: r.u64("failure_domain")?,
            weight: r.u64("weight")?,
        }),
        other => return Err(ProtoError::UnknownType(other)),
    };
    // Trailing words are tolerated: later protocol revisions append fields.
    Ok(Some((response, total)))
}

/// Decodes one request from the front of `buf` (the server side; for tests and tools).
pub fn decode_request(buf: &[u8]) -> Result<Option<(Request, usize)>, ProtoError> {
    let Some((header, total)) = frame_header(buf)? else {
        return Ok(None);
    };
    let mut r = Reader::new(&buf[HEADER_LEN..total]);
    use request_type as t;
    let request = match header.msg_type {
        t::LEADER => {
            r.u64("unused")?;
            Request::Leader
        }
        t::CLIENT => Request::Client { id: r.u64("id")? },
        t::CLUSTER => {
            r.u64("format")?;
            Request::Cluster
        }
        t::ADD => Request::Add {
            id: r.u64("id")?,
            address: r.text("address")?,
        },
        t::ASSIGN => {
            let id = r.u64("id")?;
            // A one-word body is the legacy PROMOTE: "make voter".
            let role = if r.remaining() == 0 {
                Role::Voter
            } else {
                Role::from_code(r.u64("role")?)?
            };
            Request::Assign { id, role }
        }
        t::REMOVE => Request::Remove { id: r.u64("id")? },
        t::TRANSFER => {
            let id = r.u64("id")?;
            Request::Transfer {
                target: (id != 0).then_some(id),
            }
        }
        t::DESCRIBE => {
            r.u64("format")?;
            Request::Describe
        }
        t::WEIGHT => Request::Weight {
            weight: r.u64("weight")?,
        },
        other => return Err(ProtoError::UnknownType(other)),
    };
    Ok(Some((request, total)))
}

fn frame(msg_type: u8, body: &[u8]) -> Result<Vec<u8>, ProtoError> {
    if body.is_empty() {
        return Err(ProtoError::EmptyBody);
    }
    if body.len() > MAX_BODY_LEN {
        return Err(ProtoError::TooLarge(body.len()));
    }
    debug_assert_eq!(body.len() % 8, 0);
    let words = u32::try_from(body.len() / 8).map_err(|_| ProtoError::TooLarge(body.len()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&words.to_le_bytes());
    out.push(msg_type);
    out.push(0); // schema
    out.extend_from_slice(&[0, 0]); // flags
    out.extend_from_slice(body);
    Ok(out)
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_text(out: &mut Vec<u8>, s: &str) -> Result<(), ProtoError> {
    if s.as_bytes().contains(&0) {
        return Err(ProtoError::NulInText);
    }
    out.extend_from_slice(s.as_bytes());
    let padded = (s.len() + 1).div_ceil(8) * 8;
    out.resize(out.len() + padded - s.len(), 0);
    Ok(())
}

/// Cursor over a message body. Every read checks bounds; nothing here can panic.
struct Reader<'a> {
    body: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(body: &'a [u8]) -> Reader<'a> {
        Reader { body, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.body.len().saturating_sub(self.pos)
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, ProtoError> {
        let bytes = self
            .body
            .get(self.pos..self.pos.saturating_add(8))
            .ok_or(ProtoError::Truncated(field))?;
        let mut word = [0u8; 8];
        word.copy_from_slice(bytes);
        self.pos += 8;
        Ok(u64::from_le_bytes(word))
    }

    fn text(&mut self, field: &'static str) -> Result<String, ProtoError> {
        let rest = self
            .body
            .get(self.pos..)
            .ok_or(ProtoError::Truncated(field))?;
        if rest.is_empty() {
            return Err(ProtoError::Truncated(field));
        }
        let nul = rest
            .iter()
            .position(|b| *b == 0)
            .ok_or(ProtoError::Unterminated(field))?;
        let padded = (nul + 1).div_ceil(8) * 8;
        if padded > rest.len() {
            return Err(ProtoError::Truncated(field));
        }
        let text = std::str::from_utf8(&rest[..nul]).map_err(|_| ProtoError::NotUtf8(field))?;
        self.pos += padded;
        Ok(text.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

    fn text_hex(s: &str) -> String {
        let mut out = Vec::new();
        put_text(&mut out, s).unwrap();
        out.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    // Frames captured from a live 1.11.1 cluster (dqlite.md §1.7).
    #[test]
    fn requests_match_captured_bytes() {
        let cases = [
            (
                Request::Leader,
                "01 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00",
            ),
            (
                Request::Client { id: 0 },
                "01 00 00 00 01 00 00 00  00 00 00 00 00 00 00 00",
            ),
            (
                Request::Cluster,
                "01 00 00 00 10 00 00 00  01 00 00 00 00 00 00 00",
            ),
            (
                Request::Describe,
                "01 00 00 00 12 00 00 00  00 00 00 00 00 00 00 00",
            ),
            (
                Request::Weight { weight: 7 },
                "01 00 00 00 13 00 00 00  07 00 00 00 00 00 00 00",
            ),
            (
                Request::Add {
                    id: 0x1234,
                    address: "127.0.0.1:19099".into(),
                },
                "03 00 00 00 0c 00 00 00  34 12 00 00 00 00 00 00  \
                 31 32 37 2e 30 2e 30 2e 31 3a 31 39 30 39 39 00",
            ),
            (
                Request::Assign {
                    id: 0x1234,
                    role: Role::StandBy,
                },
                "02 00 00 00 0d 00 00 00  34 12 00 00 00 00 00 00  01 00 00 00 00 00 00 00",
            ),
            (
                Request::Remove { id: 0x1234 },
                "01 00 00 00 0e 00 00 00  34 12 00 00 00 00 00 00",
            ),
            (
                Request::Transfer {
                    target: Some(0x98a6_c3e2_d15b_d903),
                },
                "01 00 00 00 11 00 00 00  03 d9 5b d1 e2 c3 a6 98",
            ),
            (
                Request::Transfer { target: None },
                "01 00 00 00 11 00 00 00  00 00 00 00 00 00 00 00",
            ),
        ];
        for (req, bytes) in cases {
            assert_eq!(req.encode().unwrap(), hex(bytes), "{req:?}");
            let (back, n) = decode_request(&hex(bytes)).unwrap().unwrap();
            assert_eq!(n, hex(bytes).len());
            assert_eq!(back, req);
        }
    }

    #[test]
    fn responses_match_captured_bytes() {
        let node = format!(
            "03 00 00 00 01 00 00 00  be 55 31 8c 85 71 c1 2d  {}",
            text_hex("127.0.0.1:19001")
        );
        assert_eq!(
            decode(&hex(&node)).unwrap().unwrap(),
            (
                Response::Node {
                    id: BOOTSTRAP_ID,
                    address: "127.0.0.1:19001".into()
                },
                32
            )
        );
        // A stand-by answering LEADER: no leader known.
        let none = "02 00 00 00 01 00 00 00  00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00";
        assert_eq!(
            decode(&hex(none)).unwrap().unwrap().0,
            Response::Node {
                id: 0,
                address: String::new()
            }
        );
        let welcome = "01 00 00 00 02 00 00 00  98 3a 00 00 00 00 00 00";
        assert_eq!(
            decode(&hex(welcome)).unwrap().unwrap().0,
            Response::Welcome {
                heartbeat_timeout_ms: 15000
            }
        );
        let metadata = "02 00 00 00 0a 00 00 00  00 00 00 00 00 00 00 00  07 00 00 00 00 00 00 00";
        assert_eq!(
            decode(&hex(metadata)).unwrap().unwrap().0,
            Response::Metadata(Metadata {
                failure_domain: 0,
                weight: 7
            })
        );
        let empty = "01 00 00 00 08 00 00 00  00 00 00 00 00 00 00 00";
        assert_eq!(decode(&hex(empty)).unwrap().unwrap().0, Response::Empty);
        let failure = "03 00 00 00 00 00 00 00  0a 28 00 00 00 00 00 00  \
                       6e 6f 74 20 6c 65 61 64 65 72 00 00 00 00 00 00";
        assert_eq!(
            decode(&hex(failure)).unwrap().unwrap().0,
            Response::Failure {
                code: code::NOT_LEADER,
                message: "not leader".into()
            }
        );
    }

    #[test]
    fn cluster_formats() {
        let entry = |id: &str, addr: &str, role: Option<&str>| {
            format!(
                "{id} {}{}",
                text_hex(addr),
                role.map(|r| format!(" {r}")).unwrap_or_default()
            )
        };
        let id1 = "be 55 31 8c 85 71 c1 2d";
        let id2 = "03 d9 5b d1 e2 c3 a6 98";
        // 9 words = count + 2 × (id + 16-byte address + role).
        let v1 = format!(
            "09 00 00 00 03 00 00 00  02 00 00 00 00 00 00 00 {} {}",
            entry(id1, "127.0.0.1:19001", Some("00 00 00 00 00 00 00 00")),
            entry(id2, "127.0.0.1:19002", Some("02 00 00 00 00 00 00 00")),
        );
        let expected = vec![
            NodeInfo {
                id: BOOTSTRAP_ID,
                address: "127.0.0.1:19001".into(),
                role: Role::Voter,
            },
            NodeInfo {
                id: 0x98a6_c3e2_d15b_d903,
                address: "127.0.0.1:19002".into(),
                role: Role::Spare,
            },
        ];
        let (resp, n) = decode(&hex(&v1)).unwrap().unwrap();
        assert_eq!(n, 80);
        assert_eq!(resp, Response::Nodes(expected.clone()));
        assert_eq!(Response::Nodes(expected).encode().unwrap(), hex(&v1));

        // Format 0: no role words. 7 words = count + 2 × (id + 16-byte address).
        let v0 = format!(
            "07 00 00 00 03 00 00 00  02 00 00 00 00 00 00 00 {} {}",
            entry(id1, "127.0.0.1:19001", None),
            entry(id2, "127.0.0.1:19002", None),
        );
        let (resp, n) = decode_with(&hex(&v0), ClusterFormat::V0).unwrap().unwrap();
        assert_eq!(n, 64);
        let Response::Nodes(nodes) = resp else {
            panic!("not NODES")
        };
        let ids: Vec<_> = nodes.iter().map(|n| (n.id, n.address.as_str())).collect();
        assert_eq!(
            ids,
            [
                (BOOTSTRAP_ID, "127.0.0.1:19001"),
                (0x98a6_c3e2_d15b_d903, "127.0.0.1:19002")
            ]
        );
    }

    #[test]
    fn text_padding_sizes() {
        for (s, size) in [
            ("", 8),
            ("1234567", 8),
            ("12345678", 16),
            ("not leader", 16),
        ] {
            let mut out = Vec::new();
            put_text(&mut out, s).unwrap();
            assert_eq!(out.len(), size, "{s:?}");
        }
    }

    #[test]
    fn validation() {
        assert_eq!(
            Request::Add {
                id: 0,
                address: "a:1".into()
            }
            .encode(),
            Err(ProtoError::ZeroId)
        );
        assert_eq!(
            Request::Add {
                id: 1,
                address: String::new()
            }
            .encode(),
            Err(ProtoError::EmptyAddress)
        );
        assert_eq!(
            Request::Add {
                id: 1,
                address: "a\0b".into()
            }
            .encode(),
            Err(ProtoError::NulInText)
        );
        assert_eq!(
            Request::Assign {
                id: 0,
                role: Role::Voter
            }
            .encode(),
            Err(ProtoError::ZeroId)
        );
        assert_eq!(Request::Remove { id: 0 }.encode(), Err(ProtoError::ZeroId));
        assert_eq!(
            Request::Transfer { target: Some(0) }.encode(),
            Err(ProtoError::ZeroId)
        );
        assert_eq!(Role::from_code(3), Err(ProtoError::BadRole(3)));
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
            assert_eq!(Role::from_code(role.code()), Ok(role));
        }
        assert!("leader".parse::<Role>().is_err());
        assert_eq!(frame(0, &[]), Err(ProtoError::EmptyBody));
        // A NODES answer with an unknown role is rejected, not mapped.
        let mut bad = Response::Nodes(vec![NodeInfo {
            id: 1,
            address: "x".into(),
            role: Role::Voter,
        }])
        .encode()
        .unwrap();
        let last = bad.len() - 8;
        bad[last] = 5;
        assert_eq!(decode(&bad), Err(ProtoError::BadRole(5)));
    }

    #[test]
    fn header_errors() {
        let mut too_big = vec![0u8; 8];
        too_big[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&too_big), Err(ProtoError::TooLarge(_))));
        let flags = hex("01 00 00 00 08 00 01 00  00 00 00 00 00 00 00 00");
        assert_eq!(decode(&flags), Err(ProtoError::BadFlags(1)));
        let unknown = hex("01 00 00 00 05 00 00 00  00 00 00 00 00 00 00 00");
        assert_eq!(decode(&unknown), Err(ProtoError::UnknownType(5)));
        let zero_body_empty = hex("00 00 00 00 08 00 00 00");
        assert_eq!(
            decode(&zero_body_empty),
            Err(ProtoError::Truncated("unused"))
        );
        let no_nul =
            hex("02 00 00 00 01 00 00 00  01 00 00 00 00 00 00 00  41 41 41 41 41 41 41 41");
        assert_eq!(decode(&no_nul), Err(ProtoError::Unterminated("address")));
        // A count far beyond the body must not allocate or loop.
        let huge_count = hex("01 00 00 00 03 00 00 00  ff ff ff ff ff ff ff ff");
        assert_eq!(decode(&huge_count), Err(ProtoError::Truncated("nodes")));
    }

    #[test]
    fn two_frames_back_to_back() {
        let mut buf = Response::Empty.encode().unwrap();
        buf.extend(
            Response::Welcome {
                heartbeat_timeout_ms: 1,
            }
            .encode()
            .unwrap(),
        );
        let (first, n) = decode(&buf).unwrap().unwrap();
        assert_eq!(first, Response::Empty);
        let (second, m) = decode(&buf[n..]).unwrap().unwrap();
        assert_eq!(
            second,
            Response::Welcome {
                heartbeat_timeout_ms: 1
            }
        );
        assert_eq!(n + m, buf.len());
    }

    fn arb_role() -> impl Strategy<Value = Role> {
        prop_oneof![Just(Role::Voter), Just(Role::StandBy), Just(Role::Spare)]
    }

    fn arb_text() -> impl Strategy<Value = String> {
        "[^\u{0}]{0,40}"
    }

    fn arb_response() -> impl Strategy<Value = Response> {
        let node = (any::<u64>(), arb_text(), arb_role())
            .prop_map(|(id, address, role)| NodeInfo { id, address, role });
        prop_oneof![
            (any::<u64>(), arb_text())
                .prop_map(|(code, message)| Response::Failure { code, message }),
            (any::<u64>(), arb_text()).prop_map(|(id, address)| Response::Node { id, address }),
            any::<u64>().prop_map(|h| Response::Welcome {
                heartbeat_timeout_ms: h
            }),
            proptest::collection::vec(node, 0..6).prop_map(Response::Nodes),
            Just(Response::Empty),
            (any::<u64>(), any::<u64>()).prop_map(|(failure_domain, weight)| Response::Metadata(
                Metadata {
                    failure_domain,
                    weight
                }
            )),
        ]
    }

    fn arb_request() -> impl Strategy<Value = Request> {
        let id = 1..=u64::MAX;
        prop_oneof![
            Just(Request::Leader),
            any::<u64>().prop_map(|id| Request::Client { id }),
            Just(Request::Cluster),
            (id.clone(), "[^\u{0}]{1,40}").prop_map(|(id, address)| Request::Add { id, address }),
            (id.clone(), arb_role()).prop_map(|(id, role)| Request::Assign { id, role }),
            id.clone().prop_map(|id| Request::Remove { id }),
            proptest::option::of(id).prop_map(|target| Request::Transfer { target }),
            Just(Request::Describe),
            any::<u64>().prop_map(|weight| Request::Weight { weight }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        // Arbitrary bytes: never a panic, and a success never claims more than it was given.
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(Some((_, n))) = decode(&bytes) {
                prop_assert!(n <= bytes.len() && n >= HEADER_LEN);
            }
            if let Ok(Some((_, n))) = decode_with(&bytes, ClusterFormat::V0) {
                prop_assert!(n <= bytes.len());
            }
            if let Ok(Some((_, n))) = decode_request(&bytes) {
                prop_assert!(n <= bytes.len());
            }
        }

        // Arbitrary bodies behind a valid header of every known type.
        #[test]
        fn bodies_never_panic(
            msg_type in 0u8..20,
            words in proptest::collection::vec(any::<u64>(), 0..12),
            small in proptest::collection::vec(0u64..4, 0..12),
            mix in any::<bool>(),
        ) {
            let body: Vec<u64> = if mix { small } else { words };
            let mut buf = (body.len() as u32).to_le_bytes().to_vec();
            buf.extend([msg_type, 0, 0, 0]);
            for w in &body {
                buf.extend(w.to_le_bytes());
            }
            let _ = decode(&buf);
            let _ = decode_request(&buf);
        }

        #[test]
        fn responses_round_trip(resp in arb_response()) {
            let bytes = resp.encode().unwrap();
            prop_assert_eq!(bytes.len() % 8, 0);
            prop_assert!(bytes.len() > HEADER_LEN);
            prop_assert_eq!(decode(&bytes).unwrap(), Some((resp, bytes.len())));
        }

        #[test]
        fn requests_round_trip(req in arb_request()) {
            let bytes = req.encode().unwrap();
            prop_assert_eq!(bytes.len() % 8, 0);
            // Never an empty body.
            prop_assert!(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) >= 1);
            prop_assert_eq!(decode_request(&bytes).unwrap(), Some((req, bytes.len())));
        }

        // Any strict prefix of a valid frame is "incomplete", not an error.
        #[test]
        fn prefixes_are_incomplete(resp in arb_response(), cut in any::<prop::sample::Index>()) {
            let bytes = resp.encode().unwrap();
            let cut = cut.index(bytes.len());
            prop_assert_eq!(decode(&bytes[..cut]), Ok(None));
        }
    }
}
