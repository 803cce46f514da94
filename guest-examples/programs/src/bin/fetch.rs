//! Test guest (wasip2 only) for outbound network under `allowed_hosts`:
//!
//! - `fetch http URL` GETs URL over `wasi:http` and prints the body;
//! - `fetch tcp HOST:PORT` connects with `std::net::TcpStream` (wasi:sockets,
//!   with a name lookup when HOST is a name), sends an HTTP/1.0 GET of `/`
//!   and prints the whole reply.
//!
//! A refusal is printed to stderr as `fetch: WHAT: ERROR`, exit code 1.

#[cfg(target_env = "p2")]
#[path = "../shared/http_get.rs"]
mod http_get;

#[cfg(target_env = "p2")]
fn main() {
    use std::io::{Read, Write};

    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["http", url] => {
            let mut body = Vec::new();
            http_get::get(url, &mut body).map(|status| {
                println!("status {status}");
                std::io::stdout().write_all(&body).unwrap();
            })
        }
        ["tcp", addr] => std::net::TcpStream::connect(addr)
            .and_then(|mut stream| {
                stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
                let mut reply = String::new();
                stream.read_to_string(&mut reply)?;
                println!("connected");
                print!("{reply}");
                Ok(())
            })
            .map_err(|e| format!("{addr}: {e} ({:?})", e.kind())),
        _ => {
            eprintln!("usage: fetch http URL | fetch tcp HOST:PORT");
            std::process::exit(2)
        }
    };
    if let Err(e) = result {
        eprintln!("fetch: {e}");
        std::process::exit(1)
    }
}

#[cfg(not(target_env = "p2"))]
fn main() {
    eprintln!("fetch is a wasip2 component only: wasip1 has no network");
    std::process::exit(2)
}
