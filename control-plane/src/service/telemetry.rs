//! The service's metrics and the trace context of rollouts.
//!
//! A deployment's rollout runs in the reconciler, after the request that created or
//! updated it has been answered. The request's trace context and start time are kept per
//! deployment until its instances all run, so that the reconciler's commands continue
//! the request's trace and the time to running is measured from the request.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::time::Instant;

use super::ControlPlane;
use crate::auth::Caller;
use crate::error::ServiceResult;
use crate::metrics::{LiveCounts, Metrics};
use crate::model::Role;
use crate::model::{DeploymentStatus, NodeStatus};

/// One rollout under way.
struct Rollout {
    traceparent: Option<String>,
    started: Instant,
}

/// Rollouts under way by deployment id: at most one per deployment (a newer request
/// replaces it), removed when the deployment runs or is deleted.
#[derive(Default)]
pub struct RolloutTraces(Mutex<HashMap<String, Rollout>>);

impl RolloutTraces {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Rollout>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl ControlPlane {
    /// The metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The metrics as Prometheus text, live gauges read now; any operator may read them.
    pub fn render_metrics(&self, caller: &Caller) -> ServiceResult<String> {
        caller.require_operator(Role::Viewer)?;
        let mut live = LiveCounts::default();
        for (status, connected) in self.nodes.census() {
            match status {
                NodeStatus::Ready => live.ready += 1,
                NodeStatus::Unhealthy => live.unhealthy += 1,
                NodeStatus::Down => live.down += 1,
            }
            live.sessions += usize::from(connected);
        }
        (live.pending_commands, live.output_streams) = self.pending.counts();
        Ok(self.metrics.render(live))
    }

    /// A rollout of `deployment_id` starts now, in the current span's trace.
    pub(super) fn rollout_started(&self, deployment_id: &str) {
        let rollout = Rollout { traceparent: diplo_api::telemetry::current_traceparent(), started: Instant::now() };
        self.rollout_traces.lock().insert(deployment_id.to_owned(), rollout);
    }

    /// The span the reconciler's work on `deployment_id` runs in: a child of the request
    /// that started its rollout, when that request was traced.
    pub(super) fn rollout_span(&self, deployment_id: &str, name: &str) -> tracing::Span {
        let traceparent = self.rollout_traces.lock().get(deployment_id).and_then(|rollout| rollout.traceparent.clone());
        let Some(traceparent) = traceparent else { return tracing::Span::none() };
        let span = tracing::info_span!("rollout", deployment = %name, deployment_id = %deployment_id);
        diplo_api::telemetry::continue_trace(&span, &traceparent);
        span
    }

    /// The reconciler wrote `status` for `deployment_id`: running ends the rollout (its
    /// time to running observed), a deletion forgets it.
    pub(super) fn rollout_status(&self, deployment_id: &str, status: Option<DeploymentStatus>) {
        let mut rollouts = self.rollout_traces.lock();
        match status {
            Some(DeploymentStatus::Running) => {
                if let Some(rollout) = rollouts.remove(deployment_id) {
                    self.metrics.deployment_running(rollout.started.elapsed());
                }
            }
            None => {
                rollouts.remove(deployment_id);
            }
            Some(_) => {}
        }
    }
}
