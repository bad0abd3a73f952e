//! `causalkv cluster` stops cleanly from its first instant and hands its replicas a secret.
//!
//! Each test runs the real binary as `causalkv cluster --base-port P` on 3 loopback ports
//! that were free a moment ago, and checks what a person at the terminal would see:
//! Ctrl-C's twin SIGTERM, before or after the banner, stops every replica and exits 0; a
//! `kill -9` of the cluster leaves no replica running; the replicas get a `CLUSTER_SECRET`
//! (generated, inherited, or none with `--no-secret`) that is never printed.
//!
//! A replica is found by its command line in `/proc` (`serve ... --listen 127.0.0.1:PORT`
//! with one of the test's ports), so even replicas orphaned by a killed cluster are seen.
//! Every wait polls up to a deadline; a [`Cluster`] kills all it started when dropped, so
//! a failing test leaves nothing behind.

use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const REPLICAS: u16 = 3;
/// The banner's first line ends with this.
const BANNER: &str = "replicas ready";
/// The banner's last line.
const BANNER_END: &str = "Press Ctrl-C to stop.";
/// The cluster gives its replicas 15 s to list each other, then gives up.
const READY_DEADLINE: Duration = Duration::from_secs(25);
/// The cluster gives its replicas 5 s to stop before it kills them.
const EXIT_DEADLINE: Duration = Duration::from_secs(15);
/// How long replicas may outlive their cluster.
const GONE_DEADLINE: Duration = Duration::from_secs(10);
/// How long the cluster may take to start listening for signals, or to fork a replica.
const START_DEADLINE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);
/// Polling for the first replica's fork: short, so the signal comes well before the banner.
const FAST_POLL: Duration = Duration::from_millis(2);
/// SIGTERM's bit in the `SigCgt` mask of `/proc/PID/status` (signal n is bit n - 1).
const SIGTERM_CAUGHT: u64 = 1 << (Signal::SIGTERM as u64 - 1);

fn within(after: Duration) -> Instant {
    Instant::now() + after
}

/// A base port such that it and the next `REPLICAS - 1` were free a moment ago. Drawn
/// below the kernel's ephemeral range (32768 and up), where the other suites' ports (bound
/// as port 0) and outgoing connections live.
fn free_base_port() -> u16 {
    for _ in 0..200 {
        let base = rand::random_range(20_000..32_000 - REPLICAS);
        let free = (base..base + REPLICAS)
            .all(|port| TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no {REPLICAS} consecutive free ports in 20000..32000");
}

/// The process ids of the live `causalkv serve` processes that listen on one of `ports`
/// on loopback. Zombies have an empty command line, so they are not counted.
fn replica_pids(ports: &[u16]) -> Vec<i32> {
    let listens: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<&[u8]> = cmdline.split(|byte| *byte == 0).collect();
            args.contains(&b"serve".as_slice())
                && args.windows(2).any(|pair| {
                    pair[0] == b"--listen" && listens.iter().any(|l| pair[1] == l.as_bytes())
                })
        })
        .collect()
}

/// The processes whose parent is `parent`.
fn children_of(parent: u32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            // `PID (COMM) STATE PPID ...`; COMM may hold spaces, so split after its `)`.
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let rest = &stat[stat.rfind(')')? + 1..];
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

/// `CLUSTER_SECRET` in the environment process `pid` started with.
fn secret_of(pid: i32) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("read a replica's environ");
    environ
        .split(|byte| *byte == 0)
        .find_map(|var| var.strip_prefix(b"CLUSTER_SECRET="))
        .map(|value| String::from_utf8_lossy(value).into_owned())
}

fn accepts(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// A running `causalkv cluster`, its stdout read line by line and its stderr kept (and
/// echoed, so a failing test shows the replicas' logs).
struct Cluster {
    child: Child,
    ports: Vec<u16>,
    lines: Receiver<String>,
    stdout: Vec<String>,
    stderr: Arc<Mutex<String>>,
    /// Fires once the whole of stderr was read.
    stderr_done: Receiver<()>,
    exited: Option<ExitStatus>,
    /// Its working directory (and so its data directory), removed with it.
    cwd: std::path::PathBuf,
}

impl Cluster {
    /// Starts `causalkv cluster --base-port P` with `args`, without the test's own
    /// `CLUSTER_SECRET` or `CLUSTER_SECRET_FILE`, and with `env` added.
    fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let base = free_base_port();
        // Its default data directory (./causalkv-data) goes into a directory of its own.
        let cwd = std::env::temp_dir().join(format!("causalkv-cluster-cmd-{base}"));
        let _ = std::fs::remove_dir_all(&cwd);
        std::fs::create_dir_all(&cwd).expect("a working directory");
        let mut command = Command::new(env!("CARGO_BIN_EXE_causalkv"));
        command
            .current_dir(&cwd)
            .args(["cluster", "--base-port", &base.to_string()])
            .args(args)
            .env_remove("CLUSTER_SECRET")
            .env_remove("CLUSTER_SECRET_FILE")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start causalkv cluster");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("piped stderr");
        let kept = Arc::clone(&stderr);
        let (done, stderr_done) = mpsc::channel();
        thread::spawn(move || {
            let mut buffer = [0; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buffer) {
                let text = String::from_utf8_lossy(&buffer[..n]);
                eprint!("{text}");
                kept.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_str(&text);
            }
            let _ = done.send(());
        });
        Self {
            child,
            ports: (base..base + REPLICAS).collect(),
            lines,
            stdout: Vec::new(),
            stderr,
            stderr_done,
            exited: None,
            cwd,
        }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits i32"))
    }

    fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).expect("signal the cluster");
    }

    fn replicas(&self) -> Vec<i32> {
        replica_pids(&self.ports)
    }

    /// Takes the stdout lines printed so far.
    fn drain_stdout(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.stdout.push(line);
        }
    }

    fn banner_seen(&mut self) -> bool {
        self.drain_stdout();
        self.stdout.iter().any(|line| line.ends_with(BANNER))
    }

    /// Reads stdout until the whole banner was printed.
    fn wait_banner(&mut self) {
        let deadline = within(READY_DEADLINE);
        while !self.stdout.iter().any(|line| line == BANNER_END) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.stdout.push(line),
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no banner within {READY_DEADLINE:?}; stdout: {:?}",
                        self.stdout
                    )
                }
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "the cluster closed stdout before its banner ({:?}); stdout: {:?}",
                    self.child.try_wait(),
                    self.stdout
                ),
            }
        }
        assert_eq!(
            self.replicas().len(),
            usize::from(REPLICAS),
            "replicas after the banner"
        );
    }

    /// Waits until the cluster has a child process: its first replica, forked.
    fn wait_first_fork(&mut self) {
        let deadline = within(START_DEADLINE);
        while children_of(self.child.id()).is_empty() {
            assert!(
                Instant::now() < deadline,
                "no replica forked within {START_DEADLINE:?}"
            );
            assert!(
                self.child.try_wait().expect("poll the cluster").is_none(),
                "the cluster exited before starting a replica"
            );
            thread::sleep(FAST_POLL);
        }
    }

    /// Waits until the cluster catches SIGTERM, i.e. has installed its handler.
    fn wait_sigterm_handler(&mut self) {
        let deadline = within(START_DEADLINE);
        let status = format!("/proc/{}/status", self.child.id());
        loop {
            let caught = std::fs::read_to_string(&status)
                .ok()
                .and_then(|text| {
                    let mask = text.lines().find_map(|l| l.strip_prefix("SigCgt:"))?;
                    u64::from_str_radix(mask.trim(), 16).ok()
                })
                .unwrap_or(0);
            if caught & SIGTERM_CAUGHT != 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no SIGTERM handler within {START_DEADLINE:?}"
            );
            assert!(
                self.child.try_wait().expect("poll the cluster").is_none(),
                "the cluster exited before handling SIGTERM"
            );
            thread::sleep(FAST_POLL);
        }
    }

    /// Waits for the cluster to exit, then reads the rest of its stdout and stderr.
    fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = within(limit);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("poll the cluster") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster still runs after {limit:?}"
            );
            thread::sleep(POLL);
        };
        self.exited = Some(status);
        // The reader threads end at end of file; the replicas never had these pipes.
        let deadline = within(GONE_DEADLINE);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.stdout.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!("the cluster's stdout stays open"),
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if let Err(RecvTimeoutError::Timeout) = self.stderr_done.recv_timeout(left) {
            panic!("the cluster's stderr stays open");
        }
        status
    }

    /// Waits until no replica process is left and no port accepts connections.
    fn wait_replicas_gone(&self) {
        let deadline = within(GONE_DEADLINE);
        loop {
            let left = self.replicas();
            let listening: Vec<u16> = self.ports.iter().copied().filter(|p| accepts(*p)).collect();
            if left.is_empty() && listening.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "after {GONE_DEADLINE:?}, replicas {left:?} still run and ports {listening:?} still accept"
            );
            thread::sleep(POLL);
        }
    }

    fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The banner's line about internal traffic.
    fn traffic_line(&self) -> &str {
        self.stdout
            .iter()
            .find(|line| line.starts_with("internal traffic:"))
            .unwrap_or_else(|| panic!("no internal traffic line in {:?}", self.stdout))
    }

    /// SIGTERM after the banner: exit 0 and nothing left.
    fn stop(&mut self) {
        self.signal(Signal::SIGTERM);
        let status = self.wait_exit(EXIT_DEADLINE);
        assert!(
            status.success(),
            "the cluster exited with {status} on SIGTERM"
        );
        self.wait_replicas_gone();
    }
}

impl Drop for Cluster {
    /// Kills the cluster (if it still runs) and every replica on its ports, by pid.
    fn drop(&mut self) {
        if self.exited.is_none() && matches!(self.child.try_wait(), Ok(None)) {
            let _ = kill(self.pid(), Signal::SIGKILL);
            let _ = self.child.wait();
        }
        for pid in self.replicas() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = std::fs::remove_dir_all(&self.cwd);
    }
}

/// SIGTERM before the banner: the cluster exits 0 without printing it, and no replica
/// is left.
fn assert_stops_before_ready(mut cluster: Cluster, when: &str) {
    assert!(!cluster.banner_seen(), "the banner came before the signal");
    cluster.signal(Signal::SIGTERM);
    let status = cluster.wait_exit(EXIT_DEADLINE);
    assert!(
        status.success(),
        "the cluster exited with {status} on SIGTERM {when}"
    );
    assert!(
        !cluster.banner_seen(),
        "stopped before ready, yet printed the banner: {:?}",
        cluster.stdout
    );
    cluster.wait_replicas_gone();
}

#[test]
fn sigterm_as_soon_as_it_is_handled_exits_zero_and_leaves_no_replica() {
    let mut cluster = Cluster::start(&[], &[]);
    cluster.wait_sigterm_handler();
    assert_stops_before_ready(cluster, "as soon as it is handled");
}

#[test]
fn sigterm_while_replicas_start_stops_them_and_exits_zero() {
    let mut cluster = Cluster::start(&[], &[]);
    cluster.wait_first_fork();
    assert_stops_before_ready(cluster, "while replicas start");
}

#[test]
fn sigterm_after_the_banner_stops_every_replica_and_exits_zero() {
    let mut cluster = Cluster::start(&[], &[]);
    cluster.wait_banner();
    cluster.stop();
    assert!(
        cluster.stderr().contains("stopping 3 replicas"),
        "stderr: {}",
        cluster.stderr()
    );
}

#[test]
fn kill_9_of_the_cluster_leaves_no_replica_running() {
    let mut cluster = Cluster::start(&[], &[]);
    cluster.wait_banner();
    cluster.signal(Signal::SIGKILL);
    let status = cluster.wait_exit(EXIT_DEADLINE);
    assert!(!status.success(), "a killed cluster reported {status}");
    cluster.wait_replicas_gone();
}

#[test]
fn replicas_share_a_generated_secret_that_is_never_printed() {
    let mut cluster = Cluster::start(&[], &[]);
    cluster.wait_banner();
    let secrets: Vec<Option<String>> = cluster.replicas().into_iter().map(secret_of).collect();
    let secret = secrets[0].clone().expect("replica 1 has a CLUSTER_SECRET");
    assert!(
        secrets.iter().all(|s| s.as_ref() == Some(&secret)),
        "secrets differ"
    );
    assert_eq!(secret.len(), 64, "32 bytes, hex-encoded");
    assert!(
        secret
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "not lowercase hex"
    );
    assert!(
        cluster.traffic_line().contains("generated"),
        "{}",
        cluster.traffic_line()
    );
    cluster.stop();
    assert!(
        !cluster.stdout.join("\n").contains(&secret),
        "the secret was printed on stdout"
    );
    assert!(
        !cluster.stderr().contains(&secret),
        "the secret was printed on stderr"
    );

    // Every run generates its own.
    let mut second = Cluster::start(&[], &[]);
    second.wait_banner();
    let other = second
        .replicas()
        .into_iter()
        .map(secret_of)
        .next()
        .flatten();
    assert!(
        other.is_some_and(|other| other != secret),
        "two runs, one secret"
    );
    second.stop();
}

#[test]
fn replicas_inherit_the_clusters_own_secret_unchanged() {
    let secret = format!("inherited-{:016x}", rand::random::<u64>());
    let mut cluster = Cluster::start(&[], &[("CLUSTER_SECRET", &secret)]);
    cluster.wait_banner();
    let pids = cluster.replicas();
    for pid in pids {
        assert_eq!(
            secret_of(pid).as_deref(),
            Some(secret.as_str()),
            "replica {pid}"
        );
    }
    assert!(
        cluster.traffic_line().contains("inherited"),
        "{}",
        cluster.traffic_line()
    );
    cluster.stop();
    assert!(
        !cluster.stdout.join("\n").contains(&secret),
        "the secret was printed on stdout"
    );
    assert!(
        !cluster.stderr().contains(&secret),
        "the secret was printed on stderr"
    );
}

#[test]
fn no_secret_starts_replicas_without_one() {
    let mut cluster = Cluster::start(&["--no-secret"], &[("CLUSTER_SECRET", "not-for-replicas")]);
    cluster.wait_banner();
    for pid in cluster.replicas() {
        assert_eq!(secret_of(pid), None, "replica {pid} got a CLUSTER_SECRET");
    }
    assert!(
        cluster.traffic_line().contains("not authenticated"),
        "{}",
        cluster.traffic_line()
    );
    cluster.stop();
}

/// A file removed when dropped.
struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn a_secret_file_among_the_serve_options_is_left_to_the_replicas() {
    let file = TempFile(std::env::temp_dir().join(format!(
        "causalkv-cluster-cmd-{:016x}.secret",
        rand::random::<u64>()
    )));
    std::fs::write(
        &file.0,
        format!("from-a-file-{:032x}\n", rand::random::<u128>()),
    )
    .expect("write the secret file");
    let path = file.0.to_str().expect("a UTF-8 temp path");
    // `serve` refuses CLUSTER_SECRET next to a secret file: the cluster must not add one.
    let mut cluster = Cluster::start(&["--", "--cluster-secret-file", path], &[]);
    cluster.wait_banner();
    for pid in cluster.replicas() {
        assert_eq!(secret_of(pid), None, "replica {pid} got a CLUSTER_SECRET");
    }
    assert!(
        cluster.traffic_line().contains("secret file"),
        "{}",
        cluster.traffic_line()
    );
    cluster.stop();
}

#[test]
fn no_secret_next_to_a_secret_file_is_refused_before_any_replica_starts() {
    let mut cluster = Cluster::start(
        &["--no-secret", "--", "--cluster-secret-file", "/nonexistent"],
        &[],
    );
    let status = cluster.wait_exit(EXIT_DEADLINE);
    assert!(
        !status.success(),
        "the cluster accepted contradictory options"
    );
    assert!(
        cluster
            .stderr()
            .contains("--no-secret contradicts --cluster-secret-file"),
        "stderr: {}",
        cluster.stderr()
    );
    cluster.wait_replicas_gone();
}
