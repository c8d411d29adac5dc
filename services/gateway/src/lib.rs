//! aether's S3 gateway: stateless, terminates S3 HTTP, verifies SigV4, keeps a watched
//! view of the catalog in metad, and streams object bodies to and from the blobd
//! replicas chosen by rendezvous hashing.

pub mod auth;
pub mod catalog;
pub mod cluster;
pub mod config;
pub mod endpoint;
pub mod error;
pub mod repair;
pub mod replicas;
pub mod s3;
pub mod server;
pub mod xml;

pub use config::GatewayConfig;
pub use server::{GatewayError, GatewayListeners, run};
