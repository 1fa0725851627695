//! `pmta-sim ctl`: PowerMTA's `pmta` command for a live daemon, over its management API.
//!
//! Owns the verbs (`show status`, `show queues`, `set queue`, `pause`/`resume queue`,
//! `schedule`, `delete`, `reload`), their parsing and their output shapes (columns as
//! PowerMTA's `pmta show ...` prints them). This is an edge like `cli`: it may do I/O and
//! print. It must not decide anything the daemon decides; it only asks and shows.
//!
//! Exit statuses: 0 done; 1 the daemon refused (no such queue, access denied, a broken
//! configuration on reload: its reasons are printed); 2 the command line is wrong or the
//! daemon cannot be reached.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpSocket;

pub const EXIT_OK: u8 = 0;
pub const EXIT_REFUSED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;

/// How long a request may take, connection included.
const REQUEST_TIMEOUT_S: u64 = 30;
/// The largest answer read (queue lists are bounded by the daemon).
const ANSWER_MAX_BYTES: usize = 64 * 1024 * 1024;

/// Where the daemon's API is, and where to connect from.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub api: SocketAddr,
    /// The source address (its `http-access` level is the one that counts).
    pub bind: Option<IpAddr>,
}

/// One verb, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Verb {
    ShowStatus,
    ShowQueues {
        mode: Option<String>,
        queue: Option<String>,
    },
    ShowTopDomains,
    SetMode {
        queue: String,
        mode: String,
    },
    Pause(String),
    Resume(String),
    Schedule(String),
    Delete(String),
    Reload,
}

const USAGE: &str = "usage: pmta-sim ctl [--api HOST:PORT] [--bind IP] VERB
verbs:
  show status
  show queues [--mode=normal|backoff] [DOMAIN/VMTA]
  show topdomains
  set queue --mode=normal|backoff DOMAIN/VMTA
  pause queue DOMAIN/VMTA|DOMAIN
  resume queue DOMAIN/VMTA|DOMAIN
  schedule DOMAIN/VMTA|DOMAIN
  delete --queue=DOMAIN/VMTA
  reload";

fn parse(words: &[String]) -> Result<Verb, String> {
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let option = |name: &str| {
        words
            .iter()
            .find_map(|w| w.strip_prefix(&format!("--{name}=")).map(str::to_string))
    };
    let plain: Vec<&str> = words
        .iter()
        .copied()
        .filter(|w| !w.starts_with("--"))
        .collect();
    let unknown = words
        .iter()
        .find(|w| w.starts_with("--") && !w.starts_with("--mode=") && !w.starts_with("--queue="));
    if let Some(flag) = unknown {
        return Err(format!("unknown option `{flag}`"));
    }
    let one = |rest: &[&str], what: &str| match rest {
        [queue] => Ok(queue.to_string()),
        _ => Err(format!("`{what}` takes one queue (DOMAIN/VMTA or DOMAIN)")),
    };
    match plain.as_slice() {
        ["show", "status"] => Ok(Verb::ShowStatus),
        ["show", "queues", rest @ ..] if rest.len() <= 1 => Ok(Verb::ShowQueues {
            mode: option("mode"),
            queue: rest.first().map(|q| q.to_string()),
        }),
        ["show", "topdomains"] => Ok(Verb::ShowTopDomains),
        ["set", "queue", rest @ ..] => Ok(Verb::SetMode {
            queue: one(rest, "set queue")?,
            mode: option("mode").ok_or("`set queue` needs --mode=normal or --mode=backoff")?,
        }),
        ["pause", "queue", rest @ ..] => Ok(Verb::Pause(one(rest, "pause queue")?)),
        ["resume", "queue", rest @ ..] => Ok(Verb::Resume(one(rest, "resume queue")?)),
        ["schedule", rest @ ..] => Ok(Verb::Schedule(one(rest, "schedule")?)),
        ["delete"] => Ok(Verb::Delete(
            option("queue").ok_or("`delete` needs --queue=DOMAIN/VMTA")?,
        )),
        ["reload"] => Ok(Verb::Reload),
        _ => Err(format!("unknown command `{}`", words.join(" "))),
    }
}

/// Runs one `ctl` command; prints its answer; returns the exit status.
pub fn main(target: Target, words: &[String]) -> u8 {
    let verb = match parse(words) {
        Ok(verb) => verb,
        Err(why) => {
            eprintln!("error: {why}\n{USAGE}");
            return EXIT_USAGE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return EXIT_USAGE;
        }
    };
    let (method, path, body) = request_of(&verb);
    let answer = runtime.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(REQUEST_TIMEOUT_S),
            call(target, method, &path, body),
        )
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {REQUEST_TIMEOUT_S} s")))
    });
    let (status, value) = match answer {
        Ok(answer) => answer,
        Err(why) => {
            eprintln!(
                "error: cannot reach the management API at {}: {why}",
                target.api
            );
            return EXIT_USAGE;
        }
    };
    if status != 200 {
        let why = value["error"].as_str().unwrap_or("no reason given");
        eprintln!("error: {status}: {why}");
        return EXIT_REFUSED;
    }
    print!("{}", render(&verb, &value));
    EXIT_OK
}

fn request_of(verb: &Verb) -> (&'static str, String, Option<Value>) {
    let post = |path: &str, body: Value| ("POST", format!("/api/v1/{path}"), Some(body));
    match verb {
        Verb::ShowStatus => ("GET", "/api/v1/status".to_string(), None),
        Verb::ShowQueues { mode, queue } => {
            let mut query = Vec::new();
            if let Some(mode) = mode {
                query.push(format!("mode={}", encode(mode)));
            }
            if let Some(queue) = queue {
                query.push(format!("queue={}", encode(queue)));
            }
            let query = if query.is_empty() {
                String::new()
            } else {
                format!("?{}", query.join("&"))
            };
            ("GET", format!("/api/v1/queues{query}"), None)
        }
        Verb::ShowTopDomains => ("GET", "/api/v1/domains".to_string(), None),
        Verb::SetMode { queue, mode } => {
            post("queues/mode", json!({ "queue": queue, "mode": mode }))
        }
        Verb::Pause(queue) => post("queues/pause", json!({ "queue": queue })),
        Verb::Resume(queue) => post("queues/resume", json!({ "queue": queue })),
        Verb::Schedule(queue) => post("queues/schedule", json!({ "queue": queue })),
        Verb::Delete(queue) => post("queues/delete", json!({ "queue": queue })),
        Verb::Reload => post("reload", json!({})),
    }
}

/// Percent-encodes a query value.
fn encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(byte as char)
            }
            _ => {
                let _ = write!(out, "%{byte:02X}");
            }
        }
    }
    out
}

/// One HTTP/1.1 request to the API from `target.bind`; the status and the JSON answer.
async fn call(
    target: Target,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, Value), String> {
    let socket = match target.api {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| e.to_string())?;
    if let Some(ip) = target.bind {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| format!("cannot bind {ip}: {e}"))?;
    }
    let stream = socket
        .connect(target.api)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let bytes = body.map(|b| b.to_string()).unwrap_or_default();
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, target.api.to_string())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = http_body_util::Limited::new(response.into_body(), ANSWER_MAX_BYTES)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let value =
        serde_json::from_slice(&body).map_err(|e| format!("the answer is not JSON ({e})"))?;
    Ok((status, value))
}

fn render(verb: &Verb, value: &Value) -> String {
    match verb {
        Verb::ShowStatus => render_status(value),
        Verb::ShowQueues { .. } => render_queues(value),
        Verb::ShowTopDomains => render_domains(value),
        Verb::Delete(_) => format!(
            "{} recipients deleted from {}\n",
            value["recipients_deleted"],
            queue_list(value)
        ),
        Verb::SetMode { mode, .. } => format!("{}: mode set to {mode}\n", queue_list(value)),
        Verb::Pause(queue) => format!("{queue}: paused\n"),
        Verb::Resume(queue) => format!("{queue}: resumed\n"),
        Verb::Schedule(_) => format!("{}: scheduled for delivery now\n", queue_list(value)),
        Verb::Reload => "configuration reloaded\n".to_string(),
    }
}

fn queue_list(value: &Value) -> String {
    let names: Vec<&str> = value["queues"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    names.join(", ")
}

fn n(value: &Value) -> u64 {
    value.as_u64().unwrap_or(0)
}

/// `pmta show status`'s blocks: traffic, connections, queues, spool.
fn render_status(v: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "pmta-sim v{}, at {}",
        v["version"].as_str().unwrap_or("?"),
        v["time"].as_str().unwrap_or("?")
    );
    let _ = writeln!(
        out,
        "Traffic     ---inbound---   ----------outbound----------"
    );
    let _ = writeln!(
        out,
        "             rcpts   msgs   delivered  deferred  bounced"
    );
    for (label, key) in [("Last Hour", "last_hour"), ("Last Min.", "last_minute")] {
        let t = &v["traffic"][key];
        let _ = writeln!(
            out,
            "{label:<10} {:>7} {:>6} {:>11} {:>9} {:>8}",
            n(&t["recipients_in"]),
            n(&t["messages_in"]),
            n(&t["delivered"]),
            n(&t["deferred"]),
            n(&t["bounced"])
        );
    }
    let _ = writeln!(out, "Connections   active");
    let _ = writeln!(out, "Inbound     {:>8}", n(&v["connections"]["smtp_in"]));
    let _ = writeln!(out, "Outbound    {:>8}", n(&v["connections"]["smtp_out"]));
    let _ = writeln!(out, "Queues      rcpts  queues  backoff  paused");
    let q = &v["queue"];
    let _ = writeln!(
        out,
        "SMTP     {:>8} {:>7} {:>8} {:>7}",
        n(&q["recipients"]),
        n(&q["queues"]),
        n(&q["backoff"]),
        n(&q["paused"])
    );
    let _ = writeln!(
        out,
        "Spool       {} messages, {} bytes",
        n(&v["spool"]["messages"]),
        n(&v["spool"]["bytes"])
    );
    out
}

/// `pmta show queues`: one line per queue, then what holds a queue in backoff or retry
/// and its last error, indented under it.
fn render_queues(v: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<40} {:>7} {:>5} {:<7} {:<6} {:<24} Held by",
        "Queue", "Rcpts", "Conn", "Mode", "Paused", "Next retry"
    );
    for q in v.as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:<40} {:>7} {:>5} {:<7} {:<6} {:<24} {}",
            q["name"].as_str().unwrap_or("?"),
            n(&q["recipients"]),
            n(&q["connections"]),
            q["mode"].as_str().unwrap_or("?"),
            if q["paused"].as_bool() == Some(true) {
                "yes"
            } else {
                "no"
            },
            q["next_retry"].as_str().unwrap_or("-"),
            q["held_by"].as_str().unwrap_or("?"),
        );
        if let Some(reason) = q["backoff_reason"].as_str() {
            let _ = writeln!(out, "    backoff: {reason}");
        }
        for ip in q["disabled_source_ips"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "    source IP {} disabled until {}",
                ip["ip"].as_str().unwrap_or("?"),
                ip["until"].as_str().unwrap_or("reload")
            );
        }
        if let Some(last) = q["last_errors"].as_array().and_then(|e| e.last()) {
            let _ = writeln!(
                out,
                "    last error: {} {} {}",
                last["time"].as_str().unwrap_or("?"),
                last["rcpt"].as_str().unwrap_or("?"),
                last["diag"].as_str().unwrap_or("?")
            );
        }
    }
    out
}

/// `pmta show topdomains`.
fn render_domains(v: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<40} {:>7} {:>5} {:>6} {:>7}",
        "Domain", "Rcpts", "Conn", "Queues", "Backoff"
    );
    for d in v.as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:<40} {:>7} {:>5} {:>6} {:>7}",
            d["domain"].as_str().unwrap_or("?"),
            n(&d["recipients"]),
            n(&d["connections"]),
            n(&d["queues"]),
            n(&d["queues_in_backoff"])
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn verbs_parse_as_powermta_writes_them() {
        assert_eq!(
            parse(&words("show queues --mode=backoff gmail.com/vmta1")),
            Ok(Verb::ShowQueues {
                mode: Some("backoff".into()),
                queue: Some("gmail.com/vmta1".into())
            })
        );
        assert_eq!(
            parse(&words("set queue --mode=normal gmail.com/vmta1")),
            Ok(Verb::SetMode {
                queue: "gmail.com/vmta1".into(),
                mode: "normal".into()
            })
        );
        assert_eq!(
            parse(&words("delete --queue=yahoo.com/v")),
            Ok(Verb::Delete("yahoo.com/v".into()))
        );
        assert!(parse(&words("set queue gmail.com/v")).is_err());
        assert!(parse(&words("pause queue")).is_err());
        assert!(parse(&words("show queues --maxitems=3")).is_err());
    }
}
