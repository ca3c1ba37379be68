//! Name lookups without a thread each: one asynchronous resolver (hickory-resolver) shared by
//! the HTTP client (Flower, the RabbitMQ management API) and the Redis client.
//!
//! NB: both clients would otherwise resolve with `getaddrinfo` on tokio's blocking pool, so
//! every app whose broker or Flower name does not resolve held a thread for as long as the
//! lookup took (516 threads with 100 such apps). The resolver reads the same configuration
//! `getaddrinfo` does (`/etc/resolv.conf` with its search domains and `ndots`, `/etc/hosts`),
//! answers literal addresses without a query, and caches answers for their TTL. Without a
//! readable configuration every lookup fails with that cause: it never falls back to a public
//! DNS server, which would send the names of a user's services off the cluster.
//!
//! `--dns-server ADDRESS:PORT` (set once, at start, with [`use_server`]) sends every query to
//! that server instead of those of `/etc/resolv.conf` (whose search domains still apply): for
//! an operator run outside the cluster against a forwarded cluster DNS, and for the tests,
//! which keep every lookup on the loopback interface.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

/// The one DNS server to ask instead of the system's, if set.
static SERVER: OnceLock<SocketAddr> = OnceLock::new();

/// Sends every lookup of this process to `server` (before the first lookup; later calls
/// change nothing).
pub fn use_server(server: SocketAddr) {
    let _ = SERVER.set(server);
}

/// The resolver every broker and Flower client of the process uses.
#[derive(Clone, Debug, Default)]
pub struct Resolver {
    /// Built on first use, inside the runtime; the error says why it could not be.
    state: Arc<OnceLock<Result<TokioResolver, String>>>,
}

/// Why a name did not resolve.
#[derive(Debug, thiserror::Error)]
#[error("cannot resolve {name}: {detail}")]
pub struct LookupError {
    name: String,
    detail: String,
}

impl Resolver {
    /// The process's resolver (one cache for every app).
    pub fn shared() -> Self {
        static SHARED: OnceLock<Resolver> = OnceLock::new();
        SHARED.get_or_init(Resolver::default).clone()
    }

    /// The addresses of `host` with `port`; a literal address is returned as it is.
    pub async fn lookup(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, LookupError> {
        // NB: a bracketed IPv6 literal comes from a URL's host.
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let fail = |detail: String| LookupError { name: host.to_string(), detail };
        let resolver = self.state.get_or_init(build).as_ref().map_err(|e| fail(e.clone()))?;
        let found = resolver.lookup_ip(bare).await.map_err(|e| fail(e.to_string()))?;
        let addrs: Vec<SocketAddr> = found.iter().map(|ip| SocketAddr::new(ip, port)).collect();
        if addrs.is_empty() { Err(fail("no address".into())) } else { Ok(addrs) }
    }
}

fn build() -> Result<TokioResolver, String> {
    let mut builder = match SERVER.get() {
        None => TokioResolver::builder_tokio()
            .map_err(|e| format!("no DNS configuration could be read from /etc/resolv.conf ({e})"))?,
        Some(server) => {
            let (system, options) = hickory_resolver::system_conf::read_system_conf()
                .unwrap_or_else(|_| (ResolverConfig::from_name_servers(Vec::new()), ResolverOpts::default()));
            let (domain, search, _) = system.into_parts();
            let connections = [ConnectionConfig::udp(), ConnectionConfig::tcp()]
                .into_iter()
                .map(|mut c| {
                    c.port = server.port();
                    c
                })
                .collect();
            let only = NameServerConfig::new(server.ip(), true, connections);
            let mut builder = TokioResolver::builder_with_config(
                ResolverConfig::from_parts(domain, search, vec![only]),
                TokioRuntimeProvider::default(),
            );
            *builder.options_mut() = options;
            builder
        }
    };
    // Both families, as getaddrinfo gives them; the clients try each address in turn.
    builder.options_mut().ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    builder.build().map_err(|e| format!("the DNS resolver cannot start: {e}"))
}

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let resolver = self.clone();
        Box::pin(async move {
            // reqwest puts the URL's port on the addresses it gets.
            let addrs = resolver.lookup(name.as_str(), 0).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

impl redis::io::AsyncDNSResolver for Resolver {
    fn resolve<'a, 'b: 'a>(
        &'a self,
        host: &'b str,
        port: u16,
    ) -> redis::RedisFuture<'a, Box<dyn Iterator<Item = SocketAddr> + Send + 'a>> {
        Box::pin(async move {
            let addrs = self
                .lookup(host, port)
                .await
                .map_err(|e| redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::NotFound, e.to_string())))?;
            Ok(Box::new(addrs.into_iter()) as Box<dyn Iterator<Item = SocketAddr> + Send>)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn literal_addresses_need_no_lookup() {
        let resolver = Resolver::default();
        let v4 = resolver.lookup("127.0.0.1", 6379).await.expect("a literal");
        assert_eq!(v4, vec!["127.0.0.1:6379".parse().unwrap()]);
        let v6 = resolver.lookup("[::1]", 5555).await.expect("a bracketed literal");
        assert_eq!(v6, vec!["[::1]:5555".parse().unwrap()]);
        assert!(resolver.state.get().is_none(), "no resolver was built for literals");
    }

    #[tokio::test]
    async fn names_in_the_hosts_file_resolve_without_a_server() {
        // /etc/hosts names localhost on every machine this runs on; no query leaves the host.
        let addrs = Resolver::default().lookup("localhost", 80).await.expect("localhost resolves");
        assert!(addrs.iter().all(|a| a.ip().is_loopback() && a.port() == 80), "{addrs:?}");
    }
}
