//! Redis ledger: one budget shared by every replica.
//!
//! Each report is one hash at `{prefix}report:{report_id}` — `{prefix}{client}/report:{report_id}`
//! when callers authenticate — holding the used count, the exhausted flag and the
//! `GetReportUsage` counters. A client's day quota is one more hash, `{prefix}{client}/quota`
//! (`day`, `used`). A reservation is a single Lua script — check the report against its limit,
//! check the client's day, take one unit of each, remember exhaustion, refresh the TTLs — so
//! Redis runs it atomically, in one round trip, and no read-then-write race exists across
//! replicas. The day is the Redis server's (`TIME`), one clock for every replica. The report
//! id only ever travels as part of a key (binary-safe data), never as a pattern or a command;
//! client ids (`[A-Za-z0-9._-]`, no `:`) cannot make one key look like another.
//!
//! Every operation is bounded by `VRA_LEDGER_TIMEOUT_MS`. The connection is made lazily and
//! re-made by [`redis::aio::ConnectionManager`] after failures, so a gateway started while
//! Redis is down keeps serving (fail-safe, see [`crate::gateway`]) and recovers by itself.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{CallRecord, Ledger, LedgerError, Limits, ReportKey, ReportUsage, Reservation};
use crate::domain::Tier;

/// Check-and-increment. KEYS[1] = report hash, KEYS[2] (optional) = the client's quota hash;
/// ARGV[1] = report limit; ARGV[2] = report TTL seconds; ARGV[3] = day limit (with KEYS[2]).
/// Returns {outcome, used, day_used}: outcome 1 = granted, 0 = refused, 2 = refused and newly
/// exhausted, 3 = the day quota is spent (nothing taken; `used` is then the day's count).
const RESERVE_LUA: &str = r"
local used = tonumber(redis.call('HGET', KEYS[1], 'used') or '0')
local was_exhausted = redis.call('HGET', KEYS[1], 'exhausted') == '1'
if was_exhausted or used >= tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'exhausted', '1')
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  if was_exhausted then return {0, used} end
  return {2, used}
end
if KEYS[2] then
  local today = math.floor(tonumber(redis.call('TIME')[1]) / 86400)
  local quota = redis.call('HMGET', KEYS[2], 'day', 'used')
  local day_used = 0
  if tonumber(quota[1] or '-1') == today then day_used = tonumber(quota[2] or '0') end
  if day_used >= tonumber(ARGV[3]) then
    redis.call('EXPIRE', KEYS[1], ARGV[2])
    return {3, day_used}
  end
  redis.call('HSET', KEYS[2], 'day', today, 'used', day_used + 1)
  redis.call('EXPIRE', KEYS[2], 172800)
end
used = redis.call('HINCRBY', KEYS[1], 'used', 1)
redis.call('EXPIRE', KEYS[1], ARGV[2])
return {1, used}
";

/// The client's cloud requests today (by the Redis server's clock). KEYS[1] = quota hash.
const DAY_USED_LUA: &str = r"
local today = math.floor(tonumber(redis.call('TIME')[1]) / 86400)
local quota = redis.call('HMGET', KEYS[1], 'day', 'used')
if tonumber(quota[1] or '-1') == today then return tonumber(quota[2] or '0') end
return 0
";

/// Budget state in Redis.
pub struct RedisLedger {
    conn: ConnectionManager,
    reserve: redis::Script,
    day_used: redis::Script,
    prefix: String,
    ttl_secs: u64,
    timeout: Duration,
}

impl RedisLedger {
    /// Creates the ledger without connecting; the first operation connects.
    pub fn new(
        url: &str,
        prefix: &str,
        ttl: Duration,
        timeout: Duration,
    ) -> Result<Self, LedgerError> {
        // The URL may hold a password: errors name the problem, never the URL.
        let client = redis::Client::open(url).map_err(|e| {
            LedgerError::Unavailable(format!("invalid VRA_LEDGER_URL ({:?})", e.kind()))
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| LedgerError::Unavailable(format!("{:?}", e.kind())))?;
        Ok(Self {
            conn,
            reserve: redis::Script::new(RESERVE_LUA),
            day_used: redis::Script::new(DAY_USED_LUA),
            prefix: prefix.to_string(),
            ttl_secs: ttl.as_secs().max(1),
            timeout,
        })
    }

    /// `{prefix}[{client}/]{parts...}`.
    fn key_of(&self, client: Option<&str>, parts: &[&str]) -> Vec<u8> {
        let len = self.prefix.len()
            + client.map_or(0, |c| c.len() + 1)
            + parts.iter().map(|p| p.len()).sum::<usize>();
        let mut key = Vec::with_capacity(len);
        key.extend_from_slice(self.prefix.as_bytes());
        if let Some(client) = client {
            key.extend_from_slice(client.as_bytes());
            key.push(b'/');
        }
        for part in parts {
            key.extend_from_slice(part.as_bytes());
        }
        key
    }

    /// The report's hash.
    fn key(&self, key: ReportKey<'_>) -> Vec<u8> {
        self.key_of(key.client, &["report:", key.report])
    }

    /// The client's day-quota hash.
    fn quota_key(&self, client: &str) -> Vec<u8> {
        self.key_of(Some(client), &["quota"])
    }

    async fn bounded<T>(
        &self,
        op: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, LedgerError> {
        match tokio::time::timeout(self.timeout, op).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(LedgerError::Unavailable(describe(&e))),
            Err(_) => Err(LedgerError::Timeout(self.timeout.as_millis() as u64)),
        }
    }
}

/// A short, secret-free description of a Redis error.
fn describe(e: &redis::RedisError) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connection_refusal() || e.is_connection_dropped() || e.is_io_error() {
        "connection failed".into()
    } else {
        format!("{:?}", e.kind())
    }
}

#[async_trait]
impl Ledger for RedisLedger {
    async fn reserve(
        &self,
        key: ReportKey<'_>,
        limits: Limits,
    ) -> Result<Reservation, LedgerError> {
        let mut conn = self.conn.clone();
        let mut invocation = self.reserve.key(self.key(key));
        invocation.arg(limits.report).arg(self.ttl_secs);
        let day_limit = key.client.zip(limits.client_day);
        if let Some((client, day_limit)) = day_limit {
            invocation.key(self.quota_key(client)).arg(day_limit);
        }
        let (outcome, used): (u8, u32) = self.bounded(invocation.invoke_async(&mut conn)).await?;
        Ok(match (outcome, day_limit) {
            (1, _) => Reservation::Granted { used },
            (3, Some((_, limit))) => Reservation::DayQuotaSpent { used, limit },
            (outcome, _) => Reservation::Refused {
                used,
                newly: outcome == 2,
            },
        })
    }

    async fn usage(&self, key: ReportKey<'_>) -> Result<ReportUsage, LedgerError> {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("HGETALL").arg(self.key(key)).to_owned();
        let fields: HashMap<String, u64> = self.bounded(cmd.query_async(&mut conn)).await?;
        Ok(usage_from_fields(&fields))
    }

    async fn client_day_used(&self, client: &str) -> Result<u32, LedgerError> {
        let mut conn = self.conn.clone();
        let invocation = self.day_used.key(self.quota_key(client));
        self.bounded(invocation.invoke_async(&mut conn)).await
    }

    async fn record(
        &self,
        key: ReportKey<'_>,
        call: CallRecord,
    ) -> Result<ReportUsage, LedgerError> {
        let key = self.key(key);
        let tier_field = match call.tier {
            Tier::Primary => "primary",
            Tier::Secondary => "secondary",
        };
        let (in_field, out_field) = if call.cloud {
            ("cloud_in", "cloud_out")
        } else {
            ("local_in", "local_out")
        };
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hincr(&key, tier_field, 1)
            .ignore()
            .hincr(&key, in_field, call.input_tokens)
            .ignore()
            .hincr(&key, out_field, call.output_tokens)
            .ignore();
        if call.fell_back {
            pipe.hincr(&key, "fallbacks", 1).ignore();
        }
        pipe.expire(&key, self.ttl_secs as i64).ignore();
        pipe.hgetall(&key);
        let mut conn = self.conn.clone();
        let (fields,): (HashMap<String, u64>,) = self.bounded(pipe.query_async(&mut conn)).await?;
        Ok(usage_from_fields(&fields))
    }

    async fn ping(&self) -> Result<(), LedgerError> {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("PING");
        self.bounded(cmd.query_async::<String>(&mut conn))
            .await
            .map(drop)
    }

    fn backend(&self) -> &'static str {
        "redis"
    }
}

/// Decodes the report hash.
fn usage_from_fields(fields: &HashMap<String, u64>) -> ReportUsage {
    let get = |f: &str| fields.get(f).copied().unwrap_or(0);
    let small = |f: &str| u32::try_from(get(f)).unwrap_or(u32::MAX);
    ReportUsage {
        cloud_calls_used: small("used"),
        exhausted: get("exhausted") == 1,
        primary_calls: small("primary"),
        secondary_calls: small("secondary"),
        fallbacks: small("fallbacks"),
        cloud_input_tokens: get("cloud_in"),
        cloud_output_tokens: get("cloud_out"),
        local_input_tokens: get("local_in"),
        local_output_tokens: get("local_out"),
    }
}
