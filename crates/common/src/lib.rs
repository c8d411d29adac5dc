//! What the services really share: placement, the catalog's keys and values, the HLC,
//! config loading, telemetry, shutdown, gRPC channels, the admin HTTP server, and ports
//! for test harnesses.

pub mod admin;
pub mod catalog;
pub mod config;
pub mod etcd;
pub mod grpc;
pub mod hlc;
pub mod placement;
pub mod ports;
pub mod shutdown;
pub mod telemetry;
