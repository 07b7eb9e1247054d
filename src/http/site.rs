//! Which requests are this server's to answer, and which may change something.
//!
//! DNS rebinding: a page on evil.example whose name is re-pointed at 127.0.0.1 talks to
//! a loopback `serve` as its own origin, so `Origin` and `Host` agree and only the Host
//! name gives it away. Every route therefore answers only the server's own names (421
//! otherwise). Cross-site requests: another site's page may send a POST without any
//! preflight (a text/plain, form or empty body), so a request that changes something is
//! refused when the browser says (`Sec-Fetch-Site`) or shows (`Origin`) that it comes
//! from another site. A request with neither header (curl, the CLI, producers) is not a
//! browser's cross-site request.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::Response;

use super::{ApiError, AppState};

/// The names and origins a `serve` calls its own (`--allowed-host`, `--public-url`,
/// the bound address).
#[derive(Clone, Debug, Default)]
pub struct Site {
    /// `--allowed-host` names, lower case, without a port or a final dot.
    names: Vec<String>,
    /// `--allowed-host` values that are IP addresses.
    ips: Vec<IpAddr>,
    /// `--public-url`: its origin (`https://host[:port]`, no default port) and host.
    public: Option<(String, Host)>,
    /// The bound address, once bound.
    bind: Option<SocketAddr>,
}

/// A `Host` as a name or an address; the port does not matter to whom it names.
#[derive(Clone, Debug, PartialEq)]
enum Host {
    Ip(IpAddr),
    Name(String),
}

impl Site {
    /// A site with these extra host names (`--allowed-host`) and public URL
    /// (`--public-url`); the error names the flag and the value at fault.
    pub fn new(allowed_hosts: &[String], public_url: Option<&str>) -> Result<Site, String> {
        let mut site = Site::default();
        for raw in allowed_hosts
            .iter()
            .map(|h| h.trim())
            .filter(|h| !h.is_empty())
        {
            match parse_host(raw) {
                Some(Host::Ip(ip)) => site.ips.push(ip.to_canonical()),
                Some(Host::Name(n)) => site.names.push(n),
                None => {
                    return Err(format!(
                        "--allowed-host '{}' is not a host name (try syncpool.example.com)",
                        printable(raw)
                    ));
                }
            }
        }
        if let Some(url) = public_url.map(str::trim).filter(|u| !u.is_empty()) {
            site.public = Some(parse_public_url(url).ok_or_else(|| {
                format!(
                    "--public-url '{}' is not an http(s) URL of a site's root (try https://syncpool.example.com)",
                    printable(url)
                )
            })?);
        }
        Ok(site)
    }

    /// The same site, bound to `addr` (its address becomes one of its names).
    pub fn bound(mut self, addr: SocketAddr) -> Site {
        self.bind = Some(addr);
        self
    }

    /// Whether the public URL is https: the console's cookie is then `Secure`.
    pub fn public_https(&self) -> bool {
        self.public
            .as_ref()
            .is_some_and(|(origin, _)| origin.starts_with("https://"))
    }

    /// Whether a request with this `Host` (None: the request named none, as no browser
    /// does) is addressed to this server. `token_required`: a server that wants a token
    /// bound to every interface with no names given answers any Host, as it cannot know
    /// its names and a rebound page has no token to offer.
    fn host_ok(&self, host: Option<&str>, token_required: bool) -> bool {
        let Some(host) = host else {
            return true;
        };
        let unspecified = self.bind.is_some_and(|b| b.ip().is_unspecified());
        if unspecified
            && token_required
            && self.names.is_empty()
            && self.ips.is_empty()
            && self.public.is_none()
        {
            return true;
        }
        match parse_host(host) {
            // An address cannot be a rebound name: it reaches whoever has it. A server
            // bound to every interface has addresses it cannot list.
            Some(Host::Ip(ip)) => {
                let ip = ip.to_canonical();
                ip.is_loopback()
                    || unspecified
                    || self.bind.is_some_and(|b| b.ip().to_canonical() == ip)
                    || self.ips.contains(&ip)
                    || self
                        .public
                        .as_ref()
                        .is_some_and(|(_, h)| *h == Host::Ip(ip))
            }
            Some(Host::Name(n)) => {
                n == "localhost"
                    || self.names.contains(&n)
                    || self
                        .public
                        .as_ref()
                        .is_some_and(|(_, h)| matches!(h, Host::Name(p) if *p == n))
            }
            None => false,
        }
    }

    /// Whether a browser sent this request from another site's page: it says so in
    /// `Sec-Fetch-Site` (`same-site` too: a sibling subdomain is another site to us), or
    /// its `Origin` is neither the origin it asked (its `Host`) nor the public URL's.
    pub fn cross_site(&self, headers: &HeaderMap) -> bool {
        let fetch_site = headers
            .get("sec-fetch-site")
            .map(|v| v.to_str().unwrap_or("?"))
            .unwrap_or("");
        if fetch_site.eq_ignore_ascii_case("cross-site")
            || fetch_site.eq_ignore_ascii_case("same-site")
        {
            return true;
        }
        let Some(origin) = headers.get(header::ORIGIN) else {
            return false;
        };
        let Some(origin) = origin.to_str().ok().and_then(normal_origin) else {
            // "null" (a sandboxed frame, a data: URL) or garbage: nobody we know.
            return true;
        };
        if self.public.as_ref().is_some_and(|(o, _)| *o == origin) {
            return false;
        }
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let (scheme, _) = origin.split_once("://").unwrap_or(("", ""));
        normal_origin(&format!("{scheme}://{host}")).is_none_or(|asked| asked != origin)
    }
}

/// The request's Host: the header, else the request line's authority.
fn request_host(req: &Request) -> Result<Option<&str>, ()> {
    match req.headers().get(header::HOST) {
        Some(v) => v.to_str().map(Some).map_err(|_| ()),
        None => Ok(req.uri().authority().map(|a| a.as_str())),
    }
}

/// Middleware over every route: a request for a name that is not this server's is
/// misdirected (421), whatever it asks.
pub(super) async fn own_host_only(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let ok = match request_host(&req) {
        Ok(host) => state.site.host_ok(host, !state.tokens.is_empty()),
        Err(()) => false,
    };
    if !ok {
        let host = request_host(&req).ok().flatten().unwrap_or("?");
        let shown: String = printable(host).chars().take(100).collect();
        return Err(ApiError::MisdirectedRequest(format!(
            "this server does not answer to the name '{shown}' (Host); if it is its own, \
             start it with --allowed-host (or --public-url)"
        )));
    }
    Ok(next.run(req).await)
}

/// Whether the method may change something.
fn changes(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Middleware over the API and the legacy routes: a changing request from another
/// site's page is refused (403) before the token is even looked at.
pub(super) async fn same_site_changes(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if changes(req.method()) && state.site.cross_site(req.headers()) {
        return Err(ApiError::Forbidden(
            "a request that changes something must not come from another site's page \
             (Origin or Sec-Fetch-Site say it did)"
                .into(),
        ));
    }
    Ok(next.run(req).await)
}

/// `host`, `host:port`, `[v6]`, `[v6]:port` as a [`Host`]; None if it is none of these.
fn parse_host(authority: &str) -> Option<Host> {
    let port_ok = |p: &str| p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = authority.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(port_ok)) {
            return None;
        }
        return inside
            .parse::<Ipv6Addr>()
            .ok()
            .map(|ip| Host::Ip(IpAddr::V6(ip)));
    }
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if port_ok(p) => h,
        Some(_) => return None,
        None => authority,
    };
    if let Ok(ip) = host.parse::<std::net::Ipv4Addr>() {
        return Some(Host::Ip(IpAddr::V4(ip)));
    }
    let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    (name.len() <= 253 && name.split('.').all(label_ok)).then_some(Host::Name(name))
}

/// An origin (`scheme://host[:port]`) in one spelling: lower case, without the scheme's
/// default port; None if it is not an http(s) origin.
fn normal_origin(origin: &str) -> Option<String> {
    let (scheme, authority) = origin.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default = match scheme.as_str() {
        "http" => ":80",
        "https" => ":443",
        _ => return None,
    };
    parse_host(authority)?;
    let authority = authority.to_ascii_lowercase();
    let authority = authority.strip_suffix(default).unwrap_or(&authority);
    Some(format!("{scheme}://{authority}"))
}

/// `--public-url`: an http(s) URL of a site's root; its origin and host.
fn parse_public_url(url: &str) -> Option<(String, Host)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#', '@']) {
        return None;
    }
    let origin = normal_origin(&format!("{scheme}://{authority}"))?;
    Some((origin, parse_host(authority)?))
}

/// A value as it may be shown in an error: control characters escaped.
fn printable(s: &str) -> String {
    s.chars().flat_map(char::escape_debug).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn site(hosts: &[&str], public: Option<&str>, bind: &str) -> Site {
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        Site::new(&hosts, public)
            .unwrap()
            .bound(bind.parse().unwrap())
    }

    #[test]
    fn a_server_answers_its_own_names_only() {
        let s = site(&["syncpool.internal"], None, "127.0.0.1:8080");
        for ok in [
            "127.0.0.1:8080",
            "127.0.0.1",
            "localhost:8080",
            "LOCALHOST",
            "[::1]:8080",
            "syncpool.internal",
            "SyncPool.Internal.:8080",
        ] {
            assert!(s.host_ok(Some(ok), false), "{ok}");
        }
        for bad in [
            "rebind.evil.example",
            "rebind.evil.example:8080",
            "10.0.0.1:8080",
            "x y",
            "a:b:c",
            "[::1",
            "",
        ] {
            assert!(!s.host_ok(Some(bad), false), "{bad}");
            assert!(
                !s.host_ok(Some(bad), true),
                "a token does not widen a loopback bind: {bad}"
            );
        }
        // Bound to every interface: any address; names only when given, unless a token
        // is required and none is given.
        let any = site(&[], None, "0.0.0.0:8080");
        assert!(any.host_ok(Some("10.1.2.3:8080"), false));
        assert!(!any.host_ok(Some("rebind.evil.example"), false));
        assert!(any.host_ok(Some("api-host:8080"), true));
        let named = site(&["api-host"], None, "0.0.0.0:8080");
        assert!(named.host_ok(Some("api-host:8080"), true));
        assert!(!named.host_ok(Some("rebind.evil.example"), true));
        let public = site(&[], Some("https://public.example/"), "127.0.0.1:8080");
        assert!(public.host_ok(Some("public.example"), false));
        assert!(!public.host_ok(Some("internal:8080"), false));
    }

    #[test]
    fn bad_flags_are_named() {
        assert!(
            Site::new(&["a/b".into()], None)
                .unwrap_err()
                .contains("--allowed-host")
        );
        for url in [
            "ftp://x",
            "https://x/console",
            "public.example",
            "https://u@x",
        ] {
            assert!(
                Site::new(&[], Some(url))
                    .unwrap_err()
                    .contains("--public-url"),
                "{url}"
            );
        }
    }

    #[test]
    fn another_sites_request_is_recognised() {
        let s = site(&[], Some("https://public.example"), "127.0.0.1:8080");
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(!s.cross_site(&h), "curl sends neither header");
        for (origin, cross) in [
            ("http://127.0.0.1:8080", false),
            ("HTTP://127.0.0.1:8080", false),
            ("https://public.example", false),
            ("https://public.example:443", false),
            ("http://public.example", true),
            ("http://evil.example", true),
            ("null", true),
            ("http://127.0.0.1:8081", true),
        ] {
            h.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
            assert_eq!(s.cross_site(&h), cross, "{origin}");
        }
        h.remove(header::ORIGIN);
        for (site, cross) in [
            ("cross-site", true),
            ("same-site", true),
            ("same-origin", false),
            ("none", false),
        ] {
            h.insert("sec-fetch-site", HeaderValue::from_static(site));
            assert_eq!(s.cross_site(&h), cross, "{site}");
        }
    }
}
