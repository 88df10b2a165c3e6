//! The plugins' key-value store in Redis, so a plugin's counters and rate limits hold across
//! the cluster's nodes. The WIT's `kv-*` functions block the plugin (not the host's thread):
//! each operation waits for Redis for at most [`KV_DEADLINE`], and the caller falls back to
//! the node's own store when Redis is away or slow.

use std::sync::LazyLock;
use std::time::Duration;

use super::{Cluster, lock};

/// How long a plugin's key-value operation waits for Redis.
const KV_DEADLINE: Duration = Duration::from_millis(50);

/// Redis did not answer in time, or is away: use the node's own store.
#[derive(Debug)]
pub struct KvUnavailable;

/// Adds ARGV[1] to the integer at KEYS[1] (missing or not a number counts as 0, as in the
/// node's own store) and, with ARGV[2], sets its expiry to that many seconds.
static INCR: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local n = (tonumber(redis.call('GET', KEYS[1])) or 0) + tonumber(ARGV[1])
if ARGV[2] ~= '' then
  redis.call('SET', KEYS[1], n, 'EX', ARGV[2])
else
  redis.call('SET', KEYS[1], n, 'KEEPTTL')
end
return n
"#,
    )
});

impl Cluster {
    fn kv_key(&self, plugin: &str, key: &str) -> String {
        format!("{}:kv:{plugin}:{key}", self.config.key_prefix)
    }

    /// Runs one Redis exchange within [`KV_DEADLINE`], on the cluster's runtime (whose
    /// connection it is), whichever runtime the plugin's hook runs on.
    async fn kv_exchange<T, F>(
        &self,
        op: impl FnOnce(redis::aio::MultiplexedConnection) -> F,
    ) -> Result<T, KvUnavailable>
    where
        T: Send + 'static,
        F: std::future::Future<Output = redis::RedisResult<T>> + Send + 'static,
    {
        let connection = lock(&self.kv_connection).clone().ok_or(KvUnavailable)?;
        let exchange = self
            .runtime
            .spawn(tokio::time::timeout(KV_DEADLINE, op(connection)));
        match exchange.await {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(e))) => {
                tracing::debug!(error = %e, "cluster: plugin key-value operation failed");
                Err(KvUnavailable)
            }
            _ => Err(KvUnavailable),
        }
    }

    /// `kv-get` for `plugin`.
    pub async fn kv_get(&self, plugin: &str, key: &str) -> Result<Option<String>, KvUnavailable> {
        let key = self.kv_key(plugin, key);
        self.kv_exchange(
            |mut c| async move { redis::cmd("GET").arg(key).query_async(&mut c).await },
        )
        .await
    }

    /// `kv-set` for `plugin`, expiring after `ttl` seconds if given.
    pub async fn kv_set(
        &self,
        plugin: &str,
        key: &str,
        value: &str,
        ttl: Option<u32>,
    ) -> Result<(), KvUnavailable> {
        let mut command = redis::cmd("SET");
        command.arg(self.kv_key(plugin, key)).arg(value);
        if let Some(ttl) = ttl {
            command.arg("EX").arg(ttl.max(1));
        }
        self.kv_exchange(|mut c| async move { command.query_async(&mut c).await })
            .await
    }

    /// `kv-incr` for `plugin`: one atomic step on Redis, whichever node asks.
    pub async fn kv_incr(
        &self,
        plugin: &str,
        key: &str,
        delta: i64,
        ttl: Option<u32>,
    ) -> Result<i64, KvUnavailable> {
        let key = self.kv_key(plugin, key);
        let ttl = ttl.map_or(String::new(), |t| t.max(1).to_string());
        self.kv_exchange(|mut c| async move {
            INCR.key(key).arg(delta).arg(ttl).invoke_async(&mut c).await
        })
        .await
    }
}
