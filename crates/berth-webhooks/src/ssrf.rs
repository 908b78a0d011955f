//! The SSRF guard: webhook URLs must be https and must not reach loopback,
//! private, link-local (cloud metadata) or otherwise internal addresses.
//! Checked when an endpoint is saved and again when each connection is
//! made (the resolver below), so DNS changes after saving do not help an
//! attacker; redirects are never followed.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Why an address may not be a webhook target, if it may not: the one
/// guard of the outbound layer (`berth_outbound::ssrf`), shared with
/// provider calls to end-user-typed base URLs.
pub fn forbidden_ip(ip: IpAddr) -> Option<&'static str> {
    berth_outbound::ssrf::forbidden_ip(ip)
}

/// A resolver for the delivery client that drops forbidden addresses and
/// fails when none is left, so a connection can only be made to an
/// address that passed the check.
#[derive(Debug, Default)]
pub struct GuardedResolver;

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs = resolve_allowed(&host, 0).await?;
            let it: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(it)
        })
    }
}

/// Resolves `host` and keeps the permitted addresses; an error names why
/// there are none.
pub async fn resolve_allowed(
    host: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
    berth_outbound::ssrf::AddressPolicy::default()
        .resolve(host, port)
        .await
        .map_err(|e| {
            format!("{e}; webhooks may not target it (set dangerous_allow_private_webhook_targets for development)").into()
        })
}

pub fn resolver() -> Arc<GuardedResolver> {
    Arc::new(GuardedResolver)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_targets_use_the_shared_guard() {
        for bad in [
            "127.0.0.1",
            "169.254.169.254",
            "192.0.2.1",
            "::127.0.0.1",
            "::ffff:0:7f00:1",
            "2002:7f00:1::",
            "2001:db8::1",
        ] {
            assert!(forbidden_ip(bad.parse().unwrap()).is_some(), "{bad}");
        }
        assert!(forbidden_ip("93.184.216.34".parse().unwrap()).is_none());
    }

    #[tokio::test]
    async fn resolver_refuses_names_of_internal_addresses() {
        let e = resolve_allowed("localhost", 443).await.unwrap_err();
        assert!(e.to_string().contains("loopback"), "{e}");
    }
}
