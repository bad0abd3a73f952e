//! Authentication of replica-to-replica traffic with a shared cluster secret.
//!
//! # What is signed
//!
//! A request on an internal endpoint carries four headers: the sender's address
//! ([`FROM`]), the sender's wall clock in milliseconds ([`TIME`]), a random nonce
//! ([`NONCE`]) and [`MAC`], an HMAC-SHA256 under the cluster secret over the method, the
//! path, the sender, the time, the nonce and the body. The answer carries [`MAC`] too: an
//! HMAC over the request's nonce, the status, the answering replica and the body. So an
//! answer cannot be forged, altered, or replayed for another request, and a requester acts
//! only on answers that verify.
//!
//! # Replays
//!
//! A request is refused when its time is more than [`WINDOW`] away from the receiver's
//! clock (replicas' clocks must agree that closely), or when its nonce was already seen
//! inside the window. Seen nonces are kept in one bucket per second and dropped when their
//! bucket leaves the window, so memory is bounded by the request rate times the window.
//!
//! # Rotation
//!
//! A [`Keyring`] holds one or two secrets: the first signs, both verify. Rotating a
//! cluster's secret without downtime: on every replica, put the new secret second (it is
//! accepted, not yet used); then first, with the old one second (every replica now signs
//! with it); then drop the old one. Each step waits until every replica reloaded.
//!
//! Tags are compared in constant time. Nothing here does I/O but
//! [`Keyring::load`], which reads the secret file.

use std::collections::{HashSet, VecDeque};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use ring::hmac;

/// The sender's address.
pub const FROM: &str = "x-causalkv-from";
/// The sender's wall clock, milliseconds since the Unix epoch.
pub const TIME: &str = "x-causalkv-time";
/// A random value, never sent twice.
pub const NONCE: &str = "x-causalkv-nonce";
/// The HMAC of a request or an answer, hex.
pub const MAC: &str = "x-causalkv-mac";

/// How far a request's time may be from the receiver's clock.
pub const WINDOW: Duration = Duration::from_secs(30);
/// Most nonces remembered; past it, requests are refused until old ones expire.
const MAX_SEEN: usize = 4 << 20;
/// A secret shorter than this is refused: it could be guessed.
pub const MIN_SECRET_BYTES: usize = 16;

/// Why a secret could not be loaded or a message was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("cannot read the cluster secret file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("the cluster secret must be at least {MIN_SECRET_BYTES} bytes")]
    TooShort,
    #[error("the cluster secret file {0} holds no secret")]
    Empty(String),
    #[error("the cluster secret file holds {0} secrets; at most two (current, previous)")]
    TooMany(usize),
    #[error("missing or malformed {0} header")]
    MissingHeader(&'static str),
    #[error("the message's time is {0} ms away from this replica's clock")]
    Stale(u128),
    #[error("the message was already received (replayed)")]
    Replayed,
    #[error("too many messages in the replay window")]
    Overloaded,
    #[error("the message's signature does not verify")]
    BadSignature,
}

/// The cluster's secrets: the first signs, every one verifies.
pub struct Keyring {
    keys: Vec<hmac::Key>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keyring({} secrets)", self.keys.len())
    }
}

impl Keyring {
    /// One secret (the `CLUSTER_SECRET` form).
    pub fn single(secret: &str) -> Result<Keyring, AuthError> {
        Keyring::from_lines(secret.lines(), "CLUSTER_SECRET")
    }

    /// The secrets in a file, one per line: the current one, then optionally the previous
    /// one (still accepted). Blank lines and lines starting with `#` are skipped.
    pub fn load(path: &Path) -> Result<Keyring, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|e| AuthError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Keyring::from_lines(text.lines(), &path.display().to_string())
    }

    fn from_lines<'a>(
        lines: impl Iterator<Item = &'a str>,
        source: &str,
    ) -> Result<Keyring, AuthError> {
        let secrets: Vec<&str> = lines
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        match secrets.len() {
            0 => return Err(AuthError::Empty(source.to_string())),
            1 | 2 => {}
            n => return Err(AuthError::TooMany(n)),
        }
        if secrets.iter().any(|s| s.len() < MIN_SECRET_BYTES) {
            return Err(AuthError::TooShort);
        }
        let keys = secrets
            .iter()
            .map(|s| hmac::Key::new(hmac::HMAC_SHA256, s.as_bytes()))
            .collect();
        Ok(Keyring { keys })
    }

    /// How many secrets are accepted (one, or two while rotating).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn sign(&self, parts: &[&[u8]]) -> String {
        let mut context = hmac::Context::with_key(&self.keys[0]);
        feed(&mut context, parts);
        hex(context.sign().as_ref())
    }

    fn verify(&self, parts: &[&[u8]], mac_hex: &str) -> Result<(), AuthError> {
        let mac = unhex(mac_hex).ok_or(AuthError::BadSignature)?;
        let mut ok = false;
        for key in &self.keys {
            let mut context = hmac::Context::with_key(key);
            feed(&mut context, parts);
            // Every key is tried and every byte compared, so the time tells neither
            // which key matched nor where a forged tag first differs.
            ok |= constant_time_eq(context.sign().as_ref(), &mac);
        }
        if ok {
            Ok(())
        } else {
            Err(AuthError::BadSignature)
        }
    }
}

/// Compares two byte strings without an early exit (lengths are public: a tag's length
/// is fixed).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a
        .iter()
        .zip(b)
        .fold(0u8, |acc, (x, y)| acc | std::hint::black_box(x ^ y));
    diff == 0
}

/// Each part is length-prefixed, so that no two different messages sign the same bytes.
fn feed(context: &mut hmac::Context, parts: &[&[u8]]) {
    for part in parts {
        context.update(&(part.len() as u64).to_be_bytes());
        context.update(part);
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(text, "{byte:02x}");
    }
    text
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

/// The headers that authenticate one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed {
    pub from: String,
    pub time_ms: u64,
    pub nonce: String,
    pub mac: String,
}

/// Signs a request: `method path` with `body`, from `from` at `time_ms`, with `nonce`.
pub fn sign_request(
    keys: &Keyring,
    method: &str,
    path: &str,
    from: &str,
    time_ms: u64,
    nonce: &str,
    body: &[u8],
) -> Signed {
    let time = time_ms.to_string();
    let mac = keys.sign(&request_parts(method, path, from, &time, nonce, body));
    Signed {
        from: from.to_string(),
        time_ms,
        nonce: nonce.to_string(),
        mac,
    }
}

fn request_parts<'a>(
    method: &'a str,
    path: &'a str,
    from: &'a str,
    time: &'a str,
    nonce: &'a str,
    body: &'a [u8],
) -> [&'a [u8]; 7] {
    [
        b"causalkv request v1",
        method.as_bytes(),
        path.as_bytes(),
        from.as_bytes(),
        time.as_bytes(),
        nonce.as_bytes(),
        body,
    ]
}

fn answer_parts<'a>(
    nonce: &'a str,
    status: &'a str,
    from: &'a str,
    body: &'a [u8],
) -> [&'a [u8]; 5] {
    [
        b"causalkv answer v1",
        nonce.as_bytes(),
        status.as_bytes(),
        from.as_bytes(),
        body,
    ]
}

/// The MAC of an answer with `status` and `body`, from `from`, to the request `nonce`.
pub fn sign_answer(keys: &Keyring, nonce: &str, status: u16, from: &str, body: &[u8]) -> String {
    keys.sign(&answer_parts(nonce, &status.to_string(), from, body))
}

/// Checks an answer's MAC (see [`sign_answer`]).
pub fn verify_answer(
    keys: &Keyring,
    nonce: &str,
    status: u16,
    from: &str,
    body: &[u8],
    mac: &str,
) -> Result<(), AuthError> {
    keys.verify(&answer_parts(nonce, &status.to_string(), from, body), mac)
}

/// A fresh random nonce (128 bits, hex).
pub fn nonce() -> String {
    hex(&rand::random::<[u8; 16]>())
}

/// The receiving side: the keyring and the nonces seen inside the replay window.
#[derive(Debug)]
pub struct Verifier {
    seen: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    /// (second, nonces first seen in it), oldest first.
    buckets: VecDeque<(u64, HashSet<u128>)>,
    len: usize,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier::new()
    }
}

impl Verifier {
    pub fn new() -> Self {
        Verifier {
            seen: Mutex::new(Seen::default()),
        }
    }

    /// Verifies a request against `keys` at the receiver's wall clock `now_ms`; on success
    /// its nonce is remembered, so the same request is refused next time.
    #[allow(clippy::too_many_arguments)]
    pub fn verify_request(
        &self,
        keys: &Keyring,
        method: &str,
        path: &str,
        signed: &Signed,
        body: &[u8],
        now_ms: u64,
    ) -> Result<(), AuthError> {
        let skew = u128::from(now_ms.abs_diff(signed.time_ms));
        if skew > WINDOW.as_millis() {
            return Err(AuthError::Stale(skew));
        }
        let time = signed.time_ms.to_string();
        let parts = request_parts(method, path, &signed.from, &time, &signed.nonce, body);
        keys.verify(&parts, &signed.mac)?;
        let nonce = unhex(&signed.nonce)
            .filter(|n| n.len() == 16)
            .ok_or(AuthError::MissingHeader(NONCE))?;
        let nonce = u128::from_be_bytes(nonce.try_into().map_err(|_| AuthError::BadSignature)?);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.remember(nonce, now_ms / 1000)
    }
}

impl Seen {
    fn remember(&mut self, nonce: u128, now_s: u64) -> Result<(), AuthError> {
        let oldest = now_s.saturating_sub(WINDOW.as_secs() * 2 + 1);
        while let Some((second, bucket)) = self.buckets.front() {
            if *second >= oldest {
                break;
            }
            self.len -= bucket.len();
            self.buckets.pop_front();
        }
        if self
            .buckets
            .iter()
            .any(|(_, bucket)| bucket.contains(&nonce))
        {
            return Err(AuthError::Replayed);
        }
        if self.len >= MAX_SEEN {
            return Err(AuthError::Overloaded);
        }
        match self.buckets.back_mut() {
            Some((second, bucket)) if *second >= now_s => {
                bucket.insert(nonce);
            }
            _ => self.buckets.push_back((now_s, HashSet::from([nonce]))),
        }
        self.len += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    const OTHER: &str = "fedcba9876543210fedcba9876543210";

    fn keys(lines: &str) -> Keyring {
        Keyring::from_lines(lines.lines(), "test").unwrap()
    }

    fn signed(k: &Keyring, body: &[u8], time_ms: u64) -> Signed {
        sign_request(
            k,
            "POST",
            "/internal/replicate",
            "10.0.0.1:1",
            time_ms,
            &nonce(),
            body,
        )
    }

    #[test]
    fn a_signed_request_verifies_once() {
        let k = keys(SECRET);
        let v = Verifier::new();
        let s = signed(&k, b"{}", 1_000_000);
        let check = || v.verify_request(&k, "POST", "/internal/replicate", &s, b"{}", 1_000_500);
        assert_eq!(check(), Ok(()));
        assert_eq!(check(), Err(AuthError::Replayed));
    }

    #[test]
    fn tampering_with_any_part_breaks_the_signature() {
        let k = keys(SECRET);
        let v = Verifier::new();
        let now = 5_000_000;
        let s = signed(&k, b"{\"a\":1}", now);
        let path = "/internal/replicate";
        assert_eq!(
            v.verify_request(&k, "POST", path, &s, b"{\"a\":2}", now),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            v.verify_request(&k, "POST", "/internal/sync", &s, b"{\"a\":1}", now),
            Err(AuthError::BadSignature)
        );
        let mut other_sender = s.clone();
        other_sender.from = "10.0.0.2:1".into();
        assert_eq!(
            v.verify_request(&k, "POST", path, &other_sender, b"{\"a\":1}", now),
            Err(AuthError::BadSignature)
        );
        let mut other_time = s.clone();
        other_time.time_ms += 1;
        assert_eq!(
            v.verify_request(&k, "POST", path, &other_time, b"{\"a\":1}", now),
            Err(AuthError::BadSignature)
        );
        let forged = signed(&keys(OTHER), b"{\"a\":1}", now);
        assert_eq!(
            v.verify_request(&k, "POST", path, &forged, b"{\"a\":1}", now),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            v.verify_request(&k, "POST", path, &s, b"{\"a\":1}", now),
            Ok(())
        );
    }

    #[test]
    fn requests_outside_the_window_are_stale() {
        let k = keys(SECRET);
        let v = Verifier::new();
        let window = WINDOW.as_millis() as u64;
        let s = signed(&k, b"", 100 * window);
        assert!(matches!(
            v.verify_request(&k, "POST", "/internal/replicate", &s, b"", 102 * window),
            Err(AuthError::Stale(_))
        ));
        assert!(matches!(
            v.verify_request(&k, "POST", "/internal/replicate", &s, b"", 98 * window),
            Err(AuthError::Stale(_))
        ));
    }

    #[test]
    fn the_previous_secret_is_accepted_and_the_first_signs() {
        let rotated = keys(&format!("{OTHER}\n{SECRET}\n"));
        let old = keys(SECRET);
        let v = Verifier::new();
        let by_old = sign_request(&old, "POST", "/p", "a", 7_000, &nonce(), b"x");
        assert_eq!(
            v.verify_request(&rotated, "POST", "/p", &by_old, b"x", 7_000),
            Ok(())
        );
        // The rotated ring signs with the new secret, which the old ring does not know.
        let by_new = sign_request(&rotated, "POST", "/p", "a", 7_000, &nonce(), b"x");
        assert_eq!(
            v.verify_request(&old, "POST", "/p", &by_new, b"x", 7_000),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn answers_are_bound_to_their_request() {
        let k = keys(SECRET);
        let mac = sign_answer(&k, "n1", 200, "10.0.0.1:1", b"{}");
        assert_eq!(
            verify_answer(&k, "n1", 200, "10.0.0.1:1", b"{}", &mac),
            Ok(())
        );
        for (nonce, status, from, body) in [
            ("n2", 200, "10.0.0.1:1", &b"{}"[..]),
            ("n1", 409, "10.0.0.1:1", b"{}"),
            ("n1", 200, "10.0.0.2:1", b"{}"),
            ("n1", 200, "10.0.0.1:1", b"{ }"),
        ] {
            assert_eq!(
                verify_answer(&k, nonce, status, from, body, &mac),
                Err(AuthError::BadSignature)
            );
        }
        assert_eq!(
            verify_answer(&k, "n1", 200, "10.0.0.1:1", b"{}", "zz"),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn secret_files_hold_one_or_two_long_secrets() {
        assert_eq!(
            Keyring::from_lines("short".lines(), "f").unwrap_err(),
            AuthError::TooShort
        );
        assert!(matches!(
            Keyring::from_lines("# nothing\n\n".lines(), "f").unwrap_err(),
            AuthError::Empty(_)
        ));
        let three = format!("{SECRET}\n{OTHER}\n{SECRET}x");
        assert_eq!(
            Keyring::from_lines(three.lines(), "f").unwrap_err(),
            AuthError::TooMany(3)
        );
        assert_eq!(keys(&format!("# current\n{SECRET}\n")).keys.len(), 1);
    }

    #[test]
    fn old_nonces_are_forgotten_and_memory_stays_bounded() {
        let mut seen = Seen::default();
        for i in 0..100u128 {
            seen.remember(i, 1_000).unwrap();
        }
        assert_eq!(seen.remember(5, 1_010), Err(AuthError::Replayed));
        seen.remember(1_000, 2_000).unwrap();
        assert_eq!(seen.len, 1, "buckets older than the window are dropped");
        assert_eq!(seen.buckets.len(), 1);
    }
}
