//! The command-line client: `causalkv put|get|delete|view`.
//!
//! Each invocation is one step of a causal session that outlives the process: the causal
//! metadata of the latest answer is kept in a session file (written atomically) and sent
//! with the next invocation's request, so that `put` at one replica followed by `get` at
//! another sees the write. The work is done by [`Session`], which also fails over between
//! the `--replica` addresses and retries `503`s; this module parses values, picks the
//! session file, prints answers for people (`--json` for scripts) and maps outcomes to
//! exit statuses (see [`EXIT_STATUS_HELP`]).
//!
//! Replicas are plain HTTP (`IP:PORT`, or `http://IP:PORT`) unless named `https://IP:PORT`,
//! which needs `--tls-ca`: the CA certificate that signed the replicas' certificates.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::tools::client::session::RetryPolicy;
use crate::tools::client::{Client, ClientError, Metadata, Outcome, Session};

/// Success: written, found, deleted, view shown or changed.
pub const EXIT_OK: u8 = 0;
/// The key does not exist, or the view has no such replica.
pub const EXIT_NOT_FOUND: u8 = 1;
/// Anything else: bad request, no replica reachable, causal timeout after retries,
/// session file trouble, usage.
pub const EXIT_ERROR: u8 = 2;

/// The exit statuses, as `--help` shows them.
pub const EXIT_STATUS_HELP: &str = "\
Exit status:
  0  success: written, found, deleted; view shown or changed
  1  not found: the key does not exist (get, delete); no such replica (view remove)
  2  any other error: bad request, no replica reachable, causal dependencies still not
     satisfied after retries, unreadable session file, usage
Errors are one line on stderr, starting with \"causalkv: \".";

/// Options shared by every client command.
#[derive(Args, Debug, Clone)]
pub struct ClientOpts {
    /// Replica to talk to, IP:PORT (plain HTTP) or https://IP:PORT (with --tls-ca);
    /// repeatable or comma-separated. The first one that answers serves the request, the
    /// others are for failover.
    #[arg(
        long = "replica",
        value_name = "[https://]IP:PORT",
        env = "CAUSALKV_REPLICA",
        value_delimiter = ',',
        default_value = "127.0.0.1:8082",
        global = true
    )]
    pub replicas: Vec<String>,
    /// CA certificate (PEM) that signed the replicas' certificates: needed to talk to
    /// https:// replicas.
    #[arg(long, value_name = "PATH", env = "CAUSALKV_TLS_CA", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// Session file that keeps the causal metadata between invocations
    /// [default: $XDG_CACHE_HOME/causalkv/session.json, else ~/.cache/causalkv/session.json].
    #[arg(long, value_name = "FILE", env = "CAUSALKV_SESSION", global = true)]
    pub session: Option<PathBuf>,
    /// Start a fresh session and save nothing (wins over --session).
    #[arg(long, global = true)]
    pub no_session: bool,
    /// Print the replica's answer as one line of JSON (for scripts).
    #[arg(long, global = true)]
    pub json: bool,
    /// How long one request may take before the next replica is tried.
    #[arg(long, value_name = "DURATION", default_value = "3s",
          value_parser = humantime::parse_duration, global = true)]
    pub timeout: Duration,
    /// How long to keep retrying while replicas answer 503 (causal dependencies not yet
    /// satisfied).
    #[arg(long, value_name = "DURATION", default_value = "5s",
          value_parser = humantime::parse_duration, global = true)]
    pub retry_for: Duration,
}

/// `causalkv put KEY VALUE`.
#[derive(Args, Debug, Clone)]
#[command(after_help = EXIT_STATUS_HELP)]
pub struct PutArgs {
    /// The key (at most 50 characters).
    pub key: String,
    /// The value: JSON when it parses as JSON (42, true, [1,2], {"a":1}, "quoted"),
    /// else the text as a string.
    #[arg(allow_hyphen_values = true)]
    pub value: String,
    /// Store VALUE as a string even when it parses as JSON.
    #[arg(long)]
    pub string: bool,
    #[command(flatten)]
    pub opts: ClientOpts,
}

/// `causalkv get KEY` and `causalkv delete KEY`.
#[derive(Args, Debug, Clone)]
#[command(after_help = EXIT_STATUS_HELP)]
pub struct KeyArgs {
    /// The key.
    pub key: String,
    #[command(flatten)]
    pub opts: ClientOpts,
}

/// `causalkv view [add|remove ADDR]`.
#[derive(Args, Debug, Clone)]
#[command(after_help = EXIT_STATUS_HELP)]
pub struct ViewArgs {
    #[command(subcommand)]
    pub action: Option<ViewAction>,
    #[command(flatten)]
    pub opts: ClientOpts,
}

/// A change to the view; without one, `view` lists it.
#[derive(Subcommand, Debug, Clone)]
pub enum ViewAction {
    /// Add a replica to the view.
    #[command(after_help = EXIT_STATUS_HELP)]
    Add {
        /// The replica's socket address.
        #[arg(value_name = "IP:PORT")]
        addr: String,
    },
    /// Remove a replica from the view.
    #[command(after_help = EXIT_STATUS_HELP)]
    Remove {
        /// The replica's socket address.
        #[arg(value_name = "IP:PORT")]
        addr: String,
    },
}

/// One client command.
#[derive(Debug, Clone)]
pub enum Request {
    Put(PutArgs),
    Get(KeyArgs),
    Delete(KeyArgs),
    View(ViewArgs),
}

impl Request {
    fn opts(&self) -> &ClientOpts {
        match self {
            Request::Put(args) => &args.opts,
            Request::Get(args) | Request::Delete(args) => &args.opts,
            Request::View(args) => &args.opts,
        }
    }
}

/// Runs a client command; returns the process exit code.
pub async fn run(request: Request) -> u8 {
    let opts = request.opts().clone();
    match execute(request, &opts).await {
        Ok(done) => finish(&done, opts.json),
        Err(Failure(message)) => {
            print_error(&message);
            EXIT_ERROR
        }
    }
}

/// An error that ends the command with [`EXIT_ERROR`]; the message is printed as is.
#[derive(Debug, PartialEq)]
struct Failure(String);

/// What a replica answered, as far as the command is concerned.
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    Written(Outcome),
    Found(Value),
    Deleted,
    KeyNotFound(String),
    View(Vec<String>),
    ViewAdded(bool),
    ViewRemoved,
    NoSuchReplica(String),
}

/// A command that got an answer; `warning` is trouble after the fact (saving the session).
#[derive(Debug)]
struct Done {
    answer: Answer,
    metadata: Metadata,
    warning: Option<String>,
}

async fn execute(request: Request, opts: &ClientOpts) -> Result<Done, Failure> {
    let client = Client::with_tls_ca(opts.timeout, opts.tls_ca.as_deref())
        .map_err(|e| Failure(e.to_string()))?;
    let replicas = replica_list(&opts.replicas)?;
    let retry = RetryPolicy {
        max_total: opts.retry_for,
        ..RetryPolicy::default()
    };
    let session = Session::new(replicas)
        .map_err(|e| Failure(e.to_string()))?
        .with_retry(retry);
    match request {
        Request::View(args) => view(&client, session, args.action).await,
        Request::Put(args) => kvs(&client, session, KeyOp::Put(args), opts).await,
        Request::Get(args) => kvs(&client, session, KeyOp::Get(args.key), opts).await,
        Request::Delete(args) => kvs(&client, session, KeyOp::Delete(args.key), opts).await,
    }
}

/// A command on one key.
enum KeyOp {
    Put(PutArgs),
    Get(String),
    Delete(String),
}

/// `put`, `get` or `delete`, in the session saved in the session file.
async fn kvs(
    client: &Client,
    session: Session,
    op: KeyOp,
    opts: &ClientOpts,
) -> Result<Done, Failure> {
    let file = session_file(opts)?;
    let saved = match &file {
        Some(path) => load_session(path)?,
        None => Metadata::default(),
    };
    let mut session = session.with_metadata(saved.clone());
    let result = match &op {
        KeyOp::Put(args) => put(client, &mut session, args).await,
        KeyOp::Get(key) => get(client, &mut session, key).await,
        KeyOp::Delete(key) => delete(client, &mut session, key).await,
    };
    let warning = match &file {
        Some(path) if session.metadata() != &saved => save_session(path, session.metadata())
            .err()
            .map(|e| format!("cannot save the session file {}: {e}", path.display())),
        _ => None,
    };
    let answer = result.map_err(|e| Failure(describe(&e, &session, file.as_deref())))?;
    Ok(Done {
        answer,
        metadata: session.metadata().clone(),
        warning,
    })
}

async fn put(
    client: &Client,
    session: &mut Session,
    args: &PutArgs,
) -> Result<Answer, ClientError> {
    let value = parse_value(&args.value, args.string).map_err(ClientError::BadRequest)?;
    session
        .put(client, &args.key, &value)
        .await
        .map(Answer::Written)
}

async fn get(client: &Client, session: &mut Session, key: &str) -> Result<Answer, ClientError> {
    Ok(match session.get(client, key).await? {
        Some(value) => Answer::Found(value),
        None => Answer::KeyNotFound(key.to_string()),
    })
}

async fn delete(client: &Client, session: &mut Session, key: &str) -> Result<Answer, ClientError> {
    Ok(match session.delete(client, key).await? {
        true => Answer::Deleted,
        false => Answer::KeyNotFound(key.to_string()),
    })
}

/// `view`, `view add` or `view remove`; no causal metadata is involved.
async fn view(
    client: &Client,
    mut session: Session,
    action: Option<ViewAction>,
) -> Result<Done, Failure> {
    let result = match &action {
        None => session.view(client).await.map(Answer::View),
        Some(ViewAction::Add { addr }) => {
            session.view_add(client, addr).await.map(Answer::ViewAdded)
        }
        Some(ViewAction::Remove { addr }) => match session.view_remove(client, addr).await {
            Err(ClientError::NoSuchReplica) => Ok(Answer::NoSuchReplica(addr.clone())),
            other => other.map(|()| Answer::ViewRemoved),
        },
    };
    let answer = result.map_err(|e| Failure(describe(&e, &session, None)))?;
    Ok(Done {
        answer,
        metadata: Metadata::default(),
        warning: None,
    })
}

/// VALUE as JSON when it parses (and is not `null`, which no key may hold), else as a
/// string; `as_string` forces a string.
fn parse_value(text: &str, as_string: bool) -> Result<Value, String> {
    if as_string {
        return Ok(Value::String(text.to_string()));
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Null) => {
            Err("a value cannot be null (pass --string to store the text \"null\")".to_string())
        }
        Ok(value) => Ok(value),
        Err(_) => Ok(Value::String(text.to_string())),
    }
}

/// The `--replica` list: trimmed, without empty entries or repeats, not empty.
fn replica_list(given: &[String]) -> Result<Vec<String>, Failure> {
    let mut replicas: Vec<String> = Vec::new();
    for replica in given.iter().map(|r| r.trim()).filter(|r| !r.is_empty()) {
        if !replicas.iter().any(|known| known == replica) {
            replicas.push(replica.to_string());
        }
    }
    if replicas.is_empty() {
        return Err(Failure(
            "no replica given: pass --replica IP:PORT or https://IP:PORT".into(),
        ));
    }
    Ok(replicas)
}

/// The session file to use, or `None` with `--no-session`.
fn session_file(opts: &ClientOpts) -> Result<Option<PathBuf>, Failure> {
    if opts.no_session {
        return Ok(None);
    }
    if let Some(path) = &opts.session {
        return Ok(Some(path.clone()));
    }
    match default_session_path(|name| std::env::var_os(name)) {
        Some(path) => Ok(Some(path)),
        None => Err(Failure(
            "cannot find a cache directory (set XDG_CACHE_HOME or HOME); \
             pass --session FILE or --no-session"
                .into(),
        )),
    }
}

/// `$XDG_CACHE_HOME/causalkv/session.json`, else `$HOME/.cache/causalkv/session.json`
/// (else `%LOCALAPPDATA%`); relative directories are ignored, as XDG says.
fn default_session_path(var: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let absolute = |name: &str| var(name).map(PathBuf::from).filter(|p| p.is_absolute());
    let cache = absolute("XDG_CACHE_HOME")
        .or_else(|| absolute("HOME").map(|home| home.join(".cache")))
        .or_else(|| absolute("LOCALAPPDATA"))?;
    Some(cache.join("causalkv").join("session.json"))
}

/// The metadata saved in `path`; a missing file is a fresh session.
fn load_session(path: &Path) -> Result<Metadata, Failure> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Metadata::default()),
        Err(e) => {
            let shown = path.display();
            return Err(Failure(format!(
                "cannot read the session file {shown}: {e}"
            )));
        }
    };
    parse_session(&bytes).ok_or_else(|| {
        Failure(format!(
            "{} is not a causalkv session file; delete it or pass --no-session",
            path.display()
        ))
    })
}

/// A session file's metadata: `{"causal-metadata": M}`.
fn parse_session(bytes: &[u8]) -> Option<Metadata> {
    let document: Value = serde_json::from_slice(bytes).ok()?;
    let metadata = document.as_object()?.get("causal-metadata").cloned();
    Some(Metadata(metadata.unwrap_or(Value::Null)))
}

/// Writes the session file atomically: a temporary file beside it, then a rename, so a
/// reader (or a crash) never sees half a file.
fn save_session(path: &Path, metadata: &Metadata) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir)?;
    let name = path.file_name().unwrap_or_else(|| "session".as_ref());
    let mut temp_name = OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".{}.tmp", std::process::id()));
    let temp = dir.join(temp_name);
    let body = serde_json::to_vec(&json!({ "causal-metadata": metadata }))?;
    let written = write_synced(&temp, &body).and_then(|()| fs::rename(&temp, path));
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
}

fn write_synced(path: &Path, body: &[u8]) -> io::Result<()> {
    let mut file = fs::File::create(path)?;
    file.write_all(body)?;
    file.sync_all()
}

/// One line saying what went wrong, with a hint where one helps.
fn describe(error: &ClientError, session: &Session, file: Option<&Path>) -> String {
    let replicas = session.replicas();
    let stale_hint = || match file {
        Some(path) if !session.metadata().is_null() => format!(
            " (if the cluster was restarted since, the session in {} is stale: \
             delete it or pass --no-session)",
            path.display()
        ),
        _ => String::new(),
    };
    match error {
        ClientError::CausalTimeout { replica } => format!(
            "causal dependencies still not satisfied after retries (last at {replica}){}",
            stale_hint()
        ),
        ClientError::BadRequest(text) if text.to_lowercase().contains("metadata") => {
            format!("{error}{}", stale_hint())
        }
        ClientError::Unreachable { .. } | ClientError::Timeout { .. } if replicas.len() > 1 => {
            format!(
                "no replica answered ({}); last: {error}",
                replicas.join(", ")
            )
        }
        _ => error.to_string(),
    }
}

/// Prints a command's answer; returns its exit status.
fn finish(done: &Done, json: bool) -> u8 {
    let shown = render(&done.answer, &done.metadata, json);
    if let Some(text) = &shown.stdout {
        let _ = writeln!(io::stdout().lock(), "{text}");
    }
    if let Some(message) = &shown.error {
        print_error(message);
    }
    match &done.warning {
        Some(warning) => {
            print_error(warning);
            EXIT_ERROR
        }
        None => shown.code,
    }
}

/// What a command prints and its exit status.
#[derive(Debug, PartialEq)]
struct Shown {
    stdout: Option<String>,
    error: Option<String>,
    code: u8,
}

fn render(answer: &Answer, metadata: &Metadata, json: bool) -> Shown {
    let (human, body) = match answer {
        Answer::Written(outcome) => {
            let result = match outcome {
                Outcome::Created => "created",
                _ => "replaced",
            };
            let body = json!({"result": result, "causal-metadata": metadata});
            (Some(result.to_string()), body)
        }
        Answer::Found(value) => {
            let body = json!({"result": "found", "value": value, "causal-metadata": metadata});
            (Some(human_value(value)), body)
        }
        Answer::Deleted => {
            let body = json!({"result": "deleted", "causal-metadata": metadata});
            (Some("deleted".to_string()), body)
        }
        Answer::KeyNotFound(key) => {
            let error = format!("key {key:?} not found");
            return not_found(error, json!({"error": "Key does not exist"}), json);
        }
        Answer::View(list) => {
            let mut sorted = list.clone();
            sorted.sort();
            (Some(sorted.join("\n")), json!({"view": list}))
        }
        Answer::ViewAdded(added) => {
            let result = if *added { "added" } else { "already present" };
            (Some(result.to_string()), json!({"result": result}))
        }
        Answer::ViewRemoved => (Some("deleted".to_string()), json!({"result": "deleted"})),
        Answer::NoSuchReplica(addr) => {
            let error = format!("the view has no replica {addr}");
            return not_found(error, json!({"error": "View has no such replica"}), json);
        }
    };
    Shown {
        stdout: if json { Some(body.to_string()) } else { human },
        error: None,
        code: EXIT_OK,
    }
}

fn not_found(error: String, body: Value, json: bool) -> Shown {
    Shown {
        stdout: json.then(|| body.to_string()),
        error: Some(error),
        code: EXIT_NOT_FOUND,
    }
}

/// A value for people: a string as its text, anything else as indented JSON.
fn human_value(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => serde_json::to_string_pretty(other).unwrap_or_else(|_| other.to_string()),
    }
}

/// Prints `causalkv: <message>` as exactly one line on stderr.
fn print_error(message: &str) {
    let _ = writeln!(io::stderr().lock(), "causalkv: {}", one_line(message));
}

/// `message` on one line of at most a few hundred characters.
fn one_line(message: &str) -> String {
    const MAX_CHARS: usize = 400;
    let flat = message.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{}...", &flat[..cut]),
        None => flat,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_json_when_they_parse_else_strings() {
        assert_eq!(parse_value("42", false), Ok(json!(42)));
        assert_eq!(parse_value("{\"a\": [1]}", false), Ok(json!({"a": [1]})));
        assert_eq!(parse_value("\"42\"", false), Ok(json!("42")));
        assert_eq!(parse_value("hello world", false), Ok(json!("hello world")));
        assert_eq!(parse_value("42", true), Ok(json!("42")));
        assert_eq!(parse_value("null", true), Ok(json!("null")));
        assert!(parse_value("null", false).is_err());
    }

    #[test]
    fn replica_lists_are_trimmed_and_deduplicated() {
        let given = [" a:1", "b:2", "", "a:1 "].map(String::from);
        assert_eq!(replica_list(&given), Ok(vec!["a:1".into(), "b:2".into()]));
        assert!(replica_list(&[" ".to_string()]).is_err());
    }

    #[test]
    fn the_session_lives_in_the_cache_directory() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| OsString::from(value))
            }
        };
        let xdg = default_session_path(env(&[("XDG_CACHE_HOME", "/c"), ("HOME", "/h")]));
        assert_eq!(xdg, Some(PathBuf::from("/c/causalkv/session.json")));
        let home = default_session_path(env(&[("XDG_CACHE_HOME", "rel"), ("HOME", "/h")]));
        assert_eq!(home, Some(PathBuf::from("/h/.cache/causalkv/session.json")));
        assert_eq!(default_session_path(env(&[])), None);
    }

    #[test]
    fn session_files_hold_the_metadata() {
        let parsed = parse_session(br#"{"causal-metadata": {"v": [1, 2]}}"#);
        assert_eq!(parsed, Some(Metadata(json!({"v": [1, 2]}))));
        assert_eq!(parse_session(b"{}"), Some(Metadata::default()));
        assert_eq!(parse_session(b"[1]"), None);
        assert_eq!(parse_session(b"not json"), None);
    }

    #[test]
    fn saving_replaces_the_file_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("causalkv-cli-{}", std::process::id()));
        let path = dir.join("nested").join("session.json");
        let first = Metadata(json!("m1"));
        save_session(&path, &first).expect("save");
        save_session(&path, &Metadata(json!("m2"))).expect("save again");
        assert_eq!(load_session(&path), Ok(Metadata(json!("m2"))));
        let entries = fs::read_dir(path.parent().expect("parent")).expect("list");
        assert_eq!(entries.count(), 1, "only the session file remains");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn answers_print_for_people_or_as_json() {
        let m = Metadata(json!("m"));
        let found = Answer::Found(json!({"a": 1}));
        assert_eq!(
            render(&found, &m, false).stdout.as_deref(),
            Some("{\n  \"a\": 1\n}")
        );
        let text = Answer::Found(json!("hi"));
        assert_eq!(render(&text, &m, false).stdout.as_deref(), Some("hi"));
        let json_out = render(&text, &m, true).stdout.expect("printed");
        let body: Value = serde_json::from_str(&json_out).expect("json");
        assert_eq!(
            body,
            json!({"result": "found", "value": "hi", "causal-metadata": "m"})
        );
        let written = render(&Answer::Written(Outcome::Replaced), &m, false);
        assert_eq!(written.stdout.as_deref(), Some("replaced"));
        assert_eq!(written.code, EXIT_OK);
    }

    #[test]
    fn not_found_exits_1_with_one_error_line() {
        let m = Metadata::default();
        let shown = render(&Answer::KeyNotFound("k".into()), &m, false);
        assert_eq!(shown.code, EXIT_NOT_FOUND);
        assert_eq!(shown.stdout, None);
        assert!(shown.error.is_some());
        let json_shown = render(&Answer::NoSuchReplica("a:1".into()), &m, true);
        assert_eq!(
            json_shown.stdout.as_deref(),
            Some(r#"{"error":"View has no such replica"}"#)
        );
        assert_eq!(json_shown.code, EXIT_NOT_FOUND);
    }

    #[test]
    fn error_lines_are_single_and_bounded() {
        assert_eq!(one_line("a\nb\r\n  c"), "a b c");
        let long = "x".repeat(1000);
        assert_eq!(one_line(&long).chars().count(), 403);
    }
}
