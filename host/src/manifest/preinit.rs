//! `preinit`: the export a function's module runs once, before its first
//! call, so that start-up work (an interpreter's, a model's load) is paid
//! once (SPEC section 5). Written `preinit = "EXPORT"`, or as a table
//! `{ export = "run", args = ["-c", "import pandas"] }` for a module whose
//! export takes its work from its arguments.

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::ManifestError;
use super::raw::RawFunction;
use super::validate::Validator;

/// A validated `preinit`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct Preinit {
    /// The export to run: a function without parameters that returns
    /// nothing or an i32 exit code (0: success).
    pub export: String,
    /// The arguments the init sees after argv[0], in place of the
    /// function's `args`; `None`: the function's `args`.
    #[serde(default)]
    pub args: Option<Vec<String>>,
}

/// `preinit` as written: a string or a table.
#[derive(Debug)]
pub struct RawPreinit {
    export: String,
    args: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPreinitTable {
    export: String,
    args: Option<Vec<String>>,
}

impl<'de> Deserialize<'de> for RawPreinit {
    /// Hand-written rather than `#[serde(untagged)]`, whose only error is
    /// "data did not match any variant".
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PreinitVisitor;
        impl<'de> Visitor<'de> for PreinitVisitor {
            type Value = RawPreinit;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "an export name, or a table `{ export = \"run\", args = [\"-c\", \"import pandas\"] }`",
                )
            }
            fn visit_str<E: de::Error>(self, export: &str) -> Result<RawPreinit, E> {
                Ok(RawPreinit {
                    export: export.to_owned(),
                    args: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawPreinit, A::Error> {
                let table =
                    RawPreinitTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RawPreinit {
                    export: table.export,
                    args: table.args,
                })
            }
        }
        deserializer.deserialize_any(PreinitVisitor)
    }
}

impl Validator<'_> {
    /// A function's `preinit`: an export name that could be one, and
    /// arguments WASI can pass (C strings: no NUL byte).
    pub(super) fn preinit(&self, raw: &RawFunction) -> Result<Option<Preinit>, ManifestError> {
        let Some(preinit) = &raw.preinit else {
            return Ok(None);
        };
        let (span, value) = (preinit.span(), preinit.get_ref());
        if value.export.is_empty() || value.export.contains(char::is_control) {
            return Err(self.error(
                Some(span),
                format!(
                    "`preinit` export `{}` is not an export name",
                    value.export.escape_debug()
                ),
                "name the module's exported init function, e.g. preinit = \"wizer.initialize\"",
            ));
        }
        if let Some(arg) = value.args.iter().flatten().find(|a| a.contains('\0')) {
            return Err(self.error(
                Some(span),
                format!(
                    "`preinit` argument `{}` holds a NUL byte, which WASI cannot pass to a guest",
                    arg.escape_debug()
                ),
                "remove the NUL byte",
            ));
        }
        Ok(Some(Preinit {
            export: value.export.clone(),
            args: value.args.clone(),
        }))
    }
}
