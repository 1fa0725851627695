//! The HTTP management API of a live daemon (PowerMTA's web monitor on `http-mgmt-port`):
//! status, queues and domains, operator actions, reload, the OpenAPI description and the
//! Prometheus endpoint, with `http-access` rules per network.
//!
//! Owns the HTTP side: routes, access rules, JSON shapes. Every request goes to the live
//! loop as a [`Request`] and is answered there ([`answer`]) between two engine inputs, so
//! the engine has one owner and one order of inputs. Must not touch the engine from a
//! handler, and must not decide what an action means (the engine's `control` room does).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};

use axum::extract::{ConnectInfo, Query, Request as HttpRequest, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value as JsonValue, json};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use super::observe::{Gauges, Observer};
use crate::config::model::{Config, QueueMode, Value};
use crate::config::value::{Cidr, HttpAccess, parse_http_access};
use crate::engine::control::{Control, QueueStatus};
use crate::sim::pump::{Pump, Sink, Transport};
use crate::time::Time;

/// Requests waiting for the live loop; a handler waits when it is full.
pub const REQUESTS_MAX: usize = 64;
/// The largest request body accepted (every body is a small JSON object).
const BODY_MAX_BYTES: usize = 16 * 1024;
/// Queues listed in one answer at most.
const QUEUES_LISTED_MAX: usize = 10_000;

/// Reads the configuration file again and checks it as `check --live` does: the new
/// configuration, or every mistake as `check` prints them.
#[derive(Clone)]
pub struct Reloader(pub Arc<dyn Fn() -> Result<Config, String> + Send + Sync>);

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reloader")
    }
}

#[derive(Debug, Error)]
pub enum MgmtError {
    #[error("cannot listen for the management API on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// `http-mgmt-port` and the `http-access` lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MgmtSettings {
    pub port: u16,
    pub access: Vec<(Cidr, HttpAccess)>,
}

impl MgmtSettings {
    /// `None` without `http-mgmt-port`: no management API.
    pub fn from_config(config: &Config) -> Option<MgmtSettings> {
        let port = match config.globals.get("http-mgmt-port").map(|s| &s.value) {
            Some(Value::Count(port)) => u16::try_from(*port).ok()?,
            _ => return None,
        };
        let access = config
            .globals
            .get_all("http-access")
            .iter()
            .filter_map(|s| match &s.value {
                Value::Text(text) => parse_http_access(text).ok(),
                _ => None,
            })
            .collect();
        Some(MgmtSettings { port, access })
    }

    /// The access of `ip`: the most specific network that holds it decides (PowerMTA's
    /// rule for overlapping lines); an address no line covers has none.
    pub fn access(&self, ip: IpAddr) -> HttpAccess {
        // An IPv4 client on an IPv6 socket is seen as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.access
            .iter()
            .filter(|(cidr, _)| cidr.contains(ip))
            .max_by_key(|(cidr, _)| match cidr {
                Cidr::Any => 0,
                Cidr::Net { prefix_len, .. } => u16::from(*prefix_len) + 1,
            })
            .map_or(HttpAccess::None, |(_, level)| *level)
    }
}

/// What a handler asks the live loop.
#[derive(Debug)]
pub enum Op {
    Status,
    Queues,
    Domains,
    Metrics,
    Control(Control),
    Reload,
}

/// The live loop's answer.
#[derive(Debug)]
pub enum Answer {
    Json(JsonValue),
    Metrics(String),
    /// The request could not be carried out: the status and why.
    Refused(u16, String),
    /// The configuration was read again and is in use; the management settings it has
    /// (`None` without `http-mgmt-port`) for the HTTP side to take up.
    Reloaded(Option<MgmtSettings>),
}

#[derive(Debug)]
pub struct Request {
    pub op: Op,
    pub reply: oneshot::Sender<Answer>,
}

/// What the daemon holds now beside the engine: the spool and the listener.
#[derive(Clone, Copy, Debug)]
pub struct DaemonStats {
    pub spool_messages: usize,
    pub spool_bytes: u64,
    /// Inbound SMTP sessions open now.
    pub connections_in: usize,
    /// Inbound connections since the start, and those refused at connect (limits).
    pub connections_in_total: u64,
    pub connections_in_refused: u64,
}

/// Starts the API on `0.0.0.0:port` (every interface, as PowerMTA's web monitor) and
/// returns the address it listens on and the requests for the live loop.
pub async fn start(
    settings: MgmtSettings,
    requests: mpsc::Sender<Request>,
) -> Result<SocketAddr, MgmtError> {
    let addr = SocketAddr::from(([0, 0, 0, 0], settings.port));
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| MgmtError::Bind { addr, source })?;
    let local = listener.local_addr().unwrap_or(addr);
    let state = Api {
        settings: Arc::new(RwLock::new(settings)),
        requests,
    };
    let app = router(state);
    tokio::spawn(async move {
        let service = app.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(error) = axum::serve(listener, service).await {
            super::log(&format!("management API stopped: {error}"));
        }
    });
    Ok(local)
}

#[derive(Clone)]
struct Api {
    /// The access rules in force: a reload replaces them (the port stays until a restart).
    settings: Arc<RwLock<MgmtSettings>>,
    requests: mpsc::Sender<Request>,
}

impl Api {
    fn access(&self, ip: IpAddr) -> HttpAccess {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .access(ip)
    }

    /// A good reload's `http-access` lines replace the rules in force. The API keeps its
    /// listening port: a new `http-mgmt-port` (or none) takes effect at the next start.
    fn take_up(&self, reloaded: Option<MgmtSettings>) {
        let mut settings = self.settings.write().unwrap_or_else(|e| e.into_inner());
        match reloaded {
            Some(new) => {
                if new.port != settings.port {
                    super::log(&format!(
                        "reload: http-mgmt-port {} takes effect at the next start; the API stays on {}",
                        new.port, settings.port
                    ));
                }
                settings.access = new.access;
            }
            None => super::log(
                "reload: the configuration has no http-mgmt-port; the API stays up with its access rules until the next start",
            ),
        }
    }
}

fn router(state: Api) -> Router {
    Router::new()
        .route("/api/v1/status", get(status))
        .route("/api/v1/queues", get(queues))
        .route("/api/v1/domains", get(domains))
        .route("/api/v1/queues/mode", post(set_mode))
        .route("/api/v1/queues/pause", post(pause))
        .route("/api/v1/queues/resume", post(resume))
        .route("/api/v1/queues/schedule", post(schedule))
        .route("/api/v1/queues/delete", post(delete))
        .route("/api/v1/reload", post(reload))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .layer(axum::extract::DefaultBodyLimit::max(BODY_MAX_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), access_rule))
        .with_state(state)
}

/// `http-access`: reading needs `monitor`, anything else `admin`; everyone else 403.
async fn access_rule(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: HttpRequest,
    next: Next,
) -> Response {
    let needed = if request.method() == Method::GET || request.method() == Method::HEAD {
        HttpAccess::Monitor
    } else {
        HttpAccess::Admin
    };
    let has = api.access(peer.ip());
    if has < needed {
        let why = format!(
            "{} has `{}` access; this needs `{}` (http-access)",
            peer.ip(),
            has.name(),
            needed.name()
        );
        return refused(403, why);
    }
    next.run(request).await
}

fn refused(status: u16, why: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(json!({ "error": why }))).into_response()
}

async fn ask(api: &Api, op: Op) -> Answer {
    let (reply, answer) = oneshot::channel();
    if api.requests.send(Request { op, reply }).await.is_err() {
        return Answer::Refused(503, "the daemon is stopping".to_string());
    }
    answer
        .await
        .unwrap_or_else(|_| Answer::Refused(503, "the daemon is stopping".to_string()))
}

fn respond(answer: Answer) -> Response {
    match answer {
        Answer::Json(value) => Json(value).into_response(),
        Answer::Metrics(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Answer::Refused(status, why) => refused(status, why),
        Answer::Reloaded(_) => Json(json!({ "reloaded": true })).into_response(),
    }
}

async fn status(State(api): State<Api>) -> Response {
    respond(ask(&api, Op::Status).await)
}

#[derive(Deserialize)]
struct QueueFilter {
    mode: Option<String>,
    queue: Option<String>,
}

async fn queues(State(api): State<Api>, Query(filter): Query<QueueFilter>) -> Response {
    let mode = match filter.mode.as_deref() {
        None => None,
        Some(text) => match parse_mode(text) {
            Ok(mode) => Some(mode),
            Err(why) => return refused(400, why),
        },
    };
    match ask(&api, Op::Queues).await {
        Answer::Json(JsonValue::Array(all)) => {
            let kept: Vec<JsonValue> = all
                .into_iter()
                .filter(|q| mode.is_none_or(|m| q["mode"] == mode_name(m)))
                .filter(|q| {
                    filter.queue.as_deref().is_none_or(|target| {
                        q["name"] == target
                            || q["domain"].as_str().is_some_and(|d| {
                                d.eq_ignore_ascii_case(target.trim_end_matches("/*"))
                            })
                    })
                })
                .collect();
            Json(JsonValue::Array(kept)).into_response()
        }
        other => respond(other),
    }
}

async fn domains(State(api): State<Api>) -> Response {
    respond(ask(&api, Op::Domains).await)
}

async fn metrics(State(api): State<Api>) -> Response {
    respond(ask(&api, Op::Metrics).await)
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response()
}

#[derive(Deserialize)]
struct QueueBody {
    queue: String,
}

#[derive(Deserialize)]
struct ModeBody {
    queue: String,
    mode: String,
}

async fn set_mode(State(api): State<Api>, Json(body): Json<ModeBody>) -> Response {
    let mode = match parse_mode(&body.mode) {
        Ok(mode) => mode,
        Err(why) => return refused(400, why),
    };
    control(
        &api,
        Control::SetMode {
            target: body.queue,
            mode,
        },
    )
    .await
}

async fn pause(State(api): State<Api>, Json(body): Json<QueueBody>) -> Response {
    control(&api, Control::Pause { target: body.queue }).await
}

async fn resume(State(api): State<Api>, Json(body): Json<QueueBody>) -> Response {
    control(&api, Control::Resume { target: body.queue }).await
}

async fn schedule(State(api): State<Api>, Json(body): Json<QueueBody>) -> Response {
    control(&api, Control::RetryNow { target: body.queue }).await
}

async fn delete(State(api): State<Api>, Json(body): Json<QueueBody>) -> Response {
    control(&api, Control::Delete { target: body.queue }).await
}

async fn reload(State(api): State<Api>) -> Response {
    match ask(&api, Op::Reload).await {
        Answer::Reloaded(settings) => {
            api.take_up(settings);
            respond(Answer::Reloaded(None))
        }
        other => respond(other),
    }
}

async fn control(api: &Api, control: Control) -> Response {
    respond(ask(api, Op::Control(control)).await)
}

fn parse_mode(text: &str) -> Result<QueueMode, String> {
    match text {
        "normal" => Ok(QueueMode::Normal),
        "backoff" => Ok(QueueMode::Backoff),
        other => Err(format!(
            "mode must be `normal` or `backoff`, found `{other}`"
        )),
    }
}

fn mode_name(mode: QueueMode) -> &'static str {
    match mode {
        QueueMode::Normal => "normal",
        QueueMode::Backoff => "backoff",
    }
}

/// The live loop's side: answers one request between two engine inputs.
#[allow(clippy::too_many_arguments)]
pub fn answer<T: Transport, S: Sink>(
    request: Request,
    now: Time,
    pump: &mut Pump,
    transport: &mut T,
    sink: &mut S,
    observer: impl Fn(&S) -> &Observer,
    stats: DaemonStats,
    reloader: Option<&Reloader>,
) {
    let answer = match request.op {
        Op::Status => Answer::Json(status_json(now, pump, observer(sink), stats)),
        Op::Queues => {
            let queues = pump.engine().queue_status();
            Answer::Json(JsonValue::Array(
                queues
                    .iter()
                    .take(QUEUES_LISTED_MAX)
                    .map(|q| queue_json(now, q, observer(sink)))
                    .collect(),
            ))
        }
        Op::Domains => Answer::Json(domains_json(&pump.engine().queue_status())),
        Op::Metrics => {
            let queues = pump.engine().queue_status();
            Answer::Metrics(observer(sink).metrics_text(&Gauges {
                now,
                queues: &queues,
                connections_out: pump.engine().connections_open(),
                connections_in: stats.connections_in,
                spool_messages: stats.spool_messages,
                spool_bytes: stats.spool_bytes,
            }))
        }
        Op::Control(control) => {
            match pump.with_engine(now, |e| e.handle_control(now, &control), transport, sink) {
                Ok(outcome) => {
                    super::log(&format!(
                        "operator: {control:?} applied to {:?}",
                        outcome.queues
                    ));
                    Answer::Json(json!({
                        "queues": outcome.queues,
                        "recipients_deleted": outcome.recipients_deleted,
                    }))
                }
                Err(error) => Answer::Refused(404, error.to_string()),
            }
        }
        Op::Reload => match reloader {
            None => Answer::Refused(
                501,
                "this daemon has no configuration file to read again".to_string(),
            ),
            Some(reloader) => match (reloader.0)() {
                Err(diagnostics) => {
                    super::log("reload refused; the configuration in use is unchanged");
                    Answer::Refused(422, diagnostics)
                }
                Ok(config) => {
                    let mgmt = MgmtSettings::from_config(&config);
                    match pump.with_engine(now, |e| e.reload(now, config), transport, sink) {
                        Ok(()) => {
                            super::log("configuration reloaded");
                            Answer::Reloaded(mgmt)
                        }
                        Err(error) => Answer::Refused(422, format!("DKIM: {error}")),
                    }
                }
            },
        },
    };
    let _ = request.reply.send(answer);
}

fn time_json(at: Option<Time>) -> JsonValue {
    at.map_or(JsonValue::Null, |t| json!(t.acct_format()))
}

fn status_json(now: Time, pump: &Pump, observer: &Observer, stats: DaemonStats) -> JsonValue {
    let queues = pump.engine().queue_status();
    let (minute, hour) = observer.traffic(now);
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "time": now.acct_format(),
        "traffic": { "last_minute": minute, "last_hour": hour },
        "connections": {
            "smtp_out": pump.engine().connections_open(),
            "smtp_in": stats.connections_in,
            "smtp_in_total": stats.connections_in_total,
            "smtp_in_refused": stats.connections_in_refused,
        },
        "queue": {
            "recipients": queues.iter().map(|q| q.recipients_queued).sum::<usize>(),
            "queues": queues.len(),
            "backoff": queues.iter().filter(|q| q.mode == QueueMode::Backoff).count(),
            "paused": queues.iter().filter(|q| q.paused).count(),
        },
        "spool": { "messages": stats.spool_messages, "bytes": stats.spool_bytes },
    })
}

fn queue_json(now: Time, q: &QueueStatus, observer: &Observer) -> JsonValue {
    let notes = observer.notes(&q.name);
    json!({
        "name": q.name,
        "domain": q.domain,
        "vmta": q.vmta,
        "mode": mode_name(q.mode),
        "paused": q.paused,
        "held_by": q.held_by,
        "recipients": q.recipients_queued,
        "connections": q.connections,
        "oldest_age_s": q.oldest_queued_at.map(|t| now.since(t) / 1000),
        "next_retry": time_json(q.retry_until.filter(|t| *t > now)),
        "backoff_until": time_json(q.backoff_until),
        "backoff_reason": notes.and_then(|n| n.backoff_reason.clone()),
        "disabled_source_ips": q.disabled_source_ips.iter().map(|(ip, until)| json!({
            "ip": ip.to_string(),
            "until": time_json(*until),
        })).collect::<Vec<_>>(),
        "last_errors": notes.map(|n| n.last_errors.iter().map(|e| json!({
            "time": e.at.acct_format(),
            "type": e.record_type,
            "rcpt": e.rcpt,
            "dsn_status": e.dsn_status,
            "diag": e.diag,
        })).collect::<Vec<_>>()).unwrap_or_default(),
        "max_smtp_out": q.settings.max_smtp_out,
    })
}

/// Queues summed by domain, most recipients first (`show topdomains`).
fn domains_json(queues: &[QueueStatus]) -> JsonValue {
    let mut by_domain: indexmap::IndexMap<&str, (usize, usize, usize, usize)> =
        indexmap::IndexMap::new();
    for q in queues {
        let entry = by_domain.entry(q.domain.as_str()).or_default();
        entry.0 += q.recipients_queued;
        entry.1 += q.connections;
        entry.2 += 1;
        entry.3 += usize::from(q.mode == QueueMode::Backoff);
    }
    let mut list: Vec<_> = by_domain.into_iter().collect();
    list.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.0.cmp(b.0)));
    JsonValue::Array(
        list.into_iter()
            .map(|(domain, (recipients, connections, queues, backoff))| {
                json!({
                    "domain": domain,
                    "recipients": recipients,
                    "connections": connections,
                    "queues": queues,
                    "queues_in_backoff": backoff,
                })
            })
            .collect(),
    )
}

/// The OpenAPI 3.1 description of this API, served at `/api/v1/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");
