//! A volume's quota as app.toml, `volume create` and `volume set` give it:
//! a value the manifest owns, so the registry stores it and the volumes
//! enforce it without either importing the other.

/// A volume's quota: `None` for no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Quota {
    pub max_bytes: Option<u64>,
    pub max_files: Option<u64>,
}
