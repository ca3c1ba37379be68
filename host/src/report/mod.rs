//! What users read about an app, written in one place for the reconciler and the autoscaler:
//! the status and the events.
//!
//! - [`status`]: the status bodies and conditions, as pure functions of what a reconcile or
//!   a tick saw. A condition keeps its `lastTransitionTime` while its status holds, in both.
//! - [`Writer`]: the writes. One per field manager (the reconciler's and the autoscaler's
//!   parts of a status are applied under different managers, so neither overwrites the
//!   other), each gated by this replica's leader term.
//! - [`outbox`]: the autoscaling loops' status writes, applied by a few senders so no loop
//!   waits for one; the newest post of a slot wins.

pub mod outbox;
pub mod status;

use std::borrow::Cow;
use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use tracing::warn;

use crate::crd::Celery;
use crate::leader::Leadership;

/// Longest event note, in characters.
const MAX_NOTE: usize = 1024;

/// Why a status was not written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("this replica's leader term has ended")]
    NotLeader,
    #[error("the API server refused the status")]
    Api(#[source] kube::Error),
}

/// The status and event writer of one field manager.
#[derive(Clone)]
pub struct Writer {
    client: Client,
    recorder: Recorder,
    manager: Cow<'static, str>,
    /// Nothing is written outside this replica's leader term.
    leadership: Arc<Leadership>,
}

impl Writer {
    /// A writer applying as field manager `manager`, which also names the events' reporting
    /// controller (with the pod's name as the instance, when `POD_NAME` is set).
    pub fn new(client: Client, manager: &'static str, leadership: Arc<Leadership>) -> Self {
        let reporter = Reporter { controller: manager.into(), instance: std::env::var("POD_NAME").ok() };
        Self { recorder: Recorder::new(client.clone(), reporter), client, manager: Cow::Borrowed(manager), leadership }
    }

    /// A writer of the same events whose status writes apply as `manager` instead: the part of
    /// a status one autoscaling loop of several owns (a worker group's).
    pub fn with_manager(&self, manager: String) -> Self {
        Self {
            client: self.client.clone(),
            recorder: self.recorder.clone(),
            manager: Cow::Owned(manager),
            leadership: Arc::clone(&self.leadership),
        }
    }

    /// Whether this replica may write now.
    pub fn may_write(&self) -> bool {
        self.leadership.holds()
    }

    /// Applies `status` as the part of the status of `celery` this writer's manager owns:
    /// what it leaves out and wrote before is removed, what other managers wrote stays.
    pub async fn status<S: Serialize>(&self, celery: &Celery, status: &S) -> Result<(), WriteError> {
        if !self.may_write() {
            return Err(WriteError::NotLeader);
        }
        let patch = serde_json::json!({
            "apiVersion": Celery::api_version(&()),
            "kind": Celery::kind(&()),
            "status": status,
        });
        let api: Api<Celery> = Api::namespaced(self.client.clone(), &celery.namespace().unwrap_or_default());
        api.patch_status(&celery.name_any(), &PatchParams::apply(&self.manager).force(), &Patch::Apply(&patch))
            .await
            .map(drop)
            .map_err(WriteError::Api)
    }

    /// Removes everything this writer's manager wrote in the status of `celery`; a failure is
    /// logged (the next write or reconcile tries again).
    pub async fn clear(&self, celery: &Celery) {
        match self.status(celery, &serde_json::json!({})).await {
            Ok(()) | Err(WriteError::NotLeader) => {}
            Err(error) => warn!(
                app = %celery.name_any(), manager = %self.manager, error = %crate::telemetry::chain(&error),
                "cannot clear the status"
            ),
        }
    }

    /// Publishes one event about `object`; a failure is logged, never fatal.
    pub async fn event(&self, object: &ObjectReference, type_: EventType, reason: &str, note: &str, action: &str) {
        if !self.may_write() {
            return;
        }
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(MAX_NOTE).collect()),
            action: action.into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, object).await {
            warn!(%error, app = object.name.as_deref().unwrap_or("?"), "could not publish event");
        }
    }
}
