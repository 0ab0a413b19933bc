//! Redis ledger: one budget shared by every replica, on one Redis node or a Redis Cluster.
//!
//! - [`connection`]: `VRA_LEDGER_URL` (one node or a cluster), the connection, and the startup
//!   check of the deployment.
//! - [`keys`]: the key layout, hash-tagged on a cluster so that a script's keys share a slot.
//! - [`confirm`]: reservations that count only once replicas hold them
//!   (`VRA_LEDGER_MIN_REPLICAS`).
//!
//! Each report is one hash ([`keys`]: `{prefix}report:{report_id}`, or
//! `{prefix}{client}/report:{report_id}` when callers authenticate) holding the used count, the exhausted flag, the cost settled
//! and held (nano-dollars), and the `GetReportUsage` counters, including one field per
//! phase × tier × counter of the breakdown (`DRAFT.PRIMARY.calls`, …). A client's day quota is one more hash, `{prefix}{client}/quota`
//! (`day`, `used`). A reservation is a single Lua script — check the report against its limit,
//! check the client's day, take one unit of each, remember exhaustion, refresh the TTLs — so
//! Redis runs it atomically, in one round trip, and no read-then-write race exists across
//! replicas. The day is the Redis server's (`TIME`), one clock for every replica. The report
//! id only ever travels as part of a key (binary-safe data), never as a pattern or a command;
//! client ids (`[A-Za-z0-9._-]`, no `:`) cannot make one key look like another. A call's
//! record also leaves a short-lived marker, `{prefix}[{client}/]record:{id}`, so a record sent
//! twice (a retry after an ambiguous failure) counts once.
//!
//! Every operation is bounded by `VRA_LEDGER_TIMEOUT_MS`. The connection is made lazily and
//! re-made after failures (by [`redis::aio::ConnectionManager`] on one node, by the cluster
//! client on a cluster, which also follows `MOVED`/`ASK` and a failover's new slot map), so a
//! gateway started while Redis is down keeps serving (fail-safe, see [`crate::gateway`]) and
//! recovers by itself.

pub mod confirm;
pub mod connection;
pub mod keys;

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;

use confirm::Confirmation;
use connection::{Conn, NodeFacts, Target};
use keys::Keys;

use super::{
    CallRecord, HeldCost, HoldSpec, Ledger, LedgerError, Limits, ReportBudget, ReportKey,
    ReportUsage, Reservation,
};
use crate::domain::{Nanos, Phase, Tier};

/// Settles the report's holds past their expiry (by the Redis server's clock, one clock for
/// every replica) as abandoned charges of their full amount: `held` down, `cloud_cost` and
/// `abandoned` up, and a field `x:{member}` in the report marks each as settled (what a late
/// release or record of it looks for). The holds set (a sorted set scored by expiry in ms,
/// members `{id:016x}:{amount}`) is KEYS[2] of every script that uses it; the amount is read
/// back from the member. A report hash that is gone (expired) leaves nothing to charge: its
/// expired holds are just dropped. Amounts stay below 2^53, so Lua's doubles sum them exactly,
/// and `string.format('%.0f')` writes the integer Redis expects.
const SETTLE_LUA: &str = r"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function settle(report, holds, now)
  local expired = redis.call('ZRANGEBYSCORE', holds, '-inf', now)
  if #expired == 0 then return end
  redis.call('ZREMRANGEBYSCORE', holds, '-inf', now)
  if redis.call('EXISTS', report) == 0 then return end
  local total = 0
  for _, member in ipairs(expired) do
    total = total + tonumber(string.match(member, ':(%d+)$'))
    redis.call('HSET', report, 'x:' .. member, 1)
  end
  local amount = string.format('%.0f', total)
  redis.call('HINCRBY', report, 'held', '-' .. amount)
  redis.call('HINCRBY', report, 'cloud_cost', amount)
  redis.call('HINCRBY', report, 'abandoned', amount)
end
";

/// Check-and-increment. KEYS[1] = report hash, KEYS[2] = its holds, KEYS[3] (optional) = the
/// client's quota hash; ARGV[1] = report limit; ARGV[2] = report TTL seconds; ARGV[3] = cost
/// cap in nano-dollars (-1: none); ARGV[4] = the hold (nano-dollars); ARGV[5] = the hold's
/// member; ARGV[6] = the hold's life in ms; ARGV[7] = day limit (with KEYS[3]). Expired holds
/// are settled first ([`SETTLE_LUA`]). A reservation whose hold is already in the set was
/// applied before (the cluster client sends a command again after a dropped connection): it
/// takes nothing more and answers the report's state.
/// Returns {outcome, used, cloud_cost, held}: outcome 1 = granted, 0 = refused, 2 = refused and
/// newly exhausted, 3 = the day quota is spent (nothing taken; `used` is then the day's count),
/// 4 = the hold does not fit under the cost cap (nothing taken, the report not marked); the
/// settled cost and the holds (this one included) as the script leaves them. Amounts stay
/// below 2^53 nano-dollars (the cap is at most $1,000,000), so Lua's doubles compare them
/// exactly; the increment itself is the argument's integer string.
const RESERVE_BODY: &str = r"
local now = now_ms()
settle(KEYS[1], KEYS[2], now)
local state = redis.call('HMGET', KEYS[1], 'used', 'exhausted', 'cloud_cost', 'held')
local used = tonumber(state[1] or '0')
local was_exhausted = state[2] == '1'
local cap = tonumber(ARGV[3])
local hold = tonumber(ARGV[4])
if hold > 0 and redis.call('ZSCORE', KEYS[2], ARGV[5]) then
  -- A write all the same: a WAIT after this copy then also covers the first one's writes.
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return {1, used, math.max(0, tonumber(state[3] or '0')), math.max(0, tonumber(state[4] or '0'))}
end
if was_exhausted or used >= tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'exhausted', '1')
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  if was_exhausted then return {0, used, 0, 0} end
  return {2, used, 0, 0}
end
local cost = math.max(0, tonumber(state[3] or '0'))
local held = math.max(0, tonumber(state[4] or '0'))
if cap >= 0 and cost + held + hold > cap then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return {4, used, 0, 0}
end
local day_after = nil
if KEYS[3] then
  local today = math.floor(now / 86400000)
  local quota = redis.call('HMGET', KEYS[3], 'day', 'used')
  local day_used = 0
  if tonumber(quota[1] or '-1') == today then day_used = tonumber(quota[2] or '0') end
  if day_used >= tonumber(ARGV[7]) then
    redis.call('EXPIRE', KEYS[1], ARGV[2])
    return {3, day_used, 0, 0}
  end
  redis.call('HSET', KEYS[3], 'day', today, 'used', day_used + 1)
  redis.call('EXPIRE', KEYS[3], 172800)
  day_after = day_used + 1
end
used = redis.call('HINCRBY', KEYS[1], 'used', 1)
if hold > 0 then
  held = redis.call('HINCRBY', KEYS[1], 'held', ARGV[4])
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[6]), ARGV[5])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
if day_after then return {1, used, cost, held, day_after} end
return {1, used, cost, held}
";

/// Ends a hold of `amount` (its `member`) of the report whose holds are `holds`: a live hold
/// leaves `held` (1); one settled as expired — its `x:{member}` mark is there — has its full
/// charge taken back, for the owner's own to replace it (2); an unknown one (ended already: a
/// copy of a release, or a report that expired meanwhile) changes nothing (0). Shared by the
/// release and the record scripts.
const END_HOLD_LUA: &str = r"
local function end_hold(report, holds, amount, member)
  if amount == '0' then return 0 end
  if redis.call('ZREM', holds, member) == 1 then
    redis.call('HINCRBY', report, 'held', '-' .. amount)
    return 1
  end
  if redis.call('HDEL', report, 'x:' .. member) == 1 then
    redis.call('HINCRBY', report, 'cloud_cost', '-' .. amount)
    redis.call('HINCRBY', report, 'abandoned', '-' .. amount)
    return 2
  end
  return 0
end
";

/// A release without an answer to record. KEYS[1] = report hash, KEYS[2] = its holds; ARGV[1]
/// the hold, ARGV[2] its member, ARGV[3] the charge (0 or the hold), ARGV[4] the report TTL. A
/// hold already ended is not charged again (a copy of this release changes nothing).
const RELEASE_BODY: &str = r"
if end_hold(KEYS[1], KEYS[2], ARGV[1], ARGV[2]) == 0 then return 0 end
if ARGV[3] ~= '0' then
  redis.call('HINCRBY', KEYS[1], 'cloud_cost', ARGV[3])
  redis.call('HINCRBY', KEYS[1], 'abandoned', ARGV[3])
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
";

/// The report's hash after settling its expired holds. KEYS[1] = report hash, KEYS[2] = holds.
const USAGE_BODY: &str = r"
settle(KEYS[1], KEYS[2], now_ms())
return redis.call('HGETALL', KEYS[1])
";

/// One answered call, in one atomic step and one short reply (a `MULTI` pipeline of a dozen
/// `HINCRBY`s cost the gateway five times the instructions: every queued command has its own
/// reply to parse), applied at most once: KEYS[2] is the call's marker
/// (`{prefix}[{client}/]record:{id}`), set with `NX` for [`marker_secs`]; a copy of a record that was already applied (a
/// retry after a timeout whose first send did land) finds it and changes nothing. KEYS[1] =
/// report hash; ARGV: 1 TTL seconds, 2 the tier's call counter
/// (`primary`/`secondary`), 3 the side (`cloud`/`local`: `cloud_in`, `cloud_out`, `cloud_cost`,
/// `cloud_est`), 4 phase and 5 tier of the breakdown cell (`DRAFT.PRIMARY.calls`, `.in`, `.out`,
/// `.cost`, `.est`), 6 input and 7 output tokens, 8 cost (nano-dollars), 9 estimated (0/1),
/// 10 unpriced (0/1), 11 the all-cloud cost (-1: unknown), 12 the hold released, 13 fell back
/// (0/1), 14 the marker's lifetime in seconds, 15 whether to answer with the budget (1) or
/// just `1` (0: a detached record, whose caller has no use for it; the four-field reply alone
/// is a quarter of the record's instructions in the gateway), 16 the hold's member; KEYS[3] =
/// the report's holds, given only when ARGV[12] is not 0. Returns the budget fields: `used`, `exhausted`, `cloud_cost`, `held`.
const RECORD_BODY: &str = r"
local k = KEYS[1]
local function answer()
  if ARGV[15] == '0' then return 1 end
  return redis.call('HMGET', k, 'used', 'exhausted', 'cloud_cost', 'held')
end
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[14]) then return answer() end
local side = ARGV[3]
local cell = ARGV[4] .. '.' .. ARGV[5]
redis.call('HINCRBY', k, ARGV[2], 1)
redis.call('HINCRBY', k, side .. '_in', ARGV[6])
redis.call('HINCRBY', k, side .. '_out', ARGV[7])
redis.call('HINCRBY', k, side .. '_cost', ARGV[8])
redis.call('HINCRBY', k, cell .. '.calls', 1)
redis.call('HINCRBY', k, cell .. '.in', ARGV[6])
redis.call('HINCRBY', k, cell .. '.out', ARGV[7])
redis.call('HINCRBY', k, cell .. '.cost', ARGV[8])
if ARGV[9] == '1' then
  redis.call('HINCRBY', k, side .. '_est', 1)
  redis.call('HINCRBY', k, cell .. '.est', 1)
end
if ARGV[10] == '1' then redis.call('HINCRBY', k, 'unpriced', 1) end
if ARGV[11] ~= '-1' then redis.call('HINCRBY', k, 'all_cloud', ARGV[11]) end
end_hold(k, KEYS[3], ARGV[12], ARGV[16])
if ARGV[13] == '1' then redis.call('HINCRBY', k, 'fallbacks', 1) end
redis.call('EXPIRE', k, ARGV[1])
return answer()
";

/// One call answered from the response cache, applied at most once like [`RECORD_BODY`]:
/// KEYS[1] = report hash, KEYS[2] = the call's marker; ARGV: 1 TTL seconds, 2 phase and 3 tier
/// of the breakdown cell (`DRAFT.PRIMARY.cached`, `.saved`), 4 what it saved (nano-dollars),
/// 5 the marker's lifetime in seconds, 6 whether to answer with the budget (1) or `1` (0).
/// Nothing else changes: a cached call takes no unit and holds nothing.
const CACHED_LUA: &str = r"
local k = KEYS[1]
local function answer()
  if ARGV[6] == '0' then return 1 end
  return redis.call('HMGET', k, 'used', 'exhausted', 'cloud_cost', 'held')
end
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[5]) then return answer() end
local cell = ARGV[2] .. '.' .. ARGV[3]
redis.call('HINCRBY', k, 'cached', 1)
redis.call('HINCRBY', k, 'cache_saved', ARGV[4])
redis.call('HINCRBY', k, cell .. '.cached', 1)
redis.call('HINCRBY', k, cell .. '.saved', ARGV[4])
redis.call('EXPIRE', k, ARGV[1])
return answer()
";

/// The shortest life of a record's marker. It must outlast every copy of the record: copies are
/// sent within [`super::deferred::retry_window`] of the first (about 6 s with the default 200 ms
/// timeout), and one still queued on a connection when Redis was paused reaches it right after
/// the first, whatever the pause. A marker lives twice the retry window, at least this long:
/// each is a key with an expiry, so at thousands of calls a second their number (and Redis's
/// memory and expiry work) grows with their life.
pub const RECORD_MARKER_SECS: u64 = 15;

/// The longest life of a marker: a year, far past any useful ledger timeout, and well inside
/// what Redis accepts for `EX`.
const MAX_MARKER_SECS: u64 = 365 * 24 * 3600;

/// The life of a record's marker with the ledger timeout `timeout`: more than twice the retry
/// window, within [`RECORD_MARKER_SECS`] ..= [`MAX_MARKER_SECS`].
fn marker_secs(timeout: Duration) -> u64 {
    let window = super::deferred::retry_window(timeout).saturating_mul(2);
    window
        .as_secs()
        .saturating_add(1)
        .clamp(RECORD_MARKER_SECS, MAX_MARKER_SECS)
}

/// The client's cloud requests today (by the Redis server's clock). KEYS[1] = quota hash.
const DAY_USED_LUA: &str = r"
local today = math.floor(tonumber(redis.call('TIME')[1]) / 86400)
local quota = redis.call('HMGET', KEYS[1], 'day', 'used')
if tonumber(quota[1] or '-1') == today then return tonumber(quota[2] or '0') end
return 0
";

/// Budget state in Redis.
pub struct RedisLedger {
    conn: Conn,
    target: Target,
    reserve: redis::Script,
    record: redis::Script,
    cached: redis::Script,
    release: redis::Script,
    usage: redis::Script,
    day_used: redis::Script,
    keys: Keys,
    ttl_secs: u64,
    timeout: Duration,
    /// [`marker_secs`] of `timeout`.
    marker_secs: u64,
    /// With `VRA_LEDGER_MIN_REPLICAS`: the replicas a grant needs, and their connections.
    confirm: Option<Confirmation>,
}

/// What [`RedisLedger::eval`] sends: one command, or a pipeline ending in `WAIT`.
enum Request<'a> {
    Cmd(&'a redis::Cmd),
    Pipeline(&'a redis::Pipeline),
}

impl Request<'_> {
    async fn send<T: redis::FromRedisValue>(&self, conn: &mut Conn) -> redis::RedisResult<T> {
        match self {
            Request::Cmd(cmd) => cmd.query_async(conn).await,
            Request::Pipeline(pipe) => pipe.query_async(conn).await,
        }
    }
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
        let target = Target::parse(url).map_err(LedgerError::Misconfigured)?;
        let conn = target.connect(timeout).map_err(LedgerError::Unavailable)?;
        Ok(Self {
            conn,
            keys: Keys::new(prefix, target.is_cluster()),
            target,
            reserve: redis::Script::new(&format!("{SETTLE_LUA}{RESERVE_BODY}")),
            record: redis::Script::new(&format!("{END_HOLD_LUA}{RECORD_BODY}")),
            cached: redis::Script::new(CACHED_LUA),
            release: redis::Script::new(&format!("{END_HOLD_LUA}{RELEASE_BODY}")),
            usage: redis::Script::new(&format!("{SETTLE_LUA}{USAGE_BODY}")),
            day_used: redis::Script::new(DAY_USED_LUA),
            ttl_secs: ttl.as_secs().max(1),
            timeout,
            marker_secs: marker_secs(timeout),
            confirm: None,
        })
    }

    /// Grants count only once `replicas` replicas hold them ([`confirm`]); 0: at once.
    pub fn confirmed_by(mut self, replicas: u32) -> Result<Self, LedgerError> {
        self.confirm = Confirmation::new(&self.target, replicas, self.timeout)
            .map_err(LedgerError::Unavailable)?;
        Ok(self)
    }

    /// The script and command of `call` ([`RECORD_BODY`], or [`CACHED_LUA`] for a cached
    /// call); `with_budget`: answer with the report's budget.
    fn record_cmd(
        &self,
        key: ReportKey<'_>,
        call: &CallRecord,
        with_budget: bool,
    ) -> (&redis::Script, redis::Cmd) {
        if call.cached {
            let mut cmd = script_cmd(&self.cached, 2);
            cmd.arg(self.keys.report(key))
                .arg(self.keys.marker(key, call.id))
                .arg(self.ttl_secs)
                .arg(call.phase.as_str())
                .arg(call.tier.as_str())
                .arg(signed(call.cost.unwrap_or_default()))
                .arg(self.marker_secs)
                .arg(u8::from(with_budget));
            return (&self.cached, cmd);
        }
        let tier_field = match call.tier {
            Tier::Primary => "primary",
            Tier::Secondary => "secondary",
        };
        let usage = call.usage;
        // The holds set only when the record settles a hold (the script reads it only then).
        let settles = call.release.amount > Nanos::ZERO;
        let mut cmd = script_cmd(&self.record, 2 + usize::from(settles));
        cmd.arg(self.keys.report(key))
            .arg(self.keys.marker(key, call.id));
        if settles {
            cmd.arg(self.keys.holds(key));
        }
        cmd.arg(self.ttl_secs)
            .arg(tier_field)
            .arg(if call.cloud { "cloud" } else { "local" })
            .arg(call.phase.as_str())
            .arg(call.tier.as_str())
            .arg(usage.input)
            .arg(usage.output)
            .arg(signed(call.cost.unwrap_or_default()))
            .arg(u8::from(usage.estimated))
            .arg(u8::from(call.cost.is_none()))
            .arg(call.all_cloud.map_or(-1, signed))
            .arg(signed(call.release.amount))
            .arg(u8::from(call.fell_back))
            .arg(self.marker_secs)
            .arg(u8::from(with_budget))
            .arg(member_of(call.release));
        (&self.record, cmd)
    }

    /// Runs a [`script_cmd`] of `script` on the shared connection, bounded by the ledger
    /// timeout.
    async fn eval<T: redis::FromRedisValue>(
        &self,
        script: &redis::Script,
        cmd: &redis::Cmd,
    ) -> Result<T, LedgerError> {
        let mut conn = self.conn.clone();
        self.bounded(send(&mut conn, script, Request::Cmd(cmd)))
            .await
    }

    async fn bounded<T>(
        &self,
        op: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, LedgerError> {
        match tokio::time::timeout(self.timeout, op).await {
            Ok(Ok(v)) => Ok(v),
            // A permanent answer (a script error, say), not a lost one: a record is not sent
            // again after it, and may not be reported as confirmed by a copy.
            Ok(Err(e)) if matches!(e.retry_method(), redis::RetryMethod::NoRetry) => {
                Err(LedgerError::Rejected(describe(&e)))
            }
            Ok(Err(e)) => Err(LedgerError::Unavailable(describe(&e))),
            Err(_) => Err(LedgerError::Timeout(self.timeout.as_millis() as u64)),
        }
    }
}

/// Sends `request` (a [`script_cmd`] of `script`, or a pipeline starting with one) on `conn`;
/// a Redis that does not know the script yet (`NOSCRIPT`: the first call, or after a restart,
/// a failover or `SCRIPT FLUSH`) gets it loaded and the request again.
async fn send<T: redis::FromRedisValue>(
    conn: &mut Conn,
    script: &redis::Script,
    request: Request<'_>,
) -> redis::RedisResult<T> {
    match request.send(conn).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            script.prepare_invoke().load_async(conn).await?;
            request.send(conn).await
        }
        other => other,
    }
}

/// `EVALSHA` of `script` with `keys` keys; the caller adds the keys, then the arguments.
/// Written straight into one command: redis-rs's `ScriptInvocation` would copy every key and
/// argument twice more on the hot path.
fn script_cmd(script: &redis::Script, keys: usize) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(keys);
    cmd
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
        hold: HoldSpec,
    ) -> Result<Reservation, LedgerError> {
        let cap = limits.cost_cap.map_or(-1, signed);
        let day_limit = key.client.zip(limits.client_day);
        let mut cmd = script_cmd(&self.reserve, 2 + usize::from(day_limit.is_some()));
        cmd.arg(self.keys.report(key)).arg(self.keys.holds(key));
        if let Some((client, _)) = day_limit {
            cmd.arg(self.keys.quota(client));
        }
        cmd.arg(limits.report)
            .arg(self.ttl_secs)
            .arg(cap)
            .arg(hold.amount.0);
        // Without a hold (no cost cap) the member and life are never read.
        cmd.arg(member_of(hold.held()))
            .arg(u64::try_from(hold.ttl.as_millis()).unwrap_or(u64::MAX / 2));
        if let Some((_, day_limit)) = day_limit {
            cmd.arg(day_limit);
        }
        let reply: Vec<i64> = match &self.confirm {
            None => self.eval(&self.reserve, &cmd).await?,
            Some(confirm) => {
                let pipe = confirm.pipeline(cmd);
                // Waiting for a free connection counts against the timeout: a reservation that
                // gets none in time has sent nothing.
                let (reply, acked): (Vec<i64>, u32) = self
                    .bounded(async {
                        let mut lease = confirm.lease().await.ok_or_else(|| {
                            redis::RedisError::from((
                                redis::ErrorKind::Client,
                                "the confirmation connections are closed",
                            ))
                        })?;
                        send(lease.conn(), &self.reserve, Request::Pipeline(&pipe)).await
                    })
                    .await?;
                // Only a grant needs its copies: a refusal is safe whether it survives or not.
                // The unit of an unconfirmed grant stays taken; its hold is the caller's to
                // release ([`LedgerError::Unconfirmed`]).
                if reply.first() == Some(&1) && acked < confirm.replicas() {
                    return Err(LedgerError::Unconfirmed {
                        acked,
                        wanted: confirm.replicas(),
                    });
                }
                reply
            }
        };
        // [outcome, used, cost, held, day used (a grant under a day quota)]; a negative amount
        // (only a hand edit could make one) reads as 0.
        let at = |i: usize| reply.get(i).copied().unwrap_or(0).max(0);
        let (outcome, cost, held) = (at(0), at(2) as u64, at(3) as u64);
        let used = u32::try_from(at(1)).unwrap_or(u32::MAX);
        Ok(match (outcome, day_limit) {
            (1, _) => Reservation::Granted {
                used,
                cost: Nanos(cost),
                held: Nanos(held),
                day_used: reply
                    .get(4)
                    .map(|&d| u32::try_from(d.max(0)).unwrap_or(u32::MAX)),
            },
            (4, _) => Reservation::NoRoomUnderCap { used },
            (3, Some((_, limit))) => Reservation::DayQuotaSpent { used, limit },
            (outcome, _) => Reservation::Refused {
                used,
                newly: outcome == 2,
            },
        })
    }

    async fn usage(&self, key: ReportKey<'_>) -> Result<ReportUsage, LedgerError> {
        let mut cmd = script_cmd(&self.usage, 2);
        cmd.arg(self.keys.report(key)).arg(self.keys.holds(key));
        let fields: HashMap<String, i64> = self.eval(&self.usage, &cmd).await?;
        Ok(usage_from_fields(&fields))
    }

    async fn client_day_used(&self, client: &str) -> Result<u32, LedgerError> {
        let mut cmd = script_cmd(&self.day_used, 1);
        cmd.arg(self.keys.quota(client));
        self.eval(&self.day_used, &cmd).await
    }

    async fn release(
        &self,
        key: ReportKey<'_>,
        hold: HeldCost,
        charge: Nanos,
    ) -> Result<(), LedgerError> {
        let mut cmd = script_cmd(&self.release, 2);
        cmd.arg(self.keys.report(key))
            .arg(self.keys.holds(key))
            .arg(signed(hold.amount))
            .arg(member_of(hold))
            .arg(signed(charge))
            .arg(self.ttl_secs);
        self.eval::<redis::Value>(&self.release, &cmd)
            .await
            .map(drop)
    }

    async fn record(
        &self,
        key: ReportKey<'_>,
        call: CallRecord,
    ) -> Result<ReportBudget, LedgerError> {
        let (script, cmd) = self.record_cmd(key, &call, true);
        let (used, exhausted, cost, held): (Option<i64>, Option<i64>, Option<i64>, Option<i64>) =
            self.eval(script, &cmd).await?;
        let count = |v: Option<i64>| v.unwrap_or(0).max(0) as u64;
        Ok(ReportBudget {
            used: u32::try_from(count(used)).unwrap_or(u32::MAX),
            exhausted: count(exhausted) == 1,
            cloud_cost: Nanos(count(cost)),
            held: Nanos(count(held)),
        })
    }

    async fn record_detached(
        &self,
        key: ReportKey<'_>,
        call: CallRecord,
    ) -> Result<(), LedgerError> {
        let (script, cmd) = self.record_cmd(key, &call, false);
        self.eval::<redis::Value>(script, &cmd).await.map(drop)
    }

    async fn ping(&self) -> Result<(), LedgerError> {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("PING");
        self.bounded(cmd.query_async::<String>(&mut conn))
            .await
            .map(drop)
    }

    /// Reads every listed node's `INFO`: the version, the deployment (one node or a cluster,
    /// as the URL says) and the eviction policy ([`connection::assess`]).
    async fn check(&self) -> Result<Vec<String>, LedgerError> {
        let infos = self.target.infos(self.timeout).await;
        if infos.is_empty() {
            return Err(LedgerError::Unavailable("no node answered".into()));
        }
        let facts: Vec<NodeFacts> = infos
            .iter()
            .map(|(node, info)| NodeFacts::from_info(node, info))
            .collect();
        let min_replicas = self.confirm.as_ref().map_or(0, Confirmation::replicas);
        connection::assess(&facts, self.target.is_cluster(), min_replicas)
            .map_err(LedgerError::Misconfigured)
    }

    fn backend(&self) -> &'static str {
        if self.target.is_cluster() {
            "redis-cluster"
        } else {
            "redis"
        }
    }

    /// A round trip away: a cloud call's record follows its response.
    fn defers_records(&self) -> bool {
        true
    }
}

/// The holds-set member of `held`; `-` for no hold (never looked up: its amount is 0).
fn member_of(held: HeldCost) -> Cow<'static, str> {
    if held.amount > Nanos::ZERO {
        Cow::Owned(held.member())
    } else {
        Cow::Borrowed("-")
    }
}

/// An amount as Redis integers take it (amounts stay far below `i64::MAX`).
fn signed(n: Nanos) -> i64 {
    i64::try_from(n.0).unwrap_or(i64::MAX)
}

/// The hash fields of the cloud or the local side's totals.
struct SideFields {
    input: &'static str,
    output: &'static str,
    cost: &'static str,
    estimated: &'static str,
}

const CLOUD: SideFields = SideFields {
    input: "cloud_in",
    output: "cloud_out",
    cost: "cloud_cost",
    estimated: "cloud_est",
};

const LOCAL: SideFields = SideFields {
    input: "local_in",
    output: "local_out",
    cost: "local_cost",
    estimated: "local_est",
};

/// The hash fields of one cell of the breakdown: `DRAFT.PRIMARY.calls`, `….in`, `….out`,
/// `….cost`, `….est`.
struct CellFields {
    calls: String,
    cached: String,
    saved: String,
    input: String,
    output: String,
    cost: String,
    estimated: String,
}

/// Every cell's field names, made once (not per call), by [`Phase::index`] and [`Tier::index`].
static CELL_FIELDS: LazyLock<[[CellFields; 2]; 4]> = LazyLock::new(|| {
    Phase::ALL.map(|phase| {
        [Tier::Primary, Tier::Secondary].map(|tier| {
            let prefix = format!("{}.{}", phase.as_str(), tier.as_str());
            CellFields {
                calls: format!("{prefix}.calls"),
                cached: format!("{prefix}.cached"),
                saved: format!("{prefix}.saved"),
                input: format!("{prefix}.in"),
                output: format!("{prefix}.out"),
                cost: format!("{prefix}.cost"),
                estimated: format!("{prefix}.est"),
            }
        })
    })
});

fn cell_fields(phase: Phase, tier: Tier) -> &'static CellFields {
    &CELL_FIELDS[phase.index()][tier.index()]
}

/// Decodes the report hash (a negative count, which only a hand edit could make, reads as 0).
fn usage_from_fields(fields: &HashMap<String, i64>) -> ReportUsage {
    let get = |f: &str| fields.get(f).copied().unwrap_or(0).max(0) as u64;
    let small = |f: &str| u32::try_from(get(f)).unwrap_or(u32::MAX);
    let mut usage = ReportUsage {
        cloud_calls_used: small("used"),
        exhausted: get("exhausted") == 1,
        primary_calls: small("primary"),
        secondary_calls: small("secondary"),
        fallbacks: small("fallbacks"),
        cloud_input_tokens: get(CLOUD.input),
        cloud_output_tokens: get(CLOUD.output),
        local_input_tokens: get(LOCAL.input),
        local_output_tokens: get(LOCAL.output),
        cloud_cost: Nanos(get(CLOUD.cost)),
        abandoned: Nanos(get("abandoned")),
        local_cost: Nanos(get(LOCAL.cost)),
        all_cloud: Nanos(get("all_cloud")),
        unpriced_calls: small("unpriced"),
        cloud_estimated: small(CLOUD.estimated),
        local_estimated: small(LOCAL.estimated),
        held: Nanos(get("held")),
        phases: Default::default(),
        cached_calls: small("cached"),
        cache_saved: Nanos(get("cache_saved")),
    };
    for phase in Phase::ALL {
        for tier in [Tier::Primary, Tier::Secondary] {
            let fields = cell_fields(phase, tier);
            let cell = usage.cell_mut(phase, tier);
            cell.calls = small(&fields.calls);
            cell.estimated = small(&fields.estimated);
            cell.input_tokens = small(&fields.input);
            cell.output_tokens = small(&fields.output);
            cell.cost = Nanos(get(&fields.cost));
            cell.cached_calls = small(&fields.cached);
            cell.cache_saved = Nanos(get(&fields.saved));
        }
    }
    usage
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_outlives_every_copy_of_its_record() {
        assert_eq!(marker_secs(Duration::from_millis(200)), RECORD_MARKER_SECS);
        for ms in [1, 200, 10_000, 14_000, 30_000, 600_000] {
            let timeout = Duration::from_millis(ms);
            let window = super::super::deferred::retry_window(timeout);
            assert!(
                Duration::from_secs(marker_secs(timeout)) > window * 2,
                "{ms} ms"
            );
        }
        assert_eq!(marker_secs(Duration::MAX), MAX_MARKER_SECS);
    }
}
