//! The gateway's configuration: one serde struct, defaults in one place.

use aether_common::config::Quorum;

/// The development access key used when none is configured (a warning is logged at start).
pub const DEV_ACCESS_KEY: &str = "AKIAEXAMPLEAETHER0001";
/// The development secret key used when none is configured (never logged).
pub const DEV_SECRET_KEY: &str = "aether-dev-secret-change-me";

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// etcd v3 endpoints of metad (`host:port`).
    pub metad_endpoints: Vec<String>,
    /// Prefix of the catalog keys in metad.
    pub catalog_prefix: String,
    pub region: String,
    pub require_auth: bool,
    pub access_key: String,
    pub secret_key: String,
    /// Replicas per object (capped at the number of active nodes).
    pub replication_factor: usize,
    #[serde(deserialize_with = "aether_common::config::Quorum::deserialize_lenient")]
    pub write_quorum: Quorum,
    #[serde(deserialize_with = "aether_common::config::Quorum::deserialize_lenient")]
    pub read_quorum: Quorum,
    /// Virtual-hosted-style requests address `<bucket>.<root_domain>`.
    pub root_domain: Option<String>,
    /// HLC writer id; a random uuid at start when unset.
    pub gateway_id: Option<String>,
    /// Largest single PUT.
    pub max_object_size: u64,
    /// Smallest part (other than the last) CompleteMultipartUpload accepts: S3's 5 MiB by
    /// default; lower it only for tests or clients that split finer (10,000 parts × 5 MiB
    /// is the 48.8 GiB S3 caps an upload of such parts at).
    pub min_part_size: u64,
    /// Time limit of each blobd call that is not a body stream.
    pub request_timeout_secs: u64,
    /// Local address connections to blobd leave from (`None`: the system's choice).
    pub source_addr: Option<std::net::IpAddr>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            metad_endpoints: vec!["127.0.0.1:2379".to_string()],
            catalog_prefix: aether_common::catalog::DEFAULT_PREFIX.to_string(),
            region: "us-east-1".to_string(),
            require_auth: true,
            access_key: DEV_ACCESS_KEY.to_string(),
            secret_key: DEV_SECRET_KEY.to_string(),
            replication_factor: 3,
            write_quorum: Quorum::Quorum,
            read_quorum: Quorum::Quorum,
            root_domain: None,
            gateway_id: None,
            max_object_size: 5 << 30,
            min_part_size: 5 << 20,
            request_timeout_secs: 30,
            source_addr: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_toml_with_defaults_and_lenient_quorum() {
        let c: GatewayConfig =
            aether_common::config::parse_toml("region = \"eu-west-1\"\nwrite_quorum = 1\nread_quorum = \"all\"")
                .unwrap();
        assert_eq!(c.region, "eu-west-1");
        assert_eq!(c.write_quorum, Quorum::One);
        assert_eq!(c.read_quorum, Quorum::All);
        assert_eq!(c.replication_factor, 3);
        assert_eq!(c.max_object_size, 5 << 30);
        let err = aether_common::config::parse_toml::<GatewayConfig>("regoin = \"x\"").unwrap_err();
        assert!(err.contains("regoin"), "{err}");
    }
}
