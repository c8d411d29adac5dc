//! Config loading shared by the services: a TOML file (`AETHER_CONFIG`) supplies the base,
//! the `aether` binary's flags (each with its `AETHER_*` environment variable) override it.
//! Unknown keys in the file are an error naming the key (`deny_unknown_fields`).

use std::path::Path;

use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid setting {name}: {message}")]
    Invalid { name: &'static str, message: String },
}

/// Parse a TOML config file into `T` (whose serde attributes deny unknown fields).
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
    parse_toml(&text).map_err(|message| ConfigError::Parse { path: path.display().to_string(), message })
}

pub fn parse_toml<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    toml::from_str(text).map_err(|e| e.to_string())
}

/// How many replicas must acknowledge (writes) or answer (reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Quorum {
    One,
    #[default]
    Quorum,
    All,
}

impl Quorum {
    /// Number of replicas required out of `n`.
    pub fn required(self, n: usize) -> usize {
        match self {
            Quorum::One => n.min(1),
            Quorum::Quorum => n / 2 + 1,
            Quorum::All => n,
        }
    }
}

impl std::str::FromStr for Quorum {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "1" | "one" => Ok(Quorum::One),
            "quorum" => Ok(Quorum::Quorum),
            "all" => Ok(Quorum::All),
            other => Err(format!("expected 1, quorum or all, got {other:?}")),
        }
    }
}

// Accept `1` as well as "one" in TOML.
impl Quorum {
    pub fn deserialize_lenient<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match <Raw as serde::Deserialize>::deserialize(d)? {
            Raw::N(1) => Ok(Quorum::One),
            Raw::N(n) => Err(serde::de::Error::custom(format!("quorum must be 1, \"quorum\" or \"all\", got {n}"))),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct T {
        #[serde(default)]
        _port: u16,
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = parse_toml::<T>("prot = 1").unwrap_err();
        assert!(err.contains("prot"), "{err}");
    }

    #[test]
    fn quorum_sizes() {
        assert_eq!(Quorum::Quorum.required(3), 2);
        assert_eq!(Quorum::Quorum.required(1), 1);
        assert_eq!(Quorum::Quorum.required(2), 2);
        assert_eq!(Quorum::One.required(3), 1);
        assert_eq!(Quorum::All.required(3), 3);
        assert_eq!("1".parse::<Quorum>().unwrap(), Quorum::One);
    }
}
