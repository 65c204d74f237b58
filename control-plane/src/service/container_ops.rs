//! Operations on a running container beyond its lifecycle: pausing it, sampling its
//! resource use (once, or once a second), copying files in and out as tar archives. Each
//! is one command to the agent of the node that runs the container, whose driver acts
//! inside the container (see `diplo_api::archive` for the archive rules).
//!
//! A paused container keeps its place: the reconciler neither restarts nor replaces a
//! deployment's paused instance (it reads as neither running nor exited), so a pause
//! lasts until someone unpauses, stops or removes it.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use diplo_api::archive::{check_archive, check_archive_size, check_container_path};
use diplo_api::command::CommandOp;
use diplo_api::container::ContainerStats;
use diplo_api::runtime::Runtime;
use tokio::sync::mpsc;

use super::{ContainerView, ControlPlane};
use crate::auth::Caller;
use crate::error::{ServiceError, ServiceResult};
use crate::model::Role;

/// Time between two samples of a followed stats stream.
pub const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// One resource usage sample of a container, taken on its node.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSample {
    /// The container's full id.
    pub container_id: String,
    /// The node running it.
    pub node_id: String,
    /// The runtime running it.
    pub runtime: Runtime,
    /// When the control plane received the sample.
    pub read_at: DateTime<Utc>,
    /// The sample.
    pub stats: ContainerStats,
}

impl ControlPlane {
    /// Freezes every process of a container (deployer role); it then reads `paused`.
    pub async fn pause_container(&self, caller: &Caller, id: &str) -> ServiceResult<ContainerView> {
        self.lifecycle(caller, id, "paused", CommandOp::Pause).await
    }

    /// Thaws a paused container (deployer role).
    pub async fn unpause_container(&self, caller: &Caller, id: &str) -> ServiceResult<ContainerView> {
        self.lifecycle(caller, id, "unpaused", CommandOp::Unpause).await
    }

    /// One resource usage sample of a container (viewer role).
    pub async fn container_stats(&self, caller: &Caller, id: &str) -> ServiceResult<ContainerSample> {
        caller.require_operator(Role::Viewer)?;
        let found = self.find_container(id)?;
        self.sample(&found).await
    }

    /// Samples of a container, one every [`STATS_INTERVAL`] (viewer role): the control
    /// plane asks the node once a second. The stream ends when the receiver is dropped
    /// (within one interval), when the container is gone (without an error), or after
    /// the first other error (which it yields).
    pub async fn follow_container_stats(
        self: &Arc<Self>,
        caller: &Caller,
        id: &str,
    ) -> ServiceResult<mpsc::Receiver<ServiceResult<ContainerSample>>> {
        caller.require_operator(Role::Viewer)?;
        let found = self.find_container(id)?;
        let first = self.sample(&found).await?;
        let (tx, rx) = mpsc::channel(1);
        let control_plane = Arc::clone(self);
        tokio::spawn(async move {
            let mut next = Some(Ok(first));
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + STATS_INTERVAL, STATS_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while let Some(item) = next.take() {
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    return;
                }
                tokio::select! {
                    _ = ticks.tick() => {}
                    () = tx.closed() => return,
                }
                next = match control_plane.find_container(&found.info.id) {
                    Err(ServiceError::NotFound(_)) => None,
                    Err(err) => Some(Err(err)),
                    Ok(current) => match control_plane.sample(&current).await {
                        Err(ServiceError::NotFound(_)) => None,
                        other => Some(other),
                    },
                };
            }
        });
        Ok(rx)
    }

    async fn sample(&self, found: &ContainerView) -> ServiceResult<ContainerSample> {
        let output = self.send_command(&found.node_id, found.runtime, CommandOp::Stats(found.info.id.clone())).await?;
        let stats = output.stats.ok_or_else(|| ServiceError::Internal("the agent sent no resource sample".into()))?;
        Ok(ContainerSample {
            container_id: found.info.id.clone(),
            node_id: found.node_id.clone(),
            runtime: found.runtime,
            read_at: Utc::now(),
            stats,
        })
    }

    /// A tar archive of `path` inside a running container, at most
    /// [`MAX_ARCHIVE_BYTES`](diplo_api::archive::MAX_ARCHIVE_BYTES) (deployer role, as
    /// exec: reading a container's files is as much as running `cat` in it).
    pub async fn copy_from_container(&self, caller: &Caller, id: &str, path: &str) -> ServiceResult<Vec<u8>> {
        caller.require_operator(Role::Deployer)?;
        check_container_path(path).map_err(|message| ServiceError::invalid("path", message))?;
        let found = self.find_container(id)?;
        let op = CommandOp::CopyOut { id: found.info.id.clone(), path: path.to_owned() };
        let archive = self.send_command(&found.node_id, found.runtime, op).await?.archive.unwrap_or_default();
        check_archive_size(archive.len()).map_err(|message| ServiceError::invalid("path", message))?;
        self.emit("container.copy_out", &caller.actor(), &found.info.id, format!("{path} copied out of container {}", found.info.name))
            .await;
        Ok(archive)
    }

    /// Extracts a tar archive into directory `dir` of a running container (deployer
    /// role); returns how many members it held. The archive is checked first (size,
    /// tar, relative members without `..`).
    pub async fn copy_to_container(&self, caller: &Caller, id: &str, dir: &str, archive: Vec<u8>) -> ServiceResult<usize> {
        caller.require_operator(Role::Deployer)?;
        check_container_path(dir).map_err(|message| ServiceError::invalid("path", message))?;
        let members = check_archive(&archive).map_err(|message| ServiceError::invalid("archive", message))?;
        let found = self.find_container(id)?;
        let op = CommandOp::CopyIn { id: found.info.id.clone(), dir: dir.to_owned(), archive };
        self.send_command(&found.node_id, found.runtime, op).await?;
        let message = format!("{members} archive members copied into {dir} of container {}", found.info.name);
        self.emit("container.copy_in", &caller.actor(), &found.info.id, message).await;
        Ok(members)
    }
}
