//! Names users give to apps, volumes and functions.
//!
//! Names become registry keys and appear in commands, so they are kept to a
//! small alphabet that can never spell a path (`/`, `..`) outside
//! `$WASMHOST_HOME`.

/// What a valid name looks like, for error messages.
pub const NAME_RULE: &str =
    "a lowercase letter or digit, then up to 62 lowercase letters, digits or `-`";

/// `[a-z0-9][a-z0-9-]{0,62}`.
pub fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !bytes.is_empty()
        && bytes.len() <= 63
        && alnum(&bytes[0])
        && bytes[1..].iter().all(|b| alnum(b) || *b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn examples() {
        assert!(is_valid_name("cache-demo"));
        assert!(is_valid_name("0"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("-x"));
        assert!(!is_valid_name("Cache"));
        assert!(!is_valid_name("a/b"));
        assert!(!is_valid_name(".."));
        assert!(!is_valid_name(&"a".repeat(64)));
        assert!(is_valid_name(&"a".repeat(63)));
    }

    proptest! {
        #[test]
        fn matches_the_documented_pattern(name in "\\PC{0,70}") {
            let re_like = {
                let b = name.as_bytes();
                !b.is_empty() && b.len() <= 63
                    && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
                    && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            };
            prop_assert_eq!(is_valid_name(&name), re_like);
        }

        #[test]
        fn valid_names_are_single_path_components(name in "[a-z0-9][a-z0-9-]{0,62}") {
            prop_assert!(is_valid_name(&name));
            let path = std::path::Path::new(&name);
            prop_assert_eq!(path.components().count(), 1);
            prop_assert!(matches!(path.components().next(), Some(std::path::Component::Normal(_))));
        }
    }
}
