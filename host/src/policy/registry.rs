//! Policy names → loaded policies: the built-ins, plus user modules in a watched directory.
//!
//! A module is a `NAME.wasm` file; an optional `NAME.json` beside it tells its language and how
//! much history it reads ([`Metadata`]).
//! The user directory is usually a mounted ConfigMap, which Kubernetes updates by swapping a
//! `..data` symlink rather than writing files, so changes are found by polling: every
//! [`Registry::refresh`] compares each file's resolved path, size and mtime (and those of its
//! `NAME.json`), and only a change costs a read, a digest and (for new bytes) a compile. A
//! module that fails to load keeps the last good version of its name, and the failure is
//! listed until it is fixed. Every version loaded stays reachable by digest, so
//! `name@sha256:<hex>` keeps working across an update.
//! Built-in names cannot be taken over by user modules.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime};

use super::PolicyError;
use super::cache::ArtifactCache;
use super::engine::{PolicyEngine, compile_threads, memory_limit, release_freed_memory};
use super::loader::{Interface, LoadedPolicy, Metadata, Source, sha256};

/// Where the registry looks.
#[derive(Clone, Debug, Default)]
pub struct RegistrySettings {
    /// Directory of the built-in policies.
    pub builtin_dir: Option<PathBuf>,
    /// Watched directory of user policies.
    pub user_dir: Option<PathBuf>,
    /// Directory of compiled artifacts; `None` compiles every time.
    pub cache_dir: Option<PathBuf>,
}

/// Where the built-ins are installed in the operator's image.
pub const INSTALLED_BUILTINS: &str = "/usr/lib/celery-operator/policies";
/// Where `policies/build.sh` puts them in a checkout.
pub const DEV_BUILTINS: &str = "target/policies";

impl RegistrySettings {
    /// The installed built-ins, else those of a development checkout, if either exists.
    pub fn default_builtin_dir() -> Option<PathBuf> {
        [INSTALLED_BUILTINS, DEV_BUILTINS].into_iter().map(PathBuf::from).find(|p| p.is_dir())
    }

    /// `$XDG_CACHE_HOME/celery-operator/policies`, else `~/.cache/…`, else the temp dir.
    pub fn default_cache_dir() -> PathBuf {
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(std::env::temp_dir)
            .join("celery-operator")
            .join("policies")
    }
}

/// One line of `celery-operator policy list`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PolicyInfo {
    pub name: String,
    pub language: Option<String>,
    pub interface: Option<Interface>,
    /// History samples the policy is sent, from its `NAME.json`; `None` is the whole window.
    pub history: Option<usize>,
    /// History samples handed as columns, for a component that imports `window`.
    pub window: Option<usize>,
    pub digest: Option<String>,
    pub source: String,
    /// Why the newest file of this name is not in use, if it is not.
    pub problem: Option<String>,
}

/// A file as last seen: enough to notice a change without reading it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Fingerprint {
    resolved: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
    /// Size and mtime of `NAME.json`, if there is one.
    metadata: Option<(u64, Option<SystemTime>)>,
}

struct Entry {
    builtin: bool,
    path: PathBuf,
    current: Option<Arc<LoadedPolicy>>,
    seen: Option<Fingerprint>,
    seen_digest: Option<String>,
    problem: Option<String>,
}

/// Versions of one name kept for `name@sha256:…` pins after the module changed, besides the
/// current one: enough for a rollout from one version to the next, bounded however often a
/// user's ConfigMap changes.
const PINNED_VERSIONS: usize = 3;

#[derive(Default)]
struct State {
    entries: BTreeMap<String, Entry>,
    /// Every loaded version by digest, with the order it was loaded in.
    by_digest: HashMap<String, (u64, Arc<LoadedPolicy>)>,
    loads: u64,
}

impl State {
    /// Keeps `policy` by its digest, and of its name only the [`PINNED_VERSIONS`] loaded last
    /// besides the current one.
    fn remember(&mut self, policy: &Arc<LoadedPolicy>) {
        self.loads += 1;
        self.by_digest.insert(policy.digest().to_string(), (self.loads, Arc::clone(policy)));
        let mut same_name: Vec<(u64, String)> = self
            .by_digest
            .iter()
            .filter(|(_, (_, p))| p.name() == policy.name())
            .map(|(digest, (seq, _))| (*seq, digest.clone()))
            .collect();
        if same_name.len() > PINNED_VERSIONS + 1 {
            same_name.sort_unstable();
            for (_, digest) in &same_name[..same_name.len() - PINNED_VERSIONS - 1] {
                self.by_digest.remove(digest);
            }
        }
    }
}

/// The policy registry of the operator.
pub struct Registry {
    engine: PolicyEngine,
    cache: Option<ArtifactCache>,
    settings: RegistrySettings,
    state: RwLock<State>,
}

impl Registry {
    /// A registry with nothing loaded yet: call [`Registry::refresh`].
    pub fn new(engine: PolicyEngine, settings: RegistrySettings) -> Self {
        let cache = settings.cache_dir.as_ref().and_then(|dir| match ArtifactCache::open(dir) {
            Ok(cache) => Some(cache),
            Err(error) => {
                tracing::warn!(%error, "compiling policies without a cache");
                None
            }
        });
        Self { engine, cache, settings, state: RwLock::new(State::default()) }
    }

    pub fn engine(&self) -> &PolicyEngine {
        &self.engine
    }

    pub fn cache(&self) -> Option<&ArtifactCache> {
        self.cache.as_ref()
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Where modules are looked for, and how to look elsewhere: for a name nobody knows.
    fn where_looked(&self) -> String {
        let dir = |d: &Option<PathBuf>| d.as_ref().map_or("not set".to_string(), |d| d.display().to_string());
        format!(
            "built-in directory {}{}, your own {}; point elsewhere with --policy-dir or --extra-policy-dir \
             (CELERY_OPERATOR_POLICY_DIR, CELERY_OPERATOR_USER_POLICY_DIR)",
            dir(&self.settings.builtin_dir),
            match &self.settings.builtin_dir {
                None => format!(" (neither {INSTALLED_BUILTINS} nor {DEV_BUILTINS} exists here)"),
                Some(_) => String::new(),
            },
            dir(&self.settings.user_dir)
        )
    }

    /// Every module in both directories, loaded or not: name, path, and whether it is a
    /// built-in (those come first).
    fn on_disk(&self) -> Vec<(String, PathBuf, bool)> {
        let mut found: Vec<(String, PathBuf, bool)> = Vec::new();
        if let Some(dir) = &self.settings.builtin_dir {
            found.extend(scan(dir, false).into_iter().map(|(name, path)| (name, path, true)));
        }
        if let Some(dir) = &self.settings.user_dir {
            found.extend(scan(dir, true).into_iter().map(|(name, path)| (name, path, false)));
        }
        found
    }

    /// The names of the modules in both directories, loaded or not.
    pub fn names_on_disk(&self) -> Vec<String> {
        let mut names: Vec<String> = self.on_disk().into_iter().map(|(name, _, _)| name).collect();
        names.sort();
        names.dedup();
        names
    }

    /// Loads the one module called `reference` (a name, maybe pinned), not the others: what
    /// the author tools need to run one policy. Blocking.
    pub fn refresh_only(&self, reference: &str) {
        let name = reference.split_once('@').map_or(reference, |(n, _)| n);
        // A built-in first: a user module cannot take its name.
        if let Some((n, path, builtin)) = self.on_disk().into_iter().find(|(n, _, _)| n == name) {
            self.refresh_one(&n, &path, builtin);
        }
    }

    /// Rescans both directories, loading what changed. Blocking: compiling takes time.
    /// Returns the names whose module or problem changed.
    pub fn refresh(&self) -> Vec<String> {
        let found = self.on_disk();
        // Built-ins first: a user module cannot take the name of one.
        let (builtins, users): (Vec<_>, Vec<_>) = found.into_iter().partition(|(_, _, builtin)| *builtin);
        let mut changed = self.refresh_all(&builtins);
        let users: Vec<_> = users
            .into_iter()
            .filter(|(name, path, _)| {
                let taken = self.read().entries.get(name).is_some_and(|e| e.builtin);
                if taken {
                    tracing::warn!(policy = %name, path = %path.display(), "a user policy cannot replace the built-in of the same name");
                }
                !taken
            })
            .collect();
        changed.extend(self.refresh_all(&users));
        let present: Vec<&String> = builtins.iter().chain(&users).map(|(name, _, _)| name).collect();
        let mut state = self.write();
        let gone: Vec<String> = state.entries.keys().filter(|n| !present.contains(n)).cloned().collect();
        for name in gone {
            tracing::info!(policy = %name, "policy module removed");
            state.entries.remove(&name);
            changed.push(name);
        }
        changed
    }

    /// [`refresh_one`](Self::refresh_one) for each module, on as many threads as there are
    /// cores and the memory limit allows ([`compile_threads`]): at start every module loads,
    /// and the large ones (a Python component is ~20 MB) dominate. Returns the names whose entry
    /// changed.
    fn refresh_all(&self, modules: &[(String, PathBuf, bool)]) -> Vec<String> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = compile_threads(memory_limit(), cores).min(modules.len());
        let next = AtomicUsize::new(0);
        let changed = Mutex::new(Vec::new());
        let work = || {
            while let Some((name, path, builtin)) = modules.get(next.fetch_add(1, Ordering::Relaxed)) {
                if self.refresh_one(name, path, *builtin) {
                    changed.lock().unwrap_or_else(|p| p.into_inner()).push(name.clone());
                }
            }
        };
        if threads <= 1 {
            work();
        } else {
            std::thread::scope(|scope| {
                for _ in 0..threads {
                    scope.spawn(work);
                }
            });
        }
        let mut changed = changed.into_inner().unwrap_or_else(|p| p.into_inner());
        if !changed.is_empty() {
            release_freed_memory();
        }
        changed.sort();
        changed
    }

    /// Loads `path` as `name` if it changed; true when the entry changed.
    fn refresh_one(&self, name: &str, path: &Path, builtin: bool) -> bool {
        let seen = fingerprint(path);
        // What this name was last seen as: fingerprint, digest of the bytes, metadata in use.
        let previous = self
            .read()
            .entries
            .get(name)
            .map(|e| (e.seen.clone(), e.seen_digest.clone(), e.current.as_ref().map(|p| p.metadata().clone())));
        if let (Some(seen), Some((Some(before), _, _))) = (&seen, &previous)
            && seen == before
        {
            return false;
        }
        if let Some(len) = seen.as_ref().map(|f| f.len)
            && len > MAX_MODULE_BYTES
        {
            let problem =
                format!("{} is {len} bytes, above the limit of {MAX_MODULE_BYTES} bytes for one module", path.display());
            return self.record_problem(name, path, builtin, seen, None, problem);
        }
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(error) => {
                return self.record_problem(name, path, builtin, seen, None, format!("cannot read {}: {error}", path.display()));
            }
        };
        let metadata = match Metadata::beside(path) {
            Ok(metadata) => metadata,
            Err(problem) => return self.record_problem(name, path, builtin, seen, None, problem),
        };
        let sha256 = sha256(&bytes);
        let new_digest = hex::encode(sha256);
        if let Some((_, Some(digest), Some(in_use))) = &previous
            && *digest == new_digest
            && *in_use == metadata
        {
            if let Some(entry) = self.write().entries.get_mut(name) {
                entry.seen = seen;
            }
            return false;
        }
        let source = if builtin { Source::BuiltIn(path.to_path_buf()) } else { Source::User(path.to_path_buf()) };
        match LoadedPolicy::load_with_digest(&self.engine, self.cache.as_ref(), name, &bytes, &sha256, source, metadata) {
            Ok(policy) => {
                let policy = Arc::new(policy);
                tracing::info!(policy = %name, digest = %policy.digest(), interface = %policy.interface(), "policy loaded");
                let mut state = self.write();
                state.remember(&policy);
                state.entries.insert(
                    name.to_string(),
                    Entry {
                        builtin,
                        path: path.to_path_buf(),
                        current: Some(policy),
                        seen,
                        seen_digest: Some(new_digest),
                        problem: None,
                    },
                );
                true
            }
            Err(error) => self.record_problem(name, path, builtin, seen, Some(new_digest), error.to_string()),
        }
    }

    fn record_problem(
        &self,
        name: &str,
        path: &Path,
        builtin: bool,
        seen: Option<Fingerprint>,
        seen_digest: Option<String>,
        problem: String,
    ) -> bool {
        tracing::warn!(policy = %name, %problem, "policy module not loaded; keeping the last good version, if any");
        let mut state = self.write();
        let entry = state.entries.entry(name.to_string()).or_insert_with(|| Entry {
            builtin,
            path: path.to_path_buf(),
            current: None,
            seen: None,
            seen_digest: None,
            problem: None,
        });
        entry.seen = seen;
        entry.seen_digest = seen_digest;
        entry.problem = Some(problem);
        true
    }

    /// Resolves `name` or `name@sha256:<hex>`.
    pub fn resolve(&self, reference: &str) -> Result<Arc<LoadedPolicy>, PolicyError> {
        let (name, pin) = match reference.split_once("@sha256:") {
            Some((name, hex)) => (name, Some(hex.to_ascii_lowercase())),
            None => (reference, None),
        };
        let state = self.read();
        let Some(entry) = state.entries.get(name) else {
            let known: Vec<&str> = state.entries.keys().map(String::as_str).collect();
            return Err(PolicyError::UnknownPolicy {
                name: name.to_string(),
                known: if known.is_empty() { format!("none ({})", self.where_looked()) } else { known.join(", ") },
            });
        };
        let Some(current) = &entry.current else {
            return Err(PolicyError::Unavailable {
                policy: name.to_string(),
                problem: entry.problem.clone().unwrap_or_else(|| "never loaded".into()),
            });
        };
        match pin {
            None => Ok(Arc::clone(current)),
            Some(wanted) if wanted == current.digest() => Ok(Arc::clone(current)),
            Some(wanted) => state.by_digest.get(&wanted).map(|(_, p)| p).filter(|p| p.name() == name).cloned().ok_or_else(|| {
                PolicyError::DigestMismatch { name: name.to_string(), wanted, found: current.digest().to_string() }
            }),
        }
    }

    /// Every name the registry knows, with its state.
    pub fn list(&self) -> Vec<PolicyInfo> {
        self.read()
            .entries
            .iter()
            .map(|(name, entry)| PolicyInfo {
                name: name.clone(),
                language: entry.current.as_ref().and_then(|p| p.language().map(str::to_string)),
                interface: entry.current.as_ref().map(|p| p.interface()),
                history: entry.current.as_ref().and_then(|p| p.metadata().history),
                window: entry.current.as_ref().and_then(|p| p.window()),
                digest: entry.current.as_ref().map(|p| p.digest().to_string()),
                source: if entry.builtin {
                    format!("built-in ({})", entry.path.display())
                } else {
                    format!("user ({})", entry.path.display())
                },
                problem: entry.problem.clone(),
            })
            .collect()
    }

    /// Polls the directories every `interval` until the task is dropped or aborted.
    pub fn spawn_watch(self: Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let registry = Arc::clone(&self);
                if let Err(error) = tokio::task::spawn_blocking(move || registry.refresh()).await {
                    tracing::error!(%error, "policy directory scan failed");
                }
            }
        })
    }
}

/// The largest module loaded: the biggest built-in (a Python component) is ~20 MB; a larger
/// file is refused before it is read, so a mistaken or hostile ConfigMap cannot fill memory.
pub const MAX_MODULE_BYTES: u64 = 64 << 20;

/// `NAME.wasm` files of `dir`, skipping the hidden `..data` machinery. With `confine` (the
/// user directory), symlinks are followed only where they stay inside `dir` (ConfigMap keys
/// are symlinks into `..data`); one that leads out of it is skipped and logged, so a policy
/// directory cannot be used to load files from elsewhere in the operator's pod.
fn scan(dir: &Path, confine: bool) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        tracing::debug!(dir = %dir.display(), "policy directory not readable");
        return Vec::new();
    };
    let Ok(root) = std::fs::canonicalize(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(String, PathBuf)> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
        .filter_map(|p| {
            let name = p.file_stem()?.to_str()?.to_string();
            if name.starts_with('.') || !p.is_file() {
                return None;
            }
            let inside = !confine || std::fs::canonicalize(&p).is_ok_and(|real| real.starts_with(&root));
            if !inside {
                tracing::warn!(policy = %name, path = %p.display(), dir = %dir.display(), "skipping a policy whose symlink leads out of its directory");
                return None;
            }
            Some((name, p))
        })
        .collect();
    found.sort();
    found
}

fn fingerprint(path: &Path) -> Option<Fingerprint> {
    let resolved = std::fs::canonicalize(path).ok()?;
    let meta = std::fs::metadata(&resolved).ok()?;
    let metadata = std::fs::metadata(path.with_extension("json")).ok().map(|m| (m.len(), m.modified().ok()));
    Some(Fingerprint { resolved, len: meta.len(), modified: meta.modified().ok(), metadata })
}
