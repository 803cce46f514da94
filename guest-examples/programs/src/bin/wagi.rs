//! A WAGI (CGI) endpoint: a wasip1 program that answers the request in its
//! environment and on stdin by printing CGI headers, a blank line and a
//! body. GET echoes the request line; POST answers `201 Created` with a
//! `Location` and the body it read; `?bare` prints a body without headers
//! (which the host answers with a 500).

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
