//! The cluster task: writes this node's entries to Redis and reads the other nodes', every
//! [`REFRESH`] and right after a local change. Everything it writes is absolute (a count, a
//! lease), so a write after Redis restarted empty, or after an outage, restores the node's
//! whole state: there is no log to replay.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

use super::{Cluster, lock};

/// How often counts are shared when nothing changes.
const REFRESH: Duration = Duration::from_millis(500);
/// How long a local change waits for others to share one exchange with.
const COALESCE: Duration = Duration::from_millis(20);
/// Any Redis exchange taking longer counts as Redis being away.
const TIMEOUT: Duration = Duration::from_secs(1);

/// Sums the other live nodes' counts in each hash of KEYS[2..] (fields are node ids). A node is
/// live while its lease key (ARGV[2] .. id) exists; a dead node's fields and membership are
/// removed here, so nothing of it outlives its lease. KEYS[1] is the set of member nodes and
/// ARGV[1] this node. Returns the sums, then the number of live nodes (this one included).
static SUM_OTHERS: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local me, lease_prefix = ARGV[1], ARGV[2]
local live, nodes = {}, 1
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if node ~= me then
    if redis.call('EXISTS', lease_prefix .. node) == 1 then
      live[node] = true
      nodes = nodes + 1
    else
      redis.call('SREM', KEYS[1], node)
    end
  end
end
local sums = {}
for i = 2, #KEYS do
  local fields = redis.call('HGETALL', KEYS[i])
  local sum = 0
  for j = 1, #fields, 2 do
    local node = fields[j]
    if live[node] then
      sum = sum + (tonumber(fields[j + 1]) or 0)
    elseif node ~= me then
      redis.call('HDEL', KEYS[i], node)
    end
  end
  sums[#sums + 1] = sum
end
sums[#sums + 1] = nodes
return sums
"#,
    )
});

/// Deletes KEYS[1] only if it still names this node (ARGV[1]): an identity that moved to
/// another node meanwhile keeps that node's entry.
static DELETE_IF_MINE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#,
    )
});

/// The Redis keys of one cluster (`[cluster] key_prefix`).
struct Keys {
    prefix: String,
}

impl Keys {
    fn lease_prefix(&self) -> String {
        format!("{}:node:", self.prefix)
    }
    fn lease(&self, node: &str) -> String {
        format!("{}{node}", self.lease_prefix())
    }
    fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }
    fn calls(&self) -> String {
        format!("{}:calls", self.prefix)
    }
    fn channels(&self, trunk: &str) -> String {
        format!("{}:channels:{trunk}", self.prefix)
    }
    fn registration(&self, identity: &str) -> String {
        format!("{}:registration:{identity}", self.prefix)
    }
}

/// Shares this node's state for as long as the gateway runs; never fails: without Redis it
/// keeps trying, and the node serves with its own counts meanwhile.
pub async fn run(cluster: Arc<Cluster>) {
    let config = &cluster.config;
    let keys = Keys {
        prefix: config.key_prefix.clone(),
    };
    // The configuration check parsed the URL already.
    let client = match redis_client(config) {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "cluster: the Redis URL cannot be used; this node runs alone");
            return;
        }
    };
    let where_ = redacted(&config.redis_url);
    let connect = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(TIMEOUT))
        .set_response_timeout(Some(TIMEOUT));
    let lease = Duration::from_secs(config.lease_seconds.into());
    let mut connection: Option<MultiplexedConnection> = None;
    // Registrations written under the current connection, and when all were last renewed.
    let mut written = BTreeSet::new();
    let mut renewed = Instant::now();
    let mut warned = false;
    // Since when Redis has been away: the others' counts are kept for a lease (they are
    // as good as any node's entries in Redis would be), then dropped for local limits.
    let mut away_since: Option<Instant> = None;
    loop {
        if connection.is_none() {
            connection = client
                .get_multiplexed_async_connection_with_config(&connect)
                .await
                .map_err(|e| tracing::debug!(error = %e, "cluster: connecting to Redis"))
                .ok();
            written.clear();
        }
        let renew = renewed.elapsed() >= lease / 3;
        let shared = match connection.as_mut() {
            Some(c) => tokio::time::timeout(
                TIMEOUT * 2,
                share(c, &cluster, &keys, lease, &mut written, renew),
            )
            .await
            .unwrap_or_else(|_| Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into())),
            None => Err(std::io::Error::from(std::io::ErrorKind::NotConnected).into()),
        };
        *lock(&cluster.kv_connection) = connection.clone().filter(|_| shared.is_ok());
        match shared {
            Ok(()) => {
                if renew {
                    renewed = Instant::now();
                }
                away_since = None;
                if !cluster.connected.swap(true, Ordering::Relaxed) {
                    tracing::info!(node = %cluster.node_id(), redis = %where_, nodes = cluster.live_nodes(), "cluster: sharing state through Redis");
                    warned = false;
                }
            }
            Err(e) => {
                connection = None;
                if away_since.get_or_insert_with(Instant::now).elapsed() >= lease {
                    cluster.forget_others();
                }
                let was = cluster.connected.swap(false, Ordering::Relaxed);
                if was || !warned {
                    tracing::warn!(error = %e, redis = %where_, "cluster: Redis is unreachable; this node serves with its own counts until it returns");
                    warned = true;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(REFRESH) => {}
            // A call's changes come in bursts (its slot, then its channel a few ms later; both
            // back at its end): shared in one exchange rather than one each.
            _ = cluster.changed.notified() => tokio::time::sleep(COALESCE).await,
        }
    }
}

/// One exchange: this node's lease, counts and registrations out, the others' counts in.
async fn share(
    c: &mut MultiplexedConnection,
    cluster: &Cluster,
    keys: &Keys,
    lease: Duration,
    written: &mut BTreeSet<String>,
    renew: bool,
) -> redis::RedisResult<()> {
    let me = cluster.node_id();
    let lease_ms = lease.as_millis() as u64;
    let mut pipe = redis::pipe();
    // The lease says where the node's SIP is and whether it drains: other nodes and
    // operators read it (`redis-cli GET <prefix>:node:<id>`).
    let lease_value = serde_json::json!({
        "sip": cluster.config.sip_address.as_deref().unwrap_or(""),
        "draining": cluster.draining.load(Ordering::Relaxed),
    });
    pipe.cmd("SET")
        .arg(keys.lease(me))
        .arg(lease_value.to_string())
        .arg("PX")
        .arg(lease_ms)
        .ignore();
    pipe.cmd("SADD").arg(keys.nodes()).arg(me).ignore();
    pipe.cmd("HSET")
        .arg(keys.calls())
        .arg(me)
        .arg(cluster.calls.local.load(Ordering::Acquire))
        .ignore();
    for (trunk, count) in &cluster.channels {
        pipe.cmd("HSET")
            .arg(keys.channels(trunk))
            .arg(me)
            .arg(count.local.load(Ordering::Acquire))
            .ignore();
    }
    let registered = lock(&cluster.registrations).clone();
    written.retain(|identity| registered.contains(identity));
    for identity in &registered {
        if renew || !written.contains(identity) {
            pipe.cmd("SET")
                .arg(keys.registration(identity))
                .arg(me)
                .arg("PX")
                .arg(lease_ms)
                .ignore();
        }
    }
    pipe.query_async::<()>(c).await?;
    written.extend(registered);
    let gone = std::mem::take(&mut *lock(&cluster.unregistered));
    for (i, identity) in gone.iter().enumerate() {
        if let Err(e) = DELETE_IF_MINE
            .key(keys.registration(identity))
            .arg(me)
            .invoke_async::<i64>(c)
            .await
        {
            // Retried at the next exchange; the lease removes it in any case.
            lock(&cluster.unregistered).extend(gone[i..].iter().cloned());
            return Err(e);
        }
    }
    let mut script = SUM_OTHERS.prepare_invoke();
    script.key(keys.nodes()).key(keys.calls());
    for trunk in cluster.channels.keys() {
        script.key(keys.channels(trunk));
    }
    let sums: Vec<u32> = script
        .arg(me)
        .arg(keys.lease_prefix())
        .invoke_async(c)
        .await?;
    let mut sums = sums.into_iter();
    cluster
        .calls
        .others
        .store(sums.next().unwrap_or(0), Ordering::Release);
    for count in cluster.channels.values() {
        count
            .others
            .store(sums.next().unwrap_or(0), Ordering::Release);
    }
    cluster
        .live_nodes
        .store(sums.next().unwrap_or(1), Ordering::Relaxed);
    Ok(())
}

/// How long an inbound call waits to learn where its browser is.
const LOCATE_DEADLINE: Duration = Duration::from_millis(300);

impl Cluster {
    /// The SIP address of the other live node `identity` is registered on, from Redis;
    /// `None` when it is registered nowhere else, its node drains, or Redis does not
    /// answer within [`LOCATE_DEADLINE`] (the call is then this node's alone).
    pub async fn locate(&self, identity: &str) -> Option<std::net::SocketAddr> {
        let mut c = lock(&self.kv_connection).clone()?;
        let keys = Keys {
            prefix: self.config.key_prefix.clone(),
        };
        let me = self.node_id().to_string();
        let lookup = async move {
            let node: Option<String> = redis::cmd("GET")
                .arg(keys.registration(identity))
                .query_async(&mut c)
                .await
                .ok()?;
            let node = node.filter(|n| *n != me)?;
            let lease: Option<String> = redis::cmd("GET")
                .arg(keys.lease(&node))
                .query_async(&mut c)
                .await
                .ok()?;
            let lease: serde_json::Value = serde_json::from_str(&lease?).ok()?;
            if lease["draining"] == true {
                tracing::info!(%identity, %node, "cluster: the browser's node drains; not forwarded");
                return None;
            }
            let sip = lease["sip"].as_str()?;
            match tokio::net::lookup_host(sip).await.ok()?.next() {
                Some(addr) => Some(addr),
                None => {
                    tracing::warn!(%node, %sip, "cluster: a node's SIP address does not resolve");
                    None
                }
            }
        };
        tokio::time::timeout(LOCATE_DEADLINE, lookup)
            .await
            .ok()
            .flatten()
    }
}

/// The client for `[cluster] redis_url`, with the password from its env or file setting.
pub(crate) fn redis_client(
    config: &crate::config::ClusterConfig,
) -> redis::RedisResult<redis::Client> {
    use redis::IntoConnectionInfo;
    let mut info = config.redis_url.as_str().into_connection_info()?;
    if let Some(password) = &config.redis_password {
        let settings = info.redis_settings().clone().set_password(password);
        info = info.set_redis_settings(settings);
    }
    redis::Client::open(info)
}

/// The URL without a password in it, for logs.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_stay_out_of_the_logs() {
        assert_eq!(
            super::redacted("redis://:s3cret@10.0.0.5:6379/0"),
            "redis://…@10.0.0.5:6379/0"
        );
        assert_eq!(
            super::redacted("redis://10.0.0.5:6379"),
            "redis://10.0.0.5:6379"
        );
    }
}
