//! app.toml exactly as written: serde types that keep spans so validation can
//! point at the line and column of a bad value.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApp {
    pub name: Spanned<String>,
    pub entrypoint: Option<Spanned<String>>,
    #[serde(default)]
    pub volumes: BTreeMap<Spanned<String>, RawVolume>,
    #[serde(default)]
    pub functions: BTreeMap<Spanned<String>, RawFunction>,
    /// `[files]`: guest path -> a file or directory relative to app.toml,
    /// shipped to every function.
    #[serde(default)]
    pub files: RawFiles,
}

/// A `files` table: guest path -> source path, both as written.
pub type RawFiles = BTreeMap<Spanned<String>, Spanned<String>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVolume {
    pub persist: Option<Spanned<String>>,
    pub max_size: Option<Spanned<String>>,
    pub max_files: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFunction {
    pub module: Spanned<String>,
    #[serde(default)]
    pub mounts: BTreeMap<Spanned<String>, Spanned<RawMount>>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<Spanned<String>, Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub memory: Option<Spanned<String>>,
    pub concurrency: Option<Spanned<i64>>,
    pub entry: Option<Spanned<String>>,
    pub unknown_imports: Option<Spanned<String>>,
    pub max_open_files: Option<Spanned<i64>>,
    pub max_locks: Option<Spanned<i64>>,
    pub retries: Option<Spanned<RawRetries>>,
    #[serde(default)]
    pub allowed_hosts: Vec<Spanned<String>>,
    #[serde(default)]
    pub secrets: Vec<Spanned<String>>,
    pub schedule: Option<Spanned<String>>,
    pub http: Option<Spanned<String>>,
    pub record: Option<Spanned<String>>,
    #[serde(default)]
    pub files: RawFiles,
    pub preinit: Option<Spanned<super::preinit::RawPreinit>>,
}

/// `"key"` or `{ volume = "key", read_only = true, sub_path = "hf",
/// snapshot = "v1" }`.
#[derive(Debug)]
pub struct RawMount {
    pub volume: String,
    /// `None` when not given: a snapshot mount is read-only unless it says
    /// otherwise, which is an error.
    pub read_only: Option<Spanned<bool>>,
    pub sub_path: Option<Spanned<String>>,
    pub snapshot: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMountTable {
    volume: String,
    read_only: Option<Spanned<bool>>,
    sub_path: Option<Spanned<String>>,
    snapshot: Option<Spanned<String>>,
}

impl<'de> Deserialize<'de> for RawMount {
    /// Hand-written rather than `#[serde(untagged)]`, whose only error is
    /// "data did not match any variant".
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MountVisitor;
        impl<'de> Visitor<'de> for MountVisitor {
            type Value = RawMount;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a volume key, or a table `{ volume = \"KEY\", read_only = true }`")
            }
            fn visit_str<E: de::Error>(self, volume: &str) -> Result<RawMount, E> {
                Ok(RawMount {
                    volume: volume.to_owned(),
                    read_only: None,
                    sub_path: None,
                    snapshot: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawMount, A::Error> {
                let table = RawMountTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RawMount {
                    volume: table.volume,
                    read_only: table.read_only,
                    sub_path: table.sub_path,
                    snapshot: table.snapshot,
                })
            }
        }
        deserializer.deserialize_any(MountVisitor)
    }
}

/// `2` or `{ max = 2, initial_delay = "1s", backoff = 2.0, max_delay = "60s" }`.
#[derive(Debug)]
pub enum RawRetries {
    /// Kept wide so that any whole number TOML holds reaches validation,
    /// which can then say what range to use.
    Count(i128),
    Table(RawRetriesTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetriesTable {
    pub max: Spanned<i128>,
    pub initial_delay: Option<Spanned<String>>,
    pub backoff: Option<Spanned<f64>>,
    pub max_delay: Option<Spanned<String>>,
}

impl<'de> Deserialize<'de> for RawRetries {
    /// Hand-written for the same reason as [`RawMount`]'s.
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RetriesVisitor;
        impl<'de> Visitor<'de> for RetriesVisitor {
            type Value = RawRetries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a whole number of retries, or a table `{ max = 2, initial_delay = \"1s\", backoff = 2.0, max_delay = \"60s\" }`",
                )
            }
            fn visit_i64<E: de::Error>(self, count: i64) -> Result<RawRetries, E> {
                Ok(RawRetries::Count(count.into()))
            }
            fn visit_u64<E: de::Error>(self, count: u64) -> Result<RawRetries, E> {
                Ok(RawRetries::Count(count.into()))
            }
            fn visit_i128<E: de::Error>(self, count: i128) -> Result<RawRetries, E> {
                Ok(RawRetries::Count(count))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawRetries, A::Error> {
                RawRetriesTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawRetries::Table)
            }
        }
        deserializer.deserialize_any(RetriesVisitor)
    }
}
