//! Compiled policies on disk, so a restart does not recompile.
//!
//! An artifact is named by the sha256 of the module's bytes and of the engine's
//! `precompile_compatibility_hash`, so a different wasmtime or engine configuration simply
//! misses. Only files this cache wrote are ever deserialized: names are computed here, never
//! taken from a user; files are written to a temporary name and renamed into place, so a
//! crash leaves no half-written artifact; and the directory must belong to this process's
//! user and be writable by no one else, or the cache is not used at all (deserializing is
//! running native code, so a file planted by someone else must never get in).

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::Module;
use wasmtime::component::Component;

/// A compiled policy, either kind.
#[derive(Clone)]
pub enum Compiled {
    Component(Component),
    Module(Module),
}

/// Which kind to compile the bytes as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Component,
    Module,
}

/// How an artifact was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Compiled,
    Cache,
}

/// The on-disk artifact cache.
#[derive(Clone, Debug)]
pub struct ArtifactCache {
    dir: PathBuf,
    /// Total size of the artifacts kept; the least recently used go first beyond it.
    limit: u64,
}

/// The default bound of the cache: every built-in compiled takes ~150 MB, and the Helm
/// chart's cache volume is an `emptyDir` of 512 MiB, which the kubelet evicts the pod for
/// exceeding.
pub const DEFAULT_LIMIT: u64 = 384 << 20;

/// A failure to use the cache; never fatal, the module is compiled instead.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("policy cache {}: {source}", dir.display())]
    Io {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("policy cache {}: not used, since {reason}", dir.display())]
    Untrusted { dir: PathBuf, reason: String },
}

impl ArtifactCache {
    /// Opens (creating, mode 0700) the cache directory and checks that only we can write it.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, CacheError> {
        let dir = dir.into();
        let io = |source| CacheError::Io { dir: dir.clone(), source };
        std::fs::create_dir_all(&dir).map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            let meta = std::fs::symlink_metadata(&dir).map_err(io)?;
            let untrusted = |reason: String| CacheError::Untrusted { dir: dir.clone(), reason };
            if !meta.is_dir() {
                return Err(untrusted("it is not a directory".into()));
            }
            // Our uid without libc: the owner of a file we just created.
            let probe = tempfile::NamedTempFile::new_in(&dir).map_err(io)?;
            let uid = probe.as_file().metadata().map_err(io)?.uid();
            if meta.uid() != uid {
                return Err(untrusted(format!("it belongs to uid {}, not {uid}", meta.uid())));
            }
            if meta.mode() & 0o022 != 0 {
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
            }
        }
        Ok(Self { dir, limit: DEFAULT_LIMIT })
    }

    /// The same cache, keeping at most `bytes` of artifacts.
    pub fn with_limit(mut self, bytes: u64) -> Self {
        self.limit = bytes;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Removes the least recently used artifacts until the rest fit in the limit. The one just
    /// written (`keep`) always stays. A removed artifact that is still mapped stays readable
    /// to its mapping (an unlinked file lives until unmapped).
    fn prune(&self, keep: &Path) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut artifacts: Vec<(std::time::SystemTime, u64, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                meta.is_file().then(|| (meta.modified().unwrap_or(std::time::UNIX_EPOCH), meta.len(), e.path()))
            })
            .collect();
        let mut total: u64 = artifacts.iter().map(|(_, len, _)| len).sum();
        artifacts.sort();
        for (_, len, path) in artifacts {
            if total <= self.limit {
                break;
            }
            if path != keep && std::fs::remove_file(&path).is_ok() {
                tracing::info!(path = %path.display(), bytes = len, "removed a compiled policy from the cache (least recently used)");
                total -= len;
            }
        }
    }

    /// The artifact path of `bytes` compiled as `kind` by `engine`.
    pub fn path_for(&self, engine: &Engine, kind: Kind, bytes: &[u8]) -> PathBuf {
        self.path_for_digest(engine, kind, &Sha256::digest(bytes).into())
    }

    /// [`path_for`](Self::path_for) when the sha256 of the module is known already: hashing
    /// a 20 MB component takes longer than mapping its artifact.
    pub fn path_for_digest(&self, engine: &Engine, kind: Kind, digest: &[u8; 32]) -> PathBuf {
        let mut engine_hash = ShaHasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut engine_hash);
        let mut key = Sha256::new();
        key.update(PREPARATION);
        key.update(digest);
        key.update(engine_hash.0.finalize());
        let suffix = match kind {
            Kind::Component => "component",
            Kind::Module => "module",
        };
        self.dir.join(format!("{}.{suffix}.cwasm", hex::encode(key.finalize())))
    }

    /// Loads the artifact of `bytes` if this cache has it, otherwise compiles `bytes` and
    /// stores the result. Returns what it did and how long it took.
    /// `digest` is the sha256 of the module's bytes; `compile` makes the artifact when the
    /// cache has none (see [`compile`], and the loader's pre-initialisation of core modules).
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        kind: Kind,
        digest: &[u8; 32],
        compile: impl FnOnce() -> wasmtime::Result<Compiled>,
    ) -> wasmtime::Result<(Compiled, Origin, Duration)> {
        let path = self.path_for_digest(engine, kind, digest);
        let start = Instant::now();
        if let Some(compiled) = self.load(engine, kind, &path) {
            return Ok((compiled, Origin::Cache, start.elapsed()));
        }
        let start = Instant::now();
        let compiled = compile()?;
        let elapsed = start.elapsed();
        if let Err(error) = self.store(&compiled, &path) {
            tracing::warn!(%error, path = %path.display(), "cannot write the compiled policy to the cache");
        }
        Ok((compiled, Origin::Compiled, elapsed))
    }

    // NB: artifacts are mapped, not read, so loading is fast; a mapped file must never be
    // rewritten in place (a truncation under a live mapping is a SIGBUS). `store` therefore
    // only ever renames a new file over an old one.
    fn load(&self, engine: &Engine, kind: Kind, path: &Path) -> Option<Compiled> {
        let meta = std::fs::symlink_metadata(path).ok()?;
        if !meta.file_type().is_file() {
            return None;
        }
        // SAFETY: `path` is computed by this cache from a digest and lies in a directory that
        // only this user can write (checked in `open`); files there are written by `store`
        // only, atomically. wasmtime additionally checks the artifact's header and engine.
        let loaded = unsafe {
            match kind {
                Kind::Component => Component::deserialize_file(engine, path).map(Compiled::Component),
                Kind::Module => Module::deserialize_file(engine, path).map(Compiled::Module),
            }
        };
        match loaded {
            Ok(compiled) => {
                // Marks it as used for `prune`; metadata only, the mapped bytes are untouched.
                if let Ok(file) = std::fs::File::open(path) {
                    let _ = file.set_modified(std::time::SystemTime::now());
                }
                Some(compiled)
            }
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), path = %path.display(), "discarding an unusable cached policy");
                let _ = std::fs::remove_file(path);
                None
            }
        }
    }

    fn store(&self, compiled: &Compiled, path: &Path) -> anyhow::Result<()> {
        let bytes = match compiled {
            Compiled::Component(c) => c.serialize(),
            Compiled::Module(m) => m.serialize(),
        }
        .map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let mut file = tempfile::NamedTempFile::new_in(&self.dir)?;
        file.write_all(&bytes)?;
        file.as_file().sync_all()?;
        file.persist(path)?;
        self.prune(path);
        Ok(())
    }
}

/// Compiles `bytes` (binary or WAT text) without any cache.
pub fn compile(engine: &Engine, kind: Kind, bytes: &[u8]) -> wasmtime::Result<Compiled> {
    Ok(match kind {
        Kind::Component => Compiled::Component(Component::new(engine, bytes)?),
        Kind::Module => Compiled::Module(Module::new(engine, bytes)?),
    })
}

/// What the cache key says about how an artifact was made from the module's bytes; changed
/// when that changes, so an artifact made the old way is not picked up (v2: core reactors are
/// pre-initialised before compiling; v3: and their unused passive data segments dropped).
const PREPARATION: &[u8] = b"celery-operator artifact v3";

/// Feeds `Hash` output into sha256, so the key is stable across runs of the same binary
/// (std's `DefaultHasher` promises no such thing).
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        u64::from_le_bytes([digest[0], digest[1], digest[2], digest[3], digest[4], digest[5], digest[6], digest[7]])
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}
