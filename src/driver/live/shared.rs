//! Live mode's shared throttles: the engine's permit requests (`shared-throttles
//! redis://…`) answered by Redis, with atomic Lua scripts.
//!
//! Owns the Redis side of `engine::shared`: one task holding a multiplexed connection (the
//! `redis` crate on tokio) that answers each request in the order it came, and keeps this
//! node's heartbeat key alive. What Redis keeps, per queue name (the same on every node):
//!
//! - `pmta-sim:rate:{QUEUE}:{SECONDS}`: a sorted set of grants (`ms:nonce:count`, scored by
//!   Redis's own clock in ms), a sliding window like the engine's `rate::Window`: no window
//!   of SECONDS holds more than the limit, whichever node asked;
//! - `pmta-sim:conns:{QUEUE}`: a hash node → connections held; a node's entry counts only
//!   while its heartbeat key `pmta-sim:node:{NODE}` lives, so a dead node's connections are
//!   released [`HEARTBEAT_TTL_MS`] after its last beat;
//! - `pmta-sim:backoff:{QUEUE}`: present while the queue's backoff mode is shared, expiring
//!   when it ends.
//!
//! When Redis cannot be reached (or does not answer within [`REQUEST_TIMEOUT_MS`]), the
//! answer is `Unavailable`: the engine keeps its share and says so once (the run loop logs
//! its `SharedThrottles` event); a failed connection is tried again at most every
//! [`RECONNECT_MS`], and the first answer after that returns the node to shared limits.
//!
//! Must not: decide anything (the engine decides what to ask and what an answer means) or
//! block the engine loop (requests and answers go through channels).

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::value::Rate;
use crate::engine::shared::{PermitAnswer, PermitRequest};
use crate::time::Time;

/// How long one request may take before the store counts as unreachable.
pub const REQUEST_TIMEOUT_MS: u64 = 500;
/// How long after a failure the next connection attempt waits (requests meanwhile are
/// answered `Unavailable` at once).
pub const RECONNECT_MS: u64 = 1_000;
/// How long a node's connections count after its last heartbeat.
pub const HEARTBEAT_TTL_MS: u64 = 15_000;
const HEARTBEAT_EVERY_MS: u64 = 5_000;
/// Requests waiting for the Redis task; the engine asks at most one of each kind per queue
/// at a time, so this bounds only a burst of queues.
pub const REQUESTS_MAX: usize = 4096;

/// The sliding window: grants within the last `window` ms are summed; up to the limit is
/// granted and recorded; when fewer than asked are granted, the ms until the oldest grants
/// have left enough room for one more. Also returns the queue's shared backoff (ms left, or
/// a negative number). Redis's clock is the one clock of every node.
const RATE_SCRIPT: &str = r"
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local used = 0
for i = 1, #entries, 2 do
  used = used + tonumber(string.match(entries[i], ':(%d+)$'))
end
local granted = math.min(n, math.max(0, limit - used))
if granted > 0 then
  redis.call('ZADD', KEYS[1], now, now .. ':' .. ARGV[4] .. ':' .. granted)
  used = used + granted
  entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
end
redis.call('PEXPIRE', KEYS[1], window + 1000)
local retry = -1
if granted < n then
  local left = used
  for i = 1, #entries, 2 do
    left = left - tonumber(string.match(entries[i], ':(%d+)$'))
    if left < limit then
      retry = tonumber(entries[i + 1]) + window - now
      break
    end
  end
end
return {granted, retry, redis.call('PTTL', KEYS[2])}
";

/// One connection more for this node if every live node together holds fewer than the
/// limit; entries of nodes whose heartbeat expired are dropped.
const CONNECTION_SCRIPT: &str = r"
local all = redis.call('HGETALL', KEYS[1])
local others = 0
for i = 1, #all, 2 do
  if all[i] ~= ARGV[1] then
    if redis.call('EXISTS', 'pmta-sim:node:' .. all[i]) == 1 then
      others = others + tonumber(all[i + 1])
    else
      redis.call('HDEL', KEYS[1], all[i])
    end
  end
end
local holding = tonumber(ARGV[2])
local granted = 0
if others + holding < tonumber(ARGV[3]) then
  granted = 1
end
redis.call('HSET', KEYS[1], ARGV[1], holding + granted)
return {granted, redis.call('PTTL', KEYS[2])}
";

/// The queue's shared backoff lasts at least `ARGV[1]` ms more.
const BACKOFF_SCRIPT: &str = r"
local ttl = redis.call('PTTL', KEYS[1])
if ttl < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 1
";

/// A request from the engine loop, with the engine time it was made at.
pub struct Request {
    pub queue: String,
    pub request: PermitRequest,
    pub now: Time,
}

/// An answer for the engine loop.
#[derive(Debug)]
pub struct Answer {
    pub queue: String,
    pub request: PermitRequest,
    /// Times are in engine time: the task adds Redis's relative delays to the request's
    /// `now`.
    pub answer: PermitAnswer,
}

/// The engine loop's handle on the Redis task.
pub struct SharedClient {
    requests: mpsc::Sender<Request>,
}

impl SharedClient {
    /// Starts the task for `url` (`redis://HOST:PORT/DB`) as node `node`; answers go to
    /// `answers` through `wrap`.
    pub fn start<E: Send + 'static>(
        url: &str,
        node: String,
        answers: mpsc::Sender<E>,
        wrap: fn(Answer) -> E,
    ) -> Result<SharedClient, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let (requests, rx) = mpsc::channel(REQUESTS_MAX);
        tokio::spawn(serve(client, node, rx, answers, wrap));
        Ok(SharedClient { requests })
    }

    /// Hands a request to the task; `false` when it cannot take one now (the caller answers
    /// `Unavailable` itself, so the engine is never left waiting).
    pub fn request(&self, request: Request) -> bool {
        self.requests.try_send(request).is_ok()
    }
}

struct Store {
    client: redis::Client,
    node: String,
    conn: Option<MultiplexedConnection>,
    /// No connection attempt before this after a failure.
    retry_at: Option<Instant>,
    rate: redis::Script,
    connection: redis::Script,
    backoff: redis::Script,
    nonce: u64,
}

async fn serve<E>(
    client: redis::Client,
    node: String,
    mut requests: mpsc::Receiver<Request>,
    answers: mpsc::Sender<E>,
    wrap: fn(Answer) -> E,
) {
    let mut store = Store {
        client,
        node,
        conn: None,
        retry_at: None,
        rate: redis::Script::new(RATE_SCRIPT),
        connection: redis::Script::new(CONNECTION_SCRIPT),
        backoff: redis::Script::new(BACKOFF_SCRIPT),
        nonce: 0,
    };
    let mut beat = tokio::time::interval(Duration::from_millis(HEARTBEAT_EVERY_MS));
    loop {
        tokio::select! {
            biased;
            request = requests.recv() => {
                let Some(Request { queue, request, now }) = request else {
                    return;
                };
                let answer = store.answer(&queue, &request, now).await;
                if let Some(answer) = answer
                    && answers.send(wrap(Answer { queue, request, answer })).await.is_err()
                {
                    return;
                }
            }
            _ = beat.tick() => {
                if store.conn.is_some() {
                    let _ = store.heartbeat().await;
                }
            }
        }
    }
}

impl Store {
    /// The answer to one request: `None` for requests that need none (and succeeded).
    async fn answer(
        &mut self,
        queue: &str,
        request: &PermitRequest,
        now: Time,
    ) -> Option<PermitAnswer> {
        let needs_answer = matches!(
            request,
            PermitRequest::Messages { .. } | PermitRequest::Connection { .. }
        );
        let result = tokio::time::timeout(
            Duration::from_millis(REQUEST_TIMEOUT_MS),
            self.ask(queue, request, now),
        )
        .await;
        match result {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) | Err(_) => {
                // Dropped: a request after RECONNECT_MS connects anew. Requests answered
                // meanwhile do not push that time back, or a busy node would never retry.
                self.conn = None;
                let now = Instant::now();
                if self.retry_at.is_none_or(|at| at <= now) {
                    self.retry_at = Some(now + Duration::from_millis(RECONNECT_MS));
                }
                needs_answer.then_some(PermitAnswer::Unavailable)
            }
        }
    }

    async fn connect(&mut self) -> redis::RedisResult<()> {
        if self.conn.is_some() {
            return Ok(());
        }
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "waiting to reconnect",
            )));
        }
        self.conn = Some(self.client.get_multiplexed_async_connection().await?);
        self.retry_at = None;
        self.heartbeat().await
    }

    async fn heartbeat(&mut self) -> redis::RedisResult<()> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        redis::cmd("SET")
            .arg(format!("pmta-sim:node:{}", self.node))
            .arg(1)
            .arg("PX")
            .arg(HEARTBEAT_TTL_MS)
            .query_async::<()>(conn)
            .await
    }

    async fn ask(
        &mut self,
        queue: &str,
        request: &PermitRequest,
        now: Time,
    ) -> redis::RedisResult<Option<PermitAnswer>> {
        self.connect().await?;
        let conn = self.conn.as_mut().expect("connected above");
        let backoff_key = format!("pmta-sim:backoff:{queue}");
        let after = |ms: i64| (ms > 0).then(|| now.plus_ms(ms as u64));
        match *request {
            PermitRequest::Messages { n, rate } => {
                let Rate::Limit { count, per_seconds } = rate else {
                    return Ok(Some(PermitAnswer::Granted {
                        granted: n,
                        retry_at: None,
                        backoff_until: None,
                    }));
                };
                self.nonce += 1;
                let (granted, retry_ms, backoff_ms): (u64, i64, i64) = self
                    .rate
                    .key(format!("pmta-sim:rate:{queue}:{per_seconds}"))
                    .key(&backoff_key)
                    .arg(per_seconds * 1000)
                    .arg(count)
                    .arg(n)
                    .arg(format!("{}-{}", self.node, self.nonce))
                    .invoke_async(conn)
                    .await?;
                Ok(Some(PermitAnswer::Granted {
                    granted,
                    retry_at: after(retry_ms),
                    backoff_until: after(backoff_ms),
                }))
            }
            PermitRequest::Connection { holding, max } => {
                let (granted, backoff_ms): (u64, i64) = self
                    .connection
                    .key(format!("pmta-sim:conns:{queue}"))
                    .key(&backoff_key)
                    .arg(&self.node)
                    .arg(holding)
                    .arg(max)
                    .invoke_async(conn)
                    .await?;
                Ok(Some(PermitAnswer::Granted {
                    granted,
                    retry_at: None,
                    backoff_until: after(backoff_ms),
                }))
            }
            PermitRequest::Holding { holding } => {
                redis::cmd("HSET")
                    .arg(format!("pmta-sim:conns:{queue}"))
                    .arg(&self.node)
                    .arg(holding)
                    .query_async::<()>(conn)
                    .await?;
                Ok(None)
            }
            PermitRequest::Backoff { until } => {
                let ms = until.since(now).max(1);
                self.backoff
                    .key(&backoff_key)
                    .arg(ms)
                    .invoke_async::<()>(conn)
                    .await?;
                Ok(None)
            }
        }
    }
}
