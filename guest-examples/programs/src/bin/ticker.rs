//! Test guest for output that arrives while a call runs (`app logs
//! --follow`): `ticker COUNT MS` prints `tick 1` to `tick COUNT` on stdout,
//! one every MS milliseconds, then `done` on stderr.

use std::io::Write;
use std::thread::sleep;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [count, ms] = args.as_slice() else {
        eprintln!("usage: ticker COUNT MS");
        std::process::exit(2)
    };
    let (count, ms): (u32, u64) = match (count.parse(), ms.parse()) {
        (Ok(count), Ok(ms)) => (count, ms),
        _ => {
            eprintln!("ticker: COUNT and MS are integers");
            std::process::exit(2)
        }
    };
    for i in 1..=count {
        if i > 1 {
            sleep(Duration::from_millis(ms));
        }
        println!("tick {i}");
        std::io::stdout().flush().unwrap();
    }
    eprintln!("done");
}
