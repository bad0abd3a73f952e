//! Local replica processes: the one launcher behind `causalkv cluster`, `causalkv bench
//! --scale` and the integration tests.
//!
//! A [`LocalCluster`] runs N `causalkv serve` processes of one binary on local addresses,
//! each told the whole view. A [`Launch`] says how: extra `serve` options and environment
//! for every replica or for one, a cluster secret or none, where their output goes
//! (prefixed lines on this process's stderr, or a log file per replica), and whether they
//! sit in their own process group and die with this process (`PR_SET_PDEATHSIG`). The
//! cluster starts, kills (SIGKILL) and restarts single replicas with the same address and
//! view, stops them all (SIGTERM, then SIGKILL after a grace period), reports a replica
//! whose process exited, and polls until every running replica is ready, up to a
//! deadline. Every replica still running is killed and reaped when the cluster is dropped.
//!
//! The processes are `std::process` children, not tokio's: killing and reaping one is
//! then synchronous (a `Drop` can do it, and so can a test without an `.await`), and the
//! waits that last are polled.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::{self, BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::prctl::set_pdeathsig;
use nix::sys::signal::{Signal, kill, raise};
use nix::unistd::{Pid, getpid, getppid};

use crate::tools::client::{Client, Metadata};

/// The environment variable that carries the cluster secret to a replica.
pub const SECRET_ENV: &str = "CLUSTER_SECRET";
/// The environment variable that names a file holding the cluster secret.
pub const SECRET_FILE_ENV: &str = "CLUSTER_SECRET_FILE";
/// Interval of readiness polls.
const READY_POLL: Duration = Duration::from_millis(25);
/// Interval of exit polls while replicas stop, and while waiting for one to exit.
const STOP_POLL: Duration = Duration::from_millis(20);
const EXIT_POLL: Duration = Duration::from_millis(200);
/// A key the readiness probe reads (never written).
const PROBE_KEY: &str = "readiness-probe";

/// Where a replica's output goes.
#[derive(Clone, Debug)]
enum Output {
    /// Its stderr, line by line, onto this process's stderr, each line prefixed
    /// `[replica-N] ` (N counts from 1); its stdout is discarded.
    Prefixed,
    /// Its stdout and stderr appended to `DIR/replica-I.log` (I counts from 0), each start
    /// marked by a header line.
    Files(PathBuf),
}

/// One change to a replica's command line or environment.
#[derive(Clone, Debug)]
enum Setting {
    Arg(OsString),
    Env(OsString, OsString),
    EnvRemove(OsString),
}

/// How the replicas of a [`LocalCluster`] are started.
#[derive(Clone, Debug)]
pub struct Launch {
    addrs: Vec<SocketAddr>,
    program: Option<PathBuf>,
    name: String,
    /// Each for every replica (`None`) or for one, applied in order.
    settings: Vec<(Option<usize>, Setting)>,
    output: Output,
    own_process_group: bool,
    die_with_parent: bool,
}

impl Launch {
    /// Replicas listening on `addrs` (replica `i` on `addrs[i]`), all with the view
    /// `addrs`, started as `PROGRAM serve --listen ADDR --view VIEW` with this process's
    /// environment minus `SOCKET_ADDRESS` and `VIEW`. By default the program is this
    /// executable and their stderr comes out prefixed on this process's stderr.
    pub fn new(addrs: Vec<SocketAddr>) -> Self {
        Launch {
            addrs,
            program: None,
            name: "cluster".to_string(),
            settings: Vec::new(),
            output: Output::Prefixed,
            own_process_group: false,
            die_with_parent: false,
        }
    }

    /// The `causalkv` executable to run (default: this process's own).
    pub fn program(mut self, program: impl Into<PathBuf>) -> Self {
        self.program = Some(program.into());
        self
    }

    /// The cluster's name in the header lines of its log files.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Extra `serve` options for every replica, after `--listen` and `--view`.
    pub fn args<I, S>(self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.add(None, args)
    }

    /// Extra `serve` options for replica `i` only, after those for every replica.
    pub fn replica_args<I, S>(self, i: usize, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.add(Some(i), args)
    }

    fn add<I, S>(mut self, scope: Option<usize>, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let args = args
            .into_iter()
            .map(|arg| (scope, Setting::Arg(arg.into())));
        self.settings.extend(args);
        self
    }

    /// An environment variable for every replica.
    pub fn env(mut self, name: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        let setting = Setting::Env(name.into(), value.into());
        self.settings.push((None, setting));
        self
    }

    /// An environment variable for replica `i` only.
    pub fn replica_env(
        mut self,
        i: usize,
        name: impl Into<OsString>,
        value: impl Into<OsString>,
    ) -> Self {
        let setting = Setting::Env(name.into(), value.into());
        self.settings.push((Some(i), setting));
        self
    }

    /// An environment variable of this process that the replicas do not inherit.
    pub fn env_remove(mut self, name: impl Into<OsString>) -> Self {
        self.settings.push((None, Setting::EnvRemove(name.into())));
        self
    }

    /// Gives every replica `secret` as its cluster secret (`CLUSTER_SECRET`).
    pub fn secret(self, secret: impl Into<OsString>) -> Self {
        self.env(SECRET_ENV, secret)
    }

    /// Starts the replicas without a cluster secret: they inherit neither
    /// `CLUSTER_SECRET` nor `CLUSTER_SECRET_FILE`.
    pub fn no_secret(self) -> Self {
        self.env_remove(SECRET_ENV).env_remove(SECRET_FILE_ENV)
    }

    /// Appends each replica's stdout and stderr to `dir/replica-I.log` (made if missing),
    /// each start marked by a line `===== NAME replica I at ADDR: start #N =====`.
    pub fn log_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.output = Output::Files(dir.into());
        self
    }

    /// Starts each replica in a process group of its own, so that a terminal's Ctrl-C
    /// reaches only this process, which then stops them.
    pub fn own_process_group(mut self) -> Self {
        self.own_process_group = true;
        self
    }

    /// Has the kernel SIGKILL each replica when this process dies, even by `kill -9`.
    ///
    /// The kernel's parent-death signal fires when the *thread* that forked the replica
    /// exits, not when its process does, and [`LocalCluster::start`] forks on the calling
    /// thread: call it from a thread that lasts as long as the replicas should (the main
    /// thread under `block_on`, or a runtime worker), never from `spawn_blocking`, whose
    /// threads exit when idle and would take the replicas with them.
    pub fn die_with_parent(mut self) -> Self {
        self.die_with_parent = true;
        self
    }

    /// The cluster, with no replica started yet.
    pub fn build(self) -> LocalCluster {
        let view = self
            .addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let replicas = self.addrs.iter().map(|_| Replica::default()).collect();
        LocalCluster {
            launch: self,
            view,
            replicas,
        }
    }
}

/// One replica's process, while it runs, and how many times it was started.
#[derive(Debug, Default)]
struct Replica {
    child: Option<Child>,
    starts: usize,
}

/// A replica process that ended.
#[derive(Clone, Copy, Debug)]
pub struct Exit {
    pub index: usize,
    pub addr: SocketAddr,
    pub status: ExitStatus,
}

/// Why the replicas are not ready.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("replica {} ({}) exited with {}", .0.index, .0.addr, .0.status)]
    Exited(Exit),
    #[error("replica {index} ({addr}) was not ready by the deadline; last seen: {last}")]
    NotReady {
        index: usize,
        addr: SocketAddr,
        last: String,
    },
}

/// Replica processes of one binary, all with the same view. Dropping it kills them.
#[derive(Debug)]
pub struct LocalCluster {
    launch: Launch,
    /// The view every replica is given: every address, comma-separated.
    view: String,
    replicas: Vec<Replica>,
}

impl LocalCluster {
    /// Number of replicas, running or not.
    pub fn len(&self) -> usize {
        self.replicas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.replicas.is_empty()
    }

    /// The address of replica `i` (which must exist).
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.launch.addrs[i]
    }

    /// Every replica's address, in order: the view.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.launch.addrs
    }

    /// Whether replica `i` was started and not killed or stopped since (its process may
    /// have exited on its own: see [`LocalCluster::exited`]).
    pub fn is_running(&self, i: usize) -> bool {
        self.replicas.get(i).is_some_and(|r| r.child.is_some())
    }

    /// Indexes of the running replicas.
    pub fn running(&self) -> Vec<usize> {
        (0..self.len()).filter(|&i| self.is_running(i)).collect()
    }

    /// The process id of replica `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.replicas.get(i)?.child.as_ref().map(Child::id)
    }

    /// Every replica's process id, in order.
    pub fn pids(&self) -> Vec<Option<u32>> {
        (0..self.len()).map(|i| self.pid(i)).collect()
    }

    /// The log file of replica `i`, when output goes to files.
    pub fn log_path(&self, i: usize) -> Option<PathBuf> {
        match &self.launch.output {
            Output::Files(dir) => Some(log_file(dir, i)),
            Output::Prefixed => None,
        }
    }

    /// Everything replica `i` logged so far, all its lives (empty without a log file).
    pub fn log_text(&self, i: usize) -> String {
        self.log_path(i)
            .and_then(|path| fs::read_to_string(path).ok())
            .unwrap_or_default()
    }

    /// The last `lines` lines of replica `i`'s log.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        match self.log_path(i) {
            Some(path) => tail(&path, lines),
            None => "<no log file: its output went to stderr>".to_string(),
        }
    }

    /// Starts every replica that is not running, in order; stops at the first that cannot
    /// be started, leaving the others running.
    pub fn start_all(&mut self) -> io::Result<()> {
        for i in 0..self.len() {
            if !self.is_running(i) {
                self.start(i)?;
            }
        }
        Ok(())
    }

    /// Starts replica `i` (again), with its address and the whole view; does not wait for
    /// it (see [`LocalCluster::wait_ready`]).
    pub fn start(&mut self, i: usize) -> io::Result<()> {
        let Some(&addr) = self.launch.addrs.get(i) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("there is no replica {i}"),
            ));
        };
        if self.is_running(i) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("replica {i} ({addr}) is running"),
            ));
        }
        let program = match &self.launch.program {
            Some(program) => program.clone(),
            None => std::env::current_exe()?,
        };
        let mut command = Command::new(program);
        command
            .arg("serve")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--view")
            .arg(&self.view)
            .env_remove("SOCKET_ADDRESS")
            .env_remove("VIEW")
            .stdin(Stdio::null());
        for (_, setting) in self
            .launch
            .settings
            .iter()
            .filter(|(only, _)| only.is_none_or(|only| only == i))
        {
            match setting {
                Setting::Arg(arg) => command.arg(arg),
                Setting::Env(name, value) => command.env(name, value),
                Setting::EnvRemove(name) => command.env_remove(name),
            };
        }
        let starts = self.replicas[i].starts + 1;
        match &self.launch.output {
            Output::Prefixed => {
                command.stdout(Stdio::null()).stderr(Stdio::piped());
            }
            Output::Files(dir) => {
                fs::create_dir_all(dir)?;
                let mut log = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log_file(dir, i))?;
                writeln!(
                    log,
                    "===== {} replica {i} at {addr}: start #{starts} =====",
                    self.launch.name
                )?;
                command.stdout(log.try_clone()?).stderr(log);
            }
        }
        if self.launch.own_process_group {
            command.process_group(0);
        }
        if self.launch.die_with_parent {
            let parent = getpid();
            // SAFETY: the closure runs in the child between fork and exec, where only
            // async-signal-safe calls are allowed: it makes the prctl, getppid and (at
            // worst) raise system calls, and neither allocates nor takes a lock.
            unsafe {
                command.pre_exec(move || die_with_parent(parent));
            }
        }
        let mut child = command.spawn()?;
        if let Some(stderr) = child.stderr.take() {
            relay(stderr, i + 1);
        }
        self.replicas[i] = Replica {
            child: Some(child),
            starts,
        };
        Ok(())
    }

    /// Kills replica `i` abruptly (SIGKILL) and reaps it; false if it was not running.
    pub fn kill(&mut self, i: usize) -> bool {
        match self.replicas.get_mut(i).and_then(|r| r.child.take()) {
            Some(mut child) => {
                reap(&mut child);
                true
            }
            None => false,
        }
    }

    /// Kills every running replica (SIGKILL) and reaps them.
    pub fn kill_all(&mut self) {
        for i in 0..self.len() {
            self.kill(i);
        }
    }

    /// Stops every running replica: SIGTERM, and SIGKILL to those still running `grace`
    /// later; reaps them all.
    pub async fn stop(&mut self, grace: Duration) {
        for replica in &mut self.replicas {
            let Some(child) = replica.child.as_mut() else {
                continue;
            };
            // Only a process not yet reaped: a reaped one's pid may be another's by now.
            if matches!(child.try_wait(), Ok(None))
                && let Ok(pid) = i32::try_from(child.id())
            {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + grace;
        for replica in &mut self.replicas {
            let Some(mut child) = replica.child.take() else {
                continue;
            };
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                tokio::time::sleep(STOP_POLL).await;
            }
            reap(&mut child);
        }
    }

    /// The first running replica whose process has exited, if any.
    pub fn exited(&mut self) -> Option<Exit> {
        let addrs = &self.launch.addrs;
        self.replicas
            .iter_mut()
            .enumerate()
            .find_map(|(index, replica)| {
                let status = replica.child.as_mut()?.try_wait().ok()??;
                Some(Exit {
                    index,
                    addr: addrs[index],
                    status,
                })
            })
    }

    /// Waits until a running replica's process exits.
    pub async fn first_exit(&mut self) -> Exit {
        loop {
            if let Some(exit) = self.exited() {
                return exit;
            }
            tokio::time::sleep(EXIT_POLL).await;
        }
    }

    /// Waits until every running replica is ready (see [`ready_check`]: its view lists
    /// every running replica, and it has bootstrapped), polling each in turn through
    /// `client` until `deadline`. Fails as soon as a running replica's process exits.
    pub async fn wait_ready(
        &mut self,
        client: &Client,
        deadline: Instant,
    ) -> Result<(), LaunchError> {
        let running = self.running();
        let expected: BTreeSet<String> =
            running.iter().map(|&i| self.addr(i).to_string()).collect();
        for i in running {
            let addr = self.addr(i);
            let replica = addr.to_string();
            loop {
                if let Some(exit) = self.exited() {
                    return Err(LaunchError::Exited(exit));
                }
                let last = match ready_check(client, &replica, &expected).await {
                    Ok(()) => break,
                    Err(seen) => seen,
                };
                if Instant::now() >= deadline {
                    return Err(LaunchError::NotReady {
                        index: i,
                        addr,
                        last,
                    });
                }
                tokio::time::sleep(READY_POLL).await;
            }
        }
        Ok(())
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// `Ok` when `replica` is ready: its view lists every address of `expected`, and a read
/// gets an answer other than 503 (so it has bootstrapped); else what was seen.
pub async fn ready_check(
    client: &Client,
    replica: &str,
    expected: &BTreeSet<String>,
) -> Result<(), String> {
    let view: BTreeSet<String> = client
        .view(replica)
        .await
        .map_err(|e| format!("GET /view at {replica}: {e}"))?
        .into_iter()
        .collect();
    if !view.is_superset(expected) {
        return Err(format!("view {view:?} lacks some of {expected:?}"));
    }
    // A 503, no answer, or none in time: not yet. Any other answer (404 above all) is one.
    match client.get(replica, PROBE_KEY, &Metadata::default()).await {
        Err(error) if error.is_retryable() => Err(format!("GET at {replica}: {error}")),
        _ => Ok(()),
    }
}

/// `n` distinct loopback addresses that were free a moment ago (each found by binding
/// port 0; all are held at once so none repeats).
pub fn free_loopback_addrs(n: usize) -> io::Result<Vec<SocketAddr>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<io::Result<Vec<_>>>()?;
    listeners.iter().map(TcpListener::local_addr).collect()
}

/// The last `lines` lines of the file at `path`.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|err| format!("<unreadable: {err}>"));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn log_file(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("replica-{i}.log"))
}

/// Kills a child (harmlessly if it already exited) and reaps it.
fn reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Copies a replica's stderr onto this process's, each line prefixed `[replica-N] `, on a
/// thread of its own until the replica closes it. Bytes that are not UTF-8 are replaced,
/// never a reason to stop reading (the replica would then lose its log). A closed stderr
/// here is no reason to stop either (or to panic, as `eprintln!` would).
fn relay(stderr: ChildStderr, number: usize) {
    let copy = move || {
        let mut reader = BufReader::new(stderr);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\n', '\r']);
            let _ = writeln!(io::stderr().lock(), "[replica-{number}] {text}");
        }
    };
    // Without a thread the pipe closes and the replica's log lines are lost; it still runs.
    let _ = std::thread::Builder::new()
        .name(format!("replica-{number}-log"))
        .spawn(copy);
}

/// Runs in a replica between fork and exec: asks the kernel to SIGKILL it when its parent
/// dies, and dies at once if the parent already has (it was then reparented before the
/// request took effect, and the signal would never come).
fn die_with_parent(parent: Pid) -> io::Result<()> {
    set_pdeathsig(Signal::SIGKILL)?;
    if getppid() != parent {
        // SIGKILL cannot be caught; the error is for the impossible case it returns.
        raise(Signal::SIGKILL)?;
        return Err(io::Error::from_raw_os_error(
            nix::errno::Errno::ESRCH as i32,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn the_view_lists_every_address_and_nothing_starts_before_asked() {
        let addrs = vec![
            SocketAddr::from(([127, 0, 0, 1], 1)),
            SocketAddr::from(([127, 0, 0, 1], 2)),
        ];
        let cluster = Launch::new(addrs).build();
        assert_eq!(cluster.view, "127.0.0.1:1,127.0.0.1:2");
        assert_eq!(cluster.len(), 2);
        assert!(cluster.running().is_empty());
        assert_eq!(cluster.pids(), [None, None]);
        assert_eq!(cluster.log_path(0), None);
    }

    #[test]
    fn free_addresses_are_distinct() {
        let addrs = free_loopback_addrs(4).expect("free ports");
        let distinct: BTreeSet<_> = addrs.iter().collect();
        assert_eq!(distinct.len(), 4);
        assert!(addrs.iter().all(|a| a.ip().is_loopback()));
    }

    /// A fresh directory holding a stand-in for `causalkv`: a shell script that prints its
    /// arguments and `$LAUNCHER_TEST`, then runs `tail` (exits at once with `exit`).
    fn stand_in(name: &str, tail: &str) -> (PathBuf, PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("causalkv-launcher-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("a temp dir");
        let script = dir.join("replica.sh");
        let text =
            format!("#!/bin/sh\necho \"args: $*\"\necho \"env: $LAUNCHER_TEST\" >&2\n{tail}\n");
        fs::write(&script, text).expect("write the script");
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod");
        (dir, script)
    }

    /// Starts replica `i`, again while another thread's fork holds the script open for
    /// writing (`ETXTBSY`, a hazard of scripts written by a multi-threaded test process).
    fn start(cluster: &mut LocalCluster, i: usize) {
        for _ in 0..100 {
            match cluster.start(i) {
                Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ETXTBSY as i32) => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => return other.expect("start the stand-in"),
            }
        }
        panic!("the stand-in stayed busy");
    }

    fn cluster(dir: &Path, script: &Path) -> LocalCluster {
        Launch::new(free_loopback_addrs(2).expect("free ports"))
            .program(script)
            .name("unit")
            .log_dir(dir.join("logs"))
            .args(["--extra", "all"])
            .replica_args(1, ["--only", "one"])
            .env("LAUNCHER_TEST", "every")
            .replica_env(1, "LAUNCHER_TEST", "replica-1")
            .build()
    }

    #[tokio::test]
    async fn replicas_get_their_arguments_environment_and_log_file() {
        let (dir, script) = stand_in("logs", "exec sleep 30");
        let mut cluster = cluster(&dir, &script);
        start(&mut cluster, 0);
        start(&mut cluster, 1);
        assert!(cluster.start(1).is_err(), "replica 1 runs already");
        assert_eq!(cluster.running(), [0, 1]);
        assert!(cluster.pid(0).is_some() && cluster.pid(0) != cluster.pid(1));
        let view = cluster.view.clone();
        let first = poll_log(&cluster, 0, "env: every");
        assert!(first.starts_with("===== unit replica 0 at "), "{first}");
        let listen = format!(
            "args: serve --listen {} --view {view} --extra all\n",
            cluster.addr(0)
        );
        assert!(first.contains(&listen), "{first}");
        let second = poll_log(&cluster, 1, "env: replica-1");
        assert!(second.contains("--extra all --only one\n"), "{second}");
        assert!(cluster.kill(1));
        assert!(!cluster.kill(1), "killed already");
        start(&mut cluster, 1);
        let again = poll_log(&cluster, 1, ": start #2 =====");
        assert!(again.contains(": start #1 ====="), "{again}");
        // The second life's last line ends the log.
        let deadline = Instant::now() + Duration::from_secs(10);
        while cluster.log_text(1).matches("env: replica-1").count() < 2 {
            assert!(Instant::now() < deadline, "{}", cluster.log_text(1));
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(cluster.log_tail(1, 1), "env: replica-1");
        assert!(cluster.exited().is_none());
        cluster.stop(Duration::from_secs(5)).await;
        assert!(cluster.running().is_empty());
        let _ = fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn an_exit_is_reported_and_fails_the_wait_for_readiness() {
        let (dir, script) = stand_in("exit", "exit 3");
        let mut cluster = cluster(&dir, &script);
        start(&mut cluster, 0);
        let exit = tokio::time::timeout(Duration::from_secs(10), cluster.first_exit())
            .await
            .expect("the stand-in exits");
        assert_eq!((exit.index, exit.status.code()), (0, Some(3)));
        let client = Client::new(Duration::from_millis(200)).expect("client");
        let deadline = Instant::now() + Duration::from_secs(10);
        match cluster.wait_ready(&client, deadline).await {
            Err(LaunchError::Exited(exit)) => assert_eq!(exit.index, 0),
            other => panic!("expected an exit, got {other:?}"),
        }
        drop(cluster);
        let _ = fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_replica_that_never_answers_is_not_ready_by_the_deadline() {
        let (dir, script) = stand_in("silent", "exec sleep 30");
        let mut cluster = cluster(&dir, &script);
        start(&mut cluster, 1);
        let client = Client::new(Duration::from_millis(200)).expect("client");
        let deadline = Instant::now() + Duration::from_millis(200);
        match cluster.wait_ready(&client, deadline).await {
            Err(LaunchError::NotReady { index, last, .. }) => {
                assert_eq!(index, 1);
                assert!(last.contains("GET /view"), "{last}");
            }
            other => panic!("expected not ready, got {other:?}"),
        }
        let pid = cluster.pid(1).expect("running");
        drop(cluster);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "dropped, yet running"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    /// Replica `i`'s log once it contains `needle` (polled: the stand-in runs apart).
    fn poll_log(cluster: &LocalCluster, i: usize, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = cluster.log_text(i);
            if text.contains(needle) {
                return text;
            }
            assert!(Instant::now() < deadline, "no {needle:?} in {text:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
