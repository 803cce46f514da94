//! A pool of registry connections, for code that runs on an async
//! runtime: a node's request handlers, and the guest locks of a cluster.
//! The registry's clients block, so a connection is used on a blocking
//! thread, by one task at a time.

use std::sync::Arc;

use anyhow::{Context, Result};

use super::Registry;
use crate::home::Home;

/// Registry connections for request handlers, each used by one blocking
/// task at a time.
#[derive(Clone)]
pub struct Registries {
    home: Home,
    idle: Arc<std::sync::Mutex<Vec<Registry>>>,
}

impl Registries {
    pub fn new(home: Home) -> Self {
        Self {
            home,
            idle: Arc::default(),
        }
    }

    pub fn home(&self) -> &Home {
        &self.home
    }

    /// Runs `f` with a connection, on a thread where blocking is fine.
    pub async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Registry) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.with_sync(f))
            .await
            .context("a registry task failed")?
    }

    /// Runs `f` with a connection on this thread.
    pub fn with_sync<T>(&self, f: impl FnOnce(&mut Registry) -> Result<T>) -> Result<T> {
        let taken = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut registry = match taken {
            Some(registry) => registry,
            None => Registry::open(&self.home.registry())?,
        };
        let result = f(&mut registry);
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(registry);
        result
    }
}
