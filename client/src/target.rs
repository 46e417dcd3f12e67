//! Where the server is: `--server` as people write it, resolved to every address it names.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use crate::ClientError;

/// The port a `--server` without one means.
pub const DEFAULT_PORT: u16 = 7777;

/// A server as the user named it, with every address the name resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The name as given (for messages).
    pub name: String,
    /// The addresses to try, in order: IPv6 and IPv4 alternating, as RFC 8305 §4 asks, so
    /// that a dead first family costs one attempt, not one per address.
    pub addrs: Vec<SocketAddr>,
}

impl Target {
    /// A target of one address.
    pub fn addr(addr: SocketAddr) -> Self {
        Target {
            name: addr.to_string(),
            addrs: vec![addr],
        }
    }
}

/// Splits `server` into a host and a port: `host:port`, `host` (port 7777), `[v6]:port`,
/// `[v6]` and a bare IPv6 address.
pub(crate) fn split_host_port(server: &str) -> Result<(String, u16), ClientError> {
    let bad = |why: &str| ClientError::Resolve(format!("{server}: {why}"));
    if let Ok(addr) = server.parse::<SocketAddr>() {
        return Ok((addr.ip().to_string(), addr.port()));
    }
    if let Ok(ip) = server.parse::<IpAddr>() {
        return Ok((ip.to_string(), DEFAULT_PORT));
    }
    if let Some(inner) = server.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
        return Ok((inner.to_string(), DEFAULT_PORT));
    }
    match server.rsplit_once(':') {
        None if !server.is_empty() => Ok((server.to_string(), DEFAULT_PORT)),
        None => Err(bad("no host")),
        Some(("", _)) => Err(bad("no host")),
        Some((host, port)) => {
            let port = port.parse().map_err(|_| bad("the port is not a number"))?;
            Ok((host.trim_matches(['[', ']']).to_string(), port))
        }
    }
}

/// Orders addresses IPv6, IPv4, IPv6, … starting with the family the resolver put first,
/// keeping the resolver's order within each family and dropping repeats.
pub(crate) fn interleave(addrs: impl IntoIterator<Item = SocketAddr>) -> Vec<SocketAddr> {
    let mut seen = Vec::new();
    for a in addrs {
        if !seen.contains(&a) {
            seen.push(a);
        }
    }
    let first_v6 = seen.first().is_some_and(SocketAddr::is_ipv6);
    let (mut ours, mut other): (Vec<_>, Vec<_>) =
        seen.into_iter().partition(|a| a.is_ipv6() == first_v6);
    ours.reverse();
    other.reverse();
    let mut out = Vec::with_capacity(ours.len() + other.len());
    while let Some(a) = ours.pop() {
        out.push(a);
        if let Some(b) = other.pop() {
            out.push(b);
        }
    }
    out.extend(other.into_iter().rev());
    out
}

/// Resolves `server` to every address it names.
pub fn resolve_all(server: &str) -> Result<Target, ClientError> {
    let (host, port) = split_host_port(server)?;
    let addrs = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| ClientError::Resolve(format!("{server}: {e}")))?;
    let addrs = interleave(addrs);
    if addrs.is_empty() {
        return Err(ClientError::Resolve(server.to_string()));
    }
    Ok(Target {
        name: server.to_string(),
        addrs,
    })
}

/// Resolves `server` (`host:port` or `host`, names included) to its first address.
pub fn resolve(server: &str) -> Result<SocketAddr, ClientError> {
    Ok(resolve_all(server)?.addrs[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &str) -> Option<(String, u16)> {
        split_host_port(s).ok()
    }

    #[test]
    fn a_server_without_a_port_uses_7777() {
        let hp = |h: &str, p| Some((h.to_string(), p));
        assert_eq!(split("127.0.0.1:9"), hp("127.0.0.1", 9));
        assert_eq!(split("127.0.0.1"), hp("127.0.0.1", 7777));
        assert_eq!(split("localhost"), hp("localhost", 7777));
        assert_eq!(split("board.example:80"), hp("board.example", 80));
        assert_eq!(split("[::1]:9"), hp("::1", 9));
        assert_eq!(split("[::1]"), hp("::1", 7777));
        assert_eq!(split("::1"), hp("::1", 7777));
        assert_eq!(split("localhost:http"), None);
        assert_eq!(split("localhost:99999"), None);
        assert_eq!(split(""), None);
        assert_eq!(split(":80"), None);
    }

    #[test]
    fn addresses_alternate_between_families() {
        let a = |s: &str| s.parse::<SocketAddr>().expect("addr");
        let (v6a, v6b, v4a, v4b) = (
            a("[::1]:1"),
            a("[::2]:1"),
            a("127.0.0.1:1"),
            a("10.0.0.1:1"),
        );
        assert_eq!(interleave([v6a, v6b, v4a, v4b]), vec![v6a, v4a, v6b, v4b]);
        assert_eq!(interleave([v4a, v4b, v6a]), vec![v4a, v6a, v4b]);
        assert_eq!(
            interleave([v4a, v4a, v6a, v6a]),
            vec![v4a, v6a],
            "no repeats"
        );
        assert_eq!(interleave([]), Vec::<SocketAddr>::new());
    }

    #[test]
    fn names_resolve_to_every_address() {
        let t = resolve_all("127.0.0.1").expect("resolves");
        assert_eq!(t.addrs, vec!["127.0.0.1:7777".parse().expect("addr")]);
        let t = resolve_all("localhost:5").expect("localhost resolves");
        assert!(
            t.addrs
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 5)
        );
        assert!(resolve_all("no-such-host.invalid").is_err());
    }
}
