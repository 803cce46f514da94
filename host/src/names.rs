//! Names users give to apps, volumes, secrets, functions and volume keys.
//!
//! Two alphabets (SPEC section 2). App, volume and secret names follow
//! Docker's and Modal's convention, so names users already have (`my.app`,
//! `Model_Cache`) carry over. Function names and volume keys are
//! identifiers, so Python's and Rust's function names
//! (`expensive_computation`) work as written. Neither can spell a path:
//! `/` is never allowed, and a first character that is not `.` rules out
//! `.` and `..`, so a name is always one normal path component and can key
//! files under `$WASMHOST_HOME` (concurrency slots do).

/// The most characters in any name.
const MAX_LEN: usize = 64;

/// What a valid app, volume or secret name looks like, for error messages.
pub const NAME_RULE: &str =
    "a letter or digit, then up to 63 letters, digits, `_`, `.` or `-` (e.g. `model-cache.v2`)";

/// What a valid function name or volume key looks like, for error messages.
pub const IDENTIFIER_RULE: &str = "a letter or `_`, then up to 63 letters, digits, `_` or `-` (e.g. `model_cache`, `expensive_computation`)";

/// An app, volume or secret name: `[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`.
pub fn is_valid_name(name: &str) -> bool {
    fits(
        name,
        |b| b.is_ascii_alphanumeric(),
        |b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'),
    )
}

/// A function name or volume key: `[A-Za-z_][A-Za-z0-9_-]{0,63}`.
///
/// Volume keys follow the function rule rather than the name rule: they are
/// TOML keys and mount targets inside one app.toml, never shared names, and
/// the rule a user meets for `[functions.X]` should hold for `[volumes.X]`.
pub fn is_valid_identifier(name: &str) -> bool {
    fits(
        name,
        |b| b.is_ascii_alphabetic() || b == b'_',
        |b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'),
    )
}

fn fits(name: &str, first: impl Fn(u8) -> bool, rest: impl Fn(u8) -> bool) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_LEN
        && first(bytes[0])
        && bytes[1..].iter().all(|b| rest(*b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names() {
        for good in ["cache-demo", "0", "Model_Cache", "my.app", "a..b", "x-"] {
            assert!(is_valid_name(good), "{good}");
        }
        for bad in ["", "-x", "_x", ".x", ".", "..", "a/b", "a b", "é", "a\n"] {
            assert!(!is_valid_name(bad), "{bad:?}");
        }
        assert!(is_valid_name(&"a".repeat(64)));
        assert!(!is_valid_name(&"a".repeat(65)));
    }

    #[test]
    fn identifiers() {
        for good in ["expensive_computation", "_private", "Infer", "f-2", "_"] {
            assert!(is_valid_identifier(good), "{good}");
        }
        for bad in ["", "2fast", "-f", "a.b", "..", "a/b", "a b", "ß"] {
            assert!(!is_valid_identifier(bad), "{bad:?}");
        }
        assert!(is_valid_identifier(&"f".repeat(64)));
        assert!(!is_valid_identifier(&"f".repeat(65)));
    }

    /// A valid name or identifier is one normal path component: joined to a
    /// directory it stays directly inside it.
    fn is_one_normal_component(name: &str) -> bool {
        let path = std::path::Path::new(name);
        path.components().count() == 1
            && matches!(
                path.components().next(),
                Some(std::path::Component::Normal(_))
            )
            && std::path::Path::new("/home").join(name).parent()
                == Some(std::path::Path::new("/home"))
    }

    proptest! {
        #[test]
        fn names_match_the_documented_pattern(name in "\\PC{0,70}") {
            let b = name.as_bytes();
            let expected = !b.is_empty() && b.len() <= 64
                && b[0].is_ascii_alphanumeric()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            prop_assert_eq!(is_valid_name(&name), expected);
        }

        #[test]
        fn identifiers_match_the_documented_pattern(name in "\\PC{0,70}") {
            let b = name.as_bytes();
            let expected = !b.is_empty() && b.len() <= 64
                && (b[0].is_ascii_alphabetic() || b[0] == b'_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || "_-".contains(c));
            prop_assert_eq!(is_valid_identifier(&name), expected);
        }

        #[test]
        fn valid_names_are_single_path_components(name in "[A-Za-z0-9][A-Za-z0-9_.-]{0,63}") {
            prop_assert!(is_valid_name(&name));
            prop_assert!(is_one_normal_component(&name));
        }

        #[test]
        fn valid_identifiers_are_single_path_components(name in "[A-Za-z_][A-Za-z0-9_-]{0,63}") {
            prop_assert!(is_valid_identifier(&name));
            prop_assert!(is_one_normal_component(&name));
        }

        /// Whatever the input, nothing accepted can climb out of a directory.
        #[test]
        fn nothing_accepted_is_a_path(name in "[./a-z_-]{0,6}") {
            if is_valid_name(&name) || is_valid_identifier(&name) {
                prop_assert!(is_one_normal_component(&name), "{name:?}");
            }
        }
    }
}
