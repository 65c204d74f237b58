//! Diplo's control plane: keeps desired state, tracks nodes, serves gRPC and REST.
//! See `ARCHITECTURE.md` at the repository root for the map.

pub mod auth;
pub mod config;
pub mod credentials;
pub mod error;
pub mod grpc;
pub mod http;
pub mod memo;
pub mod metrics;
pub mod model;
pub mod nodes;
pub mod pki;
pub mod planner;
pub mod ratelimit;
pub mod scheduler;
pub mod server;
pub mod service;
pub mod store;
