//! What a function's `allowed_hosts` lets its guest reach, checked at each
//! of the three doors a component has to the network:
//!
//! - an HTTP request (`wasi:http/outgoing-handler`) by its URI: scheme, host
//!   as the guest wrote it, port (the scheme's when none); see `http_view`.
//! - a name lookup (`wasi:sockets/ip-name-lookup`): only a name that some
//!   pattern's host matches is resolved; any other is a resolver failure.
//! - a TCP connection (`wasi:sockets/tcp`) by address, since that is all a
//!   connect carries: to an address some pattern names literally, to a
//!   loopback address for `localhost`, or to an address that a pattern's
//!   DNS name resolves to on the host at the time of the connect (so a
//!   guest may connect to `huggingface.co:443` as well as fetch from it).
//!   A `*.` pattern names no address, so it allows HTTP requests only. The
//!   port must match as for HTTP; the scheme only sets the default port.
//!
//! UDP, listening and accepting are never allowed. With no `allowed_hosts`
//! the guest gets no sockets and no lookups at all.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::sockets::SocketAddrUse;

use crate::manifest::{HostMatch, HostPattern};

/// One function's allowed hosts, shared by its instances' checks.
#[derive(Clone)]
pub struct Outbound {
    patterns: Arc<[HostPattern]>,
}

impl Outbound {
    pub fn new(patterns: &[HostPattern]) -> Self {
        Self {
            patterns: patterns.into(),
        }
    }

    /// Whether an HTTP request to `uri` may go out.
    pub fn allows_request(&self, uri: &http::Uri) -> bool {
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return false,
        };
        let Some(authority) = uri.authority() else {
            return false;
        };
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        self.patterns
            .iter()
            .any(|p| p.allows(https, authority.host(), port))
    }

    /// Whether `name` may be resolved.
    pub fn allows_lookup(&self, name: &str) -> bool {
        self.patterns.iter().any(|p| p.host.matches(name))
    }

    /// Whether a TCP connection to `addr` may be made (see the module's doc).
    pub async fn allows_connect(&self, addr: SocketAddr) -> bool {
        let ip = addr.ip().to_canonical();
        let candidates = || {
            self.patterns
                .iter()
                .filter(|p| p.port.is_none_or(|port| port == addr.port()))
        };
        let literal = candidates().any(|p| match &p.host {
            HostMatch::Ip(allowed) => *allowed == ip,
            HostMatch::Name(name) => name == "localhost" && ip.is_loopback(),
            HostMatch::Subdomains(_) => false,
        });
        if literal {
            return true;
        }
        for pattern in candidates() {
            if let HostMatch::Name(name) = &pattern.host
                && resolves_to(name, ip).await
            {
                return true;
            }
        }
        false
    }

    /// Grants the WASI context sockets, lookups and the address check,
    /// or nothing when there are no patterns.
    pub fn grant(&self, builder: &mut WasiCtxBuilder) {
        let any = !self.patterns.is_empty();
        builder
            .allow_tcp(any)
            .allow_udp(false)
            .allow_ip_name_lookup(any);
        if any {
            let policy = self.clone();
            builder.socket_addr_check(move |addr, use_| {
                let policy = policy.clone();
                Box::pin(async move {
                    match use_ {
                        SocketAddrUse::TcpConnect => policy.allows_connect(addr).await,
                        // The implicit bind of a connect: any local address.
                        SocketAddrUse::TcpBind => addr.ip().is_unspecified() && addr.port() == 0,
                        _ => false,
                    }
                })
            });
        }
    }
}

/// Whether `name` resolves, here and now, to `ip`.
async fn resolves_to(name: &str, ip: IpAddr) -> bool {
    match tokio::net::lookup_host((name, 0)).await {
        Ok(mut addrs) => addrs.any(|a| a.ip().to_canonical() == ip),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(patterns: &[&str]) -> Outbound {
        let patterns: Vec<HostPattern> = patterns
            .iter()
            .map(|p| HostPattern::parse(p).unwrap())
            .collect();
        Outbound::new(&patterns)
    }

    #[test]
    fn requests_are_checked_by_scheme_host_and_port() {
        let p = policy(&["http://127.0.0.1:8080", "https://huggingface.co"]);
        let allows = |uri: &str| p.allows_request(&uri.parse().unwrap());
        assert!(allows("http://127.0.0.1:8080/file"));
        assert!(!allows("http://127.0.0.1:8081/file"));
        assert!(!allows("http://127.0.0.1/file"));
        assert!(allows("https://huggingface.co/models"));
        assert!(allows("https://huggingface.co:443/"));
        assert!(!allows("http://huggingface.co/"));
        assert!(!allows("https://cdn.huggingface.co/"));
        assert!(!policy(&[]).allows_request(&"http://127.0.0.1:8080/".parse().unwrap()));
    }

    #[test]
    fn lookups_only_for_allowed_names() {
        let p = policy(&["https://huggingface.co", "https://*.example.com"]);
        assert!(p.allows_lookup("huggingface.co"));
        assert!(p.allows_lookup("a.example.com"));
        assert!(!p.allows_lookup("example.com"));
        assert!(!p.allows_lookup("evil.com"));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn connects_only_to_allowed_addresses_and_ports() {
        let p = policy(&["http://127.0.0.1:8080", "http://localhost:*"]);
        assert!(p.allows_connect("127.0.0.1:8080".parse().unwrap()).await);
        assert!(p.allows_connect("[::1]:9".parse().unwrap()).await);
        assert!(
            p.allows_connect("[::ffff:127.0.0.1]:9".parse().unwrap())
                .await
        );
        assert!(!p.allows_connect("10.0.0.1:8080".parse().unwrap()).await);
        let q = policy(&["http://127.0.0.1:8080"]);
        assert!(!q.allows_connect("127.0.0.1:8081".parse().unwrap()).await);
    }
}
