//! The load tester only ever sends traffic to this machine: a target must be
//! an `http://` or `ws://` URL whose host is a loopback IP address or
//! `localhost`.

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

#[cfg(test)]
mod tests {
    use super::*;

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
