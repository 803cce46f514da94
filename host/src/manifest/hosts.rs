//! `allowed_hosts`: where a function's guest may reach over the network
//! (spec section 7, "Network"). A pattern is `SCHEME://HOST[:PORT]`: scheme
//! `http` or `https`; a DNS name, an IPv4 address or a bracketed IPv6
//! address, or `*.` and a DNS name for every name under it; a port, `*` for
//! any, or none for the scheme's own (80, 443). No path: what is allowed is
//! a server, not parts of one.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::{ManifestError, Validator};

/// One entry of `allowed_hosts`, kept in the registry as the text it
/// displays as, so a stored function is read back through the same parser.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostPattern {
    pub https: bool,
    pub host: HostMatch,
    /// `None` is `*`: any port.
    pub port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// A DNS name, lowercase.
    Name(String),
    /// `*.suffix`: any name with at least one more label before `suffix`.
    Subdomains(String),
    Ip(IpAddr),
}

const FORM: &str = "write it as SCHEME://HOST[:PORT] with scheme http or https, e.g. \"https://huggingface.co\", \"http://127.0.0.1:8080\", \"https://*.example.com\" or \"http://localhost:*\"";

impl HostPattern {
    /// Parses one pattern; the error is the problem, in words.
    pub fn parse(text: &str) -> Result<Self, String> {
        let Some((scheme, authority)) = text.split_once("://") else {
            return Err(format!("host pattern `{text}` has no scheme"));
        };
        let https = match scheme.to_ascii_lowercase().as_str() {
            "http" => false,
            "https" => true,
            _ => {
                return Err(format!(
                    "host pattern `{text}` has scheme `{scheme}`, which is neither http nor https"
                ));
            }
        };
        if let Some(at) = authority.find(['/', '?', '#']) {
            return Err(format!(
                "host pattern `{text}` has a path (`{}`)",
                &authority[at..]
            ));
        }
        if authority.contains('@') {
            return Err(format!("host pattern `{text}` has a user name"));
        }
        let (host, port) = split_port(authority)
            .ok_or_else(|| format!("host pattern `{text}` has an unclosed `[`"))?;
        let host =
            parse_host(host).map_err(|problem| format!("host pattern `{text}` {problem}"))?;
        let port = match port {
            None => Some(if https { 443 } else { 80 }),
            Some("*") => None,
            Some(port) => match port.parse::<u16>() {
                Ok(port) if port != 0 => Some(port),
                _ => {
                    return Err(format!(
                        "host pattern `{text}` has port `{port}`, which is not a number from 1 to 65535 or `*`"
                    ));
                }
            },
        };
        Ok(Self { https, host, port })
    }

    /// Whether a request to `scheme://host:port` is allowed; `host` as a
    /// URI spells it (an IPv6 address in brackets).
    pub fn allows(&self, https: bool, host: &str, port: u16) -> bool {
        self.https == https && self.port.is_none_or(|p| p == port) && self.host.matches(host)
    }
}

impl HostMatch {
    /// Whether `host` (a name, or an address with or without brackets) is
    /// this host. Names compare without case and without a final dot.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        match self {
            Self::Name(name) => *name == host,
            Self::Subdomains(suffix) => host
                .strip_suffix(suffix.as_str())
                .and_then(|before| before.strip_suffix('.'))
                .is_some_and(|label| !label.is_empty()),
            Self::Ip(ip) => host.parse::<IpAddr>().is_ok_and(|h| h == *ip),
        }
    }
}

/// `host` and the text after its `:`, if any; `None` for `[` unclosed.
fn split_port(authority: &str) -> Option<(&str, Option<&str>)> {
    if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (host, rest) = authority.split_at(end + 1);
        return Some((
            host,
            rest.strip_prefix(':')
                .or(Some(rest).filter(|r| !r.is_empty())),
        ));
    }
    Some(match authority.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    })
}

/// The host part; the error reads after the pattern's name.
fn parse_host(host: &str) -> Result<HostMatch, String> {
    if host.is_empty() {
        return Err("has no host".into());
    }
    if let Some(inner) = host.strip_prefix('[') {
        return inner
            .strip_suffix(']')
            .and_then(|ip| ip.parse::<Ipv6Addr>().ok())
            .map(|ip| HostMatch::Ip(IpAddr::V6(ip)))
            .ok_or_else(|| format!("has `{host}`, which is not an IPv6 address"));
    }
    if host == "*" {
        return Err("has host `*`, which would allow every host: name them".into());
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(HostMatch::Ip(IpAddr::V4(ip)));
    }
    let (subdomains, name) = match host.strip_prefix("*.") {
        Some(name) => (true, name),
        None => (false, host),
    };
    if name.contains('*') {
        return Err(format!(
            "has `*` in `{host}` other than as its whole first label (`*.example.com`)"
        ));
    }
    if !is_dns_name(name) {
        return Err(format!(
            "has host `{host}`, which is not a DNS name (labels of letters, digits and `-`) or an IP address"
        ));
    }
    let name = name.to_ascii_lowercase();
    Ok(if subdomains {
        HostMatch::Subdomains(name)
    } else {
        HostMatch::Name(name)
    })
}

fn is_dns_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
        // All digits would read as a mistyped IPv4 address.
        && !name.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://")?;
        match &self.host {
            HostMatch::Name(name) => write!(f, "{name}")?,
            HostMatch::Subdomains(suffix) => write!(f, "*.{suffix}")?,
            HostMatch::Ip(IpAddr::V4(ip)) => write!(f, "{ip}")?,
            HostMatch::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]")?,
        }
        match self.port {
            None => write!(f, ":*"),
            Some(port) => write!(f, ":{port}"),
        }
    }
}

impl TryFrom<String> for HostPattern {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        Self::parse(&text)
    }
}

impl From<HostPattern> for String {
    fn from(pattern: HostPattern) -> String {
        pattern.to_string()
    }
}

impl Validator<'_> {
    /// Each pattern parsed, the first bad one reported at its position.
    pub(super) fn allowed_hosts(
        &self,
        raw: &[Spanned<String>],
    ) -> Result<Vec<HostPattern>, ManifestError> {
        raw.iter()
            .map(|pattern| {
                HostPattern::parse(pattern.get_ref())
                    .map_err(|problem| self.error(Some(pattern.span()), problem, FORM))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> HostPattern {
        HostPattern::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn patterns_parse_into_scheme_host_and_port() {
        assert_eq!(
            ok("http://127.0.0.1:8080").to_string(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            ok("https://HuggingFace.co").to_string(),
            "https://huggingface.co:443"
        );
        assert_eq!(
            ok("https://*.example.com").to_string(),
            "https://*.example.com:443"
        );
        assert_eq!(ok("http://localhost:*").to_string(), "http://localhost:*");
        assert_eq!(ok("http://[::1]:8080").to_string(), "http://[::1]:8080");
        assert_eq!(ok("http://[::1]").port, Some(80));
    }

    #[test]
    fn malformed_patterns_say_what_is_wrong() {
        for (text, problem) in [
            ("huggingface.co", "has no scheme"),
            ("ftp://example.com", "neither http nor https"),
            ("https://example.com/models", "has a path (`/models`)"),
            ("https://example.com/", "has a path (`/`)"),
            ("https://", "has no host"),
            ("https://:443", "has no host"),
            ("https://*", "would allow every host"),
            (
                "https://a.*.example.com",
                "other than as its whole first label",
            ),
            (
                "https://*example.com",
                "other than as its whole first label",
            ),
            ("http://example.com:http", "not a number from 1 to 65535"),
            ("http://example.com:0", "not a number from 1 to 65535"),
            ("http://example.com:70000", "not a number from 1 to 65535"),
            ("http://user@example.com", "has a user name"),
            ("http://[::1", "unclosed `[`"),
            ("http://[nope]:80", "not an IPv6 address"),
            ("http://exa_mple.com", "not a DNS name"),
            ("http://1.2.3", "not a DNS name"),
        ] {
            let error = HostPattern::parse(text).unwrap_err();
            assert!(error.contains(problem), "{text}: {error}");
        }
    }

    #[test]
    fn requests_match_scheme_host_and_port() {
        let local = ok("http://127.0.0.1:8080");
        assert!(local.allows(false, "127.0.0.1", 8080));
        assert!(!local.allows(false, "127.0.0.1", 8081));
        assert!(!local.allows(true, "127.0.0.1", 8080));
        assert!(!local.allows(false, "localhost", 8080));
        let hf = ok("https://huggingface.co");
        assert!(hf.allows(true, "HUGGINGFACE.CO.", 443));
        assert!(!hf.allows(true, "cdn.huggingface.co", 443));
        assert!(!hf.allows(true, "huggingface.co.evil.com", 443));
        let any = ok("https://*.example.com");
        assert!(any.allows(true, "a.example.com", 443));
        assert!(any.allows(true, "a.b.example.com", 443));
        assert!(!any.allows(true, "example.com", 443));
        assert!(!any.allows(true, "aexample.com", 443));
        let ports = ok("http://localhost:*");
        assert!(ports.allows(false, "localhost", 1));
        assert!(ok("http://[::1]:80").allows(false, "[::1]", 80));
    }

    #[test]
    fn patterns_survive_the_registry() {
        let patterns = vec![ok("https://*.example.com"), ok("http://localhost:*")];
        let json = serde_json::to_string(&patterns).unwrap();
        assert_eq!(
            serde_json::from_str::<Vec<HostPattern>>(&json).unwrap(),
            patterns
        );
    }
}
