//! Names a terminal or a program could take for something else: control
//! characters escaped in human output (a module's import name too), and
//! names that are not UTF-8 printed distinctly and still addressable.

use super::*;

/// A name that moves the cursor, starts a line that reads like a row, and
/// sets the terminal's title.
const EVIL: &str = "evil\x1b]0;pwned\x07\r\nforged-row\u{202e}";
const EVIL_ESCAPED: &str = "evil\\e]0;pwned\\a\\r\\nforged-row\\u202e";

fn assert_no_controls(what: &str, text: &str) {
    for c in ['\x1b', '\x07', '\r', '\u{202e}'] {
        assert!(!text.contains(c), "{what} has {c:?} raw: {text:?}");
    }
    assert!(
        !text.lines().any(|l| l.starts_with("forged-row")),
        "{what} has a forged line: {text:?}"
    );
}

#[test]
fn names_with_control_characters_are_escaped_in_human_output() {
    let env = TestEnv::new();
    let app = app(&env, "ctl");
    guest(
        &env,
        &app,
        "fsops",
        &["write", &format!("/data/{EVIL}"), "x"],
    );
    guest(
        &env,
        &app,
        "fsops",
        &["symlink", "nowhere", &format!("/data/link-{EVIL}")],
    );
    // ls: escaped in the table, exact in JSON.
    let ls = env.run(&["volume", "ls", "ctl"]).success();
    assert_no_controls("volume ls", &ls.stdout());
    assert!(
        ls.stdout().contains(&format!("/{EVIL_ESCAPED}")),
        "{}",
        ls.stdout()
    );
    let json = env.run(&["volume", "ls", "ctl", "--json"]).success();
    let entries: serde_json::Value = serde_json::from_str(&json.stdout()).unwrap();
    let paths: Vec<&str> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert!(paths.contains(&format!("/{EVIL}").as_str()), "{paths:?}");
    // The warning for a skipped link.
    let out = env.work.path().join("out");
    let get = env
        .run(&["volume", "get", "ctl", "/", path(&out)])
        .success();
    assert_no_controls("the skipped-link warning", &get.stderr());
    assert!(
        get.stderr()
            .contains(&format!("skipped symbolic link /link-{EVIL_ESCAPED}:")),
        "{}",
        get.stderr()
    );
    // Copied to a local file named after it: the summary names it escaped.
    let get = env
        .run(&["volume", "get", "ctl", &format!("/{EVIL}")])
        .success();
    assert_no_controls("the copy summary", &get.stderr());
    assert!(env.work.path().join(EVIL).exists());
    // Error messages that name a path in the volume.
    let rm = env.run(&["volume", "rm", "ctl", &format!("/{EVIL}/below")]);
    assert_eq!(rm.code(), 2, "{}", rm.stderr());
    assert_no_controls("an error", &rm.stderr());
    assert!(rm.stderr().contains(EVIL_ESCAPED), "{}", rm.stderr());
    // A module whose import name is hostile: the link error quotes it.
    let module = env.work.path().join("hostile.wasm");
    std::fs::write(&module, module_importing(EVIL)).unwrap();
    let hostile = AppToml::new("hostile")
        .function("f", |f| f.module(&module))
        .write(&env);
    let run = env.run(&["run", path(&hostile)]);
    assert_eq!(run.code(), 2, "{}", run.stderr());
    assert_no_controls("a link error", &run.stderr());
    assert_eq!(run.stderr().lines().count(), 1, "{}", run.stderr());
    // Errors are one line: the newline reads as a space, the rest escaped.
    assert!(
        run.stderr()
            .contains("evil\\e]0;pwned\\a\\r forged-row\\u202e"),
        "{}",
        run.stderr()
    );
}

/// A core module that imports a function `env::NAME` and does nothing else.
fn module_importing(name: &str) -> Vec<u8> {
    let mut import = vec![1, 3];
    import.extend_from_slice(b"env");
    import.push(name.len() as u8);
    import.extend_from_slice(name.as_bytes());
    import.extend_from_slice(&[0x00, 0x00]);
    let mut module = b"\0asm\x01\0\0\0".to_vec();
    module.extend_from_slice(&[0x01, 0x04, 0x01, 0x60, 0x00, 0x00]);
    module.push(0x02);
    module.push(import.len() as u8);
    module.extend_from_slice(&import);
    // A `_start` of its own, so the import is all that is wrong with it.
    module.extend_from_slice(&[0x03, 0x02, 0x01, 0x00]);
    module.extend_from_slice(b"\x07\x0a\x01\x06_start\x00\x01");
    module.extend_from_slice(&[0x0a, 0x04, 0x01, 0x02, 0x00, 0x0b]);
    module
}

#[test]
fn names_that_are_not_utf8_print_distinctly_and_can_be_addressed() {
    let env = TestEnv::new();
    env.run(&["volume", "create", "bytes"]).success();
    let local = env.work.path().join("names");
    std::fs::create_dir(&local).unwrap();
    for byte in [0xe8u8, 0xe9] {
        let name = [b'c', b'a', b'f', byte];
        std::fs::write(local.join(OsStr::from_bytes(&name)), format!("{byte:x}")).unwrap();
    }
    env.run(&["volume", "put", "bytes", path(&local), "/names"])
        .success();
    let ls = env.run(&["volume", "ls", "bytes", "/names"]).success();
    assert!(ls.stdout().contains("/names/caf\\xe8"), "{}", ls.stdout());
    assert!(ls.stdout().contains("/names/caf\\xe9"), "{}", ls.stdout());
    let json = env
        .run(&["volume", "ls", "bytes", "/names", "--json"])
        .success();
    let entries: serde_json::Value = serde_json::from_str(&json.stdout()).unwrap();
    let bytes: Vec<Vec<u8>> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| serde_json::from_value(e["path_bytes"].clone()).unwrap())
        .collect();
    assert_eq!(
        bytes,
        [b"/names/caf\xe8".to_vec(), b"/names/caf\xe9".to_vec()]
    );
    // Addressed by their bytes, as `$'/names/caf\xe9'` gives them in bash.
    let get = env
        .command()
        .args(["volume", "get", "bytes"])
        .arg(OsStr::from_bytes(b"/names/caf\xe9"))
        .arg("-")
        .output()
        .unwrap();
    assert!(
        get.status.success(),
        "{}",
        String::from_utf8_lossy(&get.stderr)
    );
    assert_eq!(get.stdout, b"e9");
    let rm = env
        .command()
        .args(["volume", "rm", "bytes"])
        .arg(OsStr::from_bytes(b"/names/caf\xe8"))
        .output()
        .unwrap();
    assert!(
        rm.status.success(),
        "{}",
        String::from_utf8_lossy(&rm.stderr)
    );
    let left = env.run(&["volume", "ls", "bytes", "/names"]).success();
    assert!(!left.stdout().contains("caf\\xe8"), "{}", left.stdout());
}
