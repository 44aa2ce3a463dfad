//! `serve --http ADDR`: a local API in the shapes of RunPod's serverless endpoints, for local
//! development and for callers written against RunPod (e.g. a Firebase Function):
//!
//! - `POST /runsync` `{"input": {...}}` → waits for the job (up to `?wait=MS`, default 90 s, at most
//!   300 s) → `{"id", "status": "COMPLETED", "output", "delayTime", "executionTime"}`, or `"FAILED"`
//!   with `"error"`, or `"IN_QUEUE"`/`"IN_PROGRESS"` when the wait ran out (then poll `/status/ID`);
//! - `POST /run` → `{"id", "status": "IN_QUEUE"}` at once;
//! - `GET /status/ID` → the job in the same shape (404 for an unknown id; the last 1000 finished jobs
//!   are kept);
//! - `GET /health` → `{"jobs": {"completed", "failed", "inProgress", "inQueue", "retried"},
//!   "workers": {"idle", "running"}}`.
//!
//! The same paths answer under `/v2/ENDPOINT/`. Jobs run one at a time, in order, on the thread that
//! holds the model; requests are served by their own threads (at most [`MAX_CONNECTIONS`] at once).
//! Bodies over `--max-request-mb` get 413, a full queue 429, a missing or wrong `--api-key` 401.

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tiny_http::{Header, Method, Request, Response, Server};

use super::handler::Handler;
use super::signal::stopping;
use crate::error::UserError;

/// Requests handled at once; more get 503.
pub const MAX_CONNECTIONS: usize = 64;
/// Finished jobs kept for `/status`.
const KEEP_FINISHED: usize = 1000;
const DEFAULT_WAIT: Duration = Duration::from_secs(90);
const MAX_WAIT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
pub struct HttpOptions {
    pub api_key: Option<String>,
    pub max_body_bytes: u64,
    pub queue_size: usize,
}

/// Listens on `addr` (before the model is loaded, so that a taken port fails at once).
pub fn bind(addr: &str) -> anyhow::Result<Server> {
    let server = Server::http(addr).map_err(|e| {
        UserError::bad_input(format!("cannot listen on {addr}: {e}"))
            .with_hint("pass a free HOST:PORT, e.g. --http 127.0.0.1:8000")
    })?;
    if let Some(a) = server.server_addr().to_ip() {
        tracing::info!("listening on http://{a}");
    }
    Ok(server)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    InQueue,
    InProgress,
    Completed,
    Failed,
}

impl Status {
    fn name(self) -> &'static str {
        match self {
            Status::InQueue => "IN_QUEUE",
            Status::InProgress => "IN_PROGRESS",
            Status::Completed => "COMPLETED",
            Status::Failed => "FAILED",
        }
    }
    fn finished(self) -> bool {
        matches!(self, Status::Completed | Status::Failed)
    }
}

struct Entry {
    status: Status,
    output: Option<Value>,
    error: Option<String>,
    queued: Instant,
    started: Option<Instant>,
    finished: Option<Instant>,
}

#[derive(Default)]
struct Book {
    entries: HashMap<String, Entry>,
    finished: VecDeque<String>,
    completed: u64,
    failed: u64,
}

struct Shared {
    book: Mutex<Book>,
    changed: Condvar,
    queue: mpsc::SyncSender<(String, Value)>,
    opts: HttpOptions,
    active: AtomicUsize,
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

fn job_json(id: &str, e: &Entry) -> Value {
    let mut v = json!({"id": id, "status": e.status.name()});
    if let Some(started) = e.started {
        v["delayTime"] = ms(started - e.queued).into();
        if let Some(finished) = e.finished {
            v["executionTime"] = ms(finished - started).into();
        }
    }
    if let Some(o) = &e.output {
        v["output"] = o.clone();
    }
    if let Some(err) = &e.error {
        v["error"] = err.clone().into();
    }
    v
}

fn new_id() -> String {
    use crate::commands::common::random_seed;
    let (a, b) = (random_seed(), random_seed());
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}-local",
        a >> 21,
        (a >> 5) & 0xffff,
        b >> 37,
        (b >> 21) & 0xffff,
        (b & 0x1f_ffff) ^ ((a & 0x1f) << 21)
    )
}

fn respond(req: Request, code: u16, body: &Value) {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = Response::from_data(bytes).with_status_code(code);
    if let Ok(h) = Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..]) {
        resp = resp.with_header(h);
    }
    if let Err(e) = req.respond(resp) {
        tracing::debug!("could not send the response: {e}");
    }
}

fn error(req: Request, code: u16, msg: impl Into<String>) {
    respond(req, code, &json!({"error": msg.into()}));
}

/// `/v2/ENDPOINT/rest` → `/rest`; the query string dropped.
fn route(url: &str) -> (String, Option<String>) {
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (url, None),
    };
    let path = match path.strip_prefix("/v2/") {
        Some(rest) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => path,
    };
    (path.trim_end_matches('/').to_string(), query)
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn authorized(req: &Request, key: &str) -> bool {
    req.headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .map(|h| {
            let v = h.value.as_str().trim();
            v == key || v.strip_prefix("Bearer ").map(str::trim) == Some(key)
        })
        .unwrap_or(false)
}

/// Reads `{"input": ...}` within the size limit; `Err((code, message))` otherwise.
fn read_job(req: &mut Request, limit: u64) -> Result<Value, (u16, String)> {
    let too_large = || {
        (
            413,
            format!(
                "the request body is larger than the limit of {} MiB",
                limit / (1024 * 1024)
            ),
        )
    };
    if req.body_length().is_some_and(|n| n as u64 > limit) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    req.as_reader()
        .take(limit.saturating_add(1))
        .read_to_end(&mut body)
        .map_err(|e| (400, format!("cannot read the request body: {e}")))?;
    if body.len() as u64 > limit {
        return Err(too_large());
    }
    let value: Value =
        serde_json::from_slice(&body).map_err(|e| (400, format!("the request body is not valid JSON: {e}")))?;
    match value.get("input") {
        Some(input) => Ok(input.clone()),
        None => Err((400, r#"the request has no `input`: send {"input": {...}}"#.to_string())),
    }
}

fn handle(shared: &Shared, mut req: Request) {
    if let Some(key) = &shared.opts.api_key {
        if !authorized(&req, key) {
            return error(req, 401, "missing or wrong Authorization");
        }
    }
    let (path, query) = route(req.url());
    let method = req.method().clone();
    match (method, path.as_str()) {
        (Method::Post, "/run" | "/runsync") => {
            let input = match read_job(&mut req, shared.opts.max_body_bytes) {
                Ok(i) => i,
                Err((code, msg)) => return error(req, code, msg),
            };
            let id = new_id();
            {
                let mut book = shared.book.lock().unwrap_or_else(|p| p.into_inner());
                book.entries.insert(
                    id.clone(),
                    Entry {
                        status: Status::InQueue,
                        output: None,
                        error: None,
                        queued: Instant::now(),
                        started: None,
                        finished: None,
                    },
                );
            }
            if shared.queue.try_send((id.clone(), input)).is_err() {
                shared
                    .book
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entries
                    .remove(&id);
                return error(req, 429, "the job queue is full; try again later");
            }
            tracing::debug!("job {id}: queued");
            if path == "/run" {
                return respond(req, 200, &json!({"id": id, "status": "IN_QUEUE"}));
            }
            let wait = query_param(query.as_deref(), "wait")
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(DEFAULT_WAIT, Duration::from_millis)
                .min(MAX_WAIT);
            let deadline = Instant::now() + wait;
            let mut book = shared.book.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                let Some(entry) = book.entries.get(&id) else {
                    return error(req, 500, "the job was lost");
                };
                let now = Instant::now();
                if entry.status.finished() || now >= deadline {
                    let body = job_json(&id, entry);
                    drop(book);
                    return respond(req, 200, &body);
                }
                book = shared
                    .changed
                    .wait_timeout(book, deadline - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
        (Method::Get, p) if p.starts_with("/status/") => {
            let id = &p["/status/".len()..];
            let book = shared.book.lock().unwrap_or_else(|p| p.into_inner());
            match book.entries.get(id) {
                Some(e) => {
                    let body = job_json(id, e);
                    drop(book);
                    respond(req, 200, &body)
                }
                None => {
                    drop(book);
                    error(req, 404, format!("no job with id `{id}`"))
                }
            }
        }
        (Method::Get, "/health") => {
            let book = shared.book.lock().unwrap_or_else(|p| p.into_inner());
            let count = |s: Status| book.entries.values().filter(|e| e.status == s).count();
            let running = count(Status::InProgress);
            let body = json!({
                "jobs": {
                    "completed": book.completed,
                    "failed": book.failed,
                    "inProgress": running,
                    "inQueue": count(Status::InQueue),
                    "retried": 0,
                },
                "workers": {"idle": 1 - running.min(1), "running": running.min(1)},
            });
            drop(book);
            respond(req, 200, &body)
        }
        (_, "/run" | "/runsync" | "/health") => error(req, 405, "method not allowed"),
        (_, p) => error(req, 404, format!("no such endpoint `{p}`")),
    }
}

fn set(shared: &Shared, id: &str, f: impl FnOnce(&mut Book, &mut Entry)) {
    let mut book = shared.book.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(mut entry) = book.entries.remove(id) {
        f(&mut book, &mut entry);
        let finished = entry.status.finished();
        book.entries.insert(id.to_string(), entry);
        if finished {
            book.finished.push_back(id.to_string());
            while book.finished.len() > KEEP_FINISHED {
                if let Some(old) = book.finished.pop_front() {
                    book.entries.remove(&old);
                }
            }
        }
    }
    drop(book);
    shared.changed.notify_all();
}

/// Serves until SIGTERM/SIGINT (after the running job), or until the device fails for good (5).
pub fn serve(handler: &Handler, server: Server, opts: &HttpOptions, stop: &AtomicBool) -> anyhow::Result<u8> {
    let (tx, rx) = mpsc::sync_channel::<(String, Value)>(opts.queue_size);
    let shared = Arc::new(Shared {
        book: Mutex::new(Book::default()),
        changed: Condvar::new(),
        queue: tx,
        opts: opts.clone(),
        active: AtomicUsize::new(0),
    });
    let server = Arc::new(server);
    {
        let (server, shared) = (server.clone(), shared.clone());
        std::thread::spawn(move || loop {
            let req = match server.recv() {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("accepting a request failed: {e}");
                    continue;
                }
            };
            if shared.active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                shared.active.fetch_sub(1, Ordering::SeqCst);
                error(req, 503, "too many requests at once");
                continue;
            }
            let shared = shared.clone();
            std::thread::spawn(move || {
                handle(&shared, req);
                shared.active.fetch_sub(1, Ordering::SeqCst);
            });
        });
    }
    tracing::info!("ready: serving jobs");
    loop {
        if stopping(stop) {
            tracing::info!("stopped by a signal");
            return Ok(0);
        }
        let (id, input) = match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(job) => job,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(0),
        };
        set(&shared, &id, |_, e| {
            e.status = Status::InProgress;
            e.started = Some(Instant::now());
        });
        tracing::info!("job {id}: started");
        let outcome = handler.run(&input, &mut ());
        let fatal = outcome.as_ref().err().is_some_and(|f| f.fatal);
        set(&shared, &id, |book, e| {
            e.finished = Some(Instant::now());
            match outcome {
                Ok(output) => {
                    tracing::info!("job {id}: done");
                    book.completed += 1;
                    e.status = Status::Completed;
                    e.output = Some(output);
                }
                Err(f) => {
                    tracing::warn!("job {id}: failed: {}", f.message);
                    book.failed += 1;
                    e.status = Status::Failed;
                    e.error = Some(f.message);
                }
            }
        });
        if fatal {
            tracing::error!("stopping: the device failed");
            return Ok(5);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_strip_the_v2_prefix_and_the_query() {
        assert_eq!(route("/runsync"), ("/runsync".to_string(), None));
        assert_eq!(
            route("/v2/abc123/runsync?wait=5"),
            ("/runsync".to_string(), Some("wait=5".to_string()))
        );
        assert_eq!(route("/v2/abc/status/x-1").0, "/status/x-1");
        assert_eq!(query_param(Some("a=1&wait=20"), "wait"), Some("20"));
    }

    #[test]
    fn ids_are_unique() {
        let a = new_id();
        assert_ne!(a, new_id());
        assert!(a.ends_with("-local"), "{a}");
    }
}
