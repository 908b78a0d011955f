//! The one address guard for outbound calls Berth makes to addresses that
//! someone other than the operator chose: webhook targets (the customer)
//! and provider base URLs built from an end user's answers (a Chatwoot
//! instance URL typed into the connect modal).
//!
//! Refused: loopback, private, link-local (cloud metadata), shared (CGNAT),
//! multicast, broadcast and reserved, the documentation ranges, and IPv6
//! forms that embed one of those IPv4 addresses (mapped, compatible,
//! translated, 6to4, NAT64; Teredo outright). The check runs on the name's
//! addresses at every new connection (a guarded resolver), so a DNS answer
//! that changes after a check passed (rebinding) is caught too; IP
//! literals are checked before connecting. The operator may allow given
//! networks (a self-hosted Chatwoot on the company network).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

pub use ipnet::IpNet;

/// Why an address may not be reached on someone else's say-so, if it may
/// not.
pub fn forbidden_ip(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v6(v6: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return forbidden_v4(v4);
    }
    let seg = v6.segments();
    let embedded =
        |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    if v6.is_loopback() {
        Some("loopback")
    } else if v6.is_unspecified() {
        Some("unspecified")
    } else if v6.is_multicast() {
        Some("multicast")
    } else if seg[0] & 0xfe00 == 0xfc00 {
        Some("private (unique local)")
    } else if seg[0] & 0xffc0 == 0xfe80 {
        Some("link-local")
    } else if seg[0] & 0xffc0 == 0xfec0 {
        Some("site-local")
    } else if seg[0] == 0x2001 && seg[1] == 0x0db8 {
        Some("documentation")
    } else if seg[0] == 0x2001 && seg[1] == 0 {
        // Teredo: the IPv4 end is obfuscated and the relay is anyone's.
        Some("Teredo")
    } else if seg[..6] == [0, 0, 0, 0, 0, 0] {
        // IPv4-compatible (`::127.0.0.1`), deprecated but still routed by
        // some stacks.
        Some("IPv4-compatible")
    } else if seg[..6] == [0, 0, 0, 0, 0xffff, 0] {
        // IPv4-translated (`::ffff:0:7f00:1`).
        Some("IPv4-translated")
    } else if seg[0] == 0x2002 {
        // 6to4: the next 32 bits are an IPv4 address.
        forbidden_v4(embedded(seg[1], seg[2])).map(|_| "6to4 of an internal IPv4")
    } else if seg[0] == 0x64 && seg[1] == 0xff9b {
        // NAT64 (well-known and local-use prefixes): the embedded IPv4
        // address decides.
        forbidden_v4(embedded(seg[6], seg[7])).map(|_| "NAT64 of an internal IPv4")
    } else if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        Some("cloud metadata")
    } else {
        None
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local (cloud metadata)")
    } else if ip.is_unspecified() || o[0] == 0 {
        Some("unspecified")
    } else if ip.is_broadcast() || ip.is_multicast() || o[0] >= 240 {
        Some("broadcast, multicast or reserved")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("shared (carrier-grade NAT)")
    } else if o[0] == 198 && (o[1] & 0xfe) == 18 {
        Some("benchmarking")
    } else if o[0] == 192 && o[1] == 0 && o[2] == 0 {
        Some("IETF protocol assignments")
    } else if (o[0], o[1], o[2]) == (192, 0, 2)
        || (o[0], o[1], o[2]) == (198, 51, 100)
        || (o[0], o[1], o[2]) == (203, 0, 113)
    {
        Some("documentation")
    } else {
        None
    }
}

/// Which internal addresses may still be reached: none by default, the
/// operator's allow-list otherwise.
#[derive(Clone, Debug, Default)]
pub struct AddressPolicy {
    allowed: Arc<Vec<IpNet>>,
}

impl AddressPolicy {
    pub fn allowing(networks: Vec<IpNet>) -> Self {
        Self {
            allowed: Arc::new(networks),
        }
    }

    /// `Err(why)` when `ip` may not be reached.
    pub fn check(&self, ip: IpAddr) -> Result<(), &'static str> {
        match forbidden_ip(ip) {
            None => Ok(()),
            Some(_) if self.allowed.iter().any(|n| n.contains(&ip)) => Ok(()),
            // An IPv4-mapped address in an allowed IPv4 network is allowed.
            Some(_)
                if matches!(ip, IpAddr::V6(v6) if v6.to_ipv4_mapped()
                    .is_some_and(|v4| self.allowed.iter().any(|n| n.contains(&IpAddr::V4(v4))))) =>
            {
                Ok(())
            }
            Some(why) => Err(why),
        }
    }

    /// Resolves `host` and keeps the addresses that may be reached; an
    /// error names why there are none.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, AddressRefused> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = host.parse::<IpAddr>() {
            return self
                .check(ip)
                .map(|()| vec![SocketAddr::new(ip, port)])
                .map_err(|why| AddressRefused::Internal {
                    host: host.to_string(),
                    ip,
                    why,
                });
        }
        let all: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| AddressRefused::Unresolved(format!("cannot resolve {host}: {e}")))?
            .collect();
        let mut refused = None;
        let ok: Vec<SocketAddr> = all
            .into_iter()
            .filter(|a| match self.check(a.ip()) {
                Ok(()) => true,
                Err(why) => {
                    refused = Some((a.ip(), why));
                    false
                }
            })
            .collect();
        match (ok.is_empty(), refused) {
            (false, _) => Ok(ok),
            (true, Some((ip, why))) => Err(AddressRefused::Internal {
                host: host.to_string(),
                ip,
                why,
            }),
            (true, None) => Err(AddressRefused::Unresolved(format!(
                "{host} does not resolve to any address"
            ))),
        }
    }
}

/// Why a guarded host may not be reached.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AddressRefused {
    #[error(
        "{}, which Berth does not call on an end user's or a customer's say-so",
        refused_what(host, ip, why)
    )]
    Internal {
        host: String,
        ip: IpAddr,
        why: &'static str,
    },
    #[error("{0}")]
    Unresolved(String),
}

/// "`host` is `ip`, a `why` address", without repeating an address given
/// as the host.
fn refused_what(host: &str, ip: &IpAddr, why: &str) -> String {
    if host.parse::<IpAddr>().is_ok_and(|h| h == *ip) {
        format!("{ip} is a {why} address")
    } else {
        format!("{host} is {ip}, a {why} address")
    }
}

/// The resolver of guarded provider connections (hyper-util's connector
/// asks it for every new connection).
#[derive(Clone, Debug, Default)]
pub(crate) struct GuardedResolver {
    pub(crate) policy: AddressPolicy,
}

type Resolving = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<std::vec::IntoIter<SocketAddr>, std::io::Error>>
            + Send,
    >,
>;

impl tower_service::Service<hyper_util::client::legacy::connect::dns::Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Resolving;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: hyper_util::client::legacy::connect::dns::Name) -> Self::Future {
        let policy = self.policy.clone();
        Box::pin(async move {
            policy
                .resolve(name.as_str(), 0)
                .await
                .map(Vec::into_iter)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::PermissionDenied, e))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_addresses() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "192.0.2.10",
            "198.51.100.7",
            "203.0.113.99",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "::ffff:0:7f00:1",
            "2002:7f00:1::",
            "2002:a00:1::1",
            "2001:db8::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "64:ff9b::a00:1",
            "fd00:ec2::254",
        ] {
            assert!(forbidden_ip(bad.parse().unwrap()).is_some(), "{bad}");
        }
        for good in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700::1111",
            "64:ff9b::5db8:d822",
            "2002:5db8:d822::1",
            "::ffff:93.184.216.34",
        ] {
            assert!(forbidden_ip(good.parse().unwrap()).is_none(), "{good}");
        }
    }

    #[test]
    fn the_operator_may_allow_networks() {
        let p = AddressPolicy::allowing(vec!["10.0.0.0/8".parse().unwrap()]);
        assert!(p.check("10.2.3.4".parse().unwrap()).is_ok());
        assert!(p.check("::ffff:10.2.3.4".parse().unwrap()).is_ok());
        assert!(p.check("192.168.0.1".parse().unwrap()).is_err());
        assert!(
            AddressPolicy::default()
                .check("10.2.3.4".parse().unwrap())
                .is_err()
        );
    }

    #[tokio::test]
    async fn names_and_literals_of_internal_addresses_are_refused() {
        let p = AddressPolicy::default();
        let e = p.resolve("localhost", 443).await.unwrap_err();
        assert!(e.to_string().starts_with("localhost is "), "{e}");
        assert!(e.to_string().contains("loopback"), "{e}");
        // An address given as the host is named once.
        let e = p.resolve("169.254.169.254", 80).await.unwrap_err();
        assert!(e.to_string().starts_with("169.254.169.254 is a "), "{e}");
        let e = p.resolve("[::127.0.0.1]", 443).await.unwrap_err();
        assert!(e.to_string().contains("IPv4-compatible"), "{e}");
        let allowed = AddressPolicy::allowing(vec!["127.0.0.0/8".parse().unwrap()]);
        assert!(allowed.resolve("127.0.0.1", 80).await.is_ok());
    }
}
