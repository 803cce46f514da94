//! The registry's schema as numbered SQL files, one list per backend, side
//! by side: `migrations/sqlite/NNNN_*.sql` and `migrations/postgres/NNNN_*.sql`.
//!
//! Applying migration `i` (its file's number is `i + 1`) takes a registry
//! at schema version `i` to `i + 1`, each in its own transaction (SQLite
//! keeps the version in `PRAGMA user_version`, PostgreSQL in
//! `wasmhost_schema`). The lists differ in length because PostgreSQL came
//! later, with one migration for what SQLite had grown to by then.
//!
//! Append only: a migration that has shipped is never edited, since homes
//! and clusters made by that release ran it, and SQLite keeps the text of
//! each CREATE statement as it was written. A change to the schema is a
//! new file for each backend, with the next number, added to its list.

/// The SQL of the files of `migrations/$dir`, in order.
macro_rules! numbered {
    ($dir:literal: $($file:literal),* $(,)?) => {
        &[$(include_str!(concat!("migrations/", $dir, "/", $file))),*]
    };
}

/// The embedded backend's migrations (`sqlite`).
pub(super) const SQLITE: &[&str] = numbered!("sqlite":
    "0001_apps_volumes_mounts.sql",
    "0002_calls.sql",
    "0003_app_modules.sql",
    "0004_apps_by_state.sql",
    "0005_calls_queue.sql",
    "0006_volume_quotas.sql",
    "0007_snapshots.sql",
    "0008_schedules_secrets.sql",
    "0009_nodes_leases.sql",
    "0010_modules.sql",
    "0011_ended_calls_forget_env.sql",
    "0012_call_kinds.sql",
    "0013_file_trees.sql",
);

/// A cluster's migrations (`postgres`).
pub(super) const POSTGRES: &[&str] = numbered!("postgres":
    "0001_schema.sql",
    "0002_nodes_leases.sql",
    "0003_modules_cluster_locks.sql",
    "0004_ended_calls_forget_env.sql",
    "0005_call_kinds.sql",
    "0006_file_trees.sql",
);

#[cfg(test)]
mod tests {
    use super::*;

    /// Each backend's list holds every file of its directory, in the
    /// order of their numbers, which are 1, 2, 3…: a file that was added
    /// but not listed, or listed out of place, would change what version a
    /// registry records.
    #[test]
    fn every_file_is_listed_in_its_numbered_place() {
        for (dir, list) in [("sqlite", SQLITE), ("postgres", POSTGRES)] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("src/registry/migrations")
                .join(dir);
            let mut files: Vec<_> = std::fs::read_dir(&path)
                .unwrap()
                .map(|entry| entry.unwrap().path())
                .collect();
            files.sort();
            assert_eq!(files.len(), list.len(), "{dir}: {files:?}");
            for (at, (file, sql)) in files.iter().zip(list).enumerate() {
                let name = file.file_name().unwrap().to_string_lossy();
                assert!(
                    name.starts_with(&format!("{:04}_", at + 1)) && name.ends_with(".sql"),
                    "{dir}/{name} is migration {}",
                    at + 1
                );
                assert_eq!(
                    &std::fs::read_to_string(file).unwrap(),
                    sql,
                    "{dir}/{name} is not listed as migration {}",
                    at + 1
                );
            }
        }
    }
}
