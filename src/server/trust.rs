//! What a replica trusts on its internal endpoints, and the secrets it signs with.
//!
//! With a cluster secret (`CLUSTER_SECRET` or `--cluster-secret-file`), internal requests
//! and their answers are signed and verified (see `auth`). A secret file is re-read when
//! it changes, so that a cluster can rotate its secret without a restart; a file that
//! became unreadable or invalid keeps the secrets loaded last, with an error in the log.
//! Without a secret, internal messages are authenticated only by their source address
//! (see `api::guard`).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use crate::server::auth::{Keyring, Verifier};
use crate::server::config::SecretSource;

#[derive(Debug)]
pub struct Trust {
    keyring: RwLock<Option<Arc<Keyring>>>,
    /// The secret file and the text last loaded from it.
    file: Option<(PathBuf, Mutex<Option<String>>)>,
    pub verifier: Verifier,
    /// Internal endpoints require a client certificate signed by the cluster's CA.
    pub mutual_tls: bool,
}

impl Trust {
    pub fn new(source: Option<&SecretSource>, mutual_tls: bool) -> Trust {
        let (keyring, file) = match source {
            None => (None, None),
            Some(SecretSource::Env(keys)) => (Some(keys.clone()), None),
            Some(SecretSource::File(path, keys)) => {
                let text = std::fs::read_to_string(path).ok();
                (Some(keys.clone()), Some((path.clone(), Mutex::new(text))))
            }
        };
        Trust {
            keyring: RwLock::new(keyring),
            file,
            verifier: Verifier::new(),
            mutual_tls,
        }
    }

    /// The secrets in force, if the cluster has any.
    pub fn keyring(&self) -> Option<Arc<Keyring>> {
        self.keyring
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-reads the secret file if it changed.
    pub fn reload(&self) {
        let Some((path, last)) = &self.file else {
            return;
        };
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) => {
                tracing::error!(path = %path.display(), %error, "cannot re-read the cluster secret file; keeping the secrets loaded last");
                return;
            }
        };
        let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
        if last.as_deref() == Some(text.as_str()) {
            return;
        }
        match Keyring::load(path) {
            Ok(keys) => {
                tracing::info!(path = %path.display(), secrets = keys.len(), "cluster secret file changed: reloaded");
                *self.keyring.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(keys));
            }
            Err(error) => {
                tracing::error!(%error, "the cluster secret file changed but is invalid; keeping the secrets loaded last")
            }
        }
        *last = Some(text);
    }
}
