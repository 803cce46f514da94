//! Guest paths of mounts, checked the way `wasmtime run --dir` names preopens.

/// Normalizes a mount's guest path: absolute (`/`, `/data`) or a relative
/// preopen name (`.`, `data`). Refuses what could name a place outside the
/// guest's own tree or confuse preopen matching.
pub fn normalize_guest_path(path: &str) -> Result<String, String> {
    if path.is_empty() {
        return Err("guest path is empty".into());
    }
    if path.chars().any(|c| c.is_control()) {
        return Err(format!(
            "guest path `{}` contains a control character",
            path.escape_debug()
        ));
    }
    let absolute = path.starts_with('/');
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(format!("guest path `{path}` has a `..` component")),
            part => parts.push(part),
        }
    }
    Ok(match (absolute, parts.is_empty()) {
        (true, _) => format!("/{}", parts.join("/")),
        (false, true) => ".".to_owned(),
        (false, false) => parts.join("/"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn examples() {
        assert_eq!(normalize_guest_path("/").unwrap(), "/");
        assert_eq!(normalize_guest_path("/data/").unwrap(), "/data");
        assert_eq!(normalize_guest_path("//a/./b").unwrap(), "/a/b");
        assert_eq!(normalize_guest_path(".").unwrap(), ".");
        assert_eq!(normalize_guest_path("./data").unwrap(), "data");
        assert!(normalize_guest_path("").is_err());
        assert!(normalize_guest_path("/a/../b").is_err());
        assert!(normalize_guest_path("..").is_err());
        assert!(normalize_guest_path("a\nb").is_err());
    }

    proptest! {
        #[test]
        fn normalized_paths_never_climb_and_are_stable(path in "[a-z./]{0,16}") {
            if let Ok(normal) = normalize_guest_path(&path) {
                prop_assert!(!normal.split('/').any(|p| p == ".."));
                prop_assert_eq!(normalize_guest_path(&normal), Ok(normal.clone()));
                prop_assert_eq!(normal.starts_with('/'), path.starts_with('/'));
            } else {
                prop_assert!(path.is_empty() || path.split('/').any(|p| p == ".."));
            }
        }
    }
}
