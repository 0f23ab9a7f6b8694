//! The load tester only ever sends traffic to this machine: a target must be
//! an `http://` or `ws://` URL whose host is a loopback IP address or
//! `localhost`, and the source addresses that outgoing sockets are bound to
//! (`--source-ips`) must be loopback addresses too.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// The socket address of a loopback target, or why it is refused.
pub(crate) fn loopback_target(target: &str) -> anyhow::Result<SocketAddr> {
    let url =
        url::Url::parse(target).map_err(|e| anyhow::anyhow!("invalid target {target:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "ws") {
        anyhow::bail!("target must be http:// or ws:// (got {})", url.scheme());
    }
    let port = url
        .port_or_known_default()
        .ok_or_else(|| anyhow::anyhow!("target has no port"))?;
    let ip: IpAddr = match url.host() {
        Some(url::Host::Domain("localhost")) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
        _ => anyhow::bail!("refusing target {target}: only loopback addresses may be loaded"),
    };
    if !ip.is_loopback() {
        anyhow::bail!("refusing target {target}: {ip} is not a loopback address");
    }
    Ok(SocketAddr::new(ip, port))
}

/// The HTTP base URL (no trailing slash) and the WebSocket URL (`/ws`) of a
/// checked target.
pub(crate) fn urls(addr: SocketAddr) -> (String, String) {
    (format!("http://{addr}"), format!("ws://{addr}/ws"))
}

/// Parses `--source-ips` values, refusing anything that is not a loopback IP.
/// An address of another family than the target could never connect to it,
/// so that is refused as well.
pub(crate) fn loopback_sources(ips: &[String], target: SocketAddr) -> anyhow::Result<Vec<IpAddr>> {
    ips.iter()
        .map(|s| {
            let ip: IpAddr = s
                .trim()
                .parse()
                .map_err(|e| anyhow::anyhow!("invalid source IP {s:?}: {e}"))?;
            if !ip.is_loopback() {
                anyhow::bail!("refusing source IP {ip}: only loopback addresses may be used");
            }
            if ip.is_ipv4() != target.is_ipv4() {
                anyhow::bail!("source IP {ip} is not of the same family as the target {target}");
            }
            Ok(ip)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_source_ips_are_accepted() {
        let target: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let ok = loopback_sources(
            &["127.0.0.1".into(), " 127.0.0.2".into(), "127.1.2.3".into()],
            target,
        )
        .unwrap();
        assert_eq!(ok.len(), 3);
        assert!(loopback_sources(&[], target).unwrap().is_empty());
        for refused in [
            "10.0.0.1",
            "192.168.0.7",
            "0.0.0.0",
            "8.8.8.8",
            "::1",
            "localhost",
            "127.0.0.1:80",
        ] {
            assert!(
                loopback_sources(&[refused.to_string()], target).is_err(),
                "{refused} must be refused"
            );
        }
        let v6: SocketAddr = "[::1]:8080".parse().unwrap();
        assert!(loopback_sources(&["::1".into()], v6).is_ok());
        assert!(loopback_sources(&["127.0.0.1".into()], v6).is_err());
    }

    #[test]
    fn urls_of_a_target() {
        let (http, ws) = urls("127.0.0.1:18090".parse().unwrap());
        assert_eq!(http, "http://127.0.0.1:18090");
        assert_eq!(ws, "ws://127.0.0.1:18090/ws");
    }

    #[test]
    fn only_loopback_targets_are_accepted() {
        assert_eq!(
            loopback_target("http://127.0.0.1:8080").unwrap(),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert!(loopback_target("ws://127.0.0.5:9000/ws").is_ok());
        assert!(loopback_target("http://localhost").is_ok());
        assert!(loopback_target("http://[::1]:8080").is_ok());
        for refused in [
            "http://10.0.0.1:8080",
            "http://192.168.1.2",
            "http://8.8.8.8",
            "http://example.com",
            "https://127.0.0.1",
            "not a url",
        ] {
            assert!(
                loopback_target(refused).is_err(),
                "{refused} must be refused"
            );
        }
    }
}
