//! Deployments built from git. The deployment is committed first, with status `building`
//! (revision 0 while nothing was ever built); its image is built on a builder node and
//! pushed to the cluster registry; the build's end makes the next revision, which the
//! reconciler rolls out like any update. A new commit is deployed by deploying the same
//! name again: the running revision keeps running while the new image builds.

use std::sync::Arc;

use chrono::Utc;
use diplo_api::build::{BuildStatus, Builder, Buildpack, validate_branch, validate_repo_url};
use diplo_api::runtime::Runtime;

use super::ControlPlane;
use super::builds::StartBuild;
use super::deployments::{DeployInput, Deployed};
use crate::auth::Caller;
use crate::error::{ServiceError, ServiceResult};
use crate::model::{BuildRecord, DeploymentRecord, DeploymentSpec, DeploymentStatus, SourceSpec};

/// What a finished build tells the deployment it was made for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltSource {
    /// The build.
    pub build_id: String,
    /// How it ended.
    pub status: BuildStatus,
    /// Why it failed.
    pub message: String,
    /// The image to run (`repository:tag@sha256:…` once pushed).
    pub image: String,
    /// The commit built.
    pub commit: String,
    /// Where it was built, when the image stayed on that node (no cluster registry):
    /// the node and the runtime that can run it there.
    pub local_to: Option<(String, diplo_api::runtime::Runtime)>,
}

impl BuiltSource {
    /// A build's end with nothing known yet but its id.
    fn new(build_id: &str) -> Self {
        BuiltSource {
            build_id: build_id.to_owned(),
            status: BuildStatus::Failed,
            message: String::new(),
            image: String::new(),
            commit: String::new(),
            local_to: None,
        }
    }
}

impl From<&BuildRecord> for BuiltSource {
    /// An image that was not pushed stays on its builder node: Docker's and Podman's own
    /// images run there on that runtime, and buildah's (containers-storage) on Podman.
    fn from(build: &BuildRecord) -> Self {
        let local_to = match (build.pushed, &build.node_id, build.builder) {
            (false, Some(node), Some(builder)) => {
                let runtime = if builder == Builder::Docker { Runtime::Docker } else { Runtime::Podman };
                Some((node.clone(), runtime))
            }
            _ => None,
        };
        BuiltSource {
            build_id: build.id.clone(),
            status: build.status,
            message: build.message.clone(),
            image: build.image.clone(),
            commit: build.commit.clone(),
            local_to,
        }
    }
}

/// Checks the source part of a deployment; the error names the field.
pub fn validate_source(source: &SourceSpec) -> ServiceResult<()> {
    validate_repo_url(&source.repo_url).map_err(|message| ServiceError::invalid("repo_url", message))?;
    if let Some(branch) = &source.branch {
        validate_branch(branch).map_err(|message| ServiceError::invalid("git_branch", message))?;
    }
    if let Some(language) = &source.language {
        language.parse::<diplo_api::build::detect::Language>().map_err(|message| ServiceError::invalid("language", message))?;
    }
    Ok(())
}

/// The spec of the revision a successful build makes: the built image (and, when the
/// image stayed on its builder, that node and runtime), the commit recorded.
pub fn built_spec(current: &DeploymentSpec, built: &BuiltSource) -> DeploymentSpec {
    let mut spec = current.clone();
    spec.container.image = built.image.clone();
    if let Some((node, runtime)) = &built.local_to {
        spec.constraints.node = Some(node.clone());
        spec.runtime = Some(*runtime);
    }
    if let Some(source) = spec.source.as_mut() {
        source.commit = built.commit.clone();
        source.build_id = built.build_id.clone();
    }
    spec
}

impl ControlPlane {
    /// Commits a deployment built from source and starts its build; deploying an
    /// existing deployment's name again rebuilds it (a new commit becomes a rolling update).
    /// `input.spec` has passed [`check_deploy_spec`](super::deployments::check_deploy_spec).
    pub(super) async fn deploy_from_source(self: &Arc<Self>, caller: &Caller, input: DeployInput) -> ServiceResult<Deployed> {
        let mut spec = input.spec;
        let source = spec.source.clone().ok_or_else(|| ServiceError::invalid("repo_url", "a repository URL is required"))?;
        if let Some(key) = input.idempotency_key.as_deref().filter(|k| !k.is_empty())
            && let Some(existing) = self.store.find_deployment_by_key(key).await?
        {
            return Ok(Deployed { runtime: existing.spec.runtime, deployment: existing });
        }
        if let Some(existing) = self.store.get_deployment(&spec.name).await? {
            return self.rebuild(caller, existing, spec).await;
        }
        let build_id = uuid::Uuid::new_v4().to_string();
        if let Some(source) = spec.source.as_mut() {
            source.build_id = build_id.clone();
            source.commit.clear();
        }
        let now = Utc::now();
        let record = DeploymentRecord {
            id: uuid::Uuid::new_v4().to_string(),
            revision: 0,
            spec,
            status: DeploymentStatus::Building,
            message: format!("building {build_id}"),
            idempotency_key: input.idempotency_key.filter(|k| !k.is_empty()),
            created_at: now,
            updated_at: now,
        };
        self.store.create_deployment(&record).await?;
        if let Err(err) = self.start_source_build(caller, &record, &build_id).await {
            // Nothing was started: the request fails as a whole and leaves nothing behind.
            self.store.delete_deployment(&record.id).await?;
            return Err(err);
        }
        tracing::info!(deployment = %record.spec.name, id = %record.id, build = %build_id, repo = %source.repo_url, "deployment from source created");
        self.emit(
            "deployment.created",
            &caller.actor(),
            &record.id,
            format!("deployment {} created from {}; building {build_id}", record.spec.name, source.repo_url),
        )
        .await;
        Ok(Deployed { runtime: record.spec.runtime, deployment: record })
    }

    /// Builds an existing deployment again from its (possibly changed) source and
    /// settings; the running revision keeps running until the new image is rolled out.
    /// The requested spec waits on the record (`source.pending`) for the build's end.
    async fn rebuild(self: &Arc<Self>, caller: &Caller, mut deployment: DeploymentRecord, spec: DeploymentSpec) -> ServiceResult<Deployed> {
        if deployment.status == DeploymentStatus::Deleting {
            return Err(ServiceError::FailedPrecondition(format!("deployment {:?} is being deleted", deployment.spec.name)));
        }
        let Some(current) = deployment.spec.source.clone() else {
            return Err(ServiceError::AlreadyExists(format!(
                "deployment {:?} already exists and runs an image, not a build from source",
                deployment.spec.name
            )));
        };
        if deployment.status == DeploymentStatus::Building {
            return Err(ServiceError::FailedPrecondition(format!(
                "deployment {:?} is already building ({})",
                deployment.spec.name, deployment.message
            )));
        }
        let build_id = uuid::Uuid::new_v4().to_string();
        let (previous_status, previous_message) = (deployment.status, std::mem::take(&mut deployment.message));
        // The source asked for now (its branch or language may differ) is what is built.
        let mut requested = spec;
        let source = requested.source.take().unwrap_or_else(|| current.clone());
        deployment.spec.source =
            Some(SourceSpec { build_id: build_id.clone(), commit: String::new(), pending: Some(Box::new(requested)), ..source });
        deployment.status = DeploymentStatus::Building;
        deployment.message = format!("building {build_id}");
        deployment.updated_at = Utc::now();
        self.store.save_deployment(&deployment).await?;
        if let Err(err) = self.start_source_build(caller, &deployment, &build_id).await {
            deployment.spec.source = Some(current);
            deployment.status = previous_status;
            deployment.message = previous_message;
            self.store.save_deployment(&deployment).await?;
            return Err(err);
        }
        self.emit("deployment.rebuilding", &caller.actor(), &deployment.id, format!("{} is building {build_id}", deployment.spec.name))
            .await;
        Ok(Deployed { runtime: deployment.spec.runtime, deployment })
    }

    /// Starts the build of `deployment`'s source with id `build_id`, for the platform its
    /// constraints ask for (preferring the node it is pinned to).
    async fn start_source_build(self: &Arc<Self>, caller: &Caller, deployment: &DeploymentRecord, build_id: &str) -> ServiceResult<()> {
        let source = deployment.spec.source.clone().unwrap_or_default();
        let constraints = &deployment.spec.constraints;
        let platform = constraints.arch.as_ref().map(|arch| format!("{}/{arch}", constraints.os.as_deref().unwrap_or("linux")));
        let request = StartBuild {
            id: Some(build_id.to_owned()),
            git_repo: source.repo_url,
            git_branch: source.branch,
            buildpack: Buildpack::Detect,
            image_tag: Some(format!("{}:{}", deployment.spec.name, build_id)),
            language: source.language,
            platform,
            prefer_node: constraints.node.clone(),
            deployment_id: Some(deployment.id.clone()),
        };
        // A build that cannot start (no builder) is ended by the build service, whose end
        // of every build with a deployment updates that deployment.
        self.start_build(caller, request).await?;
        Ok(())
    }

    /// Brings deployments still `building` up to date with their builds' ends (a control
    /// plane that stopped between a build's end and the deployment's update); run at
    /// start-up, after unfinished builds were marked failed.
    pub(crate) async fn resume_source_deployments(&self) -> ServiceResult<()> {
        for deployment in self.store.list_deployments().await? {
            let Some(source) = deployment.spec.source.as_ref().filter(|_| deployment.status == DeploymentStatus::Building) else {
                continue;
            };
            match self.store.get_build(&source.build_id).await? {
                Some(build) if build.status.is_final() => self.source_build_finished(&deployment.id, &BuiltSource::from(&build)).await?,
                Some(_) => {}
                None => {
                    let lost = BuiltSource {
                        status: BuildStatus::Failed,
                        message: "its build was never recorded".into(),
                        ..BuiltSource::new(&source.build_id)
                    };
                    self.source_build_finished(&deployment.id, &lost).await?;
                }
            }
        }
        Ok(())
    }

    /// Applies the end of a deployment's build: a success makes the next revision with the
    /// built image (a rolling update when a revision runs); a failure leaves a deployment
    /// that never ran `failed`, and one that runs on its current revision.
    pub(crate) async fn source_build_finished(&self, deployment_id: &str, built: &BuiltSource) -> ServiceResult<()> {
        let Some(mut deployment) = self.store.get_deployment(deployment_id).await? else { return Ok(()) };
        let current = deployment.spec.source.as_ref().is_some_and(|s| s.build_id == built.build_id);
        if !current || deployment.status != DeploymentStatus::Building {
            tracing::debug!(deployment = %deployment.spec.name, build = %built.build_id, "a build that is not the deployment's current one ended");
            return Ok(());
        }
        let name = deployment.spec.name.clone();
        let pending = deployment.spec.source.as_mut().and_then(|source| source.pending.take());
        if built.status == BuildStatus::Succeeded {
            let base = match pending {
                Some(mut requested) => {
                    requested.source = deployment.spec.source.clone();
                    *requested
                }
                None => deployment.spec.clone(),
            };
            deployment.spec = built_spec(&base, built);
            deployment.revision += 1;
            deployment.status = DeploymentStatus::Deploying;
            deployment.message = String::new();
            deployment.updated_at = Utc::now();
            self.store.save_deployment(&deployment).await?;
            let message = format!("{name} built {} at {}: revision {}", built.image, short(&built.commit), deployment.revision);
            self.emit("deployment.built", "build", deployment_id, message).await;
            self.nudge_reconciler();
            return Ok(());
        }
        let why = format!("build {} {}: {}", built.build_id, built.status, built.message);
        if deployment.revision == 0 {
            deployment.status = DeploymentStatus::Failed;
            deployment.message = why.clone();
        } else {
            // The running revision's spec, source and commit included, as it was recorded.
            if let Some(running) = self.store.get_revision(&deployment.id, deployment.revision).await? {
                deployment.spec = running;
            }
            deployment.status = DeploymentStatus::Deploying;
            deployment.message = format!("{why}; revision {} keeps running", deployment.revision);
        }
        deployment.updated_at = Utc::now();
        self.store.save_deployment(&deployment).await?;
        self.emit("deployment.build_failed", "build", deployment_id, format!("{name}: {why}")).await;
        self.nudge_reconciler();
        Ok(())
    }
}

/// The first 12 characters of a commit hash.
fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}
