//! Durability against real processes: replicas with a data directory are killed with
//! SIGKILL, all of them at once, in the middle of a write load, and restarted on their
//! directories; every acknowledged write and delete must be there, at every replica. A
//! replica restarted alone fetches from its peers only what it missed.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use common::{Node, TestCluster, poll_until, within};

fn data_root(name: &str) -> PathBuf {
    let root = std::env::temp_dir().join(format!("causalkv-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    root
}

/// What one writer saw acknowledged: key → its value (`None`: deleted).
type Acked = BTreeMap<String, Option<Value>>;

/// Puts distinct keys (and deletes every third one after its put) until told to stop
/// or `max` operations; returns what was acknowledged.
async fn writer(
    node: Node,
    id: usize,
    max: usize,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Acked {
    let mut acked = Acked::new();
    let meta = Value::Null;
    for i in 0..max {
        if *stop.borrow() {
            break;
        }
        let key = format!("w{id}-{i}");
        let value = json!(format!("v{id}-{i}"));
        let Ok(reply) = node.try_put(&key, &value, &meta).await else {
            continue;
        };
        if reply.status == 201 {
            acked.insert(key.clone(), Some(value));
            if i % 3 == 0 {
                match node.try_delete(&key, &meta).await {
                    Ok(reply) if reply.status == 200 => {
                        acked.insert(key, None);
                    }
                    // No answer: the delete may or may not have happened.
                    _ => {
                        acked.remove(&key);
                    }
                }
            }
        }
    }
    acked
}

async fn holds(node: &Node, key: &str, expected: &Option<Value>) -> Result<(), String> {
    let reply = node.try_get(key, &Value::Null).await?;
    match (expected, reply.status) {
        (Some(value), 200) if reply.value() == value => Ok(()),
        (None, 404) => Ok(()),
        _ => Err(format!(
            "{key} at {}: expected {expected:?}, got {reply}",
            node.addr()
        )),
    }
}

#[tokio::test]
async fn every_acknowledged_write_survives_killing_every_replica_mid_load() {
    let root = data_root("kill-all");
    let mut cluster = TestCluster::start_durable("durable-kill-all", 3, &[], &root).await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let writers: Vec<_> = (0..6)
        .map(|id| {
            tokio::spawn(writer(
                cluster.node(id % 3).clone(),
                id,
                400,
                stopped.clone(),
            ))
        })
        .collect();
    // Let the load run, then kill every replica while it does.
    poll_until(
        within(Duration::from_secs(20)),
        "the load is under way",
        async || {
            let reply = cluster.node(0).try_get("w0-60", &Value::Null).await?;
            match reply.status {
                200 | 404 if writers.iter().any(|w| w.is_finished()) => Ok(()),
                200 => Ok(()),
                _ => Err(format!("the load has not reached w0-60 yet: {reply}")),
            }
        },
    )
    .await;
    for i in 0..3 {
        cluster.kill(i);
    }
    let _ = stop.send(true);
    let mut acked = Acked::new();
    for w in writers {
        acked.extend(w.await.expect("writer"));
    }
    assert!(
        acked.len() > 30,
        "the load made writes before the kill: {}",
        acked.len()
    );
    for i in 0..3 {
        cluster.restart(i);
    }
    cluster.wait_ready(within(Duration::from_secs(30))).await;
    for node in cluster.nodes() {
        for (key, expected) in &acked {
            poll_until(
                within(Duration::from_secs(10)),
                "every write is back",
                async || holds(node, key, expected).await,
            )
            .await;
        }
    }
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test]
async fn a_replica_restarted_on_its_directory_fetches_only_what_it_missed() {
    let root = data_root("delta");
    let mut cluster = TestCluster::start_durable("durable-delta", 3, &[], &root).await;
    let meta = Value::Null;
    for i in 0..40 {
        let reply = cluster
            .node(0)
            .put(&format!("before-{i}"), json!(i), &meta)
            .await;
        assert_eq!(reply.status, 201, "{reply}");
    }
    // Replica 2 holds all 40 before it goes.
    poll_until(
        within(Duration::from_secs(10)),
        "replica 2 holds every key",
        async || holds(cluster.node(2), "before-39", &Some(json!(39))).await,
    )
    .await;
    cluster.kill(2);
    for i in 0..7 {
        let reply = cluster
            .node(1)
            .put(&format!("while-down-{i}"), json!(i), &meta)
            .await;
        assert_eq!(reply.status, 201, "{reply}");
    }
    cluster.restart(2);
    cluster.wait_ready(within(Duration::from_secs(30))).await;
    for key in ["before-0", "before-39", "while-down-6"] {
        poll_until(
            within(Duration::from_secs(10)),
            "replica 2 serves it",
            async || {
                let reply = cluster.node(2).try_get(key, &meta).await?;
                (reply.status == 200)
                    .then_some(())
                    .ok_or(format!("{key}: {reply}"))
            },
        )
        .await;
    }
    let log = cluster.log_text(2);
    assert!(log.contains("recovered the data directory"), "{log}");
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("bootstrap complete"))
        .expect("a bootstrap line");
    assert!(
        line.contains("entries=7") && line.contains("keys=47"),
        "the restarted replica fetched exactly the 7 writes it missed: {line}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

/// Mounts a tmpfs of `size` at a new directory; `None` when this process may not mount
/// (not root): the test then says so and checks nothing.
fn small_filesystem(name: &str, size: &str) -> Option<PathBuf> {
    let dir = data_root(name);
    std::fs::create_dir_all(&dir).ok()?;
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(&dir)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("cannot mount a tmpfs here (not root?): the disk-full test checks nothing");
        let _ = std::fs::remove_dir_all(&dir);
        return None;
    }
    Some(dir)
}

fn remount(dir: &std::path::Path, size: &str) {
    let status = std::process::Command::new("mount")
        .args(["-o", &format!("remount,size={size}")])
        .arg(dir)
        .status()
        .expect("run mount");
    assert!(status.success(), "remount {} to {size}", dir.display());
}

struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn a_full_disk_refuses_writes_with_507_keeps_reads_and_acknowledges_nothing_it_lost() {
    let Some(root) = small_filesystem("disk-full", "512k") else {
        return;
    };
    let _unmount = Unmount(root.clone());
    let mut cluster =
        TestCluster::start_durable("durable-disk-full", 1, &["--fsync", "always"], &root).await;
    let node = cluster.node(0).clone();
    let meta = Value::Null;
    let big = json!("x".repeat(8 * 1024));
    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..200 {
        let key = format!("big-{i}");
        let reply = node.put(&key, big.clone(), &meta).await;
        match reply.status {
            201 => acked.push(key),
            507 => {
                refused = Some(reply);
                break;
            }
            _ => panic!("unexpected answer while the disk fills: {reply}"),
        }
    }
    let refused = refused.expect("a 512 KiB disk fills within 200 writes of 8 KiB");
    assert!(
        refused.to_string().contains("cannot make writes durable"),
        "a clear error: {refused}"
    );
    assert!(
        !acked.is_empty(),
        "writes went through before the disk filled"
    );
    // Reads go on.
    for key in &acked {
        holds(&node, key, &Some(big.clone()))
            .await
            .expect("reads work on a full disk");
    }
    // Room again: writes are accepted again once the journal is written.
    remount(&root, "8m");
    poll_until(
        within(Duration::from_secs(10)),
        "writes are accepted again",
        async || {
            let reply = node.try_put("after", &json!(1), &meta).await?;
            (reply.status == 201)
                .then_some(())
                .ok_or(format!("{reply}"))
        },
    )
    .await;
    // Everything acknowledged is on the disk.
    cluster.kill(0);
    cluster.restart(0);
    cluster.wait_ready(within(Duration::from_secs(30))).await;
    for key in acked.iter().chain([&"after".to_string()]) {
        let expected = if key == "after" {
            json!(1)
        } else {
            big.clone()
        };
        holds(&node, key, &Some(expected))
            .await
            .expect("an acknowledged write survives");
    }
}
