//! Which hosts a worker may connect to (`worker --instance-hosts`).
//!
//! An API token lets its holder register an instance that names an existing password
//! reference and a host of their own; only the workers' operator can say where the
//! fleet's passwords may go. With a list, a worker refuses (fatally, before connecting,
//! so before any password is sent) every host it does not match. Without one, any host
//! is allowed, as before (docs/SECURITY.md, residual risks).

use std::net::IpAddr;

/// One entry: an exact name, `*.suffix`, an IP address, or a network in CIDR form.
#[derive(Debug, Clone, PartialEq)]
enum Pattern {
    Name(String),
    Suffix(String),
    Net(IpAddr, u8),
}

/// The parsed `--instance-hosts` list; empty allows every host.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostAllowList(Vec<Pattern>);

impl HostAllowList {
    /// Parses a comma-separated list (`db1.internal, *.db.internal, 10.20.0.0/16, ::1`).
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut out = vec![];
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            out.push(parse_one(item).ok_or_else(|| {
                format!(
                    "'{item}' is not a host pattern (a host name, *.domain, an IP address or a network like 10.0.0.0/8)"
                )
            })?);
        }
        Ok(HostAllowList(out))
    }

    /// Whether the list is empty (every host allowed).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Each entry as written back: `name`, `*.domain`, an address, `net/bits`.
    pub fn describe(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|p| match p {
                Pattern::Name(n) => n.clone(),
                Pattern::Suffix(s) => format!("*{s}"),
                Pattern::Net(ip, bits)
                    if u32::from(*bits) == if ip.is_ipv4() { 32 } else { 128 } =>
                {
                    ip.to_string()
                }
                Pattern::Net(ip, bits) => format!("{ip}/{bits}"),
            })
            .collect()
    }

    /// Whether a worker may connect to `host`. Names are matched without resolving
    /// them (a network pattern matches only an address written as one): resolving here
    /// and connecting later could be answered differently.
    pub fn allows(&self, host: &str) -> bool {
        if self.0.is_empty() {
            return true;
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let ip: Option<IpAddr> = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .ok();
        self.0.iter().any(|p| match (p, ip) {
            (Pattern::Name(n), _) => *n == host,
            (Pattern::Suffix(s), None) => host.len() > s.len() && host.ends_with(s.as_str()),
            (Pattern::Net(net, bits), Some(ip)) => in_net(ip, *net, *bits),
            _ => false,
        })
    }
}

/// The characters of a host name or an IP address (IPv6 with or without brackets), as
/// a pattern for the API's schema; [`is_network_host`] is the same rule.
pub const HOST_PATTERN: &str = "^[A-Za-z0-9._:\\[\\]-]+$";

/// Whether `host` is made of the characters of a DNS name or an IP address. Anything
/// else, a path above all (a PostgreSQL host starting with '/' is a Unix socket folder on
/// the worker's own machine, reached with the worker's identity), is no instance.
pub fn is_network_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '[' | ']' | '-'))
}

fn parse_one(item: &str) -> Option<Pattern> {
    let item = item.to_ascii_lowercase();
    if let Some((addr, bits)) = item.split_once('/') {
        let addr: IpAddr = addr.parse().ok()?;
        let bits: u8 = bits.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        return (bits <= max).then_some(Pattern::Net(addr, bits));
    }
    if let Ok(addr) = item
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        return Some(Pattern::Net(addr, bits));
    }
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.split('.')
                .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
    };
    if let Some(domain) = item.strip_prefix("*.") {
        return name_ok(domain).then(|| Pattern::Suffix(format!(".{domain}")));
    }
    name_ok(&item).then_some(Pattern::Name(item.trim_end_matches('.').to_string()))
}

fn in_net(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_suffixes_addresses_and_networks_match_only_what_they_say() {
        let l = HostAllowList::parse("db1.internal, *.prod.internal, 10.20.0.0/16, ::1, 192.0.2.7")
            .unwrap();
        for ok in [
            "db1.internal",
            "DB1.Internal.",
            "a.prod.internal",
            "x.y.prod.internal",
            "10.20.3.4",
            "::1",
            "[::1]",
            "192.0.2.7",
        ] {
            assert!(l.allows(ok), "{ok}");
        }
        for no in [
            "db2.internal",
            "prod.internal",
            "evilprod.internal",
            "prod.internal.evil.example",
            "10.21.0.1",
            "192.0.2.8",
            "::2",
            "attacker.example",
            "",
        ] {
            assert!(!l.allows(no), "{no}");
        }
        assert!(HostAllowList::default().allows("anything.example"));
    }

    #[test]
    fn a_socket_folder_or_url_is_no_network_host() {
        for ok in [
            "db1.internal",
            "db_1.internal.",
            "10.0.0.1",
            "::1",
            "[fe80::1]",
            "localhost",
        ] {
            assert!(is_network_host(ok), "{ok}");
        }
        for no in ["/var/run/postgresql", "", "http://x", "a b", "@x", "db/x"] {
            assert!(!is_network_host(no), "{no}");
        }
    }

    #[test]
    fn a_pattern_that_is_not_a_host_is_refused_with_its_text() {
        for bad in ["db_1", "*.", "10.0.0.0/33", "http://x", "*", "a..b"] {
            let e = HostAllowList::parse(bad).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
        assert!(HostAllowList::parse(" , ").unwrap().is_empty());
    }
}
