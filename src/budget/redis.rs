//! Redis ledger: one budget shared by every replica.
//!
//! Each report is one hash at `{prefix}report:{report_id}` holding the used count, the
//! exhausted flag and the `GetReportUsage` counters. A reservation is a single Lua script —
//! check against the limit, increment, remember exhaustion, refresh the TTL — so Redis runs
//! it atomically and no read-then-write race exists across replicas. The report id only ever
//! travels as part of a key (binary-safe data), never as a pattern or a command.
//!
//! Every operation is bounded by `VRA_LEDGER_TIMEOUT_MS`. The connection is made lazily and
//! re-made by [`redis::aio::ConnectionManager`] after failures, so a gateway started while
//! Redis is down keeps serving (fail-safe, see [`crate::gateway`]) and recovers by itself.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{CallRecord, Ledger, LedgerError, ReportUsage, Reservation};
use crate::domain::Tier;

/// Check-and-increment. KEYS[1] = report hash; ARGV[1] = limit; ARGV[2] = TTL seconds.
/// Returns {outcome, used}: outcome 1 = granted, 0 = refused, 2 = refused and newly exhausted.
const RESERVE_LUA: &str = r"
local used = tonumber(redis.call('HGET', KEYS[1], 'used') or '0')
local granted = 0
local was_exhausted = redis.call('HGET', KEYS[1], 'exhausted') == '1'
if was_exhausted or used >= tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'exhausted', '1')
  if not was_exhausted then granted = 2 end
else
  used = redis.call('HINCRBY', KEYS[1], 'used', 1)
  granted = 1
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return {granted, used}
";

/// Budget state in Redis.
pub struct RedisLedger {
    conn: ConnectionManager,
    reserve: redis::Script,
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
            prefix: prefix.to_string(),
            ttl_secs: ttl.as_secs().max(1),
            timeout,
        })
    }

    fn key(&self, report_id: &str) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.prefix.len() + 7 + report_id.len());
        key.extend_from_slice(self.prefix.as_bytes());
        key.extend_from_slice(b"report:");
        key.extend_from_slice(report_id.as_bytes());
        key
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
    async fn reserve(&self, report_id: &str, limit: u32) -> Result<Reservation, LedgerError> {
        let mut conn = self.conn.clone();
        let mut invocation = self.reserve.key(self.key(report_id));
        invocation.arg(limit).arg(self.ttl_secs);
        let (granted, used): (u8, u32) = self.bounded(invocation.invoke_async(&mut conn)).await?;
        Ok(match granted {
            1 => Reservation::Granted { used },
            outcome => Reservation::Refused {
                used,
                newly: outcome == 2,
            },
        })
    }

    async fn usage(&self, report_id: &str) -> Result<ReportUsage, LedgerError> {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("HGETALL").arg(self.key(report_id)).to_owned();
        let fields: HashMap<String, u64> = self.bounded(cmd.query_async(&mut conn)).await?;
        Ok(usage_from_fields(&fields))
    }

    async fn record(&self, report_id: &str, call: CallRecord) -> Result<ReportUsage, LedgerError> {
        let key = self.key(report_id);
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
