//! The reference deployment as `compose.yaml` (repository root) starts it.
//!
//! One scenario, end to end: write a cluster secret file, `docker-compose up -d`
//! the project `ckvcompose` with `CAUSALKV_SECRET_FILE` naming it, wait until
//! Docker reports all three containers `healthy` (the healthcheck is the binary's
//! own `causalkv status`), check that they serve (a write at alice, read with its
//! metadata at bob and carol; every view lists alice, bob and carol at
//! 10.10.0.2-4:8090) and that each authenticated with the secret file, then
//! `docker-compose down -v --remove-orphans` and check that the containers and
//! the project's network are gone.
//!
//! `#[ignore]`d: it needs Docker, `docker-compose` (`CAUSALKV_COMPOSE` names
//! another command, e.g. `docker compose`) and the image (`scripts/test` builds
//! it; `CAUSALKV_IMAGE` names another tag and is passed through to compose). It
//! uses the subnet and host ports of `tests/docker.rs` and `tests/faults.rs`:
//! nextest's `docker` test group (`.config/nextest.toml`) runs one test of the
//! three suites at a time. Leftovers of an earlier run of this project, and a
//! leftover network of the other suites holding the subnet, are removed first;
//! the project is taken down when the test ends, even by a panic.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::docker::{HOST_PORTS, NAMES, PREFIX, SUBNET, docker, docker_ok, full_view, get_served};
use common::{Body, Node, SETTLE_TIMEOUT, until_views, within};
use reqwest::Method;
use serde_json::{Value, json};

/// The compose project name: containers, network and labels carry it.
const PROJECT: &str = "ckvcompose";
/// How long the three containers may take to be reported `healthy`: the first
/// check runs 2 s after the start, then every 2 s.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(60);
const LOG_TAIL_LINES: &str = "60";
const SECRET: &str = "compose-suite-cluster-secret-0123456789";

fn compose_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("compose.yaml")
}

/// The compose command: `$CAUSALKV_COMPOSE` (split on whitespace), or `docker-compose`.
fn compose_command() -> Vec<String> {
    std::env::var("CAUSALKV_COMPOSE")
        .ok()
        .filter(|command| !command.trim().is_empty())
        .unwrap_or_else(|| "docker-compose".to_owned())
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// A `docker-compose -p ckvcompose -f compose.yaml` project whose cluster secret is
/// `secret_file`; taken down when dropped.
struct Project {
    secret_file: PathBuf,
}

impl Project {
    /// Runs `compose -p PROJECT -f compose.yaml args...`; its stdout and stderr, or
    /// both as the error.
    fn run(&self, args: &[&str]) -> Result<(String, String), String> {
        let command = compose_command();
        let file = compose_file();
        let output = Command::new(&command[0])
            .args(&command[1..])
            .args(["-p", PROJECT, "-f"])
            .arg(&file)
            .args(args)
            .env("CAUSALKV_SECRET_FILE", &self.secret_file)
            .output()
            .map_err(|err| format!("cannot run {}: {err}", command.join(" ")))?;
        let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        if output.status.success() {
            Ok((stdout, stderr))
        } else {
            Err(format!(
                "{} -p {PROJECT} -f {} {}: {}:\n{stdout}\n{stderr}",
                command.join(" "),
                file.display(),
                args.join(" "),
                output.status
            ))
        }
    }

    /// The same, panicking if it fails; its stdout.
    fn run_ok(&self, args: &[&str]) -> String {
        self.run(args).unwrap_or_else(|err| panic!("{err}")).0
    }

    fn down(&self) -> Result<(String, String), String> {
        self.run(&["down", "-v", "--remove-orphans"])
    }

    /// The ids of the project's containers.
    fn container_ids(&self) -> Result<Vec<String>, String> {
        let (ids, _) = self.run(&["ps", "-q"])?;
        Ok(ids.split_whitespace().map(str::to_owned).collect())
    }

    /// What service `service` has logged.
    fn logs(&self, service: &str) -> String {
        match self.run(&["logs", "--no-color", service]) {
            Ok((stdout, stderr)) => format!("{stdout}\n{stderr}"),
            Err(err) => err,
        }
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if std::thread::panicking() {
            match self.run(&["logs", "--no-color", "--tail", LOG_TAIL_LINES]) {
                Ok((stdout, stderr)) => eprintln!(
                    "----- {PROJECT}: last {LOG_TAIL_LINES} lines of each service -----\n\
                     {stdout}\n{stderr}"
                ),
                Err(err) => eprintln!("{err}"),
            }
        }
        if let Err(err) = self.down() {
            eprintln!("{err}");
        }
    }
}

/// Networks of the other Docker suites (named with [`PREFIX`]) that hold
/// [`SUBNET`]: left over, they would keep compose from creating its network.
fn remove_subnet_leftovers() {
    let filter = format!("name={PREFIX}");
    let networks = docker(&["network", "ls", "--quiet", "--filter", &filter]);
    for id in networks.unwrap_or_default().split_whitespace() {
        let subnets = docker(&[
            "network",
            "inspect",
            "--format",
            "{{range .IPAM.Config}}{{.Subnet}} {{end}}",
            id,
        ])
        .unwrap_or_default();
        if subnets.split_whitespace().any(|subnet| subnet == SUBNET) {
            eprintln!("removing leftover network {id} ({subnets})");
            if let Err(err) = docker(&["network", "rm", id]) {
                eprintln!("{err}");
            }
        }
    }
}

/// What Docker reports of container `id`: its name, its state and health
/// (`running healthy`, `running starting`, `exited`...) and its last health check.
fn health(id: &str) -> (String, String, String) {
    let inspected = docker_ok(&["inspect", "--format", "{{.Name}} {{json .State}}", id]);
    let (name, state) = inspected.split_once(' ').unwrap_or((id, "{}"));
    let state: Value = serde_json::from_str(state).unwrap_or_default();
    let as_str = |value: &Value| value.as_str().unwrap_or_default().to_owned();
    let health = &state["Health"];
    let status = format!("{} {}", as_str(&state["Status"]), as_str(&health["Status"]));
    let last_check = match health["Log"].as_array().and_then(|log| log.last()) {
        Some(check) => format!(
            "exit {}: {}",
            check["ExitCode"],
            check["Output"].as_str().unwrap_or_default().trim()
        ),
        None => "none yet".to_owned(),
    };
    (
        name.trim_start_matches('/').to_owned(),
        status.trim().to_owned(),
        last_check,
    )
}

/// Waits until Docker reports every container of `project` healthy; panics at
/// once when one is unhealthy or not running. The ids of the containers.
async fn until_healthy(project: &Project) -> Vec<String> {
    common::poll_until(
        within(HEALTHY_TIMEOUT),
        "the three containers are healthy",
        async || {
            let ids = project.container_ids()?;
            if ids.len() != NAMES.len() {
                return Err(format!("containers: {ids:?}"));
            }
            let mut waiting = Vec::new();
            for id in &ids {
                let (name, status, last_check) = health(id);
                match status.as_str() {
                    "running healthy" => {}
                    "created" | "created starting" | "running" | "running starting" => {
                        waiting.push(format!("{name} is {status}, last check {last_check}"))
                    }
                    _ => panic!("{name} is {status}; last health check: {last_check}"),
                }
            }
            if waiting.is_empty() {
                Ok(ids)
            } else {
                Err(waiting.join("; "))
            }
        },
    )
    .await
}

#[tokio::test]
#[ignore = "needs Docker; run by scripts/test"]
async fn compose_up_serves_and_comes_down() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("causalkv-compose");
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let secret_file = dir.join("cluster-secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).expect("write the secret file");
    let image = common::docker::image();
    docker(&["image", "inspect", "--format", "{{.Id}}", &image]).unwrap_or_else(|err| {
        panic!("image {image} is missing (scripts/docker-build builds it): {err}")
    });

    // From here on, whatever fails, dropping the project takes it down.
    let project = Project { secret_file };
    project
        .down()
        .unwrap_or_else(|err| panic!("removing leftovers: {err}"));
    remove_subnet_leftovers();
    project.run_ok(&["up", "-d"]);

    let ids = until_healthy(&project).await;
    let nodes: Vec<Node> = HOST_PORTS
        .iter()
        .map(|port| Node::new(format!("127.0.0.1:{port}")))
        .collect();
    // Healthy means `causalkv status` saw the replica ready.
    for node in &nodes {
        let ready = node.request(Method::GET, "/ready", Body::Empty).await;
        assert_eq!(ready.status, 200, "/ready at {}: {ready}", node.addr());
    }

    let meta = nodes[0]
        .put("compose", json!("up"), &Value::Null)
        .await
        .expect_result(201, "created");
    for node in &nodes[1..] {
        get_served(node, "compose", &meta, within(SETTLE_TIMEOUT))
            .await
            .expect_found(&json!("up"));
    }
    until_views(&nodes, &full_view(), within(SETTLE_TIMEOUT)).await;

    for service in NAMES {
        let logs = project.logs(service);
        assert!(
            logs.contains("authenticated with the cluster secret file"),
            "{service} did not say it uses the secret file:\n{logs}"
        );
    }

    project.run_ok(&["down", "-v", "--remove-orphans"]);
    for id in &ids {
        assert!(
            docker(&["container", "inspect", id]).is_err(),
            "container {id} is still there after down"
        );
    }
    let label = format!("label=com.docker.compose.project={PROJECT}");
    let left = docker_ok(&["ps", "--all", "--quiet", "--filter", &label]);
    assert!(left.is_empty(), "containers left after down: {left}");
    let left = docker_ok(&["network", "ls", "--quiet", "--filter", &label]);
    assert!(left.is_empty(), "networks left after down: {left}");
}
