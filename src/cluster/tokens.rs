//! Join, certificate-request and callback tokens, stored in MicroK8s's files under
//! `credentials/` with MicroK8s's semantics:
//! - `cluster-tokens.txt`: `token` (single use) or `token|expiry` (reusable until expiry);
//! - `persistent-cluster-tokens.txt`: never consumed;
//! - `certs-request-tokens.txt`: one line per allowed use of a certificate request token
//!   (`<join>-kubelet`, `<join>-proxy` for workers, `<join>` for v1 joins);
//! - `callback-token.txt`: this node's own callback token (reusable).
//!
//! Deliberate fixes: a token that is empty or whitespace after trimming never authenticates;
//! lines are matched by constant-time equality (MicroK8s removes the first line that merely
//! starts with the token); expired lines are pruned whenever a file is rewritten; every write
//! is atomic with mode 0600.
//!
//! Beside them, `cluster-agent-tokens.json` (ours) holds what MicroK8s's formats have no room
//! for, keyed by [`token_id`] (never the secret): the role a join token admits, when it was
//! made, its description and how often it was used. A token found in MicroK8s's files
//! without an entry there (made by MicroK8s's own tools) admits any role.
//!
//! Invariants: all reads-modify-writes go through one [`TokenStore`] whose mutex serialises
//! them, so "validate then consume" of a single-use token succeeds exactly once; a token's
//! entry is written before the token itself, so a crash in between never leaves a scoped
//! token that admits every role; an unreadable entries file refuses joins rather than
//! widening them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::state::{mode, StateDir, StateError};
use crate::sys::clock::Clock;
use crate::util::secret::secret_eq;

pub const CLUSTER_TOKENS: &str = "cluster-tokens.txt";
pub const PERSISTENT_TOKENS: &str = "persistent-cluster-tokens.txt";
pub const CERT_REQUEST_TOKENS: &str = "certs-request-tokens.txt";
pub const CALLBACK_TOKEN: &str = "callback-token.txt";
pub const CALLBACK_TOKENS: &str = "callback-tokens.txt";
pub const KNOWN_TOKENS: &str = "known_tokens.csv";
/// Our entries for the join tokens: role, creation, description, uses.
pub const TOKEN_ENTRIES: &str = "cluster-agent-tokens.json";

/// Longest description `add-node --description` accepts.
pub const MAX_DESCRIPTION: usize = 200;

/// Shortest token `add-node --token` accepts (MicroK8s's rule).
pub const MIN_TOKEN_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("Invalid token size.  It must be 32 characters long.")]
    TooShort,
    #[error("invalid token: it must not contain whitespace or '|'")]
    BadCharacters,
    #[error("token store lock poisoned")]
    Poisoned,
    #[error("no usable token has id {0}; `cluster-agent token list` shows them")]
    Unknown(String),
    #[error("invalid description: {0}")]
    BadDescription(String),
}

/// Which nodes a join token admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// Workers and control planes (MicroK8s's only kind).
    Any,
    Worker,
    ControlPlane,
}

impl Scope {
    /// Does a token of this scope admit a join of this kind?
    pub fn admits(self, worker: bool) -> bool {
        match self {
            Scope::Any => true,
            Scope::Worker => worker,
            Scope::ControlPlane => !worker,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Scope::Any => "any",
            Scope::Worker => "worker",
            Scope::ControlPlane => "control-plane",
        }
    }
}

/// How long a new join token lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    SingleUse,
    /// Reusable for this many seconds.
    Ttl(i64),
    /// Never expires, never consumed (`persistent-cluster-tokens.txt`).
    Persistent,
}

/// A join token to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken {
    pub lifetime: Lifetime,
    pub scope: Scope,
    pub description: String,
}

/// What kind of token a listed one is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenKind {
    SingleUse,
    Ttl,
    Persistent,
    /// A worker's right to have its kubelet or proxy certificate signed, made by its join.
    CertificateRequest,
}

/// One usable token, as `token list` shows it (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TokenInfo {
    pub id: String,
    pub kind: TokenKind,
    /// `None`: no entry of ours (made by MicroK8s's tools); admits any role.
    pub scope: Option<Scope>,
    pub created: Option<i64>,
    /// `None`: never.
    pub expires: Option<i64>,
    /// Joins granted with it (certificate-request tokens: uses left).
    pub uses: u64,
    pub description: String,
    /// For a certificate-request token, the id of the join token that made it.
    pub derived_from: Option<String>,
}

/// Our entry for one join token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Entry {
    scope: Scope,
    created: i64,
    #[serde(default)]
    description: String,
    #[serde(default)]
    uses: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Entries {
    #[serde(default)]
    tokens: BTreeMap<String, Entry>,
}

/// A description for `add-node --description`: one line of printable text.
pub fn check_description(text: &str) -> Result<(), TokenError> {
    if text.chars().count() > MAX_DESCRIPTION {
        return Err(TokenError::BadDescription(format!(
            "at most {MAX_DESCRIPTION} characters"
        )));
    }
    if text.chars().any(|c| c.is_control()) {
        return Err(TokenError::BadDescription(
            "one line of text, no control characters".into(),
        ));
    }
    Ok(())
}

/// The join token a certificate-request token was derived from (`<join>-kubelet`,
/// `<join>-proxy`).
fn base_of_cert_request(token: &str) -> Option<&str> {
    token
        .strip_suffix("-kubelet")
        .or_else(|| token.strip_suffix("-proxy"))
}

/// How a matching line authorises a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// A line without expiry: consumed on use (except in the persistent file).
    SingleUse,
    /// `token|expiry` with `now < expiry`: reusable until then.
    UntilExpiry(i64),
    /// From `persistent-cluster-tokens.txt`.
    Persistent,
}

/// One parsed line of a token file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TokenLine<'a> {
    token: &'a str,
    expiry: Option<Result<i64, ()>>,
}

fn parse_line(line: &str) -> TokenLine<'_> {
    let line = line.trim();
    match line.split_once('|') {
        Some((token, expiry)) => TokenLine {
            token: token.trim(),
            expiry: Some(expiry.trim().parse::<i64>().map_err(|_| ())),
        },
        None => TokenLine {
            token: line,
            expiry: None,
        },
    }
}

/// Looks `token` up in the text of a token file at time `now` (unix seconds). The first
/// matching line decides, as in MicroK8s; a malformed expiry never authenticates.
pub fn lookup(text: &str, token: &str, now: i64) -> Option<Grant> {
    let token = token.trim();
    if token.is_empty() {
        return None;
    }
    for line in text.lines() {
        let parsed = parse_line(line);
        if parsed.token.is_empty() || !secret_eq(parsed.token, token) {
            continue;
        }
        return match parsed.expiry {
            None => Some(Grant::SingleUse),
            Some(Ok(expiry)) if now < expiry => Some(Grant::UntilExpiry(expiry)),
            Some(_) => None,
        };
    }
    None
}

/// Removes the first line equal to `token`, and every expired or malformed-expiry line.
/// Returns the new text.
pub fn remove_and_prune(text: &str, token: Option<&str>, now: i64) -> String {
    let mut removed = false;
    let mut out = String::new();
    for line in text.lines() {
        let parsed = parse_line(line);
        if parsed.token.is_empty() {
            continue;
        }
        if let Some(t) = token {
            if !removed && parsed.expiry.is_none() && secret_eq(parsed.token, t.trim()) {
                removed = true;
                continue;
            }
        }
        match parsed.expiry {
            Some(Ok(expiry)) if expiry <= now => continue,
            Some(Err(())) => continue,
            _ => {}
        }
        out.push_str(line.trim());
        out.push('\n');
    }
    out
}

/// Checks a token someone wants to store.
/// `known_tokens.csv` lookup (kube-apiserver's static token file, `<token>,<user>,<uid>[,"<groups>"]`):
/// the token of the first line whose user field is `user`, as MicroK8s's `GetKnownToken`.
pub fn known_token_of(text: &str, user: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let mut parts = line.trim().splitn(3, ',');
        let token = parts.next()?;
        (parts.next()? == user && !token.trim().is_empty()).then(|| token.to_string())
    })
}

pub fn check_new_token(token: &str) -> Result<(), TokenError> {
    if token.len() < MIN_TOKEN_LEN {
        return Err(TokenError::TooShort);
    }
    if token.chars().any(|c| c.is_whitespace() || c == '|') {
        return Err(TokenError::BadCharacters);
    }
    Ok(())
}

/// A short, non-reversible id of a token for logs and the audit trail.
pub fn token_id(token: &str) -> String {
    let mut h = crate::util::hex::sha256_hex(token.trim().as_bytes());
    h.truncate(12);
    h
}

/// The token files of one state directory.
#[derive(Clone)]
pub struct TokenStore {
    state: StateDir,
    clock: Arc<dyn Clock>,
    lock: Arc<Mutex<()>>,
}

impl TokenStore {
    pub fn new(state: StateDir, clock: Arc<dyn Clock>) -> Self {
        TokenStore {
            state,
            clock,
            lock: Arc::new(Mutex::new(())),
        }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.state.layout().credential(file)
    }

    fn read(&self, file: &str) -> Result<String, StateError> {
        Ok(self
            .state
            .read_optional(&self.path(file))?
            .unwrap_or_default())
    }

    fn write(&self, file: &str, text: &str) -> Result<(), StateError> {
        self.state
            .write(&self.path(file), text.as_bytes(), mode::SECRET)
    }

    fn guard(&self) -> Result<std::sync::MutexGuard<'_, ()>, TokenError> {
        self.lock.lock().map_err(|_| TokenError::Poisoned)
    }

    fn read_entries(&self) -> Result<Entries, TokenError> {
        let path = self.path(TOKEN_ENTRIES);
        match self.state.read_optional(&path)? {
            None => Ok(Entries::default()),
            Some(text) => serde_json::from_str(&text).map_err(|e| {
                TokenError::State(StateError::Malformed {
                    path,
                    reason: e.to_string(),
                })
            }),
        }
    }

    fn write_entries(&self, entries: &Entries) -> Result<(), TokenError> {
        let text = serde_json::to_string_pretty(entries)
            .map_err(|e| TokenError::BadDescription(e.to_string()))?;
        self.write(TOKEN_ENTRIES, &format!("{text}\n"))?;
        Ok(())
    }

    /// The role `token` admits (`Any` without an entry of ours).
    fn scope_locked(&self, token: &str) -> Result<Scope, TokenError> {
        Ok(self
            .read_entries()?
            .tokens
            .get(&token_id(token))
            .map_or(Scope::Any, |e| e.scope))
    }

    /// Would `token` be accepted for a join right now, and for which roles? Consumes nothing.
    pub fn check_join(&self, token: &str) -> Result<Option<(Grant, Scope)>, TokenError> {
        let _g = self.guard()?;
        match self.check_join_locked(token)? {
            Some(grant) => Ok(Some((grant, self.scope_locked(token)?))),
            None => Ok(None),
        }
    }

    /// Stores a join token with its role, lifetime and description (the entry first).
    pub fn issue(&self, token: &str, new: &NewToken) -> Result<(), TokenError> {
        check_new_token(token)?;
        check_description(&new.description)?;
        let _g = self.guard()?;
        let now = self.clock.now_unix();
        let mut entries = self.read_entries()?;
        entries.tokens.insert(
            token_id(token),
            Entry {
                scope: new.scope,
                created: now,
                description: new.description.clone(),
                uses: 0,
            },
        );
        self.write_entries(&entries)?;
        match new.lifetime {
            Lifetime::Persistent => {
                let mut text = self.read(PERSISTENT_TOKENS)?;
                if !text.lines().any(|l| secret_eq(l.trim(), token)) {
                    if !text.is_empty() && !text.ends_with('\n') {
                        text.push('\n');
                    }
                    text.push_str(&format!("{token}\n"));
                    self.write(PERSISTENT_TOKENS, &text)?;
                }
            }
            lifetime => {
                let mut text = remove_and_prune(&self.read(CLUSTER_TOKENS)?, None, now);
                match lifetime {
                    Lifetime::Ttl(ttl) => {
                        text.push_str(&format!("{token}|{}\n", now.saturating_add(ttl)))
                    }
                    _ => text.push_str(&format!("{token}\n")),
                }
                self.write(CLUSTER_TOKENS, &text)?;
            }
        }
        Ok(())
    }

    /// Counts a granted join: a single-use token's entry goes with it, others count a use.
    fn count_use_locked(&self, token: &str, grant: Grant) -> Result<(), TokenError> {
        let mut entries = self.read_entries()?;
        let id = token_id(token);
        let changed = match grant {
            Grant::SingleUse => entries.tokens.remove(&id).is_some(),
            Grant::UntilExpiry(_) | Grant::Persistent => match entries.tokens.get_mut(&id) {
                Some(entry) => {
                    entry.uses += 1;
                    true
                }
                None => false,
            },
        };
        if changed {
            self.write_entries(&entries)?;
        }
        Ok(())
    }

    /// Every usable token, join tokens first; expired ones are pruned from the files (and
    /// entries whose token is gone from ours).
    pub fn list(&self) -> Result<Vec<TokenInfo>, TokenError> {
        let _g = self.guard()?;
        let now = self.clock.now_unix();
        let cluster = self.read(CLUSTER_TOKENS)?;
        let pruned = remove_and_prune(&cluster, None, now);
        if pruned != cluster {
            self.write(CLUSTER_TOKENS, &pruned)?;
        }
        let mut entries = self.read_entries()?;
        let mut out: Vec<TokenInfo> = Vec::new();
        let mut seen: Vec<String> = Vec::new();
        let mut push =
            |token: &str, kind: TokenKind, expires: Option<i64>, out: &mut Vec<TokenInfo>| {
                let id = token_id(token);
                if seen.contains(&id) {
                    return;
                }
                seen.push(id.clone());
                let entry = entries.tokens.get(&id);
                out.push(TokenInfo {
                    kind,
                    scope: entry.map(|e| e.scope),
                    created: entry.map(|e| e.created),
                    expires,
                    uses: entry.map_or(0, |e| e.uses),
                    description: entry.map(|e| e.description.clone()).unwrap_or_default(),
                    derived_from: None,
                    id,
                });
            };
        for line in self.read(PERSISTENT_TOKENS)?.lines() {
            let t = line.trim();
            if !t.is_empty() {
                push(t, TokenKind::Persistent, None, &mut out);
            }
        }
        for line in pruned.lines() {
            let parsed = parse_line(line);
            match parsed.expiry {
                None => push(parsed.token, TokenKind::SingleUse, None, &mut out),
                Some(Ok(expiry)) => push(parsed.token, TokenKind::Ttl, Some(expiry), &mut out),
                Some(Err(())) => {}
            }
        }
        let join_ids: Vec<String> = out.iter().map(|t| t.id.clone()).collect();
        let mut requests: Vec<TokenInfo> = Vec::new();
        for line in self.read(CERT_REQUEST_TOKENS)?.lines() {
            let t = line.trim();
            if t.is_empty() {
                continue;
            }
            let id = token_id(t);
            if let Some(existing) = requests.iter_mut().find(|r| r.id == id) {
                existing.uses += 1;
                continue;
            }
            requests.push(TokenInfo {
                id,
                kind: TokenKind::CertificateRequest,
                scope: None,
                created: None,
                expires: None,
                uses: 1,
                description: String::new(),
                derived_from: base_of_cert_request(t).map(token_id),
            });
        }
        out.extend(requests);
        let before = entries.tokens.len();
        entries.tokens.retain(|id, _| join_ids.contains(id));
        if entries.tokens.len() != before {
            self.write_entries(&entries)?;
        }
        Ok(out)
    }

    /// Revokes tokens named by id or by the token itself: removed from every file, with the
    /// certificate-request tokens their joins made. Nothing changes unless every one is
    /// known. Returns the ids revoked.
    pub fn revoke(&self, which: &[String]) -> Result<Vec<String>, TokenError> {
        let known: Vec<TokenInfo> = self.list()?;
        let mut ids: Vec<String> = Vec::new();
        for arg in which {
            let arg = arg.trim();
            // Tokens are at least 32 characters: 12 hex digits are an id.
            let is_id = arg.len() == 12 && arg.bytes().all(|b| b.is_ascii_hexdigit());
            let id = if is_id {
                arg.to_ascii_lowercase()
            } else {
                token_id(arg)
            };
            let usable = known
                .iter()
                .any(|t| t.id == id || t.derived_from.as_deref() == Some(&id));
            if !usable {
                return Err(TokenError::Unknown(id));
            }
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        let _g = self.guard()?;
        let gone = |token: &str| {
            let id = token_id(token);
            ids.contains(&id)
                || base_of_cert_request(token).is_some_and(|b| ids.contains(&token_id(b)))
        };
        for file in [CLUSTER_TOKENS, PERSISTENT_TOKENS, CERT_REQUEST_TOKENS] {
            let text = self.read(file)?;
            let kept: String = text
                .lines()
                .filter(|line| {
                    let t = parse_line(line).token;
                    !t.is_empty() && !gone(t)
                })
                .map(|l| format!("{}\n", l.trim()))
                .collect();
            if kept != text {
                self.write(file, &kept)?;
            }
        }
        let mut entries = self.read_entries()?;
        let before = entries.tokens.len();
        entries.tokens.retain(|id, _| !ids.contains(id));
        if entries.tokens.len() != before {
            self.write_entries(&entries)?;
        }
        Ok(ids)
    }

    /// Would `token` be accepted for a join right now? Consumes nothing.
    pub fn check_join_token(&self, token: &str) -> Result<Option<Grant>, TokenError> {
        let _g = self.guard()?;
        self.check_join_locked(token)
    }

    fn check_join_locked(&self, token: &str) -> Result<Option<Grant>, TokenError> {
        let now = self.clock.now_unix();
        if lookup(&self.read(PERSISTENT_TOKENS)?, token, now).is_some() {
            return Ok(Some(Grant::Persistent));
        }
        Ok(lookup(&self.read(CLUSTER_TOKENS)?, token, now))
    }

    /// Validates and, for a single-use token, consumes it, atomically. Returns the grant, or
    /// `None` if the token is not (or no longer) valid.
    pub fn consume_join_token(&self, token: &str) -> Result<Option<Grant>, TokenError> {
        let _g = self.guard()?;
        let grant = self.check_join_locked(token)?;
        if grant == Some(Grant::SingleUse) {
            let now = self.clock.now_unix();
            let text = self.read(CLUSTER_TOKENS)?;
            self.write(CLUSTER_TOKENS, &remove_and_prune(&text, Some(token), now))?;
        }
        if let Some(grant) = grant {
            self.count_use_locked(token, grant)?;
        }
        Ok(grant)
    }

    /// `add-node`: stores a join token, single-use without TTL, else reusable until
    /// `now + ttl`. Expired lines are pruned in the same write.
    pub fn add_join_token(&self, token: &str, ttl_seconds: Option<i64>) -> Result<(), TokenError> {
        self.issue(
            token,
            &NewToken {
                lifetime: ttl_seconds.map_or(Lifetime::SingleUse, Lifetime::Ttl),
                scope: Scope::Any,
                description: String::new(),
            },
        )
    }

    pub fn add_persistent_token(&self, token: &str) -> Result<(), TokenError> {
        self.issue(
            token,
            &NewToken {
                lifetime: Lifetime::Persistent,
                scope: Scope::Any,
                description: String::new(),
            },
        )
    }

    /// Allows one certificate request with `token`.
    pub fn add_cert_request_token(&self, token: &str) -> Result<(), TokenError> {
        let _g = self.guard()?;
        let mut text = self.read(CERT_REQUEST_TOKENS)?;
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&format!("{}\n", token.trim()));
        self.write(CERT_REQUEST_TOKENS, &text)?;
        Ok(())
    }

    /// Is `token` a valid certificate request token right now? Consumes nothing.
    pub fn check_cert_request_token(&self, token: &str) -> Result<bool, TokenError> {
        let _g = self.guard()?;
        let now = self.clock.now_unix();
        Ok(lookup(&self.read(CERT_REQUEST_TOKENS)?, token, now).is_some())
    }

    /// Consumes one use of a certificate request token.
    pub fn consume_cert_request_token(&self, token: &str) -> Result<bool, TokenError> {
        let _g = self.guard()?;
        let now = self.clock.now_unix();
        let text = self.read(CERT_REQUEST_TOKENS)?;
        if lookup(&text, token, now).is_none() {
            return Ok(false);
        }
        self.write(
            CERT_REQUEST_TOKENS,
            &remove_and_prune(&text, Some(token), now),
        )?;
        Ok(true)
    }

    /// This node's callback token, created (64 alphanumerics) if missing or empty.
    pub fn self_callback_token(&self) -> Result<String, TokenError> {
        let _g = self.guard()?;
        let existing = self.read(CALLBACK_TOKEN)?;
        if let Some(first) = existing.lines().map(str::trim).find(|l| !l.is_empty()) {
            return Ok(first.to_string());
        }
        let token = crate::util::secret::random_alnum(64);
        self.write(CALLBACK_TOKEN, &format!("{token}\n"))?;
        Ok(token)
    }

    /// Checks a presented callback token against this node's own (reusable).
    pub fn check_callback_token(&self, token: &str) -> Result<bool, TokenError> {
        let token = token.trim();
        if token.is_empty() {
            return Ok(false);
        }
        // Read-only: a rejected request must not create the file. Any line counts, as in
        // MicroK8s (every line is compared, in constant time).
        let _g = self.guard()?;
        let existing = self.read(CALLBACK_TOKEN)?;
        Ok(existing
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .fold(false, |found, own| secret_eq(own, token) | found))
    }

    /// Drops the `callback-tokens.txt` lines of hosts for which `is_gone(host)` holds.
    pub fn remove_peer_callback_tokens(
        &self,
        is_gone: impl Fn(&str) -> bool,
    ) -> Result<(), TokenError> {
        let _g = self.guard()?;
        let text = self.read(CALLBACK_TOKENS)?;
        if text.is_empty() {
            return Ok(());
        }
        let kept: String = text
            .lines()
            .filter(|line| {
                let endpoint = line.split_whitespace().next().unwrap_or("");
                !is_gone(crate::util::addr::host_of(endpoint))
            })
            .map(|l| format!("{l}\n"))
            .collect();
        if kept != text {
            self.write(CALLBACK_TOKENS, &kept)?;
        }
        Ok(())
    }

    /// The static API token of `user` in `known_tokens.csv`, if any.
    pub fn known_token(&self, user: &str) -> Result<Option<String>, TokenError> {
        let _g = self.guard()?;
        Ok(known_token_of(&self.read(KNOWN_TOKENS)?, user))
    }

    /// The kubelet token of `host` (`system:node:<host>`), appended as MicroK8s does
    /// (`<32 alphanumerics>,system:node:<host>,kubelet-<8 digits>,"system:nodes"`) if missing.
    /// The API server reads the file only when restarted; the caller restarts it.
    pub fn kubelet_token(&self, host: &str) -> Result<String, TokenError> {
        let _g = self.guard()?;
        let user = format!("system:node:{host}");
        let mut text = self.read(KNOWN_TOKENS)?;
        if let Some(token) = known_token_of(&text, &user) {
            return Ok(token);
        }
        let token = crate::util::secret::random_alnum(32);
        let uid: u32 = rand::Rng::gen_range(&mut rand::rngs::OsRng, 0..100_000_000);
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&format!(
            "{token},{user},kubelet-{uid:08},\"system:nodes\"\n"
        ));
        self.write(KNOWN_TOKENS, &text)?;
        Ok(token)
    }

    /// Records the callback token of a node that joined through v1 (`host:port token`).
    pub fn add_peer_callback_token(&self, endpoint: &str, token: &str) -> Result<(), TokenError> {
        let _g = self.guard()?;
        let mut text = self.read(CALLBACK_TOKENS)?;
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&format!("{endpoint} {}\n", token.trim()));
        self.write(CALLBACK_TOKENS, &text)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::clock::FixedClock;

    fn store() -> (tempfile::TempDir, TokenStore, Arc<FixedClock>) {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        state.ensure_layout().unwrap();
        let clock = Arc::new(FixedClock::at(1_000_000));
        let store = TokenStore::new(state, clock.clone());
        (dir, store, clock)
    }

    #[test]
    fn microk8s_pinned_lookup_cases() {
        let now = 1000;
        let text = "one-time-token\ntoken-invalid-timestamp|-10a\ntoken-expired|700\ntoken-not-expired|1300\n";
        assert_eq!(lookup(text, "", now), None);
        assert_eq!(lookup(text, "missing-token", now), None);
        assert_eq!(lookup(text, "token-invalid-timestamp", now), None);
        assert_eq!(lookup(text, "token-invalid-timestamp|-10a", now), None);
        assert_eq!(lookup(text, "token-expired", now), None);
        assert_eq!(lookup(text, "one-time-token", now), Some(Grant::SingleUse));
        assert_eq!(
            lookup(text, "token-not-expired", now),
            Some(Grant::UntilExpiry(1300))
        );
        assert_eq!(
            lookup(text, "token-not-expired", 1300),
            None,
            "expiry is strict"
        );
    }

    #[test]
    fn known_tokens_lookup_and_kubelet_token_creation() {
        let text = "admin-token,admin,admin,\"system:masters\"\ntoken1,system:kube-proxy,kube-proxy\ntoken2,system:node:existing-host,kubelet-0123,\"system:nodes\"\n";
        assert_eq!(
            known_token_of(text, "admin").as_deref(),
            Some("admin-token")
        );
        assert_eq!(
            known_token_of(text, "system:kube-proxy").as_deref(),
            Some("token1")
        );
        assert_eq!(known_token_of(text, "nobody"), None);
        assert_eq!(known_token_of(" ,admin,admin\n", "admin"), None);

        let (_d, s, _) = store();
        s.write(KNOWN_TOKENS, text.trim_end()).unwrap();
        assert_eq!(s.kubelet_token("existing-host").unwrap(), "token2");
        let new = s.kubelet_token("10.10.10.10").unwrap();
        assert_eq!(new.len(), 32);
        assert_eq!(s.kubelet_token("10.10.10.10").unwrap(), new);
        let after = s.read(KNOWN_TOKENS).unwrap();
        assert!(after.starts_with(text), "existing lines kept: {after}");
        let added = after.lines().last().unwrap();
        let fields: Vec<&str> = added.split(',').collect();
        assert_eq!(fields[0], new);
        assert_eq!(fields[1], "system:node:10.10.10.10");
        assert!(fields[2].starts_with("kubelet-") && fields[2].len() == 16);
        assert_eq!(fields[3], "\"system:nodes\"");
        assert_eq!(
            crate::state::mode_of(&s.path(KNOWN_TOKENS)).unwrap() & 0o777,
            0o600
        );
    }

    #[test]
    fn whitespace_tokens_never_authenticate() {
        // MicroK8s: " " trims to "" and matches the empty last line of any file.
        for t in ["", " ", "\t", "\n", "   \n "] {
            assert_eq!(lookup("a\n\n\nb\n", t, 0), None, "{t:?}");
        }
    }

    #[test]
    fn removal_is_exact_not_prefix() {
        let text = "abc-proxy\nabc\n";
        assert_eq!(remove_and_prune(text, Some("abc"), 0), "abc-proxy\n");
    }

    #[test]
    fn single_use_ttl_and_persistent_semantics() {
        let (_d, s, clock) = store();
        let single = "a".repeat(32);
        let ttl = "b".repeat(32);
        let persistent = "c".repeat(32);
        s.add_join_token(&single, None).unwrap();
        s.add_join_token(&ttl, Some(60)).unwrap();
        s.add_persistent_token(&persistent).unwrap();

        assert_eq!(
            s.consume_join_token(&single).unwrap(),
            Some(Grant::SingleUse)
        );
        assert_eq!(s.consume_join_token(&single).unwrap(), None);
        for _ in 0..3 {
            assert!(s.consume_join_token(&ttl).unwrap().is_some());
            assert_eq!(
                s.consume_join_token(&persistent).unwrap(),
                Some(Grant::Persistent)
            );
        }
        clock.set(clock.now_unix() + 61);
        assert_eq!(s.consume_join_token(&ttl).unwrap(), None);
        assert_eq!(
            s.consume_join_token(&persistent).unwrap(),
            Some(Grant::Persistent)
        );
    }

    #[test]
    fn checking_does_not_consume() {
        let (_d, s, _) = store();
        let t = "d".repeat(40);
        s.add_join_token(&t, None).unwrap();
        for _ in 0..3 {
            assert_eq!(s.check_join_token(&t).unwrap(), Some(Grant::SingleUse));
        }
        assert!(s.consume_join_token(&t).unwrap().is_some());
        assert!(s.check_join_token(&t).unwrap().is_none());
    }

    #[test]
    fn expired_lines_are_pruned_on_write() {
        let (dir, s, clock) = store();
        s.add_join_token(&"e".repeat(32), Some(10)).unwrap();
        clock.set(clock.now_unix() + 11);
        s.add_join_token(&"f".repeat(32), None).unwrap();
        let text =
            crate::state::read_string(&dir.path().join("credentials/cluster-tokens.txt")).unwrap();
        assert_eq!(text, format!("{}\n", "f".repeat(32)));
    }

    #[test]
    fn cert_request_tokens_count_uses() {
        let (_d, s, _) = store();
        for _ in 0..3 {
            s.add_cert_request_token("tok-kubelet").unwrap();
        }
        for _ in 0..3 {
            assert!(s.consume_cert_request_token("tok-kubelet").unwrap());
        }
        assert!(!s.consume_cert_request_token("tok-kubelet").unwrap());
        assert!(!s.consume_cert_request_token(" ").unwrap());
    }

    #[test]
    fn callback_token_is_created_once_and_stable() {
        let (dir, s, _) = store();
        // Checking never creates the file.
        assert!(!s.check_callback_token("anything").unwrap());
        assert!(!crate::state::exists(
            &dir.path().join("credentials/callback-token.txt")
        ));
        let t = s.self_callback_token().unwrap();
        assert_eq!(t.len(), 64);
        assert_eq!(s.self_callback_token().unwrap(), t);
        assert!(s.check_callback_token(&t).unwrap());
        assert!(!s.check_callback_token(" ").unwrap());
        assert!(!s.check_callback_token("nope").unwrap());
        // A second line (written by another tool) is accepted too, as MicroK8s does.
        s.write(CALLBACK_TOKEN, &format!("{t}\nsecond-callback-token\n"))
            .unwrap();
        assert!(s.check_callback_token("second-callback-token").unwrap());
        assert!(s.check_callback_token(&t).unwrap());
        let mode =
            crate::state::mode_of(&dir.path().join("credentials/callback-token.txt")).unwrap();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn new_tokens_are_checked() {
        let (_d, s, _) = store();
        assert!(matches!(
            s.add_join_token("short", None),
            Err(TokenError::TooShort)
        ));
        assert!(matches!(
            s.add_join_token(&format!("{}|1", "a".repeat(32)), None),
            Err(TokenError::BadCharacters)
        ));
    }

    #[test]
    fn concurrent_consumers_get_one_grant() {
        let (_d, s, _) = store();
        let t = "g".repeat(32);
        s.add_join_token(&t, None).unwrap();
        let handles: Vec<_> = (0..16)
            .map(|_| {
                let s = s.clone();
                let t = t.clone();
                std::thread::spawn(move || s.consume_join_token(&t).unwrap().is_some())
            })
            .collect();
        let granted = handles
            .into_iter()
            .filter(|_| true)
            .map(|h| h.join().unwrap())
            .filter(|g| *g)
            .count();
        assert_eq!(granted, 1);
    }

    #[test]
    fn token_id_is_short_and_not_the_token() {
        let id = token_id("secret-token-value");
        assert_eq!(id.len(), 12);
        assert!(!"secret-token-value".contains(&id));
    }

    fn new_token(lifetime: Lifetime, scope: Scope, description: &str) -> NewToken {
        NewToken {
            lifetime,
            scope,
            description: description.into(),
        }
    }

    #[test]
    fn scoped_tokens_are_listed_counted_and_pruned() {
        let (_d, s, clock) = store();
        let (single, ttl, persistent) = ("s".repeat(32), "t".repeat(32), "p".repeat(32));
        s.issue(
            &single,
            &new_token(Lifetime::SingleUse, Scope::Worker, "rack 4"),
        )
        .unwrap();
        s.issue(&ttl, &new_token(Lifetime::Ttl(60), Scope::ControlPlane, ""))
            .unwrap();
        s.issue(
            &persistent,
            &new_token(Lifetime::Persistent, Scope::Any, "fleet"),
        )
        .unwrap();
        // Made by MicroK8s's own tools: no entry of ours.
        let foreign = "m".repeat(32);
        s.write(
            CLUSTER_TOKENS,
            &format!("{}{foreign}\n", s.read(CLUSTER_TOKENS).unwrap()),
        )
        .unwrap();

        assert_eq!(
            s.check_join(&single).unwrap(),
            Some((Grant::SingleUse, Scope::Worker))
        );
        assert_eq!(
            s.check_join(&foreign).unwrap(),
            Some((Grant::SingleUse, Scope::Any))
        );
        assert!(s.consume_join_token(&persistent).unwrap().is_some());
        assert!(s.consume_join_token(&persistent).unwrap().is_some());
        assert!(s.consume_join_token(&ttl).unwrap().is_some());

        let list = s.list().unwrap();
        let by_id = |t: &str| list.iter().find(|i| i.id == token_id(t)).cloned().unwrap();
        assert_eq!(list.len(), 4);
        assert_eq!(by_id(&persistent).kind, TokenKind::Persistent);
        assert_eq!(by_id(&persistent).uses, 2);
        assert_eq!(by_id(&persistent).description, "fleet");
        assert_eq!(by_id(&ttl).kind, TokenKind::Ttl);
        assert_eq!(by_id(&ttl).expires, Some(1_000_060));
        assert_eq!(by_id(&ttl).scope, Some(Scope::ControlPlane));
        assert_eq!(by_id(&single).scope, Some(Scope::Worker));
        assert_eq!(by_id(&single).created, Some(1_000_000));
        assert_eq!(by_id(&foreign).scope, None, "unscoped");
        let json = serde_json::to_string(&list).unwrap();
        for secret in [&single, &ttl, &persistent, &foreign] {
            assert!(!json.contains(secret.as_str()));
        }

        clock.set(1_000_061);
        let list = s.list().unwrap();
        assert!(
            list.iter().all(|t| t.id != token_id(&ttl)),
            "expired: not listed"
        );
        assert!(
            !s.read(CLUSTER_TOKENS).unwrap().contains(&ttl),
            "and pruned"
        );
        assert!(!s.read(TOKEN_ENTRIES).unwrap().contains(&token_id(&ttl)));
        // A single-use token's entry goes with its use.
        assert!(s.consume_join_token(&single).unwrap().is_some());
        assert!(!s.read(TOKEN_ENTRIES).unwrap().contains(&token_id(&single)));
    }

    #[test]
    fn revoke_takes_tokens_and_their_certificate_requests_everywhere() {
        let (_d, s, _) = store();
        let (a, b) = ("a".repeat(32), "b".repeat(32));
        s.issue(&a, &new_token(Lifetime::Persistent, Scope::Worker, ""))
            .unwrap();
        s.issue(&b, &new_token(Lifetime::SingleUse, Scope::Any, ""))
            .unwrap();
        s.add_cert_request_token(&format!("{a}-kubelet")).unwrap();
        s.add_cert_request_token(&format!("{a}-proxy")).unwrap();
        s.add_cert_request_token(&format!("{b}-kubelet")).unwrap();

        let before = s.list().unwrap();
        let err = s
            .revoke(&[token_id(&a), "0123456789ab".into()])
            .unwrap_err();
        assert!(
            matches!(err, TokenError::Unknown(ref id) if id == "0123456789ab"),
            "{err}"
        );
        assert_eq!(
            s.list().unwrap(),
            before,
            "nothing revoked when one is unknown"
        );

        // By id for one, by the token itself for the other.
        let ids = s.revoke(&[token_id(&a)]).unwrap();
        assert_eq!(ids, vec![token_id(&a)]);
        assert!(s.check_join(&a).unwrap().is_none());
        assert!(!s.check_cert_request_token(&format!("{a}-kubelet")).unwrap());
        assert!(!s.check_cert_request_token(&format!("{a}-proxy")).unwrap());
        assert!(s.check_cert_request_token(&format!("{b}-kubelet")).unwrap());
        s.revoke(std::slice::from_ref(&b)).unwrap();
        assert!(s.check_join(&b).unwrap().is_none());
        assert!(!s.check_cert_request_token(&format!("{b}-kubelet")).unwrap());
        assert!(s.list().unwrap().is_empty());
        let err = s.revoke(std::slice::from_ref(&b)).unwrap_err().to_string();
        assert!(!err.contains(&b), "the secret is never echoed: {err}");
    }

    #[test]
    fn an_unreadable_entries_file_refuses_rather_than_widens() {
        let (_d, s, _) = store();
        let t = "w".repeat(32);
        s.issue(&t, &new_token(Lifetime::SingleUse, Scope::Worker, ""))
            .unwrap();
        s.write(TOKEN_ENTRIES, "{not json").unwrap();
        assert!(s.check_join(&t).is_err());
        assert!(s.consume_join_token(&t).is_err() || s.check_join(&t).is_err());
    }

    #[test]
    fn descriptions_are_one_short_line() {
        assert!(check_description("rack 4, row b").is_ok());
        assert!(check_description("a\nb").is_err());
        assert!(check_description(&"x".repeat(MAX_DESCRIPTION + 1)).is_err());
    }
}
