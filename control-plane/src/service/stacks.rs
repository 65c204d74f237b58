//! Stacks: a compose file deployed as one deployment per service, named
//! `<stack>-<service>` and labelled `diplo.stack=<stack>`.
//!
//! A deploy checks the whole file (every service, image and placement) before it writes
//! anything, then saves the stack; the stack rollout ([`ControlPlane::advance_stacks`],
//! run on every reconcile pass) creates each service's deployment once the services it
//! depends on are up (`service_started`: all its replicas run; `service_healthy`: all its
//! replicas report healthy). Deploying a stack again updates only the services whose spec
//! changed (a new revision each) and deletes the services no longer in the file.
//!
//! Names: on Docker and Podman a stack's services share the network `diplo-<stack>`,
//! where each is reachable by its service name and aliases. A runtime without network
//! objects runs them on its default network ([`diplo_api::runtime::Runtime::placed_spec`]);
//! there each service gets `extra_hosts` entries naming the services it depends on at their
//! observed addresses ([`service_hosts`]), and a new revision when one of those changes.
//! A stack's services share the node of its first placed service ([`stack_anchor`]).

use std::collections::{BTreeMap, BTreeSet};

use chrono::Utc;
use diplo_api::build::{BuildStatus, Buildpack};
use diplo_api::compose::{DependsCondition, ServiceSpec, StackRepository, StackSpec};
use diplo_api::container::{ContainerStatus, Health, LABEL_DEPLOYMENT};

use super::ControlPlane;
use super::builds::StartBuild;
use super::deployments::{MAX_DEPLOYMENT_NAME, check_deploy_spec};
use crate::auth::Caller;
use crate::error::{ServiceError, ServiceResult};
use crate::model::{BuildRecord, DeploymentRecord, DeploymentSpec, DeploymentStatus, Role, StackRecord};

/// Label carrying the stack a deployment's containers belong to.
pub const LABEL_STACK: &str = "diplo.stack";

/// How far one service of a stack has come, as the rollout reads it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServiceProgress {
    /// Its deployment exists.
    pub created: bool,
    /// Replicas it asks for.
    pub replicas: u32,
    /// Its containers that run.
    pub running: u32,
    /// Its containers that run and report healthy.
    pub healthy: u32,
}

impl ServiceProgress {
    /// Whether a dependent waiting on `condition` may start.
    pub fn satisfies(&self, condition: DependsCondition) -> bool {
        self.created
            && match condition {
                DependsCondition::ServiceStarted => self.running >= self.replicas,
                DependsCondition::ServiceHealthy => self.healthy >= self.replicas,
            }
    }
}

/// The services of `stack` not created yet whose dependencies are all satisfied: the
/// ones the rollout creates now, in name order.
pub fn startable(stack: &StackSpec, progress: &BTreeMap<String, ServiceProgress>) -> Vec<String> {
    stack
        .services
        .iter()
        .filter(|(name, _)| !progress.get(*name).is_some_and(|p| p.created))
        .filter(|(_, service)| {
            service.depends_on.iter().all(|(dependency, condition)| progress.get(dependency).is_some_and(|p| p.satisfies(*condition)))
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// The services `service` depends on, directly or through others.
pub fn dependencies_of(stack: &StackSpec, service: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut todo = vec![service.to_owned()];
    while let Some(next) = todo.pop() {
        for dependency in stack.services.get(&next).map(|s| s.depends_on.keys()).into_iter().flatten() {
            if found.insert(dependency.clone()) {
                todo.push(dependency.clone());
            }
        }
    }
    found
}

/// A service's `extra_hosts` entries (`NAME:IP`) where its runtime has no network objects:
/// every service it depends on (directly or through others), by its service name and its
/// aliases, at the addresses of its running containers (`addresses`: service name to the
/// addresses observed on runtimes without network objects). A dependency with no address
/// observed keeps the entries `current` has for it: a restart between two reports changes
/// nothing until its new address is known. Only dependencies get entries: they run before
/// the dependent starts, so a dependency's new address gives the dependent a new revision
/// and never the other way round (two services naming each other would restart each other
/// without end).
pub fn service_hosts(stack: &StackSpec, service: &str, addresses: &BTreeMap<String, BTreeSet<String>>, current: &[String]) -> Vec<String> {
    let mut hosts = Vec::new();
    for dependency in dependencies_of(stack, service) {
        let aliases = stack.services.get(&dependency).map(|s| s.aliases.as_slice()).unwrap_or_default();
        let names: Vec<&str> = std::iter::once(dependency.as_str()).chain(aliases.iter().map(String::as_str)).collect();
        match addresses.get(&dependency).filter(|ips| !ips.is_empty()) {
            Some(ips) => {
                for name in &names {
                    hosts.extend(ips.iter().map(|ip| format!("{name}:{ip}")));
                }
            }
            None => hosts.extend(
                current
                    .iter()
                    .filter(|entry| diplo_api::options::parse_extra_host(entry).is_ok_and(|(name, _)| names.contains(&name)))
                    .cloned(),
            ),
        }
    }
    hosts
}

/// The node a stack's services share: the node of the first (in name order) of its
/// services' deployments with a placed instance, `None` while none is placed.
pub fn stack_anchor(placed: &BTreeMap<String, Vec<String>>) -> Option<String> {
    placed.values().find_map(|nodes| nodes.first().cloned())
}

/// The deployment a service of a stack runs as.
pub fn stack_deployment_name(stack: &str, service: &str) -> String {
    format!("{stack}-{service}")
}

/// The name of a stack's named volume on the node: `<stack>_<volume>`, as compose names it.
pub fn stack_volume_name(stack: &str, volume: &str) -> String {
    format!("{stack}_{volume}")
}

/// The network a stack's services share on their node: `diplo-<stack>`.
pub fn stack_network_name(stack: &str) -> String {
    format!("diplo-{stack}")
}

/// A service's deployment spec (before the workload checks and the stack label): on the
/// stack's network, reachable by its service name and its aliases.
pub fn service_deployment_spec(stack: &str, service_name: &str, service: &ServiceSpec) -> DeploymentSpec {
    let mut container = service.container.clone();
    container.network = Some(stack_network_name(stack));
    container.network_aliases = std::iter::once(service_name.to_owned()).chain(service.aliases.iter().cloned()).collect();
    for mount in &mut container.mounts {
        if !mount.is_bind() {
            mount.source = stack_volume_name(stack, &mount.source);
        }
    }
    DeploymentSpec {
        name: stack_deployment_name(stack, service_name),
        replicas: service.replicas,
        max_parallel: 1,
        container,
        ..DeploymentSpec::default()
    }
}

/// Checks a stack name: a container name short enough to prefix its deployments.
pub fn check_stack_name(name: &str) -> ServiceResult<()> {
    diplo_api::container::validate_container_name(name).map_err(|message| ServiceError::invalid("name", message))?;
    if name.len() > MAX_DEPLOYMENT_NAME - 2 {
        return Err(ServiceError::invalid("name", format!("at most {} characters", MAX_DEPLOYMENT_NAME - 2)));
    }
    Ok(())
}

/// The checks of a stack deploy that need no I/O, as `deploy_stack` makes them for
/// `caller`: the name, the compose document (errors name its line and key), then every
/// service's deployment as `deploy` checks it. Returns the stack and each service's
/// deployment spec as it is committed (labelled with the stack).
pub fn check_stack(
    caller: &Caller,
    name: &str,
    source: &str,
    repository: Option<&StackRepository>,
) -> ServiceResult<(StackSpec, BTreeMap<String, DeploymentSpec>)> {
    check_stack_name(name)?;
    let mut stack = diplo_api::compose::parse(source, None).map_err(|err| ServiceError::invalid("compose", err.to_string()))?;
    if let Some(repository) = repository {
        check_stack_repository(repository)?;
        stack.repository = Some(StackRepository { builds: BTreeMap::new(), ..repository.clone() });
    }
    let mut specs = BTreeMap::new();
    for (service_name, service) in &stack.services {
        let mut spec = service_deployment_spec(name, service_name, service);
        if service.build.is_some() {
            if repository.is_none() {
                let error = diplo_api::compose::ComposeError {
                    line: diplo_api::compose::locate(source, &["services", service_name, "build"]),
                    key: format!("services.{service_name}.build"),
                    message: "a service with build needs the stack's git repository: repo_url (diplo stack deploy --git URL)".to_owned(),
                };
                return Err(ServiceError::invalid("compose", error.to_string()));
            }
            // Checked with the name of the image to build; the rollout runs the built one.
            spec.container.image = build_image_tag(name, service, "build");
        }
        if spec.name.len() > MAX_DEPLOYMENT_NAME {
            return Err(ServiceError::invalid(
                "compose",
                format!(
                    "services.{service_name}: the deployment name {:?} is longer than {MAX_DEPLOYMENT_NAME} characters: shorten the stack or the service name",
                    spec.name
                ),
            ));
        }
        let mut spec = check_deploy_spec(caller, spec).map_err(|err| in_service(service_name, err))?;
        spec.container.labels.insert(LABEL_STACK.to_owned(), name.to_owned());
        specs.insert(service_name.clone(), spec);
    }
    Ok((stack, specs))
}

/// The compose file's path in a stack's repository when the deploy names none.
pub const DEFAULT_COMPOSE_FILE: &str = "docker-compose.yml";

/// A stack deploy's repository from its request fields (empty: not given): `None`
/// without a URL, which `branch` and `compose_file` then cannot go without.
pub fn requested_repository(repo_url: &str, branch: &str, compose_file: &str) -> ServiceResult<Option<StackRepository>> {
    let given = |text: &str| Some(text.trim()).filter(|t| !t.is_empty()).map(str::to_owned);
    match given(repo_url) {
        Some(repo_url) => Ok(Some(StackRepository {
            repo_url,
            branch: given(branch),
            compose_file: given(compose_file).unwrap_or_else(|| DEFAULT_COMPOSE_FILE.to_owned()),
            builds: BTreeMap::new(),
        })),
        None if given(branch).is_some() || given(compose_file).is_some() => {
            Err(ServiceError::invalid("repo_url", "branch and compose_file need the repository's URL"))
        }
        None => Ok(None),
    }
}

/// Checks where a stack's services are built from; the error names the field.
pub fn check_stack_repository(repository: &StackRepository) -> ServiceResult<()> {
    diplo_api::build::validate_repo_url(&repository.repo_url).map_err(|message| ServiceError::invalid("repo_url", message))?;
    if let Some(branch) = &repository.branch {
        diplo_api::build::validate_branch(branch).map_err(|message| ServiceError::invalid("branch", message))?;
    }
    if repository.compose_file.is_empty() {
        return Err(ServiceError::invalid("compose_file", "the compose file's path in the repository is required"));
    }
    diplo_api::build::validate_repo_path("compose_file", &repository.compose_file)
        .map_err(|message| ServiceError::invalid("compose_file", message))
}

/// The image name a built service's build is given: the service's `image` when the file
/// names one, else `<stack>:<tag>`. The compose build adds the service to the repository
/// part: `<stack>-<service>:<tag>` (or `<repository>-<service>:<tag>`), in the cluster
/// registry when there is one.
pub fn build_image_tag(stack: &str, service: &ServiceSpec, tag: &str) -> String {
    if service.container.image.is_empty() { format!("{stack}:{tag}") } else { service.container.image.clone() }
}

/// Where a built service's image stands, as the rollout reads its latest build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuiltImage {
    /// The build runs (or waits for a builder).
    Building,
    /// The build failed or was cancelled: the service waits for a new deploy.
    Failed(String),
    /// Built: the image to run.
    Ready(super::source::BuiltSource),
}

/// What the latest build of `service` says about its image (`None` for a build that was
/// never recorded: failed).
pub fn built_image(build: Option<&BuildRecord>, service: &str) -> BuiltImage {
    let Some(build) = build else { return BuiltImage::Failed("its build was never recorded".to_owned()) };
    match build.status {
        BuildStatus::Succeeded => {
            let mut built = super::source::BuiltSource::from(build);
            if let Some(image) = build.service_images.get(service) {
                built.image.clone_from(image);
            }
            BuiltImage::Ready(built)
        }
        status if status.is_final() => BuiltImage::Failed(format!("build {} {status}: {}", build.id, build.message)),
        _ => BuiltImage::Building,
    }
}

/// An error about one service's deployment, saying which service.
fn in_service(service: &str, err: ServiceError) -> ServiceError {
    match err {
        ServiceError::InvalidArgument { field, message } => {
            ServiceError::invalid("compose", format!("services.{service}: {field}: {message}"))
        }
        ServiceError::PermissionDenied(message) => ServiceError::PermissionDenied(format!("services.{service}: {message}")),
        ServiceError::NotFound(message) => ServiceError::NotFound(format!("services.{service}: {message}")),
        ServiceError::FailedPrecondition(message) => ServiceError::FailedPrecondition(format!("services.{service}: {message}")),
        other => other,
    }
}

/// One service of a stack as shown: its deployment once created.
#[derive(Debug, Clone)]
pub struct StackServiceView {
    /// Service name.
    pub name: String,
    /// Its deployment's name.
    pub deployment_name: String,
    /// What it waits for.
    pub depends_on: BTreeMap<String, DependsCondition>,
    /// Its deployment; `None` while it waits for its dependencies.
    pub deployment: Option<DeploymentRecord>,
    /// Running and healthy replicas.
    pub progress: ServiceProgress,
    /// The latest build of its image, for a service with `build:`.
    pub build: Option<BuildRecord>,
}

impl StackServiceView {
    /// Its deployment's status; before the deployment exists, `building` or `failed` after
    /// its image's build, else `waiting` (for its dependencies).
    pub fn status(&self) -> String {
        if let Some(deployment) = &self.deployment {
            return deployment.status.as_str().to_owned();
        }
        match self.build.as_ref().map(|b| b.status) {
            Some(BuildStatus::Succeeded) | None => "waiting".to_owned(),
            Some(status) if status.is_final() => "failed".to_owned(),
            Some(_) => "building".to_owned(),
        }
    }

    /// The image it runs: its deployment's, else the file's.
    pub fn image(&self, spec: Option<&ServiceSpec>) -> String {
        match &self.deployment {
            Some(deployment) => deployment.spec.container.image.clone(),
            None => spec.map(|s| s.container.image.clone()).unwrap_or_default(),
        }
    }

    /// Its deployment's revision, 0 while it waits.
    pub fn revision(&self) -> u32 {
        self.deployment.as_ref().map_or(0, |d| d.revision)
    }
}

/// A stack with its services.
#[derive(Debug, Clone)]
pub struct StackView {
    /// The stack.
    pub stack: StackRecord,
    /// Its services, by name.
    pub services: Vec<StackServiceView>,
}

impl ControlPlane {
    /// Deploys a compose document as the stack `name`, or updates the stack of that name:
    /// services whose spec changed get a new revision, services no longer in the file are
    /// deleted. Nothing is written when any service is refused. Returns whether the stack
    /// is new, and the stack.
    ///
    /// Services with `build:` are built from `repository` (one build each, started with
    /// every deploy so that a new commit is picked up); each runs once its build succeeded,
    /// and a later build with a different image gives it a new revision.
    pub async fn deploy_stack(
        self: &std::sync::Arc<Self>,
        caller: &Caller,
        name: &str,
        source: &str,
        repository: Option<StackRepository>,
    ) -> ServiceResult<(bool, StackView)> {
        caller.require_operator(Role::Deployer)?;
        let (mut stack, mut specs) = check_stack(caller, name, source, repository.as_ref())?;
        let existing = self.store.get_stack(name).await?;
        let addresses = self.stack_addresses(name, &stack);
        // Every check that reads state, before the first write.
        let mut changed = Vec::new();
        for (service_name, spec) in &mut specs {
            let current = self.store.get_deployment(&spec.name).await?;
            // What the rollout set (peers' addresses, the shared node) is no change of the file.
            let hosts = current.as_ref().map(|d| d.spec.container.extra_hosts.as_slice()).unwrap_or_default();
            spec.container.extra_hosts = service_hosts(&stack, service_name, &addresses, hosts);
            let built = stack.services.get(service_name).is_some_and(|s| s.build.is_some());
            if let Some(current) = &current {
                spec.constraints.node.clone_from(&current.spec.constraints.node);
                if built {
                    // The rollout runs the built image, on its builder's platform (and node,
                    // if it stayed there); a compose file names no platform.
                    spec.container.image.clone_from(&current.spec.container.image);
                    spec.runtime = current.spec.runtime;
                    spec.constraints.os.clone_from(&current.spec.constraints.os);
                    spec.constraints.arch.clone_from(&current.spec.constraints.arch);
                }
            }
            let spec = &*spec;
            match current {
                Some(deployment) if deployment.spec.container.labels.get(LABEL_STACK).map(String::as_str) != Some(name) => {
                    return Err(ServiceError::AlreadyExists(format!(
                        "services.{service_name}: deployment {:?} already exists outside stack {name:?}",
                        spec.name
                    )));
                }
                Some(deployment) if deployment.status == DeploymentStatus::Deleting => {
                    return Err(ServiceError::FailedPrecondition(format!(
                        "services.{service_name}: deployment {:?} is being deleted: deploy again once it is gone",
                        spec.name
                    )));
                }
                Some(deployment) => {
                    if deployment.spec != *spec {
                        if !built && deployment.spec.container.image != spec.container.image {
                            self.check_image(&spec.container.image).await.map_err(|err| in_service(service_name, err))?;
                        }
                        changed.push((deployment, spec.clone()));
                    }
                }
                // Its image does not exist yet: its build checks what it can.
                None if built => {}
                None => {
                    let platforms = self.check_image(&spec.container.image).await.map_err(|err| in_service(service_name, err))?;
                    if spec.replicas > 0 {
                        let fit = self.placement_preview(spec, platforms.platforms()).await?;
                        if fit.placed == 0 {
                            return Err(ServiceError::FailedPrecondition(format!(
                                "services.{service_name}: no node can run {}: {}",
                                spec.name,
                                fit.reasons.join("; ")
                            )));
                        }
                    }
                }
            }
        }
        // Builds start before anything is written: one that cannot start refuses the deploy.
        // A stack placed already has its images built for its node's platform, there if it
        // can build.
        let anchor = if stack.repository.is_some() { self.stack_anchor_node(name, &stack).await? } else { None };
        if let Some(repository) = stack.repository.as_mut() {
            for (service_name, service) in stack.services.iter().filter(|(_, s)| s.build.is_some()) {
                let build_id = uuid::Uuid::new_v4().to_string();
                let request = StartBuild {
                    id: Some(build_id.clone()),
                    git_repo: repository.repo_url.clone(),
                    git_branch: repository.branch.clone(),
                    buildpack: Buildpack::Compose { compose_file: repository.compose_file.clone(), service: service_name.clone() },
                    image_tag: Some(build_image_tag(name, service, &build_id)),
                    language: None,
                    platform: anchor.as_ref().map(|node| format!("{}/{}", node.fingerprint.os, node.fingerprint.arch)),
                    prefer_node: anchor.as_ref().map(|node| node.id.clone()),
                    deployment_id: None,
                };
                self.start_build(caller, request).await.map_err(|err| in_service(service_name, err))?;
                repository.builds.insert(service_name.clone(), build_id);
            }
        }
        let now = Utc::now();
        let record = StackRecord {
            name: name.to_owned(),
            source: source.to_owned(),
            spec: stack.clone(),
            created_at: existing.as_ref().map_or(now, |s| s.created_at),
            updated_at: now,
        };
        let created = self.store.save_stack(&record).await?;
        for (mut deployment, spec) in changed {
            deployment.revision += 1;
            deployment.spec = spec;
            deployment.status = DeploymentStatus::Deploying;
            deployment.updated_at = now;
            self.store.save_deployment(&deployment).await?;
            self.rollout_started(&deployment.id);
            let message = format!("{} updated to revision {} by stack {name}", deployment.spec.name, deployment.revision);
            self.emit("deployment.updated", &caller.actor(), &deployment.id, message).await;
        }
        if let Some(previous) = &existing {
            for gone in previous.spec.services.keys().filter(|s| !stack.services.contains_key(*s)) {
                self.delete_stack_service(caller, name, gone).await?;
            }
        }
        let verb = if created { "created" } else { "updated" };
        tracing::info!(stack = %name, services = stack.services.len(), verb, "stack deployed");
        self.emit(&format!("stack.{verb}"), &caller.actor(), name, format!("stack {name} {verb} with {} services", stack.services.len()))
            .await;
        self.advance_stacks().await?;
        self.nudge_reconciler();
        Ok((created, self.get_stack(caller, name).await?))
    }

    /// Marks one service's deployment of a stack for deletion, if it exists.
    async fn delete_stack_service(&self, caller: &Caller, stack: &str, service: &str) -> ServiceResult<()> {
        let deployment_name = stack_deployment_name(stack, service);
        if let Some(mut deployment) = self.store.get_deployment(&deployment_name).await?
            && deployment.status != DeploymentStatus::Deleting
        {
            deployment.status = DeploymentStatus::Deleting;
            deployment.updated_at = Utc::now();
            self.store.save_deployment(&deployment).await?;
            self.emit(
                "deployment.deleting",
                &caller.actor(),
                &deployment.id,
                format!("{deployment_name} is being deleted with stack {stack}"),
            )
            .await;
        }
        Ok(())
    }

    /// A stack with its services' deployments and progress.
    pub async fn get_stack(&self, caller: &Caller, name: &str) -> ServiceResult<StackView> {
        caller.require_operator(Role::Viewer)?;
        if name.trim().is_empty() {
            return Err(ServiceError::invalid("name", "a stack name is required"));
        }
        let stack = self.store.get_stack(name).await?.ok_or_else(|| ServiceError::NotFound(format!("stack {name:?} not found")))?;
        let view = self.stack_view(stack).await?;
        Ok(hide_env(caller, view))
    }

    /// Every stack with its services.
    pub async fn list_stacks(&self, caller: &Caller) -> ServiceResult<Vec<StackView>> {
        caller.require_operator(Role::Viewer)?;
        let mut views = Vec::new();
        for stack in self.store.list_stacks().await? {
            views.push(hide_env(caller, self.stack_view(stack).await?));
        }
        Ok(views)
    }

    /// Deletes a stack: its services' deployments are marked for deletion (the reconciler
    /// removes their containers), and the stack's record is removed.
    pub async fn delete_stack(&self, caller: &Caller, name: &str) -> ServiceResult<()> {
        caller.require_operator(Role::Deployer)?;
        let stack = self.store.get_stack(name).await?.ok_or_else(|| ServiceError::NotFound(format!("stack {name:?} not found")))?;
        for service in stack.spec.services.keys() {
            self.delete_stack_service(caller, name, service).await?;
        }
        self.store.delete_stack(name).await?;
        self.emit("stack.deleted", &caller.actor(), name, format!("stack {name} deleted")).await;
        self.nudge_reconciler();
        Ok(())
    }

    /// The stack rollout: creates the deployment of every service of every stack whose
    /// dependencies are up ([`startable`]). Runs on every reconcile pass.
    pub async fn advance_stacks(&self) -> ServiceResult<()> {
        for stack in self.store.list_stacks().await? {
            let built = self.stack_builds(&stack.spec).await?;
            self.follow_stack_builds(&stack.name, &built).await?;
            let progress = self.stack_progress(&stack.name, &stack.spec).await?;
            let addresses = self.stack_addresses(&stack.name, &stack.spec);
            self.refresh_stack_hosts(&stack.name, &stack.spec, &addresses).await?;
            let placed = self.stack_placements(&stack.name, &stack.spec).await?;
            let anchor = stack_anchor(&placed);
            let mut startable = startable(&stack.spec, &progress);
            // A built service starts once its image is built.
            startable.retain(|service| {
                stack.spec.services.get(service).is_some_and(|s| s.build.is_none())
                    || matches!(built.get(service), Some(BuiltImage::Ready(_)))
            });
            if anchor.is_none() {
                // The first service placed decides the stack's node: the others wait for it.
                if progress.values().any(|p| p.created) {
                    startable.clear();
                } else {
                    startable.truncate(1);
                }
            }
            for service_name in startable {
                let Some(service) = stack.spec.services.get(&service_name) else { continue };
                let mut spec = service_deployment_spec(&stack.name, &service_name, service);
                spec.container.labels.insert(LABEL_STACK.to_owned(), stack.name.clone());
                spec.container.extra_hosts = service_hosts(&stack.spec, &service_name, &addresses, &[]);
                spec.constraints.node.clone_from(&anchor);
                if let Some(BuiltImage::Ready(image)) = built.get(&service_name) {
                    spec = super::source::built_spec(&spec, image);
                    self.hold_to_builder_platform(&mut spec, &image.build_id).await?;
                }
                let now = Utc::now();
                let record = DeploymentRecord {
                    id: uuid::Uuid::new_v4().to_string(),
                    revision: 1,
                    spec,
                    status: DeploymentStatus::Deploying,
                    message: String::new(),
                    idempotency_key: None,
                    created_at: now,
                    updated_at: now,
                };
                match self.store.create_deployment(&record).await {
                    Ok(()) => {}
                    // Created meanwhile (a concurrent pass): nothing to do.
                    Err(crate::store::StoreError::AlreadyExists { .. }) => continue,
                    Err(err) => return Err(err.into()),
                }
                tracing::info!(stack = %stack.name, service = %service_name, deployment = %record.spec.name, "stack service started");
                self.rollout_started(&record.id);
                let message = format!(
                    "deployment {} created by stack {} with {} replicas of {}",
                    record.spec.name, stack.name, record.spec.replicas, record.spec.container.image
                );
                self.emit("deployment.created", "system", &record.id, message).await;
                self.nudge_reconciler();
            }
        }
        Ok(())
    }

    /// Where the image of each built service of a stack stands (its latest build).
    async fn stack_builds(&self, spec: &StackSpec) -> ServiceResult<BTreeMap<String, BuiltImage>> {
        let mut built = BTreeMap::new();
        for (service, build_id) in spec.repository.iter().flat_map(|r| r.builds.iter()) {
            built.insert(service.clone(), built_image(self.store.get_build(build_id).await?.as_ref(), service));
        }
        Ok(built)
    }

    /// The node a stack's services share, once one is placed.
    async fn stack_anchor_node(&self, name: &str, stack: &StackSpec) -> ServiceResult<Option<crate::model::NodeRecord>> {
        match stack_anchor(&self.stack_placements(name, stack).await?) {
            Some(node) => Ok(self.store.get_node(&node).await?),
            None => Ok(None),
        }
    }

    /// Holds a built service to the platform of the node that built its image (an image
    /// built on an amd64 server does not run on a Raspberry Pi), unless it names one.
    async fn hold_to_builder_platform(&self, spec: &mut DeploymentSpec, build_id: &str) -> ServiceResult<()> {
        if spec.constraints.arch.is_some() {
            return Ok(());
        }
        let Some(node_id) = self.store.get_build(build_id).await?.and_then(|build| build.node_id) else {
            tracing::warn!(deployment = %spec.name, build = %build_id, "the build of a built service names no node: no platform held");
            return Ok(());
        };
        let Some(node) = self.store.get_node(&node_id).await? else {
            tracing::warn!(deployment = %spec.name, build = %build_id, node = %node_id, "the node that built a service is gone: no platform held");
            return Ok(());
        };
        tracing::info!(deployment = %spec.name, build = %build_id, os = %node.fingerprint.os, arch = %node.fingerprint.arch, "built service held to its builder's platform");
        spec.constraints.os.get_or_insert(node.fingerprint.os);
        spec.constraints.arch = Some(node.fingerprint.arch);
        Ok(())
    }

    /// Gives a new revision to every created service of a stack whose latest build made an
    /// image other than the one it runs.
    async fn follow_stack_builds(&self, stack: &str, built: &BTreeMap<String, BuiltImage>) -> ServiceResult<()> {
        for (service_name, image) in built {
            let BuiltImage::Ready(image) = image else { continue };
            let Some(mut deployment) = self.store.get_deployment(&stack_deployment_name(stack, service_name)).await? else { continue };
            if deployment.status == DeploymentStatus::Deleting || deployment.spec.container.image == image.image {
                continue;
            }
            deployment.spec = super::source::built_spec(&deployment.spec, image);
            self.hold_to_builder_platform(&mut deployment.spec, &image.build_id).await?;
            deployment.revision += 1;
            deployment.status = DeploymentStatus::Deploying;
            deployment.updated_at = Utc::now();
            self.store.save_deployment(&deployment).await?;
            self.rollout_started(&deployment.id);
            tracing::info!(stack = %stack, service = %service_name, revision = deployment.revision, image = %image.image, "stack service runs its new build");
            let message = format!(
                "{} updated to revision {} with {} (build {})",
                deployment.spec.name, deployment.revision, image.image, image.build_id
            );
            self.emit("deployment.updated", "build", &deployment.id, message).await;
            self.nudge_reconciler();
        }
        Ok(())
    }

    /// Gives a new revision to every service of a stack whose `extra_hosts` entries
    /// ([`service_hosts`]) no longer match its dependencies' observed addresses.
    async fn refresh_stack_hosts(
        &self,
        stack: &str,
        spec: &StackSpec,
        addresses: &BTreeMap<String, BTreeSet<String>>,
    ) -> ServiceResult<()> {
        for service_name in spec.services.keys() {
            let Some(mut deployment) = self.store.get_deployment(&stack_deployment_name(stack, service_name)).await? else { continue };
            if deployment.status == DeploymentStatus::Deleting {
                continue;
            }
            let hosts = service_hosts(spec, service_name, addresses, &deployment.spec.container.extra_hosts);
            if hosts == deployment.spec.container.extra_hosts {
                continue;
            }
            deployment.revision += 1;
            deployment.spec.container.extra_hosts = hosts;
            deployment.status = DeploymentStatus::Deploying;
            deployment.updated_at = Utc::now();
            self.store.save_deployment(&deployment).await?;
            self.rollout_started(&deployment.id);
            tracing::info!(stack = %stack, service = %service_name, revision = deployment.revision, "stack service follows its dependencies' new addresses");
            let message =
                format!("{} updated to revision {}: its dependencies' addresses changed", deployment.spec.name, deployment.revision);
            self.emit("deployment.updated", "system", &deployment.id, message).await;
            self.nudge_reconciler();
        }
        Ok(())
    }

    /// The addresses of each service's running containers on runtimes without network
    /// objects (where names resolve through `extra_hosts`), as the nodes last told.
    fn stack_addresses(&self, stack: &str, spec: &StackSpec) -> BTreeMap<String, BTreeSet<String>> {
        let observed = self.nodes.containers();
        let mut addresses = BTreeMap::new();
        for service_name in spec.services.keys() {
            let deployment_name = stack_deployment_name(stack, service_name);
            let ips: BTreeSet<String> = observed
                .iter()
                .map(|(_, c)| c)
                .filter(|c| !c.runtime.supports(diplo_api::runtime::Capability::Networks))
                .filter(|c| c.info.labels.get(LABEL_DEPLOYMENT) == Some(&deployment_name) && c.info.status == ContainerStatus::Running)
                .filter_map(|c| c.info.ip_address.clone().filter(|ip| ip.parse::<std::net::IpAddr>().is_ok()))
                .collect();
            addresses.insert(service_name.clone(), ips);
        }
        addresses
    }

    /// The nodes each created service's instances are placed on.
    async fn stack_placements(&self, stack: &str, spec: &StackSpec) -> ServiceResult<BTreeMap<String, Vec<String>>> {
        let mut placed = BTreeMap::new();
        for service_name in spec.services.keys() {
            let Some(deployment) = self.store.get_deployment(&stack_deployment_name(stack, service_name)).await? else { continue };
            if deployment.status == DeploymentStatus::Deleting {
                continue;
            }
            let nodes: Vec<String> = self.store.list_instances(Some(&deployment.id)).await?.into_iter().filter_map(|i| i.node_id).collect();
            placed.insert(service_name.clone(), nodes);
        }
        Ok(placed)
    }

    /// Each service's progress: whether its deployment exists, and its containers that
    /// run and report healthy as the nodes last told.
    async fn stack_progress(&self, stack: &str, spec: &StackSpec) -> ServiceResult<BTreeMap<String, ServiceProgress>> {
        let observed = self.nodes.containers();
        let mut progress = BTreeMap::new();
        for (service_name, service) in &spec.services {
            let deployment_name = stack_deployment_name(stack, service_name);
            let created = self.store.get_deployment(&deployment_name).await?.is_some_and(|d| d.status != DeploymentStatus::Deleting);
            let mine = observed
                .iter()
                .map(|(_, c)| &c.info)
                .filter(|info| info.labels.get(LABEL_DEPLOYMENT) == Some(&deployment_name) && info.status == ContainerStatus::Running);
            let (running, healthy) = mine
                .fold((0u32, 0u32), |(running, healthy), info| (running + 1, healthy + u32::from(info.health == Some(Health::Healthy))));
            progress.insert(service_name.clone(), ServiceProgress { created, replicas: service.replicas, running, healthy });
        }
        Ok(progress)
    }

    async fn stack_view(&self, stack: StackRecord) -> ServiceResult<StackView> {
        let progress = self.stack_progress(&stack.name, &stack.spec).await?;
        let mut services = Vec::new();
        for (service_name, service) in &stack.spec.services {
            let deployment_name = stack_deployment_name(&stack.name, service_name);
            let deployment = self.store.get_deployment(&deployment_name).await?;
            let build = match stack.spec.repository.as_ref().and_then(|r| r.builds.get(service_name)) {
                Some(id) => self.store.get_build(id).await?,
                None => None,
            };
            services.push(StackServiceView {
                name: service_name.clone(),
                deployment_name,
                depends_on: service.depends_on.clone(),
                deployment,
                progress: progress.get(service_name).copied().unwrap_or_default(),
                build,
            });
        }
        Ok(StackView { stack, services })
    }
}

/// A stack as `caller` may read it: environment values (often credentials) only for
/// deployers and admins, in the spec and in the source alike (viewers get no source).
fn hide_env(caller: &Caller, mut view: StackView) -> StackView {
    if !caller.has_role(Role::Deployer) {
        view.stack.source = String::new();
        for service in view.stack.spec.services.values_mut() {
            for value in service.container.env.values_mut() {
                *value = super::deployments::HIDDEN_ENV_VALUE.to_owned();
            }
        }
        for service in &mut view.services {
            if let Some(deployment) = &mut service.deployment {
                for value in deployment.spec.container.env.values_mut() {
                    *value = super::deployments::HIDDEN_ENV_VALUE.to_owned();
                }
            }
        }
    }
    view
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(source: &str) -> StackSpec {
        diplo_api::compose::parse(source, None).expect("parses")
    }

    #[test]
    fn services_start_once_their_dependencies_are_up() {
        let spec = stack(
            "services:\n  db:\n    image: b\n    deploy: {replicas: 2}\n    healthcheck: {test: [CMD, x]}\n  cache:\n    image: b\n  api:\n    image: b\n    depends_on:\n      db: {condition: service_healthy}\n      cache: {condition: service_started}\n  web:\n    image: b\n    depends_on: [api]\n",
        );
        let p = |created, replicas, running, healthy| ServiceProgress { created, replicas, running, healthy };
        let with = |entries: &[(&str, ServiceProgress)]| entries.iter().map(|(n, p)| ((*n).to_owned(), *p)).collect::<BTreeMap<_, _>>();
        let cases: Vec<(BTreeMap<String, ServiceProgress>, Vec<&str>, &str)> = vec![
            (with(&[]), vec!["cache", "db"], "no dependencies: at once"),
            (with(&[("db", p(true, 2, 0, 0)), ("cache", p(true, 1, 0, 0))]), vec![], "nothing up yet"),
            (with(&[("db", p(true, 2, 2, 1)), ("cache", p(true, 1, 1, 0))]), vec![], "one of two replicas healthy is not enough"),
            (with(&[("db", p(true, 2, 2, 2)), ("cache", p(true, 1, 0, 0))]), vec![], "cache not started yet"),
            (with(&[("db", p(true, 2, 2, 2)), ("cache", p(true, 1, 1, 0))]), vec!["api"], "healthy and started"),
            (with(&[("db", p(true, 2, 2, 2)), ("cache", p(true, 1, 1, 0)), ("api", p(true, 1, 0, 0))]), vec![], "api not running"),
            (with(&[("db", p(true, 2, 2, 2)), ("cache", p(true, 1, 1, 0)), ("api", p(true, 1, 1, 0))]), vec!["web"], "api running"),
            (with(&[("db", p(false, 2, 2, 2)), ("cache", p(true, 1, 1, 1))]), vec!["db"], "a dependency not created is not up"),
        ];
        for (progress, want, why) in cases {
            assert_eq!(startable(&spec, &progress), want, "{why}: {progress:?}");
        }
    }

    #[test]
    fn a_service_names_its_dependencies_at_their_observed_addresses() {
        let spec = stack(
            "services:\n  db:\n    image: b\n    container_name: shop-db\n  api:\n    image: b\n    depends_on: [db]\n  web:\n    image: b\n    depends_on: [api]\n  lone:\n    image: b\n",
        );
        assert_eq!(dependencies_of(&spec, "web"), BTreeSet::from(["api".to_owned(), "db".to_owned()]), "through api");
        assert!(dependencies_of(&spec, "db").is_empty());
        let at = |entries: &[(&str, &[&str])]| {
            entries
                .iter()
                .map(|(service, ips)| ((*service).to_owned(), ips.iter().map(|ip| (*ip).to_owned()).collect::<BTreeSet<_>>()))
                .collect::<BTreeMap<_, _>>()
        };
        let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        type Case = (&'static str, BTreeMap<String, BTreeSet<String>>, Vec<String>, Vec<String>, &'static str);
        let cases: Vec<Case> = vec![
            ("db", at(&[("api", &["10.0.0.3"])]), vec![], vec![], "no dependencies, no entries (never its dependents)"),
            ("api", at(&[]), vec![], vec![], "nothing observed yet"),
            ("api", at(&[("db", &["10.0.0.2"])]), vec![], strings(&["db:10.0.0.2", "shop-db:10.0.0.2"]), "by service name and alias"),
            (
                "web",
                at(&[("db", &["10.0.0.2"]), ("api", &["10.0.0.4", "10.0.0.3"]), ("lone", &["10.0.0.9"])]),
                vec![],
                strings(&["api:10.0.0.3", "api:10.0.0.4", "db:10.0.0.2", "shop-db:10.0.0.2"]),
                "transitive, every replica, not the services it does not depend on",
            ),
            (
                "api",
                at(&[("db", &[])]),
                strings(&["db:10.0.0.2", "shop-db:10.0.0.2", "other:10.0.0.1"]),
                strings(&["db:10.0.0.2", "shop-db:10.0.0.2"]),
                "a dependency between two reports keeps its known address",
            ),
            (
                "api",
                at(&[("db", &["10.0.0.7"])]),
                strings(&["db:10.0.0.2"]),
                strings(&["db:10.0.0.7", "shop-db:10.0.0.7"]),
                "a new address",
            ),
        ];
        for (service, addresses, current, want, why) in cases {
            assert_eq!(service_hosts(&spec, service, &addresses, &current), want, "{why}");
        }
    }

    #[test]
    fn a_stack_is_anchored_to_its_first_placed_service() {
        let placed = |entries: &[(&str, &[&str])]| {
            entries
                .iter()
                .map(|(service, nodes)| ((*service).to_owned(), nodes.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()))
                .collect::<BTreeMap<_, _>>()
        };
        assert_eq!(stack_anchor(&placed(&[])), None);
        assert_eq!(stack_anchor(&placed(&[("api", &[])])), None, "created, not placed yet");
        assert_eq!(stack_anchor(&placed(&[("api", &[]), ("db", &["n2", "n1"])])).as_deref(), Some("n2"));
        assert_eq!(stack_anchor(&placed(&[("api", &["n1"]), ("db", &["n2"])])).as_deref(), Some("n1"));
    }

    #[test]
    fn stack_names_and_deployments_follow_the_deployment_rules() {
        assert!(check_stack_name("shop").is_ok());
        for bad in ["", "-x", "a b", &"s".repeat(53)] {
            assert!(matches!(check_stack_name(bad), Err(ServiceError::InvalidArgument { field: "name", .. })), "{bad}");
        }
        let spec = stack("services:\n  web:\n    image: b\n    volumes: [data:/d, /srv:/s]\nvolumes:\n  data:\n");
        let deployment = service_deployment_spec("shop", "web", &spec.services["web"]);
        assert_eq!(deployment.name, "shop-web");
        assert_eq!(deployment.container.mounts[0].source, "shop_data", "named volumes are the stack's own");
        assert_eq!(deployment.container.mounts[1].source, "/srv", "host paths stay");
        assert_eq!(deployment.container.network.as_deref(), Some("diplo-shop"));
        assert_eq!(deployment.container.network_aliases, ["web"], "reachable by its service name");
    }

    #[test]
    fn a_stack_is_checked_whole_before_anything() {
        let deployer = Caller::Operator { name: "d".into(), role: Role::Deployer };
        let ok = check_stack(&deployer, "shop", "services:\n  web:\n    image: b\n", None).expect("valid");
        assert_eq!(ok.1["web"].container.labels.get(LABEL_STACK).map(String::as_str), Some("shop"));
        let err = check_stack(&deployer, "shop", "services:\n  web:\n    image: b\n    nope: 1\n", None).expect_err("unknown key");
        assert!(
            matches!(&err, ServiceError::InvalidArgument { field: "compose", message } if message.starts_with("line 4: services.web.nope")),
            "{err:?}"
        );
        let bind =
            check_stack(&deployer, "shop", "services:\n  web:\n    image: b\n    volumes: [/etc:/x]\n", None).expect_err("host path");
        assert!(matches!(&bind, ServiceError::PermissionDenied(m) if m.starts_with("services.web: ")), "{bind:?}");
        let long =
            check_stack(&deployer, &"s".repeat(40), &format!("services:\n  {}:\n    image: b\n", "w".repeat(20)), None).expect_err("long");
        assert!(long.to_string().contains("longer than 54"), "{long}");
    }

    #[test]
    fn built_services_need_a_repository_and_are_checked_with_the_image_they_will_have() {
        let deployer = Caller::Operator { name: "d".into(), role: Role::Deployer };
        let file = "services:\n  db:\n    image: b\n  api:\n    build: ./api\n";
        let err = check_stack(&deployer, "shop", file, None).expect_err("no repository");
        assert!(
            matches!(&err, ServiceError::InvalidArgument { field: "compose", message } if message.starts_with("line 5: services.api.build: ") && message.contains("repo_url")),
            "{err:?}"
        );
        let repository = requested_repository("file:///srv/git/shop", "", "").expect("valid").expect("given");
        assert_eq!((repository.compose_file.as_str(), repository.branch.as_ref()), (DEFAULT_COMPOSE_FILE, None));
        let (stack, specs) = check_stack(&deployer, "shop", file, Some(&repository)).expect("valid");
        assert_eq!(stack.repository.as_ref().map(|r| r.repo_url.as_str()), Some("file:///srv/git/shop"));
        assert_eq!(specs["api"].container.image, "shop:build", "checked as the image its build is named");
        assert_eq!(build_image_tag("shop", &stack.services["api"], "b1"), "shop:b1", "the compose build adds -api");
        let named = diplo_api::compose::parse("services:\n  api:\n    image: reg/api:2\n    build: .\n", None).expect("parses");
        assert_eq!(build_image_tag("shop", &named.services["api"], "b1"), "reg/api:2", "the file names it");

        for (url, branch, path, field) in [
            ("", "main", "", "repo_url"),
            ("", "", "c.yml", "repo_url"),
            ("ftp://x/y", "", "", "repo_url"),
            ("file:///srv/git/shop", "-x", "", "branch"),
            ("file:///srv/git/shop", "", "../c.yml", "compose_file"),
        ] {
            let checked = requested_repository(url, branch, path)
                .and_then(|repository| repository.map_or(Ok(()), |repository| check_stack_repository(&repository)));
            assert!(
                matches!(&checked, Err(ServiceError::InvalidArgument { field: f, .. }) if *f == field),
                "{url} {branch} {path}: {checked:?}"
            );
        }
        assert_eq!(requested_repository(" ", "", "").expect("nothing given"), None);
    }

    #[test]
    fn a_built_services_image_follows_its_latest_build() {
        let record = |status: BuildStatus| BuildRecord {
            id: "b1".into(),
            status,
            git_repo: "file:///r".into(),
            git_branch: None,
            commit: "c0ffee".into(),
            language: String::new(),
            detected_from: String::new(),
            buildpack_type: "compose".into(),
            builder: Some(diplo_api::build::Builder::Docker),
            node_id: Some("n1".into()),
            platform: None,
            image: "reg/shop:b1".into(),
            digest: String::new(),
            pushed: true,
            service_images: BTreeMap::from([("api".to_owned(), "reg/shop-api:b1@sha256:aa".to_owned())]),
            message: "boom".into(),
            deployment_id: None,
            requested_by: "d".into(),
            created_at: Utc::now(),
            started_at: None,
            finished_at: None,
        };
        assert_eq!(built_image(Some(&record(BuildStatus::Running)), "api"), BuiltImage::Building);
        assert_eq!(built_image(Some(&record(BuildStatus::Queued)), "api"), BuiltImage::Building);
        assert!(matches!(built_image(Some(&record(BuildStatus::Failed)), "api"), BuiltImage::Failed(m) if m.contains("boom")));
        assert!(matches!(built_image(None, "api"), BuiltImage::Failed(_)));
        match built_image(Some(&record(BuildStatus::Succeeded)), "api") {
            BuiltImage::Ready(built) => {
                assert_eq!(built.image, "reg/shop-api:b1@sha256:aa", "the service's own image");
                assert_eq!(built.local_to, None, "pushed: it runs anywhere");
            }
            other => panic!("{other:?}"),
        }
        let mut local = record(BuildStatus::Succeeded);
        local.pushed = false;
        let BuiltImage::Ready(built) = built_image(Some(&local), "api") else { panic!("ready") };
        assert_eq!(built.local_to, Some(("n1".to_owned(), diplo_api::runtime::Runtime::Docker)), "kept on its builder");

        // The view: building or failed until the deployment exists.
        let view = |build: Option<BuildRecord>| StackServiceView {
            name: "api".into(),
            deployment_name: "shop-api".into(),
            depends_on: BTreeMap::new(),
            deployment: None,
            progress: ServiceProgress::default(),
            build,
        };
        assert_eq!(view(Some(record(BuildStatus::Running))).status(), "building");
        assert_eq!(view(Some(record(BuildStatus::Failed))).status(), "failed");
        assert_eq!(view(Some(record(BuildStatus::Succeeded))).status(), "waiting", "built, waiting for its dependencies");
        assert_eq!(view(None).status(), "waiting");
    }
}
