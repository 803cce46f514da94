//! Secrets as stored: their variables' names in clear, their values sealed
//! (`crate::secrets` seals and opens them; the table is made by migration 8).

use super::backend::args;
use anyhow::Result;

use super::Tx;

/// A secret as `secret list` shows it: never its values.
#[derive(Debug, Clone)]
pub struct SecretRecord {
    pub name: String,
    /// The names of its environment variables.
    pub keys: Vec<String>,
    /// Unix seconds.
    pub created_at: i64,
}

/// A secret's values, sealed.
pub struct SealedSecret {
    pub nonce: Vec<u8>,
    pub sealed: Vec<u8>,
}

impl Tx<'_> {
    /// Stores secret `name`, replacing one of that name if `replace`;
    /// false if one exists and `replace` is not given.
    pub fn put_secret(
        &self,
        name: &str,
        keys: &[String],
        sealed: &SealedSecret,
        replace: bool,
    ) -> Result<bool> {
        let on_conflict = if replace {
            "DO UPDATE SET keys = excluded.keys, nonce = excluded.nonce, sealed = excluded.sealed, created_at = excluded.created_at"
        } else {
            "DO NOTHING"
        };
        let changed = self.execute(
            &format!(
                "INSERT INTO secrets (name, keys, nonce, sealed, created_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (name) {on_conflict}"
            ),
            args![
                name,
                serde_json::to_string(keys)?,
                sealed.nonce,
                sealed.sealed,
                super::now()
            ],
        )?;
        Ok(changed == 1)
    }

    pub fn sealed_secret(&self, name: &str) -> Result<Option<SealedSecret>> {
        self.query_opt(
            "SELECT nonce, sealed FROM secrets WHERE name = ?1",
            args![name],
            |r| {
                Ok(SealedSecret {
                    nonce: r.get(0)?,
                    sealed: r.get(1)?,
                })
            },
        )
    }

    pub fn secrets(&self) -> Result<Vec<SecretRecord>> {
        self.query(
            "SELECT name, keys, created_at FROM secrets ORDER BY name",
            args![],
            |r| {
                let keys: String = r.get(1)?;
                Ok(SecretRecord {
                    name: r.get(0)?,
                    keys: serde_json::from_str(&keys).unwrap_or_default(),
                    created_at: r.get(2)?,
                })
            },
        )
    }

    /// Deletes secret `name`; false if there was none.
    pub fn delete_secret(&self, name: &str) -> Result<bool> {
        Ok(self.execute("DELETE FROM secrets WHERE name = ?1", args![name])? == 1)
    }
}
