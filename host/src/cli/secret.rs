//! `wasmhost secret create|list|delete`: named sets of environment
//! variables, sealed at rest (see `wasmhost::secrets`). No output and no
//! error of these commands shows a value; values given as arguments land in
//! shell history, so `KEY=-` (stdin), `--from-env` and `--from-env-file`
//! keep them out of it.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Subcommand;
use serde_json::json;
use wasmhost::manifest::valid_env_name;
use wasmhost::secrets;

use super::confirm::confirm;
use super::open_state;
use super::output::{outln, table, timestamp};
use super::usage;

#[derive(Subcommand)]
pub enum SecretCommand {
    /// Store a named set of environment variables for functions' `secrets`.
    Create {
        name: String,
        /// Variables; `KEY=-` reads KEY's value from stdin (one trailing newline dropped).
        #[arg(value_name = "KEY=VALUE")]
        pairs: Vec<String>,
        /// Take KEY's value from wasmhost's own environment variable KEY (repeatable).
        #[arg(long = "from-env", value_name = "KEY")]
        from_env: Vec<String>,
        /// Read `KEY=VALUE` lines from FILE (blank lines, `#` comments and `export ` skipped; one pair of surrounding quotes removed).
        #[arg(long, value_name = "FILE")]
        from_env_file: Option<PathBuf>,
        /// Replace a secret of that name.
        #[arg(long)]
        force: bool,
    },
    /// List secrets: their names and variables, never their values.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Delete a secret; functions that use it fail until it is made again.
    Delete {
        name: String,
        /// Do not ask for confirmation.
        #[arg(long, short)]
        yes: bool,
    },
}

pub fn execute(command: SecretCommand) -> Result<u8> {
    let (home, mut registry) = open_state()?;
    match command {
        SecretCommand::Create {
            name,
            pairs,
            from_env,
            from_env_file,
            force,
        } => {
            let mut values = Values::default();
            if let Some(file) = &from_env_file {
                values.read_file(file)?;
            }
            for key in &from_env {
                let value = std::env::var(key).map_err(|_| {
                    usage(format!(
                        "--from-env {}: wasmhost's environment has no variable of that name (or it is not UTF-8)",
                        key.escape_debug()
                    ))
                })?;
                values.add(key, value, &format!("--from-env {}", key.escape_debug()))?;
            }
            values.read_pairs(&pairs)?;
            secrets::create(&home, &mut registry, &name, &values.0, force)?;
            let keys: Vec<&str> = values.0.keys().map(String::as_str).collect();
            outln!("created secret `{name}` ({})", keys.join(", "))?;
            Ok(0)
        }
        SecretCommand::List { json } => {
            let secrets = secrets::list(&mut registry)?;
            if json {
                let rows: Vec<_> = secrets
                    .iter()
                    .map(|s| {
                        json!({
                            "name": s.name,
                            "keys": s.keys,
                            "created_at": timestamp(s.created_at),
                        })
                    })
                    .collect();
                outln!("{}", serde_json::to_string_pretty(&rows)?)?;
            } else {
                let rows: Vec<Vec<String>> = secrets
                    .iter()
                    .map(|s| vec![s.name.clone(), s.keys.join(","), timestamp(s.created_at)])
                    .collect();
                outln!("{}", table(&["NAME", "KEYS", "CREATED"], &rows))?;
            }
            Ok(0)
        }
        SecretCommand::Delete { name, yes } => {
            confirm(
                &format!(
                    "Delete secret `{name}`? Functions that use it fail until it is created again."
                ),
                yes,
            )?;
            secrets::delete(&mut registry, &name)?;
            outln!("deleted secret `{name}`")?;
            Ok(0)
        }
    }
}

/// A secret's variables as they are gathered from its sources. Messages
/// name a variable or where it came from, never a value.
#[derive(Default)]
struct Values(BTreeMap<String, String>);

impl Values {
    fn add(&mut self, key: &str, value: String, from: &str) -> Result<()> {
        if !valid_env_name(key) {
            return Err(usage(format!(
                "{from}: `{}` is not a variable name; use a non-empty name without `=` or NUL",
                key.escape_debug()
            )));
        }
        if value.contains('\0') {
            return Err(usage(format!(
                "{from}: the value of `{key}` holds a NUL byte, which WASI cannot pass to a guest"
            )));
        }
        if self.0.insert(key.to_owned(), value).is_some() {
            return Err(usage(format!(
                "{from}: variable `{key}` is given twice; give each once"
            )));
        }
        Ok(())
    }

    /// `KEY=VALUE` arguments; `KEY=-` reads stdin, once.
    fn read_pairs(&mut self, pairs: &[String]) -> Result<()> {
        let mut stdin_used = false;
        for (at, pair) in pairs.iter().enumerate() {
            let from = format!("argument {} after the name", at + 1);
            // The argument itself is not quoted: it may be a bare value.
            let Some((key, value)) = pair.split_once('=') else {
                return Err(usage(format!(
                    "{from} is not KEY=VALUE; give each variable as KEY=VALUE, or KEY=- to read its value from stdin"
                )));
            };
            let value = if value == "-" {
                if stdin_used {
                    return Err(usage(format!(
                        "{from}: only one variable can read stdin (`KEY=-`); use --from-env or --from-env-file for the others"
                    )));
                }
                stdin_used = true;
                read_stdin_value()?
            } else {
                value.to_owned()
            };
            self.add(key, value, &from)?;
        }
        Ok(())
    }

    fn read_file(&mut self, file: &Path) -> Result<()> {
        let text = std::fs::read_to_string(file).map_err(|e| {
            usage(format!(
                "cannot read --from-env-file {}: {e}",
                file.display()
            ))
        })?;
        for (at, line) in text.lines().enumerate() {
            let from = format!("{}:{}", file.display(), at + 1);
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            let Some((key, value)) = line.split_once('=') else {
                return Err(usage(format!("{from}: the line is not KEY=VALUE")));
            };
            self.add(key.trim(), unquote(value.trim()).to_owned(), &from)?;
        }
        Ok(())
    }
}

/// `"v"` or `'v'` as `v`; anything else as it is.
fn unquote(value: &str) -> &str {
    for quote in ['"', '\''] {
        if let Some(inner) = value
            .strip_prefix(quote)
            .and_then(|v| v.strip_suffix(quote))
        {
            return inner;
        }
    }
    value
}

fn read_stdin_value() -> Result<String> {
    let mut value = String::new();
    std::io::stdin()
        .read_to_string(&mut value)
        .map_err(|e| usage(format!("cannot read a secret's value from stdin: {e}")))?;
    let trimmed = value
        .strip_suffix('\n')
        .map(|v| v.strip_suffix('\r').unwrap_or(v))
        .unwrap_or(&value);
    Ok(trimmed.to_owned())
}
