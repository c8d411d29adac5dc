//! What the services really share: placement, the catalog's keys and values, the HLC,
//! config loading, telemetry, shutdown, gRPC channels and the admin HTTP server.

pub mod admin;
pub mod catalog;
pub mod config;
pub mod etcd;
pub mod grpc;
pub mod hlc;
pub mod placement;
pub mod shutdown;
pub mod telemetry;
