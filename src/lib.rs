//! `diplo-api`: the contract shared by Diplo's control plane, agent and CLI.
//!
//! * [`pb`]: the gRPC types and services generated from `proto/diplo/v1`.
//! * [`token`]: join tokens (which pin the cluster CA) and API bearer tokens.
//! * [`pki`]: the cluster CA, node and operator certificates, peer identities.
//! * [`runtime`]: the container runtimes and the per-platform preference rules.
//! * [`fingerprint`]: what an agent reports about its host.
//! * [`build`]: builds from git, as the control plane asks them of a builder node.
//! * [`compose`]: compose files parsed and validated as stacks.
//! * `registry` (feature `registry`): image references, an OCI registry client, and
//!   the platforms an image is built for.
//! * `telemetry` (feature `telemetry`): the daemons' logs (human or JSON) and OTLP traces,
//!   and the W3C trace context they pass on.

pub mod archive;
pub mod build;
pub mod codec;
pub mod command;
pub mod compose;
pub mod container;
pub mod context;
pub mod files;
pub mod fingerprint;
pub mod health;
pub mod options;
pub mod pki;
#[cfg(feature = "registry")]
pub mod registry;
pub mod resources;
pub mod runtime;
#[cfg(feature = "telemetry")]
pub mod telemetry;
pub mod text;
pub mod token;
pub mod wire;

/// Generated protobuf and gRPC code for the `diplo.v1` package.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("diplo.v1");

    /// Encoded file descriptor set of `diplo.v1`, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("diplo_descriptor");

    /// The largest gRPC message any Diplo client or server sends or accepts, set
    /// explicitly on both sides: twice [`crate::container::MAX_OUTPUT_BYTES`], so that
    /// a command result carrying the most output an agent returns always fits.
    pub const MAX_MESSAGE_BYTES: usize = 2 * crate::container::MAX_OUTPUT_BYTES;
}

/// Installs rustls' ring crypto provider for the process. Every binary and test
/// harness calls this once before the first TLS use; later calls do nothing.
pub fn install_crypto_provider() {
    // An Err only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
