//! Container runtimes on this host. Only `runtime/*` links runtime client libraries
//! (bollard, containerd-client).

pub mod containerd;
pub mod docker;
pub mod lxc;
pub mod podman;
