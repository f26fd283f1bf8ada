//! Addresses as people write them: `tracker.lab`, `tracker.lab:6969`, `10.0.0.1`, `[fd00::1]:7000`,
//! and for a listener a port alone. Host names are resolved when used, not when parsed, so a
//! session that reconnects follows a DNS change.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// The tracker's port when none is given.
pub const DEFAULT_TRACKER_PORT: u16 = 6969;

/// Why an address could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    /// Nothing was given.
    #[error("empty address")]
    Empty,
    /// The port is not a number from 1 to 65535.
    #[error("invalid port {0:?}")]
    Port(String),
    /// An IPv6 address with a port must be in brackets, `[::1]:6969`.
    #[error("{0:?}: an IPv6 address with a port goes in brackets, e.g. [::1]:6969")]
    Brackets(String),
    /// Not an IP address or a host name.
    #[error("{0:?} is neither an IP address nor a host name")]
    Host(String),
    /// Not a listen address.
    #[error("{0:?}: give PORT, IP:PORT or [IPv6]:PORT")]
    Listen(String),
    /// A list of trackers names the same one twice.
    #[error("tracker {0} is listed twice")]
    Duplicate(String),
}

/// A host (name or IP) and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    host: Host,
    port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Host {
    Ip(IpAddr),
    Name(String),
}

impl HostPort {
    /// Parses `HOST[:PORT]`, with `default_port` when no port is given. IPv6 literals go in
    /// brackets when a port follows; a bare IPv6 literal takes the default port.
    pub fn parse(s: &str, default_port: u16) -> Result<Self, AddrError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(AddrError::Empty);
        }
        if let Some(rest) = s.strip_prefix('[') {
            let (ip, after) = rest.split_once(']').ok_or_else(|| AddrError::Host(s.to_owned()))?;
            let ip: Ipv6Addr = ip.parse().map_err(|_| AddrError::Host(s.to_owned()))?;
            let port = match after {
                "" => default_port,
                p => port(p.strip_prefix(':').ok_or_else(|| AddrError::Host(s.to_owned()))?)?,
            };
            return Ok(Self { host: Host::Ip(IpAddr::V6(ip)), port });
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Self { host: Host::Ip(ip), port: default_port });
        }
        let (host, port) = match s.rsplit_once(':') {
            Some((h, _)) if h.contains(':') => return Err(AddrError::Brackets(s.to_owned())),
            Some((h, p)) => (h, port(p)?),
            None => (s, default_port),
        };
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(Self { host: Host::Ip(ip), port });
        }
        if !is_host_name(host) {
            return Err(AddrError::Host(host.to_owned()));
        }
        Ok(Self { host: Host::Name(host.to_ascii_lowercase()), port })
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The IP, when the host is an IP address rather than a name.
    pub fn ip(&self) -> Option<IpAddr> {
        match self.host {
            Host::Ip(ip) => Some(ip),
            Host::Name(_) => None,
        }
    }

    /// Resolves the host (a lookup for a name, none for an IP), IPv4 addresses first, so that an
    /// IPv4-only network is tried before an IPv6 address it cannot reach.
    pub async fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        let mut addrs: Vec<SocketAddr> = match &self.host {
            Host::Ip(ip) => vec![SocketAddr::new(*ip, self.port)],
            Host::Name(name) => tokio::net::lookup_host((name.as_str(), self.port)).await?.collect(),
        };
        addrs.sort_by_key(SocketAddr::is_ipv6);
        addrs.dedup();
        if addrs.is_empty() {
            return Err(std::io::Error::new(std::io::ErrorKind::NotFound, format!("{self} resolves to no address")));
        }
        Ok(addrs)
    }
}

fn port(p: &str) -> Result<u16, AddrError> {
    match p.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(AddrError::Port(p.to_owned())),
    }
}

/// RFC 1123 host names: labels of letters, digits and hyphens, not starting or ending with a
/// hyphen, at most 63 bytes each and 253 in all.
fn is_host_name(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            Host::Ip(ip) => write!(f, "{ip}:{}", self.port),
            Host::Name(n) => write!(f, "{n}:{}", self.port),
        }
    }
}

impl From<SocketAddr> for HostPort {
    fn from(a: SocketAddr) -> Self {
        Self { host: Host::Ip(a.ip()), port: a.port() }
    }
}

impl FromStr for HostPort {
    type Err = AddrError;
    /// `HOST[:PORT]` with the tracker's default port.
    fn from_str(s: &str) -> Result<Self, AddrError> {
        Self::parse(s, DEFAULT_TRACKER_PORT)
    }
}

/// Parses a comma-separated list of trackers (`a,b:7000,[fd00::1]`), refusing an empty list and
/// one that names a tracker twice.
pub fn parse_trackers(s: &str) -> Result<Vec<HostPort>, AddrError> {
    let mut out: Vec<HostPort> = Vec::new();
    for part in s.split(',') {
        let t: HostPort = part.parse()?;
        if out.contains(&t) {
            return Err(AddrError::Duplicate(t.to_string()));
        }
        out.push(t);
    }
    Ok(out)
}

/// Parses a listen address: `PORT` alone (every interface, IPv4 and IPv6), `IP:PORT` or
/// `[IPv6]:PORT`. Port 0 picks a free port.
pub fn parse_listen(s: &str) -> Result<SocketAddr, AddrError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(AddrError::Empty);
    }
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port));
    }
    s.parse::<SocketAddr>().map_err(|_| AddrError::Listen(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(s: &str) -> Result<String, AddrError> {
        s.parse::<HostPort>().map(|h| h.to_string())
    }

    #[test]
    fn addresses_as_people_write_them() {
        assert_eq!(hp("localhost").unwrap(), "localhost:6969");
        assert_eq!(hp("Tracker.Lab:7000").unwrap(), "tracker.lab:7000");
        assert_eq!(hp("127.0.0.1").unwrap(), "127.0.0.1:6969");
        assert_eq!(hp(" 10.0.0.1:80 ").unwrap(), "10.0.0.1:80");
        assert_eq!(hp("::1").unwrap(), "[::1]:6969");
        assert_eq!(hp("[fd00::1]").unwrap(), "[fd00::1]:6969");
        assert_eq!(hp("[fd00::1]:7000").unwrap(), "[fd00::1]:7000");
    }

    #[test]
    fn bad_addresses_say_why() {
        assert_eq!(hp(""), Err(AddrError::Empty));
        assert_eq!(hp("host:0"), Err(AddrError::Port("0".into())));
        assert_eq!(hp("host:http"), Err(AddrError::Port("http".into())));
        assert_eq!(hp("host:70000"), Err(AddrError::Port("70000".into())));
        assert_eq!(hp("fd00::1:7000:x"), Err(AddrError::Brackets("fd00::1:7000:x".into())));
        assert_eq!(hp("[fd00::1"), Err(AddrError::Host("[fd00::1".into())));
        assert_eq!(hp("bad_name"), Err(AddrError::Host("bad_name".into())));
        assert_eq!(hp("-x.lab"), Err(AddrError::Host("-x.lab".into())));
    }

    #[test]
    fn tracker_lists() {
        let l = parse_trackers("a,b:7000,[fd00::1]").unwrap();
        assert_eq!(l.iter().map(ToString::to_string).collect::<Vec<_>>(), ["a:6969", "b:7000", "[fd00::1]:6969"]);
        assert_eq!(parse_trackers("a,A:6969"), Err(AddrError::Duplicate("a:6969".into())));
        assert_eq!(parse_trackers("a,,b"), Err(AddrError::Empty));
        assert_eq!(parse_trackers(""), Err(AddrError::Empty));
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(parse_listen("7000").unwrap(), "[::]:7000".parse().unwrap());
        assert_eq!(parse_listen("0.0.0.0:0").unwrap(), "0.0.0.0:0".parse().unwrap());
        assert_eq!(parse_listen("[::1]:5").unwrap(), "[::1]:5".parse().unwrap());
        assert!(parse_listen("").is_err());
        assert!(parse_listen("10.0.0.1").is_err());
        assert!(parse_listen("localhost:7000").is_err());
        assert_eq!(parse_listen("::1:7000"), Err(AddrError::Listen("::1:7000".into())));
    }

    #[tokio::test]
    async fn names_resolve_when_used() {
        let a: HostPort = "localhost:7000".parse().unwrap();
        let addrs = a.resolve().await.unwrap();
        assert!(addrs.iter().all(|a| a.port() == 7000 && a.ip().is_loopback()), "{addrs:?}");
        let ip: HostPort = "10.1.2.3".parse().unwrap();
        assert_eq!(ip.resolve().await.unwrap(), vec!["10.1.2.3:6969".parse().unwrap()]);
    }
}
