//! Test guest (wasip2 only): a component built against the first version of
//! the lock interface (`wit/v0.1.0`), as every component built before the
//! interface gained `too-many-locks` is. `lock_v0_1 PATH` takes and releases
//! the lock on PATH and prints `locked and released`.

#[cfg(target_env = "p2")]
wit_bindgen::generate!({ path: "../../wit/v0.1.0", world: "guest" });

#[cfg(target_env = "p2")]
fn main() {
    use wasmhost::host::lock;

    let path = std::env::args().nth(1).expect("usage: lock_v0_1 PATH");
    match lock::acquire(&path, 1000).and_then(|()| lock::release(&path)) {
        Ok(()) => println!("locked and released"),
        Err(e) => {
            eprintln!("lock_v0_1: {path}: {e:?}");
            std::process::exit(1)
        }
    }
}

#[cfg(not(target_env = "p2"))]
fn main() {
    eprintln!("lock_v0_1 is a wasip2 component only");
    std::process::exit(2)
}
