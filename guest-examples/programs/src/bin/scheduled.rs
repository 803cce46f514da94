//! Test guest for schedules: `scheduled DIR [MS]` creates `DIR/tick-TICK`
//! exclusively (TICK from `WASMHOST_SCHEDULE_TICK`, which a schedule's call
//! gets), so a tick run twice fails its second run, then sleeps MS
//! milliseconds (a run longer than its interval) and prints `ran TICK`.

use std::thread::sleep;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (dir, ms) = match args.as_slice() {
        [dir] => (dir, 0),
        [dir, ms] => (dir, ms.parse().unwrap_or(0)),
        _ => {
            eprintln!("usage: scheduled DIR [MS]");
            std::process::exit(2)
        }
    };
    let tick = std::env::var("WASMHOST_SCHEDULE_TICK").unwrap_or_else(|_| "none".into());
    let name = format!("{dir}/tick-{}", tick.replace(':', "-"));
    if let Err(e) = std::fs::File::create_new(&name) {
        eprintln!("scheduled: cannot create {name}: {e}");
        std::process::exit(1);
    }
    sleep(Duration::from_millis(ms));
    println!("ran {tick}");
}
