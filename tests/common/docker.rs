//! The reference deployment on Docker, shared by the Docker suites
//! (`tests/docker.rs`, `tests/faults.rs`).
//!
//! Three replica containers `alice`, `bob` and `carol` (named with [`PREFIX`])
//! at 10.10.0.2-4:8090 on a user-defined network, published on
//! 127.0.0.1:8082-8084, started exactly as the contract shows; the image must
//! already exist (`scripts/docker-build` builds it; `CAUSALKV_IMAGE` names
//! another tag). [`Deployment`] injects the contract's faults: `docker kill`
//! and a later `docker run` with the same address and full view, and
//! `docker network disconnect` and `connect --ip`; and, for a durable
//! deployment ([`Deployment::start_durable`]: each replica keeps its store in a
//! named volume mounted as its data directory, `DATA_DIR=/data`), `docker kill`
//! of all three at once ([`Deployment::kill_all`]).
//!
//! Every deployment uses the same names, ports and subnet: a process-wide lock
//! (held by the [`Deployment`]) serialises the tests of one binary under
//! `cargo test`, and nextest's `docker` test group (`.config/nextest.toml`)
//! runs one test of either suite at a time. Containers and network are removed
//! when the deployment is dropped, even by a panic, and leftovers of an earlier
//! run are removed before each deployment. Volumes are named after the process
//! and a random suffix, so that no two runs share one, and each deployment
//! removes its own when dropped. The logs of every container life
//! are kept under the target tmp dir (a killed container's just before the
//! kill); when a test fails, their tails are printed.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use causalkv::tools::client::Client;
use reqwest::Method;
use serde_json::Value;
use tokio::sync::{Mutex, MutexGuard};

use super::{
    Node, READY_TIMEOUT, Reply, SETTLE_TIMEOUT, kvs_path, poll_until, ready_check, tail,
    until_served, within,
};

/// Serialises the deployments of one test process.
static DOCKER: Mutex<()> = Mutex::const_new(());

/// Prefix of every container and network the Docker suites create.
pub const PREFIX: &str = "ckvtest-";
pub const SUBNET: &str = "10.10.0.0/16";
pub const NAMES: [&str; 3] = ["alice", "bob", "carol"];
pub const IPS: [&str; 3] = ["10.10.0.2", "10.10.0.3", "10.10.0.4"];
pub const HOST_PORTS: [u16; 3] = [8082, 8083, 8084];
pub const PORT: u16 = 8090;
pub const ALICE: usize = 0;
pub const BOB: usize = 1;
pub const CAROL: usize = 2;
/// Number of replicas of the reference deployment.
pub const REPLICAS: usize = NAMES.len();

const LOG_TAIL_LINES: usize = 60;
/// Where a deployment with a secret finds it inside each container.
pub const SECRET_IN_CONTAINER: &str = "/run/secrets/causalkv-cluster-secret";
/// Where a durable deployment mounts each replica's volume (its `DATA_DIR`).
pub const DATA_DIR_IN_CONTAINER: &str = "/data";
/// How long dropping a deployment waits for its volumes to be free to remove.
const VOLUME_REMOVAL: Duration = Duration::from_secs(10);

/// Runs `docker args...`; its stdout, or its stderr as the error.
pub fn docker(args: &[&str]) -> Result<String, String> {
    let output = Command::new("docker")
        .args(args)
        .output()
        .map_err(|err| format!("cannot run docker: {err}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        Err(format!(
            "docker {}: {}: {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Runs `docker args...`, panicking if it fails.
pub fn docker_ok(args: &[&str]) -> String {
    docker(args).unwrap_or_else(|err| panic!("{err}"))
}

/// The image under test: `$CAUSALKV_IMAGE`, or `causalkv`.
pub fn image() -> String {
    std::env::var("CAUSALKV_IMAGE").unwrap_or_else(|_| "causalkv".to_owned())
}

pub fn network() -> String {
    format!("{PREFIX}net")
}

pub fn container(i: usize) -> String {
    format!("{PREFIX}{}", NAMES[i])
}

/// Replica `i`'s socket address inside the network.
pub fn addr(i: usize) -> String {
    format!("{}:{PORT}", IPS[i])
}

/// The socket addresses of the replicas `members`.
pub fn view_of(members: &[usize]) -> BTreeSet<String> {
    members.iter().map(|&i| addr(i)).collect()
}

/// The view of the whole deployment.
pub fn full_view() -> BTreeSet<String> {
    (0..REPLICAS).map(addr).collect()
}

/// Removes this suite's containers and networks, whoever left them. Never
/// panics (it also runs in `Drop`): what it cannot remove, the next run will.
fn remove_leftovers() {
    let filter = format!("name={PREFIX}");
    let containers = docker(&["ps", "--all", "--quiet", "--filter", &filter]);
    for id in containers.unwrap_or_default().split_whitespace() {
        let _ = docker(&["rm", "--force", id]);
    }
    let networks = docker(&["network", "ls", "--quiet", "--filter", &filter]);
    for id in networks.unwrap_or_default().split_whitespace() {
        let _ = docker(&["network", "rm", id]);
    }
}

/// Names for the volumes of one durable deployment: unique to this process
/// and this call.
fn fresh_volume_names() -> [String; REPLICAS] {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let run = format!("{}-{nanos:08x}", std::process::id());
    NAMES.map(|name| format!("{PREFIX}{run}-{name}-data"))
}

/// Removes `volumes`, waiting (up to [`VOLUME_REMOVAL`]) while a removed
/// container still holds one. Never panics (it runs in `Drop`).
fn remove_volumes(volumes: &[String]) {
    let deadline = within(VOLUME_REMOVAL);
    for volume in volumes {
        let exists = || docker(&["volume", "inspect", volume]).is_ok();
        while exists() && docker(&["volume", "rm", volume]).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The three containers on their network; removed when dropped.
pub struct Deployment {
    scenario: &'static str,
    /// Where the logs of every container life are saved.
    log_dir: PathBuf,
    /// How many times each replica was started.
    lives: [usize; REPLICAS],
    /// A cluster secret file on the host, mounted read-only into every container and
    /// passed with `--cluster-secret-file`.
    secret_file: Option<PathBuf>,
    /// Each replica's named volume, mounted as its data directory; `None` for
    /// the in-memory deployment of the contract.
    volumes: Option<[String; REPLICAS]>,
    /// Dropped after the containers are removed (fields drop after `drop`).
    _serial: MutexGuard<'static, ()>,
}

impl Deployment {
    /// Deploys alice, bob and carol afresh and waits until they are ready.
    pub async fn start(scenario: &'static str) -> Self {
        Self::start_with(scenario, None).await
    }

    /// The same, each replica reading the cluster secret from `secret_file` (a host
    /// path, mounted into the containers).
    pub async fn start_with(scenario: &'static str, secret_file: Option<PathBuf>) -> Self {
        Self::deploy(scenario, secret_file, None).await
    }

    /// The same, durable: each replica keeps its store in a fresh named volume
    /// mounted at [`DATA_DIR_IN_CONTAINER`] (`DATA_DIR`), which outlives its
    /// containers and is removed when the deployment is dropped.
    pub async fn start_durable(scenario: &'static str) -> Self {
        Self::deploy(scenario, None, Some(fresh_volume_names())).await
    }

    /// True when the replicas keep their stores in volumes.
    pub fn is_durable(&self) -> bool {
        self.volumes.is_some()
    }

    async fn deploy(
        scenario: &'static str,
        secret_file: Option<PathBuf>,
        volumes: Option<[String; REPLICAS]>,
    ) -> Self {
        let serial = DOCKER.lock().await;
        eprintln!("== docker scenario: {scenario}");
        remove_leftovers();
        let image = image();
        docker(&["image", "inspect", "--format", "{{.Id}}", &image]).unwrap_or_else(|err| {
            panic!("image {image} is missing (scripts/docker-build builds it): {err}")
        });
        // From here on, whatever fails, dropping the deployment cleans up.
        let mut deployment = Deployment {
            scenario,
            log_dir: log_dir(scenario),
            lives: [0; REPLICAS],
            secret_file,
            volumes,
            _serial: serial,
        };
        for volume in deployment.volumes.iter().flatten() {
            docker_ok(&["volume", "create", volume]);
        }
        docker_ok(&["network", "create", "--subnet", SUBNET, &network()]);
        deployment.run_all();
        deployment.until_ready(within(READY_TIMEOUT)).await;
        deployment
    }

    /// `docker run` of replica `i`, exactly as the contract shows (published on
    /// loopback only): a first start, or a restart with the same address and
    /// the full view (and, when durable, the same volume).
    pub fn run(&mut self, i: usize) {
        let view = Vec::from_iter(full_view()).join(",");
        let mut args = vec![
            "run".to_owned(),
            "--rm".to_owned(),
            "--detach".to_owned(),
            format!("--publish=127.0.0.1:{}:{PORT}", HOST_PORTS[i]),
            format!("--net={}", network()),
            format!("--ip={}", IPS[i]),
            format!("--name={}", container(i)),
            format!("-e=SOCKET_ADDRESS={}", addr(i)),
            format!("-e=VIEW={view}"),
        ];
        if let Some(volumes) = &self.volumes {
            args.push(format!("--volume={}:{DATA_DIR_IN_CONTAINER}", volumes[i]));
            args.push(format!("-e=DATA_DIR={DATA_DIR_IN_CONTAINER}"));
        }
        if let Some(file) = &self.secret_file {
            args.push(format!(
                "--volume={}:{SECRET_IN_CONTAINER}:ro",
                file.display()
            ));
            args.extend([
                image(),
                "serve".to_owned(),
                "--cluster-secret-file".to_owned(),
            ]);
            args.push(SECRET_IN_CONTAINER.to_owned());
        } else {
            args.push(image());
        }
        docker_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
        self.lives[i] += 1;
    }

    /// `docker kill` of replica `i` (its logs saved first); returns once
    /// `--rm` has removed it.
    pub async fn kill(&self, i: usize) {
        self.kill_at_once(&[i]).await;
    }

    /// `docker kill` of all three replicas in one command (a crash of the
    /// whole cluster); returns once `--rm` has removed them.
    pub async fn kill_all(&self) {
        self.kill_at_once(&[ALICE, BOB, CAROL]).await;
    }

    /// `docker run` of every replica again, as after [`Self::kill_all`].
    pub fn run_all(&mut self) {
        for i in 0..REPLICAS {
            self.run(i);
        }
    }

    /// One `docker kill` of the replicas `members` (their logs saved first);
    /// returns once they are removed.
    async fn kill_at_once(&self, members: &[usize]) {
        members.iter().for_each(|&i| self.save_logs(i));
        let names: Vec<String> = members.iter().map(|&i| container(i)).collect();
        let mut args = vec!["kill"];
        args.extend(names.iter().map(String::as_str));
        docker_ok(&args);
        for name in &names {
            let what = format!("{name} is removed");
            poll_until(within(SETTLE_TIMEOUT), &what, async || {
                match docker(&["container", "inspect", name]) {
                    Ok(_) => Err("still there".to_owned()),
                    Err(_) => Ok(()),
                }
            })
            .await;
        }
    }

    /// Cuts replica `i` off the network (its process keeps running).
    pub fn disconnect(&self, i: usize) {
        docker_ok(&["network", "disconnect", &network(), &container(i)]);
    }

    /// Reconnects replica `i` with its old address.
    pub fn connect(&self, i: usize) {
        docker_ok(&[
            "network",
            "connect",
            "--ip",
            IPS[i],
            &network(),
            &container(i),
        ]);
    }

    /// A client of replica `i` through its published port.
    pub fn node(&self, i: usize) -> Node {
        Node::new(format!("127.0.0.1:{}", HOST_PORTS[i]))
    }

    /// Clients of every replica, in order.
    pub fn nodes(&self) -> Vec<Node> {
        (0..REPLICAS).map(|i| self.node(i)).collect()
    }

    /// The published socket addresses of every replica, in order.
    pub fn host_addrs(&self) -> Vec<String> {
        HOST_PORTS
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect()
    }

    /// Waits until every replica lists all three and serves reads.
    pub async fn until_ready(&self, deadline: Instant) {
        let expected = full_view();
        for node in self.nodes() {
            let what = format!("{} is ready", node.addr());
            poll_until(deadline, &what, async || {
                ready_check(&node, &expected).await
            })
            .await;
        }
    }

    /// What replica `i` has logged in its current life.
    pub fn logs(&self, i: usize) -> String {
        Command::new("docker")
            .args(["logs", &container(i)])
            .output()
            .map(|out| String::from_utf8_lossy(&[out.stdout, out.stderr].concat()).into_owned())
            .unwrap_or_default()
    }

    /// The file keeping the logs of the current life of replica `i`.
    fn log_path(&self, i: usize) -> PathBuf {
        self.log_dir
            .join(format!("{}-life{}.log", NAMES[i], self.lives[i]))
    }

    /// Saves the logs of replica `i`'s current life, if it is running.
    fn save_logs(&self, i: usize) {
        let Ok(out) = Command::new("docker")
            .args(["logs", "--timestamps", &container(i)])
            .output()
        else {
            return;
        };
        if out.status.success() {
            let _ = fs::write(self.log_path(i), [out.stdout, out.stderr].concat());
        }
    }

    /// Prints the last lines of every saved log, oldest life first.
    fn print_logs(&self) {
        let mut files: Vec<PathBuf> = fs::read_dir(&self.log_dir)
            .map(|dir| dir.filter_map(|entry| Some(entry.ok()?.path())).collect())
            .unwrap_or_default();
        files.sort();
        for file in files {
            eprintln!(
                "----- {} ({}): last {LOG_TAIL_LINES} lines of {} -----\n{}",
                file.file_stem().unwrap_or_default().to_string_lossy(),
                self.scenario,
                file.display(),
                tail(&file, LOG_TAIL_LINES)
            );
        }
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        for i in 0..REPLICAS {
            self.save_logs(i);
        }
        if std::thread::panicking() {
            self.print_logs();
        }
        remove_leftovers();
        if let Some(volumes) = &self.volumes {
            remove_volumes(volumes);
        }
    }
}

/// A fresh directory for one deployment's container logs (the last run of
/// each scenario is kept).
fn log_dir(scenario: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("causalkv-docker-logs")
        .join(scenario);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create log directory");
    dir
}

/// `Ok` when the view of every one of `nodes` is exactly `expected`.
pub async fn check_views(nodes: &[Node], expected: &BTreeSet<String>) -> Result<(), String> {
    for node in nodes {
        let view = node.try_view().await?;
        if view != *expected {
            return Err(format!("the view at {} is {view:?}", node.addr()));
        }
    }
    Ok(())
}

/// Waits until `node` reads `key` as `value` with null metadata.
pub async fn until_holds(node: &Node, key: &str, value: &Value, deadline: Instant) {
    let what = format!("{} holds {key} = {value}", node.addr());
    poll_until(deadline, &what, async || {
        let reply = node.try_get(key, &Value::Null).await?;
        if reply.status == 200 && reply.value() == value {
            Ok(())
        } else {
            Err(reply.to_string())
        }
    })
    .await;
}

/// A GET with `meta`, repeated while it answers 503.
pub async fn get_served(node: &Node, key: &str, meta: &Value, deadline: Instant) -> Reply {
    let what = format!("GET {key} at {} is served", node.addr());
    until_served(deadline, &what, async || node.get(key, meta).await).await
}

/// What one replica holds for some keys: the value, or `None` when absent.
pub type Contents = BTreeMap<String, Option<Value>>;

/// How many reads [`read_contents`] has in flight at once.
const READ_PARALLELISM: usize = 16;
/// Per-request timeout of [`bulk_client`].
const BULK_TIMEOUT: Duration = Duration::from_secs(10);

/// A pooled keep-alive client, for traffic in bulk (loading and reading many
/// keys) through the published ports.
pub fn bulk_client() -> Client {
    Client::new(BULK_TIMEOUT).expect("build HTTP client")
}

/// Reads `keys` at `replica` with null metadata, several at a time: `200` is
/// a value, `404` an absent key; anything else (no answer, a `503`) is an `Err`.
pub async fn read_contents(
    client: &Client,
    replica: &str,
    keys: &[String],
) -> Result<Contents, String> {
    let chunk = keys.len().div_ceil(READ_PARALLELISM).max(1);
    let mut tasks = tokio::task::JoinSet::new();
    for part in keys.chunks(chunk) {
        let (client, replica, part) = (client.clone(), replica.to_owned(), part.to_vec());
        tasks.spawn(async move { read_sequentially(&client, &replica, &part).await });
    }
    let mut contents = Contents::new();
    while let Some(part) = tasks.join_next().await {
        contents.extend(part.expect("read task")?);
    }
    Ok(contents)
}

async fn read_sequentially(
    client: &Client,
    replica: &str,
    keys: &[String],
) -> Result<Contents, String> {
    let mut contents = Contents::new();
    for key in keys {
        let reply = client
            .request(Method::GET, replica, &kvs_path(key), None)
            .await
            .map_err(|err| format!("GET {key} at {replica}: {err}"))?;
        let held = match reply.status.as_u16() {
            200 => Some(reply.body.get("value").cloned().unwrap_or(Value::Null)),
            404 => None,
            status => return Err(format!("GET {key} at {replica}: {status} {}", reply.body)),
        };
        contents.insert(key.clone(), held);
    }
    Ok(contents)
}
