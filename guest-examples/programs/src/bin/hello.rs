//! The smallest guest: shows what args and env the host passed through.

fn main() {
    println!("hello from wasmhost");
    let args: Vec<String> = std::env::args().skip(1).collect();
    for arg in &args {
        println!("arg: {arg}");
    }
    if let Ok(greeting) = std::env::var("GREETING") {
        println!("GREETING={greeting}");
    }
    if let Some(i) = args.iter().position(|a| a == "--exit") {
        let code = args
            .get(i + 1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| {
                eprintln!("hello: --exit needs an integer");
                std::process::exit(2)
            });
        std::process::exit(code);
    }
}
