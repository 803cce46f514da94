//! A WAGI (CGI) endpoint: a wasip1 program that answers the request in its
//! environment and on stdin by printing CGI headers, a blank line and a
//! body. GET echoes the request line; POST answers `201 Created` with a
//! `Location` and the body it read; `?bare` prints a body without headers
//! (which the host answers with a 500).
//!
//! Hostile answers, for the tests of what a node keeps to itself:
//! `?headers=N` prints N header lines; `?frame=short` a `Content-Length`
//! shorter than its body, `?frame=chunked` a `Transfer-Encoding` it does
//! not follow; `?status=N` any status line; `?size=N` a body of N bytes;
//! `?spin` never ends (its function's `timeout` ends it).
//!
//! `?count` reads its body and answers how many bytes it read and when
//! its first read returned (milliseconds since the Unix epoch), which
//! shows whether it read the body as it arrived.

use std::io::{Read, Write};

fn main() {
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let method = var("REQUEST_METHOD");
    let query = var("QUERY_STRING");
    let mut out = std::io::stdout().lock();
    if query == "bare" {
        write!(out, "no headers here\n").unwrap();
        return;
    }
    if hostile(&mut out, &query) {
        return;
    }
    let line = format!(
        "method={method} script={} path={} query={query} host={} agent={}",
        var("SCRIPT_NAME"),
        var("PATH_INFO"),
        var("SERVER_NAME"),
        var("HTTP_USER_AGENT"),
    );
    if method == "POST" {
        let mut body = Vec::new();
        std::io::stdin().read_to_end(&mut body).unwrap();
        let length = var("CONTENT_LENGTH");
        write!(
            out,
            "Status: 201 Created\r\nContent-Type: text/plain\r\nLocation: {}\r\nX-Wagi: posted\r\n\r\n{line}\nlength={length} body={}\n",
            var("PATH_INFO"),
            String::from_utf8_lossy(&body)
        )
        .unwrap();
    } else {
        write!(
            out,
            "Content-Type: text/plain\nX-Wagi: {}\n\n{line}\n",
            var("GREETING")
        )
        .unwrap();
    }
}

/// Answers as a hostile script would, if `query` asks for it.
fn hostile(out: &mut impl Write, query: &str) -> bool {
    let (mode, value) = query.split_once('=').unwrap_or((query, ""));
    match mode {
        "headers" => {
            let count: usize = value.parse().unwrap();
            let mut head = String::with_capacity(count * 16);
            for i in 0..count {
                head.push_str(&format!("X-Bomb-{i}: {i}\n"));
            }
            write!(out, "{head}\nboom\n").unwrap();
        }
        "frame" if value == "short" => {
            write!(out, "Content-Length: 2\r\n\r\nHTTP/1.1 200 OK\r\nX-Smuggled: yes\r\n\r\n").unwrap();
        }
        "frame" => write!(out, "Transfer-Encoding: chunked\r\n\r\nnot chunked\n").unwrap(),
        "size" => {
            let size: usize = value.parse().unwrap();
            write!(out, "Content-Type: text/plain\n\n{}", "x".repeat(size)).unwrap();
        }
        "status" => write!(out, "Status: {value}\r\n\r\nstatus {value}\n").unwrap(),
        "count" => {
            let (mut read, mut first) = (0, None);
            let mut buf = vec![0; 64 << 10];
            loop {
                let n = std::io::stdin().read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                first.get_or_insert_with(std::time::SystemTime::now);
                read += n;
            }
            let first = first.map_or(0, |t| {
                t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
            });
            write!(out, "Content-Type: text/plain\n\nread={read} first_read_ms={first}\n").unwrap();
        }
        "spin" => {
            let mut x: u64 = 1;
            loop {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        _ => return false,
    }
    true
}
