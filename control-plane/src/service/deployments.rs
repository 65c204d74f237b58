//! Deployments: desired state committed first, then converged by the reconciler.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::Utc;
use diplo_api::container::validate_container_name;
use diplo_api::runtime::Runtime;

use super::ControlPlane;
use super::containers::check_workload;
use super::images::PlatformLookup;
use crate::auth::Caller;
use crate::error::{ServiceError, ServiceResult};
use crate::model::{DeploymentRecord, DeploymentSpec, DeploymentStatus, InstanceRecord, Role};

/// Longest deployment name: instance containers are named `<name>-<8 hex>`.
pub const MAX_DEPLOYMENT_NAME: usize = 54;
/// Most replicas one deployment may ask for.
pub const MAX_REPLICAS: u32 = 1000;

/// What a viewer reads in place of each environment value of a deployment.
pub const HIDDEN_ENV_VALUE: &str = "(hidden)";

/// A deploy request.
#[derive(Debug, Clone)]
pub struct DeployInput {
    /// The desired state.
    pub spec: DeploymentSpec,
    /// Same key twice creates one deployment.
    pub idempotency_key: Option<String>,
}

/// A created deployment with the runtime its first replica gets.
#[derive(Debug, Clone)]
pub struct Deployed {
    /// The committed deployment.
    pub deployment: DeploymentRecord,
    /// Runtime chosen for the first replica (the forced one, or the best node's).
    pub runtime: Option<diplo_api::runtime::Runtime>,
}

/// A deployment in a few words: what the system status lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentSummary {
    /// Its name.
    pub name: String,
    /// Its image (empty while a deployment from source builds its first one).
    pub image: String,
    /// Its status.
    pub status: DeploymentStatus,
    /// Desired replicas.
    pub replicas: u32,
    /// The runtime it is pinned to, else the one all its placed instances run on (`None`:
    /// not placed yet, or spread over several runtimes).
    pub runtime: Option<Runtime>,
}

impl From<&DeploymentView> for DeploymentSummary {
    fn from(view: &DeploymentView) -> Self {
        let spec = &view.deployment.spec;
        let runtime = spec.runtime.or_else(|| {
            let mut placed = view.instances.iter().filter_map(|i| i.runtime);
            let first = placed.next()?;
            placed.all(|r| r == first).then_some(first)
        });
        DeploymentSummary {
            name: spec.name.clone(),
            image: spec.container.image.clone(),
            status: view.deployment.status,
            replicas: spec.replicas,
            runtime,
        }
    }
}

/// A deployment with its instances.
#[derive(Debug, Clone)]
pub struct DeploymentView {
    /// The deployment.
    pub deployment: DeploymentRecord,
    /// Its instances (all revisions).
    pub instances: Vec<InstanceRecord>,
}

/// Checks a deployment spec; the error names the field.
pub fn validate_deployment_spec(spec: &DeploymentSpec) -> ServiceResult<()> {
    validate_container_name(&spec.name).map_err(|message| ServiceError::invalid("name", message))?;
    if spec.name.len() > MAX_DEPLOYMENT_NAME {
        return Err(ServiceError::invalid("name", format!("at most {MAX_DEPLOYMENT_NAME} characters")));
    }
    if spec.replicas > MAX_REPLICAS {
        return Err(ServiceError::invalid("replicas", format!("at most {MAX_REPLICAS}")));
    }
    if let Some(runtime) = spec.runtime {
        super::containers::check_runtime_supports(runtime, &spec.container)?;
    }
    super::containers::check_container_template(&spec.container)
}

/// The checks of a new deployment that need no I/O, as `deploy` makes them for `caller`
/// (REST and gRPC alike): a deployment built from a repository (`source`) has a valid
/// source and no image, and everything else checked like any deployment; then
/// [`check_workload`]. Returns the spec as it is committed (`max_parallel` at least 1).
pub fn check_deploy_spec(caller: &Caller, mut spec: DeploymentSpec) -> ServiceResult<DeploymentSpec> {
    spec.max_parallel = spec.max_parallel.max(1);
    match &spec.source {
        Some(source) => {
            super::source::validate_source(source)?;
            if !spec.container.image.trim().is_empty() {
                return Err(ServiceError::invalid("image", "give either an image or a repository to build, not both"));
            }
            // Everything but the image (which the build makes) is checked like any deployment.
            let mut probe = spec.clone();
            probe.container.image = "pending-build".into();
            validate_deployment_spec(&probe)?;
        }
        None => validate_deployment_spec(&spec)?,
    }
    check_workload(caller, &spec.container)?;
    Ok(spec)
}

/// The checks of a deployment update that need no I/O, as `update_deployment` makes them
/// for `caller`; returns the spec as it is committed (`max_parallel` at least 1).
pub fn check_update_spec(caller: &Caller, mut spec: DeploymentSpec) -> ServiceResult<DeploymentSpec> {
    validate_deployment_spec(&spec)?;
    check_workload(caller, &spec.container)?;
    spec.max_parallel = spec.max_parallel.max(1);
    Ok(spec)
}

/// Deployments as `caller` may read them: environment values (often credentials) only
/// for deployers and admins; viewers see the variable names with [`HIDDEN_ENV_VALUE`].
/// Every adapter reads deployments through this, so the rule holds for REST and gRPC.
fn visible_to(caller: &Caller, mut view: DeploymentView) -> DeploymentView {
    if !caller.has_role(Role::Deployer) {
        for value in view.deployment.spec.container.env.values_mut() {
            *value = HIDDEN_ENV_VALUE.to_owned();
        }
    }
    view
}

impl ControlPlane {
    /// Commits a new deployment (durably, before anything is started) and wakes the
    /// reconciler. With an idempotency key already used, returns that deployment.
    /// Fails without committing anything when its image is not in its registry
    /// (`NotFound`) or no node could run it now (`FailedPrecondition`, with each node's
    /// reason, e.g. `n1: image is linux/amd64 only, node is linux/arm64`). A registry that
    /// cannot be asked does not block it: the image's platforms are then not checked.
    pub async fn deploy(self: &std::sync::Arc<Self>, caller: &Caller, input: DeployInput) -> ServiceResult<Deployed> {
        caller.require_operator(Role::Deployer)?;
        let spec = check_deploy_spec(caller, input.spec)?;
        if spec.source.is_some() {
            return self.deploy_from_source(caller, DeployInput { spec, idempotency_key: input.idempotency_key }).await;
        }
        if let Some(key) = input.idempotency_key.as_deref().filter(|k| !k.is_empty())
            && let Some(existing) = self.store.find_deployment_by_key(key).await?
        {
            return Ok(Deployed { runtime: existing.spec.runtime, deployment: existing });
        }
        if self.store.get_deployment(&spec.name).await?.is_some() {
            return Err(ServiceError::AlreadyExists(format!("deployment {:?} already exists", spec.name)));
        }
        let platforms = self.check_image(&spec.container.image).await?;
        let mut runtime = spec.runtime;
        if spec.replicas > 0 {
            let fit = self.placement_preview(&spec, platforms.platforms()).await?;
            runtime = fit.runtime.or(runtime);
            if fit.placed == 0 {
                return Err(ServiceError::FailedPrecondition(format!("no node can run {}: {}", spec.name, fit.reasons.join("; "))));
            }
        }
        let now = Utc::now();
        let record = DeploymentRecord {
            id: uuid::Uuid::new_v4().to_string(),
            revision: 1,
            spec,
            status: DeploymentStatus::Deploying,
            message: String::new(),
            idempotency_key: input.idempotency_key.filter(|k| !k.is_empty()),
            created_at: now,
            updated_at: now,
        };
        match self.store.create_deployment(&record).await {
            Ok(()) => {}
            // A concurrent request with the same key won the race: answer with its result.
            Err(err @ crate::store::StoreError::AlreadyExists { .. }) => {
                if let Some(key) = record.idempotency_key.as_deref()
                    && let Some(existing) = self.store.find_deployment_by_key(key).await?
                {
                    return Ok(Deployed { runtime: existing.spec.runtime, deployment: existing });
                }
                return Err(err.into());
            }
            Err(err) => return Err(err.into()),
        }
        tracing::info!(deployment = %record.spec.name, id = %record.id, replicas = record.spec.replicas, "deployment created");
        self.rollout_started(&record.id);
        self.emit(
            "deployment.created",
            &caller.actor(),
            &record.id,
            format!("deployment {} created with {} replicas of {}", record.spec.name, record.spec.replicas, record.spec.container.image),
        )
        .await;
        self.nudge_reconciler();
        Ok(Deployed { deployment: record, runtime })
    }

    /// A deployment with its instances.
    pub async fn get_deployment(&self, caller: &Caller, name: &str) -> ServiceResult<DeploymentView> {
        caller.require_operator(Role::Viewer)?;
        let deployment = self.find_deployment(name).await?;
        let instances = self.store.list_instances(Some(&deployment.id)).await?;
        Ok(visible_to(caller, DeploymentView { deployment, instances }))
    }

    /// Every deployment with its instances.
    pub async fn list_deployments(&self, caller: &Caller) -> ServiceResult<Vec<DeploymentView>> {
        caller.require_operator(Role::Viewer)?;
        Ok(self.shared_deployment_views().await?.iter().map(|view| visible_to(caller, view.clone())).collect())
    }

    /// Every deployment in a few words (what the system status lists), by name.
    pub async fn deployment_summaries(&self, caller: &Caller) -> ServiceResult<Vec<DeploymentSummary>> {
        caller.require_operator(Role::Viewer)?;
        Ok(self.shared_deployment_views().await?.iter().map(DeploymentSummary::from).collect())
    }

    /// Every deployment (by name) with its instances (by creation), as stored: built once
    /// per store generation and shared by readers until the next write (a store without
    /// a generation is read afresh every time). Not redacted: callers apply
    /// [`visible_to`] before anything leaves the service.
    pub(super) async fn shared_deployment_views(&self) -> ServiceResult<Arc<Vec<DeploymentView>>> {
        // The generation is read before the store: what is read is at least that new.
        let generation = self.store.generation();
        if let Some(views) = generation.and_then(|g| self.deployment_views.get(g)) {
            return Ok(views);
        }
        let mut instances: HashMap<String, Vec<InstanceRecord>> = HashMap::new();
        for instance in self.store.list_instances(None).await? {
            instances.entry(instance.deployment_id.clone()).or_default().push(instance);
        }
        let views: Arc<Vec<DeploymentView>> = Arc::new(
            self.store
                .list_deployments()
                .await?
                .into_iter()
                .map(|deployment| {
                    let mine = instances.remove(&deployment.id).unwrap_or_default();
                    DeploymentView { deployment, instances: mine }
                })
                .collect(),
        );
        if let Some(generation) = generation {
            self.deployment_views.put(generation, views.clone());
        }
        Ok(views)
    }

    /// Every instance, or one deployment's.
    pub async fn list_instances(&self, caller: &Caller, deployment: Option<&str>) -> ServiceResult<Vec<InstanceRecord>> {
        caller.require_operator(Role::Viewer)?;
        match deployment.filter(|d| !d.is_empty()) {
            Some(name) => {
                let deployment = self.find_deployment(name).await?;
                Ok(self.store.list_instances(Some(&deployment.id)).await?)
            }
            None => Ok(self.store.list_instances(None).await?),
        }
    }

    /// The platforms of `image` from its registry, asked now unless freshly known. An
    /// image its registry does not have is `NotFound`, a reference that does not parse
    /// `InvalidArgument`; an unreachable registry is not an error (platforms unknown).
    pub(super) async fn check_image(&self, image: &str) -> ServiceResult<PlatformLookup> {
        let lookup = self.image_platforms.lookup_fresh(image).await;
        match &lookup {
            PlatformLookup::UnknownImage(reference) => Err(ServiceError::NotFound(format!(
                "image {reference} not found: its registry has no such repository or tag (or refuses anonymous pulls)"
            ))),
            PlatformLookup::InvalidReference(message) => Err(ServiceError::invalid("image", message.clone())),
            PlatformLookup::Unavailable(why) => {
                tracing::warn!(image, why, "cannot read the image's platforms; placement will not check them");
                Ok(lookup)
            }
            PlatformLookup::Known(_) => Ok(lookup),
        }
    }

    /// Changes the replica count (same revision).
    pub async fn scale(&self, caller: &Caller, name: &str, replicas: u32) -> ServiceResult<DeploymentRecord> {
        caller.require_operator(Role::Deployer)?;
        if replicas > MAX_REPLICAS {
            return Err(ServiceError::invalid("replicas", format!("at most {MAX_REPLICAS}")));
        }
        let mut deployment = self.find_live_deployment(name).await?;
        let from = deployment.spec.replicas;
        deployment.spec.replicas = replicas;
        deployment.status = DeploymentStatus::Deploying;
        deployment.updated_at = Utc::now();
        self.store.save_deployment(&deployment).await?;
        self.emit("deployment.scaled", &caller.actor(), &deployment.id, format!("{name} scaled from {from} to {replicas}")).await;
        self.nudge_reconciler();
        Ok(deployment)
    }

    /// Makes a new revision from a changed spec; the reconciler rolls it out
    /// `max_parallel` instances at a time.
    pub async fn update_deployment(&self, caller: &Caller, spec: DeploymentSpec) -> ServiceResult<DeploymentRecord> {
        caller.require_operator(Role::Deployer)?;
        let spec = check_update_spec(caller, spec)?;
        let mut deployment = self.find_live_deployment(&spec.name).await?;
        if spec == deployment.spec {
            return Ok(deployment);
        }
        if spec.container.image != deployment.spec.container.image {
            self.check_image(&spec.container.image).await?;
        }
        deployment.revision += 1;
        deployment.spec = spec;
        deployment.status = DeploymentStatus::Deploying;
        deployment.updated_at = Utc::now();
        self.store.save_deployment(&deployment).await?;
        self.rollout_started(&deployment.id);
        let message = format!("{} updated to revision {}", deployment.spec.name, deployment.revision);
        self.emit("deployment.updated", &caller.actor(), &deployment.id, message).await;
        self.nudge_reconciler();
        Ok(deployment)
    }

    /// Rolls back to the previous revision's spec (as a new revision, Nomad style),
    /// keeping the current replica count.
    pub async fn rollback(&self, caller: &Caller, name: &str) -> ServiceResult<DeploymentRecord> {
        caller.require_operator(Role::Deployer)?;
        let mut deployment = self.find_live_deployment(name).await?;
        if deployment.revision <= 1 {
            return Err(ServiceError::FailedPrecondition(format!("{name} has no previous revision")));
        }
        let mut previous = self
            .store
            .get_revision(&deployment.id, deployment.revision - 1)
            .await?
            .ok_or_else(|| ServiceError::Internal(format!("revision {} of {name} is missing", deployment.revision - 1)))?;
        check_workload(caller, &previous.container)?;
        previous.replicas = deployment.spec.replicas;
        let from = deployment.revision;
        deployment.revision += 1;
        deployment.spec = previous;
        deployment.status = DeploymentStatus::Deploying;
        deployment.updated_at = Utc::now();
        self.store.save_deployment(&deployment).await?;
        self.rollout_started(&deployment.id);
        let message = format!("{name} rolled back from revision {from} to the spec of revision {} (now {})", from - 1, deployment.revision);
        self.emit("deployment.rolled_back", &caller.actor(), &deployment.id, message).await;
        self.nudge_reconciler();
        Ok(deployment)
    }

    /// Marks a deployment for deletion; the reconciler removes its containers, then it.
    pub async fn delete_deployment(&self, caller: &Caller, name: &str) -> ServiceResult<()> {
        caller.require_operator(Role::Deployer)?;
        let mut deployment = self.find_deployment(name).await?;
        deployment.status = DeploymentStatus::Deleting;
        deployment.updated_at = Utc::now();
        self.store.save_deployment(&deployment).await?;
        self.emit("deployment.deleting", &caller.actor(), &deployment.id, format!("{name} is being deleted")).await;
        self.nudge_reconciler();
        Ok(())
    }

    async fn find_deployment(&self, name: &str) -> ServiceResult<DeploymentRecord> {
        if name.trim().is_empty() {
            return Err(ServiceError::invalid("name", "a deployment name is required"));
        }
        self.store.get_deployment(name).await?.ok_or_else(|| ServiceError::NotFound(format!("deployment {name:?} not found")))
    }

    async fn find_live_deployment(&self, name: &str) -> ServiceResult<DeploymentRecord> {
        let deployment = self.find_deployment(name).await?;
        if deployment.status == DeploymentStatus::Deleting {
            return Err(ServiceError::FailedPrecondition(format!("deployment {name:?} is being deleted")));
        }
        // The build's end applies the spec its deploy asked for: a change made meanwhile
        // would be lost, so it waits for the build.
        if deployment.status == DeploymentStatus::Building {
            return Err(ServiceError::FailedPrecondition(format!(
                "deployment {name:?} is building ({}): change it once the build has ended",
                deployment.message
            )));
        }
        Ok(deployment)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(pinned: Option<Runtime>, placed: &[Option<Runtime>]) -> DeploymentView {
        let now = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        let mut spec = DeploymentSpec { name: "web".into(), replicas: 3, runtime: pinned, ..Default::default() };
        spec.container.image = "busybox".into();
        let deployment = DeploymentRecord {
            id: "d1".into(),
            revision: 1,
            spec,
            status: DeploymentStatus::Running,
            message: String::new(),
            idempotency_key: None,
            created_at: now,
            updated_at: now,
        };
        let instances = placed
            .iter()
            .enumerate()
            .map(|(i, runtime)| {
                let mut instance = InstanceRecord::placed(format!("i{i}"), "d1", 1, "n1", Runtime::Docker, now);
                instance.runtime = *runtime;
                instance
            })
            .collect();
        DeploymentView { deployment, instances }
    }

    #[test]
    fn a_summary_names_the_pinned_runtime_else_the_one_every_placed_instance_uses() {
        use Runtime::*;
        type Case = (Option<Runtime>, &'static [Option<Runtime>], Option<Runtime>);
        let cases: [Case; 6] = [
            (Some(Lxc), &[Some(Docker)], Some(Lxc)),
            (None, &[], None),
            (None, &[None, None], None),
            (None, &[Some(Podman), None, Some(Podman)], Some(Podman)),
            (None, &[Some(Podman), Some(Containerd)], None),
            (Some(Docker), &[], Some(Docker)),
        ];
        for (pinned, placed, expected) in cases {
            let summary = DeploymentSummary::from(&view(pinned, placed));
            assert_eq!(summary.runtime, expected, "pinned {pinned:?}, placed {placed:?}");
            assert_eq!((summary.name.as_str(), summary.image.as_str(), summary.replicas), ("web", "busybox", 3));
            assert_eq!(summary.status, DeploymentStatus::Running);
        }
    }
}
