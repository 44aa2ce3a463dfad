//! The RunPod serverless worker protocol (as the runpod Python SDK 1.12 speaks it).
//!
//! - Take: `GET $RUNPOD_WEBHOOK_GET_JOB` (`$ID` → the worker id, `RUNPOD_POD_ID`) with
//!   `job_in_progress=0|1` and the raw `Authorization: $RUNPOD_AI_API_KEY`. 204, 400, an empty or
//!   non-JSON body: no job; 429: wait (`Retry-After`, else backoff); 5xx and transport errors: back
//!   off and retry; a timeout of the long poll: ask again. A JSON object with an `id` is one job.
//!   The request runs on a helper thread so that SIGTERM is seen while it waits.
//! - Result: `POST $RUNPOD_WEBHOOK_POST_OUTPUT` (`$RUNPOD_POD_ID`, `$ID` → the job id) with
//!   `isStream=false`, body `{"output": ...}` or `{"error": "..."}`, headers `Authorization` and
//!   `X-Request-ID`; retried with exponential backoff on 5xx, 429 and transport errors, given up
//!   (and logged as lost) only after `--post-tries` attempts or on another 4xx answer.
//! - Progress (`--progress-interval`): `{"status": "IN_PROGRESS", "output": {"step", "steps"}}` to
//!   the result URL, best effort, from a helper thread that is joined before the result is posted.
//! - Heartbeat: `GET $RUNPOD_WEBHOOK_PING` (`$RUNPOD_POD_ID` substituted) with `job_id=<ids in
//!   progress>` every `RUNPOD_PING_INTERVAL` ms (default 10000), on its own thread.
//! - SIGTERM/SIGINT: no further takes; the running job is finished and posted; exit 0.

use std::io::Read;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::handler::Handler;
use super::signal::{sleep_unless_stopped, stopping};
use crate::error::UserError;
use crate::pipeline::edit::StepObserver;

/// The worker's view of the RunPod environment.
#[derive(Debug, Clone)]
pub struct RunpodEnv {
    pub get_job: String,
    pub post_output: String,
    pub ping: Option<String>,
    pub ping_interval: Duration,
    pub worker_id: String,
    pub api_key: Option<String>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl RunpodEnv {
    /// `None` when `RUNPOD_WEBHOOK_GET_JOB` is not set (not on RunPod).
    pub fn from_env() -> anyhow::Result<Option<Self>> {
        let Some(get_job) = env("RUNPOD_WEBHOOK_GET_JOB") else {
            return Ok(None);
        };
        let post_output = env("RUNPOD_WEBHOOK_POST_OUTPUT").ok_or_else(|| {
            UserError::bad_input("RUNPOD_WEBHOOK_GET_JOB is set but RUNPOD_WEBHOOK_POST_OUTPUT is not")
                .with_hint("both are set by RunPod; set them together when testing by hand")
        })?;
        let ping_interval = match env("RUNPOD_PING_INTERVAL") {
            None => Duration::from_millis(10_000),
            Some(v) => match v.trim().parse::<u64>() {
                Ok(ms) if ms > 0 => Duration::from_millis(ms),
                _ => {
                    tracing::warn!("RUNPOD_PING_INTERVAL={v} is not a positive number of ms; using 10000");
                    Duration::from_millis(10_000)
                }
            },
        };
        let worker_id = env("RUNPOD_POD_ID").unwrap_or_else(|| {
            let id = format!(
                "local-{:012x}",
                crate::commands::common::random_seed() & 0xffff_ffff_ffff
            );
            tracing::warn!("RUNPOD_POD_ID is not set; this worker calls itself {id}");
            id
        });
        let api_key = env("RUNPOD_AI_API_KEY");
        if api_key.is_none() {
            tracing::warn!("RUNPOD_AI_API_KEY is not set: requests to RunPod carry no Authorization");
        }
        let ping = env("RUNPOD_WEBHOOK_PING");
        if ping.is_none() {
            tracing::warn!("RUNPOD_WEBHOOK_PING is not set: no heartbeats");
        }
        Ok(Some(Self {
            get_job,
            post_output,
            ping,
            ping_interval,
            worker_id,
            api_key,
        }))
    }

    fn take_url(&self, in_progress: bool) -> String {
        let base = self
            .get_job
            .replace("$RUNPOD_POD_ID", &self.worker_id)
            .replace("$ID", &self.worker_id);
        with_query(&base, &format!("job_in_progress={}", u8::from(in_progress)))
    }

    fn post_url(&self, job_id: &str) -> String {
        let base = self
            .post_output
            .replace("$RUNPOD_POD_ID", &self.worker_id)
            .replace("$ID", &encode(job_id));
        with_query(&base, "isStream=false")
    }

    fn ping_url(&self, ping: &str, jobs: &[String]) -> String {
        let base = ping.replace("$RUNPOD_POD_ID", &self.worker_id);
        if jobs.is_empty() {
            base
        } else {
            with_query(&base, &format!("job_id={}", encode(&jobs.join(","))))
        }
    }
}

/// How the worker talks to RunPod.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Time allowed for one take (the server holds it up to ~90 s when there is no job).
    pub poll_timeout: Duration,
    /// Time allowed for one result post or heartbeat.
    pub post_timeout: Duration,
    /// Attempts at posting one result.
    pub post_tries: u32,
    /// Wait after "no job" and before the first retry; doubled per further failure up to 60 s.
    pub backoff: Duration,
    /// Post IN_PROGRESS updates at most this often (`None`: never).
    pub progress_interval: Option<Duration>,
    /// Largest job body accepted.
    pub max_job_bytes: u64,
}

impl WorkerOptions {
    fn backoff_for(&self, failures: u32) -> Duration {
        self.backoff
            .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
            .min(Duration::from_secs(60))
    }
}

/// `url` with `param` appended after `?` or `&`.
fn with_query(url: &str, param: &str) -> String {
    let sep = if url.contains('?') {
        if url.ends_with('?') || url.ends_with('&') {
            ""
        } else {
            "&"
        }
    } else {
        "?"
    };
    format!("{url}{sep}{param}")
}

/// Percent-encodes everything but the unreserved characters (and `,`, which RunPod's job lists use).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~,".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What one take got.
enum Take {
    Job {
        id: String,
        input: serde_json::Value,
    },
    NoJob,
    /// The long poll ran out: ask again at once.
    TimedOut,
    /// 429: wait this long (or the backoff).
    Busy(Option<Duration>),
    Failed(String),
}

fn is_timeout(t: &ureq::Transport) -> bool {
    std::error::Error::source(t)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .is_some_and(|e| matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock))
}

fn retry_after(r: &ureq::Response) -> Option<Duration> {
    r.header("Retry-After")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s.min(300)))
}

fn take(agent: &ureq::Agent, url: &str, key: Option<&str>, opts: &WorkerOptions) -> Take {
    let mut req = agent.get(url).timeout(opts.poll_timeout);
    if let Some(k) = key {
        req = req.set("Authorization", k);
    }
    let resp = match req.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(400, _)) => return Take::NoJob,
        Err(ureq::Error::Status(429, r)) => return Take::Busy(retry_after(&r)),
        Err(ureq::Error::Status(code, r)) => return Take::Failed(format!("HTTP {code} {}", r.status_text())),
        Err(ureq::Error::Transport(t)) if is_timeout(&t) => return Take::TimedOut,
        Err(ureq::Error::Transport(t)) => return Take::Failed(t.to_string()),
    };
    if resp.status() == 204 {
        return Take::NoJob;
    }
    let mut body = Vec::new();
    if let Err(e) = resp
        .into_reader()
        .take(opts.max_job_bytes.saturating_add(1))
        .read_to_end(&mut body)
    {
        return if e.kind() == std::io::ErrorKind::TimedOut || e.kind() == std::io::ErrorKind::WouldBlock {
            Take::TimedOut
        } else {
            Take::Failed(format!("reading the job failed: {e}"))
        };
    }
    if body.len() as u64 > opts.max_job_bytes {
        tracing::error!(
            "a job larger than the limit of {} MiB was dropped (see --max-request-mb)",
            opts.max_job_bytes / (1024 * 1024)
        );
        return Take::NoJob;
    }
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Take::NoJob;
    }
    let value: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            tracing::debug!("the job answer is not JSON ({e}): no job");
            return Take::NoJob;
        }
    };
    let id = match value.get("id") {
        Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => {
            tracing::error!("a job without an `id` was dropped");
            return Take::NoJob;
        }
    };
    let input = value.get("input").cloned().unwrap_or(serde_json::Value::Null);
    Take::Job { id, input }
}

/// The outcome of one post attempt.
enum Posted {
    Done,
    Retry(String, Option<Duration>),
    GiveUp(String),
}

fn post_once(
    agent: &ureq::Agent,
    url: &str,
    key: Option<&str>,
    job_id: &str,
    body: &[u8],
    timeout: Duration,
) -> Posted {
    // The SDK's headers: a JSON body sent as form data; RunPod reads the body as JSON.
    let mut req = agent
        .post(url)
        .timeout(timeout)
        .set("Content-Type", "application/x-www-form-urlencoded")
        .set("charset", "utf-8")
        .set("X-Request-ID", job_id);
    if let Some(k) = key {
        req = req.set("Authorization", k);
    }
    match req.send_bytes(body) {
        Ok(resp) => {
            let _ = resp.into_string();
            Posted::Done
        }
        Err(ureq::Error::Status(code, r)) if code == 429 || code == 408 || code >= 500 => {
            Posted::Retry(format!("HTTP {code} {}", r.status_text()), retry_after(&r))
        }
        Err(ureq::Error::Status(code, r)) => Posted::GiveUp(format!("HTTP {code} {}", r.status_text())),
        Err(ureq::Error::Transport(t)) if is_timeout(&t) => {
            Posted::Retry(format!("timed out after {:.1} s", timeout.as_secs_f64()), None)
        }
        Err(ureq::Error::Transport(t)) => Posted::Retry(t.to_string(), None),
    }
}

/// Posts a job's result, retrying; returns whether it arrived.
fn post_result(
    agent: &ureq::Agent,
    env: &RunpodEnv,
    opts: &WorkerOptions,
    job_id: &str,
    body: &serde_json::Value,
) -> bool {
    let url = env.post_url(job_id);
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    for attempt in 1..=opts.post_tries {
        match post_once(agent, &url, env.api_key.as_deref(), job_id, &bytes, opts.post_timeout) {
            Posted::Done => {
                tracing::debug!("job {job_id}: result posted (attempt {attempt})");
                return true;
            }
            Posted::GiveUp(why) => {
                tracing::error!("job {job_id}: RunPod refused the result ({why}); it is lost");
                return false;
            }
            Posted::Retry(why, after) if attempt < opts.post_tries => {
                let wait = after.unwrap_or_else(|| opts.backoff_for(attempt));
                tracing::warn!(
                    "job {job_id}: posting the result failed ({why}); retrying in {:.1} s ({attempt} of {})",
                    wait.as_secs_f64(),
                    opts.post_tries
                );
                std::thread::sleep(wait);
            }
            Posted::Retry(why, _) => {
                tracing::error!(
                    "job {job_id}: posting the result failed {} times (last: {why}); it is lost",
                    opts.post_tries
                );
            }
        }
    }
    false
}

/// Sends the heartbeat forever (the thread ends with the process).
fn spawn_heartbeat(agent: ureq::Agent, env: RunpodEnv, jobs: Arc<Mutex<Vec<String>>>) {
    let Some(ping) = env.ping.clone() else {
        return;
    };
    let timeout = (env.ping_interval * 2).max(Duration::from_secs(1));
    std::thread::spawn(move || loop {
        let ids = jobs.lock().map(|j| j.clone()).unwrap_or_default();
        let url = env.ping_url(&ping, &ids);
        let mut req = agent.get(&url).timeout(timeout);
        if let Some(k) = &env.api_key {
            req = req.set("Authorization", k);
        }
        match req.call() {
            Ok(r) => tracing::trace!("heartbeat sent (HTTP {})", r.status()),
            Err(e) => tracing::warn!("heartbeat failed: {e}"),
        }
        std::thread::sleep(env.ping_interval);
    });
}

/// Sends IN_PROGRESS updates from a helper thread, at most one every `every`.
struct Progress {
    tx: Option<mpsc::SyncSender<serde_json::Value>>,
    thread: Option<std::thread::JoinHandle<()>>,
    every: Duration,
    last: Instant,
    steps: usize,
}

impl Progress {
    fn start(agent: &ureq::Agent, env: &RunpodEnv, opts: &WorkerOptions, job_id: &str) -> Option<Self> {
        let every = opts.progress_interval?;
        let (tx, rx) = mpsc::sync_channel::<serde_json::Value>(1);
        let (agent, url, key, id, timeout) = (
            agent.clone(),
            env.post_url(job_id),
            env.api_key.clone(),
            job_id.to_string(),
            opts.post_timeout,
        );
        let thread = std::thread::spawn(move || {
            for update in rx {
                let body = serde_json::json!({"status": "IN_PROGRESS", "output": update});
                let bytes = serde_json::to_vec(&body).unwrap_or_default();
                if let Posted::Retry(why, _) | Posted::GiveUp(why) =
                    post_once(&agent, &url, key.as_deref(), &id, &bytes, timeout)
                {
                    tracing::debug!("job {id}: progress update not delivered ({why})");
                }
            }
        });
        Some(Self {
            tx: Some(tx),
            thread: Some(thread),
            every,
            last: Instant::now(),
            steps: 0,
        })
    }

    /// Waits until the last update is out (so that it cannot overtake the result).
    fn finish(mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl StepObserver for Progress {
    fn on_start(&mut self, steps: usize) {
        self.steps = steps;
    }
    fn on_step(&mut self, step: usize, _latents: &candle_core::Tensor) {
        if self.last.elapsed() >= self.every {
            self.last = Instant::now();
            if let Some(tx) = &self.tx {
                let _ = tx.try_send(serde_json::json!({"step": step + 1, "steps": self.steps}));
            }
        }
    }
}

/// Takes a job on a helper thread and waits for it, watching `stop`. `None`: stopped while waiting.
fn take_watching(
    agent: &ureq::Agent,
    url: String,
    env: &RunpodEnv,
    opts: &WorkerOptions,
    stop: &AtomicBool,
) -> Option<Take> {
    let (tx, rx) = mpsc::channel();
    let (agent, key, opts2) = (agent.clone(), env.api_key.clone(), opts.clone());
    std::thread::spawn(move || {
        let _ = tx.send(take(&agent, &url, key.as_deref(), &opts2));
    });
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(t) => return Some(t),
            Err(mpsc::RecvTimeoutError::Disconnected) => return Some(Take::Failed("the request thread died".into())),
            Err(mpsc::RecvTimeoutError::Timeout) if stopping(stop) => {
                // A job that arrives in this very moment is still run.
                return match rx.try_recv() {
                    Ok(t @ Take::Job { .. }) => Some(t),
                    _ => None,
                };
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
}

/// The take–run–post loop. Returns the exit code: 0 when stopped by a signal, 5 when the device
/// failed for good.
pub fn run_worker(handler: &Handler, env: &RunpodEnv, opts: &WorkerOptions, stop: &AtomicBool) -> anyhow::Result<u8> {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(10))
        .user_agent(concat!("qwen-edit/", env!("CARGO_PKG_VERSION")))
        .build();
    let in_progress: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    spawn_heartbeat(agent.clone(), env.clone(), in_progress.clone());
    tracing::info!("worker {} ready: taking jobs", env.worker_id);
    let (mut failures, mut done, mut failed) = (0u32, 0usize, 0usize);
    loop {
        if stopping(stop) {
            break;
        }
        let busy = !in_progress.lock().map(|j| j.is_empty()).unwrap_or(true);
        let Some(taken) = take_watching(&agent, env.take_url(busy), env, opts, stop) else {
            break;
        };
        match taken {
            Take::Job { id, input } => {
                failures = 0;
                if let Ok(mut j) = in_progress.lock() {
                    j.push(id.clone());
                }
                tracing::info!("job {id}: started");
                let started = Instant::now();
                let mut progress = Progress::start(&agent, env, opts, &id);
                let outcome = match progress.as_mut() {
                    Some(p) => handler.run(&input, p),
                    None => handler.run(&input, &mut ()),
                };
                if let Some(p) = progress {
                    p.finish();
                }
                let (body, fatal) = match outcome {
                    Ok(output) => {
                        done += 1;
                        tracing::info!("job {id}: done in {:.2} s", started.elapsed().as_secs_f64());
                        (serde_json::json!({ "output": output }), false)
                    }
                    Err(f) => {
                        failed += 1;
                        tracing::warn!("job {id}: failed: {}", f.message);
                        let mut body = serde_json::json!({ "error": f.message });
                        if f.fatal {
                            body["stopPod"] = true.into();
                        }
                        (body, f.fatal)
                    }
                };
                post_result(&agent, env, opts, &id, &body);
                if let Ok(mut j) = in_progress.lock() {
                    j.retain(|x| x != &id);
                }
                if fatal {
                    tracing::error!("stopping: the device failed ({done} jobs done, {failed} failed)");
                    return Ok(5);
                }
            }
            Take::NoJob => {
                failures = 0;
                sleep_unless_stopped(stop, opts.backoff.min(Duration::from_secs(5)));
            }
            Take::TimedOut => failures = 0,
            Take::Busy(after) => {
                failures += 1;
                let wait = after.unwrap_or_else(|| opts.backoff_for(failures));
                tracing::debug!("RunPod is busy (429): waiting {:.1} s", wait.as_secs_f64());
                sleep_unless_stopped(stop, wait);
            }
            Take::Failed(why) => {
                failures += 1;
                let wait = opts.backoff_for(failures);
                tracing::warn!("taking a job failed ({why}); retrying in {:.1} s", wait.as_secs_f64());
                sleep_unless_stopped(stop, wait);
            }
        }
    }
    tracing::info!("stopped by a signal: {done} jobs done, {failed} failed");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> RunpodEnv {
        RunpodEnv {
            get_job: "http://h/v2/job-take/$ID?gpu=A100".into(),
            post_output: "http://h/v2/job-done/$RUNPOD_POD_ID/$ID".into(),
            ping: Some("http://h/ping/$RUNPOD_POD_ID".into()),
            ping_interval: Duration::from_secs(10),
            worker_id: "w1".into(),
            api_key: None,
        }
    }

    #[test]
    fn urls_substitute_ids_and_add_parameters() {
        let e = env();
        assert_eq!(e.take_url(false), "http://h/v2/job-take/w1?gpu=A100&job_in_progress=0");
        assert_eq!(e.post_url("j 1"), "http://h/v2/job-done/w1/j%201?isStream=false");
        assert_eq!(e.ping_url("http://h/ping/$RUNPOD_POD_ID", &[]), "http://h/ping/w1");
        assert_eq!(
            e.ping_url("http://h/ping/$RUNPOD_POD_ID", &["a".into(), "b".into()]),
            "http://h/ping/w1?job_id=a,b"
        );
        assert_eq!(with_query("http://h/x?", "a=1"), "http://h/x?a=1");
    }

    #[test]
    fn backoff_doubles_up_to_a_minute() {
        let o = WorkerOptions {
            poll_timeout: Duration::from_secs(90),
            post_timeout: Duration::from_secs(30),
            post_tries: 10,
            backoff: Duration::from_secs(1),
            progress_interval: None,
            max_job_bytes: 1 << 20,
        };
        assert_eq!(o.backoff_for(1), Duration::from_secs(1));
        assert_eq!(o.backoff_for(3), Duration::from_secs(4));
        assert_eq!(o.backoff_for(30), Duration::from_secs(60));
    }
}
