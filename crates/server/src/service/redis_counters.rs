//! The counts of fleet-wide limits in Redis, shared by every key service replica.
//!
//! One lease request is one Lua script call (one round trip): for every bucket it records the
//! gateway in a sorted set (score: time of its last ask; older than the gateway window are
//! dropped, the set expires with it), then refills and takes from the token bucket (a hash of
//! tokens and time) or adds to the quota window's counter (a string that expires after the
//! window). Time is Redis's own (`TIME`), so replicas with different clocks agree. Redis runs
//! the script atomically: concurrent requests never grant more than a bucket holds.
//!
//! The connection is made lazily and remade by itself after a failure; while Redis cannot be
//! reached, each call fails within [`CALL_TIMEOUT`] and the lease endpoint answers 503.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use tokio::sync::OnceCell;

use crate::service::counters::{
    CounterAsk, CounterError, CounterFuture, CounterGrant, CounterLimit, Counters, LeaseSettings,
};

/// Longest wait for one script call, connecting included.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(1_000);

/// Prefix of every Redis key written.
pub const KEY_PREFIX: &str = "keygate:";

/// The lease script. KEYS: per bucket, its state key then its gateway set. ARGV: the gateway,
/// the gateway window (ms), the lease interval (ms), then per bucket: kind (`r` or `q`), rate
/// or limit, burst or window end (ms), want, returned. Answers per bucket {granted, gateways,
/// remaining or -1}.
const LEASE_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gateway = ARGV[1]
local window = tonumber(ARGV[2])
local interval = tonumber(ARGV[3])
local out = {}
for i = 1, #KEYS / 2 do
  local key = KEYS[2 * i - 1]
  local set = KEYS[2 * i]
  local base = 3 + (i - 1) * 5
  local kind = ARGV[base + 1]
  local a = tonumber(ARGV[base + 2])
  local b = tonumber(ARGV[base + 3])
  local want = tonumber(ARGV[base + 4])
  local returned = tonumber(ARGV[base + 5])
  redis.call('ZADD', set, now, gateway)
  redis.call('ZREMRANGEBYSCORE', set, '-inf', now - window)
  if redis.call('ZCARD', set) > 1024 then
    redis.call('ZREMRANGEBYRANK', set, 0, -1025)
  end
  redis.call('PEXPIRE', set, window)
  local g = redis.call('ZCARD', set)
  if g < 1 then g = 1 end
  local granted = 0
  local remaining = -1
  if kind == 'r' then
    local rate, burst = a, b
    local state = redis.call('HMGET', key, 't', 'at')
    local tokens = tonumber(state[1]) or burst
    local at = tonumber(state[2]) or now
    if now > at then
      tokens = tokens + (now - at) * rate / 1000
      at = now
    end
    tokens = math.min(burst, tokens + returned)
    local share = math.ceil(rate * interval / 1000 / g)
    local cap = math.max(1, math.floor(burst / g))
    local lease = math.max(1, math.min(share, cap))
    granted = math.max(0, math.min(want, lease, math.floor(tokens)))
    tokens = tokens - granted
    redis.call('HSET', key, 't', tostring(tokens), 'at', tostring(at))
    redis.call('PEXPIRE', key, math.ceil((burst - tokens) / rate * 1000) + window)
  else
    local limit, window_end = a, b
    local used = tonumber(redis.call('GET', key) or '0')
    used = math.max(0, used - returned)
    local left = math.max(0, limit - used)
    local lease = math.min(1000, math.max(1, math.ceil(left / (8 * g))))
    granted = math.max(0, math.min(want, lease, left))
    used = used + granted
    redis.call('SET', key, tostring(used), 'PXAT', math.max(window_end, now) + window)
    remaining = limit - used
  end
  out[i] = {granted, g, remaining}
end
return out
";

/// The counters in the Redis at `url` (`redis://host:port/db`, `rediss://` with TLS,
/// `redis+unix:///path`).
pub struct RedisCounters {
    client: redis::Client,
    connection: OnceCell<ConnectionManager>,
    script: Script,
}

impl RedisCounters {
    /// Checks the URL; connects on first use.
    pub fn new(url: &str) -> Result<Self, CounterError> {
        let client = redis::Client::open(url)
            .map_err(|error| CounterError(format!("bad Redis URL: {}", error.category())))?;
        Ok(Self {
            client,
            connection: OnceCell::new(),
            script: Script::new(LEASE_SCRIPT),
        })
    }

    async fn connection(&self) -> Result<ConnectionManager, CounterError> {
        self.connection
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CALL_TIMEOUT))
                    .set_response_timeout(Some(CALL_TIMEOUT))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(500));
                ConnectionManager::new_lazy_with_config(self.client.clone(), config)
                    .map_err(|error| CounterError(format!("Redis: {}", error)))
            })
            .await
            .cloned()
    }

    async fn take_async(
        &self,
        gateway: &str,
        asks: &[CounterAsk],
        settings: LeaseSettings,
    ) -> Result<Vec<CounterGrant>, CounterError> {
        let mut invocation = self.script.prepare_invoke();
        invocation
            .arg(gateway)
            .arg(settings.gateway_window_ms)
            .arg(settings.interval_ms);
        for ask in asks {
            let (state_key, kind, a, b) = match ask.limit {
                CounterLimit::Rate(limit) => (
                    format!("{KEY_PREFIX}tb:{}", ask.bucket),
                    "r",
                    limit.requests_per_second.to_string(),
                    limit.burst.to_string(),
                ),
                CounterLimit::Quota {
                    limit,
                    window_start,
                    window_end,
                } => (
                    format!("{KEY_PREFIX}q:{}:{window_start}", ask.bucket),
                    "q",
                    limit.to_string(),
                    window_end.saturating_mul(1000).to_string(),
                ),
            };
            invocation
                .key(state_key)
                .key(format!("{KEY_PREFIX}gw:{}", ask.bucket))
                .arg(kind)
                .arg(a)
                .arg(b)
                .arg(ask.want)
                .arg(ask.returned);
        }
        let mut connection = self.connection().await?;
        let call = invocation.invoke_async::<Vec<(i64, i64, i64)>>(&mut connection);
        let answer = tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .map_err(|_| CounterError("Redis did not answer in time".into()))?
            .map_err(|error| CounterError(format!("Redis: {}", error)))?;
        if answer.len() != asks.len() {
            return Err(CounterError(
                "Redis answered a different number of buckets".into(),
            ));
        }
        Ok(answer
            .into_iter()
            .map(|(granted, gateways, remaining)| CounterGrant {
                granted: u32::try_from(granted).unwrap_or(0),
                gateways: u32::try_from(gateways).unwrap_or(1).max(1),
                remaining: u64::try_from(remaining).ok(),
            })
            .collect())
    }

    async fn quota_used_async(&self, bucket: &str, window_start: u64) -> Result<u64, CounterError> {
        let mut connection = self.connection().await?;
        let key = format!("{KEY_PREFIX}q:{bucket}:{window_start}");
        let mut command = redis::cmd("GET");
        command.arg(key);
        let call = command.query_async::<Option<String>>(&mut connection);
        let value = tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .map_err(|_| CounterError("Redis did not answer in time".into()))?
            .map_err(|error| CounterError(format!("Redis: {}", error)))?;
        Ok(value.and_then(|v| v.parse().ok()).unwrap_or(0))
    }
}

impl Counters for RedisCounters {
    fn take<'a>(
        &'a self,
        gateway: &'a str,
        asks: &'a [CounterAsk],
        settings: LeaseSettings,
        _now_ms: u64,
    ) -> CounterFuture<'a, Vec<CounterGrant>> {
        Box::pin(self.take_async(gateway, asks, settings))
    }

    fn quota_used<'a>(&'a self, bucket: &'a str, window_start: u64) -> CounterFuture<'a, u64> {
        Box::pin(self.quota_used_async(bucket, window_start))
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}
