//! Step 2b of a reconcile: the scaling policies a resource selects exist, load, and accept
//! their settings, before anything is scaled.
//!
//! Each policy is resolved in the [`Registry`] (built-ins and the watched user directory) and
//! asked `validate-settings`. A failure becomes a `Degraded` condition naming the field it
//! comes from. Verdicts are remembered per module digest and settings, so a policy runs once
//! per change, not once per reconcile; a changed module (new digest) is asked again.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::conditions::{INVALID_POLICY, INVALID_SETTINGS};
use crate::policy::PolicyError;
use crate::policy::engine::{EngineSettings, PolicyEngine};
use crate::policy::registry::{Registry, RegistrySettings};
use crate::policy::runner::{CallLimits, PolicyRunner};
use crate::spec::validate::Scaling;

/// Why the selected policies cannot be used: a `Degraded` reason and a message for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyProblem {
    pub reason: &'static str,
    pub message: String,
}

/// A module digest and the settings it was asked about.
type VerdictKey = (String, BTreeMap<String, String>);

/// The registry and runner the reconciler checks policies with.
pub struct PolicyCheck {
    registry: Arc<Registry>,
    runner: PolicyRunner,
    /// Turns true once the registry's first load is done.
    ready: watch::Receiver<bool>,
    /// (module digest, settings) → the policy's verdict on those settings.
    verdicts: Mutex<HashMap<VerdictKey, Result<(), String>>>,
}

impl PolicyCheck {
    /// The process's policy runtime: one engine and the registry, whose directories are then
    /// watched every `rescan`. NB: the first load compiles what the disk cache lacks (tens of
    /// seconds for the Python and JavaScript built-ins on a cold cache), so it runs in the
    /// background: the health endpoints answer meanwhile, and [`check`](Self::check) waits for it.
    pub fn start(settings: RegistrySettings, rescan: Duration) -> Result<Arc<Self>, PolicyError> {
        let concurrency = num_cpus();
        let engine = PolicyEngine::new(EngineSettings::within_memory(crate::policy::engine::memory_limit(), concurrency))?;
        let registry = Arc::new(Registry::new(engine, settings));
        let (loaded, ready) = watch::channel(false);
        let loading = Arc::clone(&registry);
        tokio::spawn(async move {
            let scanned = Arc::clone(&loading);
            if let Err(error) = tokio::task::spawn_blocking(move || scanned.refresh()).await {
                tracing::error!(%error, "loading the scaling policies failed");
            }
            for info in loading.list() {
                match &info.problem {
                    None => tracing::info!(policy = %info.name, "scaling policy loaded"),
                    Some(problem) => {
                        tracing::warn!(policy = %info.name, %problem, "scaling policy not usable")
                    }
                }
            }
            let _ = loaded.send(true);
            loading.spawn_watch(rescan);
        });
        let runner = PolicyRunner::new(concurrency, CallLimits::default());
        Ok(Arc::new(Self { registry, runner, ready, verdicts: Mutex::default() }))
    }

    /// The registry the policies are resolved in.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The runner policy calls go through.
    pub fn runner(&self) -> &PolicyRunner {
        &self.runner
    }

    /// Returns once the registry's first load is done.
    pub async fn loaded(&self) {
        let _ = self.ready.clone().wait_for(|loaded| *loaded).await;
    }

    /// Checks every policy of `scaling`; `Ok` when there is none.
    pub async fn check(&self, scaling: &Scaling) -> Result<(), PolicyProblem> {
        let Scaling::Policies { policies, .. } = scaling else {
            return Ok(());
        };
        // Until the first load is done every name would look unknown.
        self.loaded().await;
        for policy in policies {
            let loaded = self
                .registry
                .resolve(&policy.name)
                .map_err(|e| PolicyProblem { reason: INVALID_POLICY, message: format!("{}: {e}", policy.field) })?;
            let key = (loaded.digest().to_string(), policy.settings.clone());
            let known = self.verdicts.lock().expect("verdict cache lock").get(&key).cloned();
            let verdict = match known {
                Some(v) => v,
                None => {
                    let v = match self.runner.validate_settings(loaded, policy.settings.clone()).await {
                        Ok(()) => Ok(()),
                        // Transient host trouble is not the user's fault: do not remember it.
                        Err(e) if !e.is_permanent() => return Err(problem(&policy.field, &e)),
                        Err(e) => Err(problem(&policy.field, &e).message),
                    };
                    let mut verdicts = self.verdicts.lock().expect("verdict cache lock");
                    // Bounded: settings edited over and over, or modules replaced, would grow it
                    // for ever; a verdict forgotten is only asked of the policy again.
                    if verdicts.len() >= MAX_VERDICTS {
                        verdicts.clear();
                    }
                    verdicts.insert(key, v.clone());
                    v
                }
            };
            verdict.map_err(|message| PolicyProblem { reason: INVALID_SETTINGS, message })?;
        }
        Ok(())
    }
}

/// Verdicts on settings kept; far more than distinct (module, settings) pairs in use.
const MAX_VERDICTS: usize = 4096;

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn problem(field: &str, error: &PolicyError) -> PolicyProblem {
    let reason = match error {
        PolicyError::InvalidSettings { .. } | PolicyError::Rejected { .. } => INVALID_SETTINGS,
        _ => INVALID_POLICY,
    };
    PolicyProblem { reason, message: format!("{field}: {error}") }
}
