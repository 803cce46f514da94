//! Fuzzes the app.toml parser and validator: any text either validates or
//! gives a `ManifestError` whose message is one line and whose position lies
//! inside the text; it never panics.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

// The very sources the host uses, compiled here without the rest of the crate
// (which would pull wasmtime into an instrumented build). `manifest` refers to
// `crate::names`, which these two modules provide.
#[allow(dead_code)]
#[path = "../../src/manifest/mod.rs"]
mod manifest;
#[allow(dead_code)]
#[path = "../../src/names.rs"]
mod names;

/// A directory with modules the inputs can name: `m.wasm` (a valid header),
/// `text.wasm` (not WebAssembly), and a subdirectory `dir`.
fn base_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        std::fs::write(dir.join("m.wasm"), b"\0asm\x01\0\0\0").unwrap();
        std::fs::write(dir.join("text.wasm"), b"hello, world\n").unwrap();
        std::fs::create_dir(dir.join("dir")).unwrap();
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("app.toml");
    match manifest::parse(file, text, base_dir()) {
        Ok(app) => {
            // A valid manifest names a function `run` can select or explains why not.
            assert!(!app.functions.is_empty());
            let _ = app.select_function(None);
            for spec in app.functions.values() {
                assert!(spec.module.is_absolute());
                for mount in &spec.mounts {
                    assert!(app.volumes.contains_key(&mount.volume));
                    assert_eq!(
                        manifest::normalize_guest_path(&mount.guest_path).as_deref(),
                        Ok(mount.guest_path.as_str())
                    );
                }
            }
        }
        Err(e) => {
            let message = e.to_string();
            assert!(!message.contains('\n'), "multi-line message: {message:?}");
            assert!(!e.fix.is_empty());
            if let Some((line, column)) = e.position {
                assert!(line >= 1 && column >= 1);
                assert!(line <= text.split('\n').count(), "line {line} past the end");
            }
        }
    }
});
