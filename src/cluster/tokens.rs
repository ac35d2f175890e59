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
//! Invariant: all reads-modify-writes go through one [`TokenStore`] whose mutex serialises
//! them, so "validate then consume" of a single-use token succeeds exactly once.

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
        Ok(grant)
    }

    /// `add-node`: stores a join token, single-use without TTL, else reusable until
    /// `now + ttl`. Expired lines are pruned in the same write.
    pub fn add_join_token(&self, token: &str, ttl_seconds: Option<i64>) -> Result<(), TokenError> {
        check_new_token(token)?;
        let _g = self.guard()?;
        let now = self.clock.now_unix();
        let mut text = remove_and_prune(&self.read(CLUSTER_TOKENS)?, None, now);
        match ttl_seconds {
            None => text.push_str(&format!("{token}\n")),
            Some(ttl) => text.push_str(&format!("{token}|{}\n", now.saturating_add(ttl))),
        }
        self.write(CLUSTER_TOKENS, &text)?;
        Ok(())
    }

    pub fn add_persistent_token(&self, token: &str) -> Result<(), TokenError> {
        check_new_token(token)?;
        let _g = self.guard()?;
        let mut text = self.read(PERSISTENT_TOKENS)?;
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&format!("{token}\n"));
        self.write(PERSISTENT_TOKENS, &text)?;
        Ok(())
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
}
