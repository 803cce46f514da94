//! HTTP/1.1 by hand over TCP, for the tests that play a hostile client:
//! what a real client library would refuse to send (two Host headers, a
//! half-sent head, pipelined requests) or would hide (the bytes of a
//! response's framing).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Sends `raw` on a new connection and reads what comes back until the
/// node closes it or `bound` passes.
pub fn exchange(addr: SocketAddr, raw: &[u8], bound: Duration) -> String {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(bound)).unwrap();
    tcp.write_all(raw).unwrap();
    let mut got = Vec::new();
    let _ = tcp.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

/// A GET of `path` with `Host: host` as one request on its own
/// connection: (status, body).
#[track_caller]
pub fn get(addr: SocketAddr, path: &str, host: &str) -> (u16, String) {
    let raw = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let answer = exchange(addr, raw.as_bytes(), Duration::from_secs(30));
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("GET {path}: no status line in {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// A process's resident memory in MB and its open descriptors, from /proc.
pub fn rss_mb_and_fds(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    (kb / 1024, fds)
}

/// How many connections process `pid` holds open on its port `port`: its
/// descriptors' sockets that the kernel lists as TCP connections (not the
/// listener) on that port. A connection the process closed no longer
/// counts, though the kernel may still be sending what it had written.
pub fn connections_held(pid: u32, port: u16) -> usize {
    let held: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
                .filter_map(|link| {
                    let link = link.to_string_lossy().into_owned();
                    Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    let port = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|table| table.lines().skip(1).map(str::to_owned).collect::<Vec<_>>())
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 9
                && fields[1].ends_with(&port)
                && fields[3] != "0A"
                && held.contains(fields[9])
        })
        .count()
}
