//! Test guest for secrets: `envfile DIR NAME...` writes the value of each
//! environment variable NAME to `DIR/NAME` (`<unset>` if it has none), and
//! prints only which names it wrote, so no value reaches its recorded
//! output.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((dir, names)) = args.split_first() else {
        eprintln!("usage: envfile DIR NAME...");
        std::process::exit(2)
    };
    for name in names {
        let value = std::env::var(name).unwrap_or_else(|_| "<unset>".into());
        if let Err(e) = std::fs::write(format!("{dir}/{name}"), value) {
            eprintln!("envfile: cannot write {dir}/{name}: {e}");
            std::process::exit(1);
        }
        println!("wrote {name}");
    }
}
