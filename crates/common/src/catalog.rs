//! The catalog in metad: key names and JSON values. Gateway, blobd and the admin CLI
//! read and write these through `etcd-client` only, so a real etcd can stand in.

use serde::{Deserialize, Serialize};

pub const DEFAULT_PREFIX: &str = "/aether/";

/// Key builder for one catalog prefix (default `/aether/`).
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Default for Keys {
    fn default() -> Self {
        Self::new(DEFAULT_PREFIX)
    }
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        let mut prefix = prefix.to_string();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Self { prefix }
    }
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    pub fn buckets(&self) -> String {
        format!("{}buckets/", self.prefix)
    }
    pub fn bucket(&self, name: &str) -> String {
        format!("{}buckets/{name}", self.prefix)
    }
    pub fn keys(&self) -> String {
        format!("{}keys/", self.prefix)
    }
    pub fn access_key(&self, id: &str) -> String {
        format!("{}keys/{id}", self.prefix)
    }
    /// The lock a conditional write of `key` in `bucket` holds (gateway, on a lease).
    pub fn lock(&self, bucket: &str, key: &str) -> String {
        format!("{}locks/{bucket}/{key}", self.prefix)
    }
    pub fn nodes(&self) -> String {
        format!("{}nodes/", self.prefix)
    }
    pub fn node(&self, id: &str) -> String {
        format!("{}nodes/{id}", self.prefix)
    }
    pub fn alive_all(&self) -> String {
        format!("{}alive/", self.prefix)
    }
    pub fn alive(&self, id: &str) -> String {
        format!("{}alive/{id}", self.prefix)
    }
    /// The settings every gateway and blobd of the cluster share ([`ClusterConfig`]).
    pub fn cluster_config(&self) -> String {
        format!("{}cluster/config", self.prefix)
    }
}

/// Settings every gateway and blobd of a cluster must agree on (placement depends on them),
/// so they live in the catalog (`cluster/config`), not in each service's configuration. The
/// first blobd to register writes it from its own `replication_factor`; from then on the
/// entry wins over every service's setting (`aether node set-rf` changes it; anti-entropy
/// then moves copies to the new owners).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    pub replication_factor: usize,
}

impl ClusterConfig {
    /// The entry's value; `None` if malformed or with a replication factor of 0.
    pub fn parse(value: &[u8]) -> Option<Self> {
        serde_json::from_slice::<Self>(value).ok().filter(|c| c.replication_factor > 0)
    }

    /// Write the entry with `replication_factor` unless it exists; return what it holds.
    pub async fn ensure(
        client: &mut etcd_client::Client,
        keys: &Keys,
        replication_factor: usize,
    ) -> Result<Option<Self>, etcd_client::Error> {
        use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
        let key = keys.cluster_config();
        let mine = Self { replication_factor: replication_factor.max(1) };
        let value = serde_json::to_vec(&mine).unwrap_or_default();
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), value, None)])
            .or_else([TxnOp::get(key, None)]);
        let resp = client.txn(txn).await?;
        if resp.succeeded() {
            return Ok(Some(mine));
        }
        Ok(resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().and_then(|kv| Self::parse(kv.value())),
            _ => None,
        }))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BucketState {
    #[default]
    Active,
    Deleting,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketEntry {
    /// RFC 3339 creation time.
    pub created: String,
    /// Access key id of the creator.
    pub owner: String,
    #[serde(default)]
    pub state: BucketState,
    /// The bucket's tag set (PutBucketTagging), in key order.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub tags: std::collections::BTreeMap<String, String>,
    /// The bucket's CORS rules (PutBucketCors), in the order given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cors: Vec<CorsRule>,
}

/// One CORS rule of a bucket, as S3 takes it: who (origins) may do what (methods) with
/// which request headers, what response headers the browser may expose, and how long a
/// preflight answer may be cached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CorsRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub allowed_methods: Vec<String>,
    pub allowed_origins: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_seconds: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    #[default]
    Active,
    Draining,
    Removed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    /// host:port of the node's blob gRPC service.
    pub addr: String,
    #[serde(default)]
    pub zone: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub state: NodeState,
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliveEntry {
    pub addr: String,
    /// RFC 3339 process start time.
    pub started_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessKeyEntry {
    pub secret: String,
    #[serde(default)]
    pub name: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_round_trip() {
        let k = Keys::new("/x");
        assert_eq!(k.bucket("b"), "/x/buckets/b");
        assert_eq!(k.alive("n1"), "/x/alive/n1");
        let n: NodeEntry = serde_json::from_str(r#"{"addr":"127.0.0.1:1"}"#).unwrap();
        assert_eq!(n.weight, 1);
        assert_eq!(n.state, NodeState::Active);
        let b = BucketEntry {
            created: "t".into(),
            owner: "o".into(),
            state: BucketState::Deleting,
            tags: Default::default(),
            cors: Vec::new(),
        };
        assert_eq!(serde_json::to_string(&b).unwrap(), r#"{"created":"t","owner":"o","state":"deleting"}"#);
    }
}
