//! What the node keeps between calls: each function's compiled, linked
//! program (one per module, until an update replaces it), and apps as
//! recently read from the registry, so that most immediate calls and web
//! requests read no registry at all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::worker::{Worker, lock};
use crate::apps::{self, LiveApp};
use crate::calls;
use crate::invoke::{Prepared, RegistryAccess};
use crate::module_store;
use crate::runtime::{Program, Runtime};

/// How long an HTTP call may run from an app as read this long ago: how
/// soon the node's immediate calls see a deploy, an update or a stop made
/// elsewhere.
const LIVE_APP_TTL: Duration = Duration::from_millis(250);

/// Values read from the registry, and when.
type Cache<K, V> = Mutex<HashMap<K, (V, Instant)>>;

/// A program's module: (app id, function, the digest of its module).
type ProgramKey = (String, String, Option<String>);

pub struct Caches {
    runtime: Runtime,
    programs: Mutex<HashMap<ProgramKey, Arc<Program>>>,
    /// (app, function) as a request named them -> the app, the function's
    /// name, and when they were read.
    live_apps: Cache<(String, String), (Arc<LiveApp>, String)>,
    /// Apps as web requests named them, and when they were read.
    web_apps: Cache<String, Arc<LiveApp>>,
}

impl Caches {
    pub fn new(runtime: Runtime) -> Self {
        Self {
            runtime,
            programs: Mutex::default(),
            live_apps: Mutex::default(),
            web_apps: Mutex::default(),
        }
    }
}

impl Worker {
    /// The running deployed app `app` and its function `function`, read
    /// from the registry at most every [`LIVE_APP_TTL`].
    pub(super) fn live_app(&self, app: &str, function: &str) -> Result<(Arc<LiveApp>, String)> {
        let key = (app.to_owned(), function.to_owned());
        cached(&self.caches.live_apps, key, || {
            let (live, function) = self
                .registries
                .with_sync(|registry| calls::find_function(registry, app, function))?;
            Ok((Arc::new(live), function))
        })
    }

    /// The running deployed app `app`, for a web request, read from the
    /// registry at most every [`LIVE_APP_TTL`].
    pub(super) fn web_app(&self, app: &str) -> Result<Arc<LiveApp>> {
        cached(&self.caches.web_apps, app.to_owned(), || {
            let live = self
                .registries
                .with_sync(|registry| registry.read(|tx| apps::web_app_in(tx, app)))?;
            Ok(Arc::new(live))
        })
    }

    /// `function` of `live` prepared to run here, with its cached program.
    pub(super) fn prepare(&self, live: &Arc<LiveApp>, function: &str) -> Result<Prepared> {
        let program = self.program(live, function)?;
        let registry = RegistryAccess::Pool(&self.registries);
        Prepared::new(&self.home, live.clone(), function, program, registry)
    }

    /// The function's compiled, linked program, made once per module.
    fn program(&self, live: &LiveApp, function: &str) -> Result<Arc<Program>> {
        let key = (
            live.record.id.clone(),
            function.to_owned(),
            live.modules.get(function).cloned(),
        );
        if let Some(program) = lock(&self.caches.programs).get(&key) {
            return Ok(program.clone());
        }
        let spec = &live.manifest.functions[function];
        let module = live.module(&self.home, function, |digest| {
            self.registries
                .with_sync(|registry| module_store::fetch(&self.home, registry, digest))
        })?;
        let program = Arc::new(
            self.caches
                .runtime
                .load(&module, spec)
                .with_context(|| format!("cannot load the module of function `{function}`"))?,
        );
        let mut programs = lock(&self.caches.programs);
        // An update replaced what the function runs: its old program goes.
        programs.retain(|(app, f, _), _| (app, f) != (&key.0, &key.1));
        programs.insert(key, program.clone());
        Ok(program)
    }
}

/// `key`'s value in `cache` if read less than [`LIVE_APP_TTL`] ago, else
/// `load`ed again.
fn cached<K: std::hash::Hash + Eq, V: Clone>(
    cache: &Cache<K, V>,
    key: K,
    load: impl FnOnce() -> Result<V>,
) -> Result<V> {
    if let Some((value, read)) = lock(cache).get(&key)
        && read.elapsed() < LIVE_APP_TTL
    {
        return Ok(value.clone());
    }
    let value = load()?;
    lock(cache).insert(key, (value.clone(), Instant::now()));
    Ok(value)
}
