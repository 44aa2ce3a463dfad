//! `qwen-edit serve` as RunPod runs it: the real binary against a fake RunPod job server on
//! 127.0.0.1 that serves 200 jobs (20% faulty) and injects 500/429/timeouts and junk answers on
//! take and on post; SIGTERM in the middle of a job; `--test-input` and `test_input.json`; and the
//! local `--http` API. CPU, tiny fixture model, cheap jobs (see tests/support).

mod support;

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

const WORKER: &str = "test-worker";
const KEY: &str = "secret-key";

// ---------------------------------------------------------------------------------------------
// The fake RunPod server

#[derive(Default)]
struct FakeState {
    queue: Mutex<VecDeque<Value>>,
    /// Accepted results per job id.
    results: Mutex<HashMap<String, Vec<Value>>>,
    /// "take <id>", "progress <id>", "result <id>", in order.
    events: Mutex<Vec<String>>,
    /// The query strings of the heartbeats.
    pings: Mutex<Vec<String>>,
    /// Requests that broke the protocol (auth, ids, parameters).
    violations: Mutex<Vec<String>>,
    takes: AtomicUsize,
    posts: AtomicUsize,
    injected: AtomicUsize,
    /// Of those, held past the worker's timeout (takes and posts).
    timeouts: AtomicUsize,
    /// Images served under /img/NAME.
    files: HashMap<String, Vec<u8>>,
    faults: bool,
    /// How long an injected take timeout holds the request (longer than --poll-timeout).
    take_hold: Duration,
    /// How long an injected post timeout holds the request (longer than --post-timeout).
    post_hold: Duration,
}

struct Fake {
    port: u16,
    state: Arc<FakeState>,
}

fn header(req: &tiny_http::Request, name: &str) -> Option<String> {
    req.headers()
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str().to_string())
}

fn reply(req: tiny_http::Request, code: u16, body: &[u8]) {
    let _ = req.respond(tiny_http::Response::from_data(body.to_vec()).with_status_code(code));
}

impl Fake {
    fn start(jobs: Vec<Value>, files: HashMap<String, Vec<u8>>, faults: bool) -> Self {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let port = server.server_addr().to_ip().unwrap().port();
        let state = Arc::new(FakeState {
            queue: Mutex::new(jobs.into()),
            files,
            faults,
            take_hold: Duration::from_millis(4000),
            post_hold: Duration::from_millis(2800),
            ..Default::default()
        });
        let st = state.clone();
        std::thread::spawn(move || loop {
            let Ok(req) = server.recv() else { continue };
            let st = st.clone();
            std::thread::spawn(move || handle(&st, req));
        });
        Fake { port, state }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn worker(&self, extra: &[&str]) -> std::process::Command {
        let mut c = qwen_edit();
        c.arg("serve")
            .args(model_args())
            .args(["--poll-timeout", "3", "--post-timeout", "2", "--backoff-ms", "20"])
            .args(extra)
            .env("RUNPOD_WEBHOOK_GET_JOB", self.url("/job-take/$ID"))
            .env("RUNPOD_WEBHOOK_POST_OUTPUT", self.url("/job-done/$RUNPOD_POD_ID/$ID"))
            .env("RUNPOD_WEBHOOK_PING", self.url("/ping/$RUNPOD_POD_ID"))
            .env("RUNPOD_PING_INTERVAL", "200")
            .env("RUNPOD_POD_ID", WORKER)
            .env("RUNPOD_AI_API_KEY", KEY)
            .stdin(Stdio::null());
        c
    }
}

fn handle(st: &FakeState, mut req: tiny_http::Request) {
    let url = req.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((url.as_str(), ""));
    let (path, query) = (path.to_string(), query.to_string());
    if let Some(name) = path.strip_prefix("/img/") {
        return match st.files.get(name) {
            Some(bytes) => reply(req, 200, bytes),
            None => reply(req, 404, b"not found"),
        };
    }
    if header(&req, "Authorization").as_deref() != Some(KEY) {
        st.violations
            .lock()
            .unwrap()
            .push(format!("no or wrong Authorization on {url}"));
    }
    if path == format!("/ping/{WORKER}") {
        st.pings.lock().unwrap().push(query);
        return reply(req, 200, b"");
    }
    if path == format!("/job-take/{WORKER}") {
        if query != "job_in_progress=0" {
            st.violations.lock().unwrap().push(format!("take with query `{query}`"));
        }
        let n = st.takes.fetch_add(1, Ordering::SeqCst);
        if st.faults {
            let fault = match n {
                n if n % 9 == 4 => Some((500, &b"boom"[..])),
                n if n % 13 == 6 => Some((429, &b""[..])),
                n if n % 17 == 3 => Some((200, &b"<html>not json</html>"[..])),
                n if n % 19 == 5 => Some((400, &b""[..])),
                n if n % 23 == 7 => Some((200, &b""[..])),
                _ => None,
            };
            if let Some((code, body)) = fault {
                st.injected.fetch_add(1, Ordering::SeqCst);
                return reply(req, code, body);
            }
            if n % 61 == 20 {
                // Hold the long poll past the worker's timeout; no job is handed out.
                st.injected.fetch_add(1, Ordering::SeqCst);
                st.timeouts.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(st.take_hold);
                return reply(req, 204, b"");
            }
        }
        let job = st.queue.lock().unwrap().pop_front();
        return match job {
            Some(job) => {
                let id = job["id"].as_str().unwrap_or("?").to_string();
                st.events.lock().unwrap().push(format!("take {id}"));
                reply(req, 200, job.to_string().as_bytes())
            }
            None => {
                std::thread::sleep(Duration::from_millis(100));
                reply(req, 204, b"")
            }
        };
    }
    if let Some(id) = path.strip_prefix(&format!("/job-done/{WORKER}/")) {
        let id = id.to_string();
        if query != "isStream=false" {
            st.violations.lock().unwrap().push(format!("post with query `{query}`"));
        }
        if header(&req, "X-Request-ID").as_deref() != Some(id.as_str()) {
            st.violations
                .lock()
                .unwrap()
                .push(format!("post for {id} without its X-Request-ID"));
        }
        let mut body = Vec::new();
        req.as_reader().read_to_end(&mut body).unwrap();
        let m = st.posts.fetch_add(1, Ordering::SeqCst);
        if st.faults {
            if m % 7 == 2 || m % 11 == 5 {
                st.injected.fetch_add(1, Ordering::SeqCst);
                return reply(req, if m % 7 == 2 { 503 } else { 429 }, b"");
            }
            if m % 47 == 13 {
                // The post times out: the server never saw it.
                st.injected.fetch_add(1, Ordering::SeqCst);
                st.timeouts.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(st.post_hold);
                return reply(req, 200, b"");
            }
        }
        let Ok(value) = serde_json::from_slice::<Value>(&body) else {
            st.violations.lock().unwrap().push(format!("post for {id} is not JSON"));
            return reply(req, 400, b"");
        };
        if value.get("status").and_then(Value::as_str) == Some("IN_PROGRESS") {
            st.events.lock().unwrap().push(format!("progress {id}"));
        } else {
            st.events.lock().unwrap().push(format!("result {id}"));
            st.results.lock().unwrap().entry(id).or_default().push(value);
        }
        return reply(req, 200, b"");
    }
    st.violations.lock().unwrap().push(format!("unexpected request {url}"));
    reply(req, 404, b"")
}

fn wait_until(limit: Duration, worker: &mut Guard, stderr: &Path, mut done: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !done() {
        if let Some(status) = worker.child().try_wait().unwrap() {
            panic!(
                "the worker exited early ({status}):\n{}",
                std::fs::read_to_string(stderr).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < end,
            "timed out; worker log:\n{}",
            std::fs::read_to_string(stderr).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// The 200-job run

/// The faulty jobs: (input, what the error must say).
fn faulty(kind: usize, fake_port: u16, outside: &Path) -> (Value, &'static str) {
    let with = |key: &str, v: Value| {
        let mut j = cheap_job(1, 1.0);
        j[key] = v;
        j
    };
    let url = |p: &str| format!("http://127.0.0.1:{fake_port}/img/{p}");
    match kind % 8 {
        0 => (
            with("image_base64", "this is not base64 at all!".into()),
            "not valid base64",
        ),
        1 => (with("image_url", url("missing.png").into()), "HTTP 404"),
        2 => (
            with("image_base64", b64(&png_declaring(20000, 20000)).into()),
            "over the limit",
        ),
        3 => (with("image_url", url("big.png").into()), "larger than the input limit"),
        4 => (
            with("image_path", outside.to_str().unwrap().into()),
            "outside the allowed input folders",
        ),
        5 => {
            let mut j = with("image", b64(&input_bytes()).into());
            j.as_object_mut().unwrap().remove("prompt");
            (j, "no `prompt`")
        }
        6 => (with("image", b64(&input_bytes()).into()), "unknown field `colour`"),
        _ => (json!("just a string"), "must be a JSON object"),
    }
}

#[test]
fn worker_answers_200_jobs_exactly_once_through_injected_faults() {
    let tmp = tempfile::tempdir().unwrap();
    let allowed = tmp.path().join("allowed");
    std::fs::create_dir(&allowed).unwrap();
    std::fs::copy(input_png(), allowed.join("in.png")).unwrap();
    let outside = tmp.path().join("outside.png");
    std::fs::copy(input_png(), &outside).unwrap();
    let input = input_bytes();
    let mut files = HashMap::new();
    files.insert("in.png".to_string(), input.clone());
    files.insert("big.png".to_string(), vec![0u8; 3 * 1024 * 1024]);

    // Ports are known only once the server runs; jobs that name a URL are filled in after.
    let fake = Fake::start(Vec::new(), files, true);
    let mut expect: HashMap<String, Result<u64, &'static str>> = HashMap::new();
    let mut jobs = Vec::new();
    for i in 0..200u64 {
        let id = format!("job-{i:03}-u1");
        if i % 5 == 4 {
            let (mut inp, why) = faulty((i / 5) as usize, fake.port, &outside);
            if i / 5 % 8 == 6 {
                inp["colour"] = "red".into();
            }
            expect.insert(id.clone(), Err(why));
            jobs.push(json!({"id": id, "input": inp}));
            continue;
        }
        let cfg = if i == 5 { 4.0 } else { 1.0 };
        let mut inp = cheap_job(i, cfg);
        match i % 5 {
            0 => inp["image_base64"] = b64(&input).into(),
            1 => inp["image_url"] = fake.url("/img/in.png").into(),
            2 => inp["image_path"] = allowed.join("in.png").to_str().unwrap().into(),
            _ => inp["images"] = json!([{"name": "in", "image": format!("data:image/png;base64,{}", b64(&input))}]),
        }
        if i == 5 {
            inp["negative_prompt"] = "blurry".into();
        }
        expect.insert(id.clone(), Ok(i));
        jobs.push(json!({"id": id, "input": inp}));
    }
    fake.state.queue.lock().unwrap().extend(jobs);

    let stderr_path = tmp.path().join("worker.log");
    let stdout_path = tmp.path().join("worker.out");
    let started = Instant::now();
    let mut worker = Guard(Some(
        fake.worker(&["--allow-path", allowed.to_str().unwrap(), "--max-image-mb", "2"])
            .stdout(std::fs::File::create(&stdout_path).unwrap())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap(),
    ));

    // Meanwhile: what the CLI makes of a few of the good jobs (one per kind of source, one with CFG).
    let cli: Vec<(u64, image::RgbImage)> = [0u64, 1, 2, 3, 5]
        .iter()
        .map(|&seed| {
            let (cfg, extra): (f64, &[&str]) = if seed == 5 {
                (4.0, &["-n", "blurry"])
            } else {
                (1.0, &[])
            };
            (seed, cli_edit(tmp.path(), seed, cfg, extra))
        })
        .collect();

    wait_until(Duration::from_secs(900), &mut worker, &stderr_path, || {
        fake.state.results.lock().unwrap().len() == 200
    });
    let elapsed = started.elapsed();
    // Nothing more arrives late (e.g. a duplicate from a retry).
    std::thread::sleep(Duration::from_millis(1500));
    let log = std::fs::read_to_string(&stderr_path).unwrap();

    let results = fake.state.results.lock().unwrap().clone();
    assert_eq!(results.len(), 200);
    for (id, want) in &expect {
        let got = results.get(id).unwrap_or_else(|| panic!("no result for {id}"));
        assert_eq!(got.len(), 1, "{id} got {} results: {got:?}", got.len());
        let got = &got[0];
        match want {
            Err(why) => {
                let err = got["error"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{id}: no error in {got}"));
                assert!(err.contains(why), "{id}: error `{err}` does not say `{why}`");
                assert!(got.get("output").is_none(), "{id}: {got}");
            }
            Ok(seed) => {
                let out = &got["output"];
                assert!(got.get("error").is_none(), "{id} failed: {}", got["error"]);
                assert_eq!(out["seed"], *seed, "{id}");
                assert_eq!((out["width"].as_u64(), out["height"].as_u64()), (Some(32), Some(32)));
                let img = &out["images"][0];
                assert_eq!(img["type"], "base64");
                assert_eq!(img["filename"], format!("edited-{seed}.png"));
                let pixels = decode_png(&unb64(img["data"].as_str().unwrap()));
                assert_eq!(pixels.dimensions(), (32, 32));
                if let Some((_, want)) = cli.iter().find(|(s, _)| s == seed) {
                    assert!(
                        pixels == *want,
                        "{id}: the worker's image differs from `qwen-edit edit`'s"
                    );
                }
            }
        }
    }
    let st = &fake.state;
    assert!(
        st.violations.lock().unwrap().is_empty(),
        "protocol violations: {:?}",
        st.violations.lock().unwrap()
    );
    assert!(st.injected.load(Ordering::SeqCst) >= 40, "too few faults injected");
    assert!(st.timeouts.load(Ordering::SeqCst) >= 6, "too few timeouts injected");
    // Heartbeats: regular, and naming the job in progress.
    let pings = st.pings.lock().unwrap().clone();
    assert!(
        pings.len() as f64 >= elapsed.as_secs_f64() / 0.2 * 0.3,
        "{} heartbeats in {elapsed:?}",
        pings.len()
    );
    assert!(
        pings.iter().any(|q| q.starts_with("job_id=job-")),
        "no heartbeat named a job: {:?}",
        &pings[..pings.len().min(20)]
    );
    assert!(log.contains("retrying"), "the log shows no retries:\n{log}");
    assert!(
        std::fs::read(&stdout_path).unwrap().is_empty(),
        "the worker wrote to stdout"
    );

    // Idle now: SIGTERM stops it at once with exit 0.
    sigterm(worker.pid());
    let status = worker
        .wait_for(Duration::from_secs(20))
        .expect("the worker did not stop on SIGTERM");
    assert_eq!(
        status.code(),
        Some(0),
        "{}",
        std::fs::read_to_string(&stderr_path).unwrap()
    );
    eprintln!("200 jobs in {elapsed:?}");
}

// ---------------------------------------------------------------------------------------------
// SIGTERM in the middle of a job

#[test]
fn sigterm_mid_job_finishes_and_posts_that_job_then_exits_0() {
    let tmp = tempfile::tempdir().unwrap();
    let input = input_bytes();
    // A slower job (more steps, larger) so that the signal lands in the middle of it.
    let mut slow = cheap_job(7, 1.0);
    // (~1.5 s on one core; the signal is sent after its first step.)
    slow["steps"] = 60.into();
    slow["width"] = 128.into();
    slow["height"] = 128.into();
    slow["image"] = b64(&input).into();
    let mut next = cheap_job(8, 1.0);
    next["image"] = b64(&input).into();
    let fake = Fake::start(
        vec![
            json!({"id": "slow-1", "input": slow}),
            json!({"id": "next-2", "input": next}),
        ],
        HashMap::new(),
        false,
    );
    let stderr_path = tmp.path().join("worker.log");
    let mut worker = Guard(Some(
        fake.worker(&["--progress-interval", "0.001", "--no-warmup"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap(),
    ));
    let events = || fake.state.events.lock().unwrap().clone();
    wait_until(Duration::from_secs(300), &mut worker, &stderr_path, || {
        events().iter().any(|e| e == "progress slow-1")
    });
    sigterm(worker.pid());
    let status = worker
        .wait_for(Duration::from_secs(120))
        .expect("no exit after SIGTERM");
    let log = std::fs::read_to_string(&stderr_path).unwrap();
    assert_eq!(status.code(), Some(0), "{log}");
    let events = events();
    let results = fake.state.results.lock().unwrap().clone();
    let slow = &results
        .get("slow-1")
        .unwrap_or_else(|| panic!("the running job was not posted: {events:?}\n{log}"))[0];
    assert!(slow.get("error").is_none(), "{slow}");
    assert_eq!(slow["output"]["steps"], 60);
    assert_eq!(slow["output"]["width"], 128);
    assert!(
        !events.iter().any(|e| e == "take next-2"),
        "a job was taken after SIGTERM: {events:?}"
    );
    let last_progress = events.iter().rposition(|e| e == "progress slow-1").unwrap();
    let result = events.iter().position(|e| e == "result slow-1").unwrap();
    assert!(
        last_progress < result,
        "a progress update came after the result: {events:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// --test-input and test_input.json

#[test]
fn test_input_runs_one_job_and_prints_its_result() {
    let tmp = tempfile::tempdir().unwrap();
    let mut job = cheap_job(3, 1.0);
    job["image"] = b64(&input_bytes()).into();
    let o = qwen_edit()
        .arg("serve")
        .args(model_args())
        .arg("--test-input")
        .arg(json!({"input": job}).to_string())
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["status"], "COMPLETED", "{v}");
    assert_eq!(v["output"]["seed"], 3);
    let pixels = decode_png(&unb64(v["output"]["images"][0]["data"].as_str().unwrap()));
    assert!(
        pixels == cli_edit(tmp.path(), 3, 1.0, &[]),
        "differs from `qwen-edit edit`"
    );

    // test_input.json in the working directory, without RunPod variables; a failing job: exit 3.
    let mut bad = cheap_job(3, 1.0);
    bad["image_path"] = input_png().to_str().unwrap().into();
    std::fs::write(tmp.path().join("test_input.json"), json!({"input": bad}).to_string()).unwrap();
    let o = qwen_edit()
        .arg("serve")
        .args(model_args())
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["status"], "FAILED");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("reading local files is not allowed"),
        "{v}"
    );

    // Nothing to serve: exit 2 before loading anything.
    std::fs::remove_file(tmp.path().join("test_input.json")).unwrap();
    let o = qwen_edit()
        .args(["serve", "--model", "/no/such/model", "--device", "cpu"])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nothing to serve"));
    assert!(o.stdout.is_empty());

    // A model that cannot be loaded: the exit code of `edit` (4), no result.
    let o = qwen_edit()
        .args(["serve", "--model", "/no/such/model", "--device", "cpu", "--test-input"])
        .arg(json!({"input": job}).to_string())
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(4), "{}", String::from_utf8_lossy(&o.stderr));
}

// ---------------------------------------------------------------------------------------------
// --http

fn post(agent: &ureq::Agent, url: &str, body: &Value, key: Option<&str>) -> (u16, Value) {
    let mut r = agent.post(url);
    if let Some(k) = key {
        r = r.set("Authorization", &format!("Bearer {k}"));
    }
    match r.send_string(&body.to_string()) {
        Ok(resp) => (resp.status(), resp.into_json().unwrap()),
        Err(ureq::Error::Status(code, resp)) => (code, resp.into_json().unwrap_or(Value::Null)),
        Err(e) => panic!("{url}: {e}"),
    }
}

fn get(agent: &ureq::Agent, url: &str, key: Option<&str>) -> (u16, Value) {
    let mut r = agent.get(url);
    if let Some(k) = key {
        r = r.set("Authorization", k);
    }
    match r.call() {
        Ok(resp) => (resp.status(), resp.into_json().unwrap()),
        Err(ureq::Error::Status(code, resp)) => (code, resp.into_json().unwrap_or(Value::Null)),
        Err(e) => panic!("{url}: {e}"),
    }
}

#[test]
fn http_api_answers_in_runpods_shapes() {
    let tmp = tempfile::tempdir().unwrap();
    let stderr_path = tmp.path().join("http.log");
    let mut server = Guard(Some(
        qwen_edit()
            .arg("serve")
            .args(model_args())
            .args(["--http", "127.0.0.1:0", "--api-key", "k3y", "--max-request-mb", "1"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap(),
    ));
    let mut base = String::new();
    wait_until(Duration::from_secs(300), &mut server, &stderr_path, || {
        let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        if let Some(at) = log.find("listening on http://") {
            let rest = &log[at + "listening on ".len()..];
            base = rest.split_whitespace().next().unwrap().to_string();
        }
        log.contains("ready: serving jobs")
    });
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(300)).build();
    let key = Some("k3y");
    let mut job = cheap_job(11, 1.0);
    job["image"] = b64(&input_bytes()).into();

    let (code, v) = post(&agent, &format!("{base}/runsync"), &json!({"input": job}), key);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["status"], "COMPLETED", "{v}");
    assert!(v["id"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(v["executionTime"].as_u64().is_some(), "{v}");
    let pixels = decode_png(&unb64(v["output"]["images"][0]["data"].as_str().unwrap()));
    assert!(
        pixels == cli_edit(tmp.path(), 11, 1.0, &[]),
        "differs from `qwen-edit edit`"
    );

    // A failed job, under the /v2/ENDPOINT prefix.
    let (code, v) = post(
        &agent,
        &format!("{base}/v2/ep1/runsync"),
        &json!({"input": {"image": "x"}}),
        key,
    );
    assert_eq!(code, 200);
    assert_eq!(v["status"], "FAILED");
    assert!(v["error"].as_str().unwrap().contains("no `prompt`"), "{v}");

    // /run, then /status until done.
    let (code, v) = post(&agent, &format!("{base}/run"), &json!({"input": job}), key);
    assert_eq!(code, 200);
    assert_eq!(v["status"], "IN_QUEUE");
    let id = v["id"].as_str().unwrap().to_string();
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        let (code, v) = get(&agent, &format!("{base}/status/{id}"), key);
        assert_eq!(code, 200);
        if v["status"] == "COMPLETED" {
            assert_eq!(v["output"]["seed"], 11);
            break;
        }
        assert!(
            ["IN_QUEUE", "IN_PROGRESS"].contains(&v["status"].as_str().unwrap()),
            "{v}"
        );
        assert!(Instant::now() < end, "job {id} never finished");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, v) = get(&agent, &format!("{base}/health"), key);
    assert_eq!(code, 200);
    assert_eq!(v["jobs"]["completed"], 2, "{v}");
    assert_eq!(v["jobs"]["failed"], 1, "{v}");

    // Refusals: no key, unknown job, bad JSON, no input, a body over the limit.
    assert_eq!(get(&agent, &format!("{base}/health"), None).0, 401);
    assert_eq!(get(&agent, &format!("{base}/status/nope"), key).0, 404);
    let r = agent
        .post(&format!("{base}/runsync"))
        .set("Authorization", "k3y")
        .send_string("{oops");
    assert!(matches!(r, Err(ureq::Error::Status(400, _))));
    assert_eq!(
        post(&agent, &format!("{base}/runsync"), &json!({"prompt": "x"}), key).0,
        400
    );
    let big = json!({"input": {"prompt": "x", "image": "A".repeat(1_200_000)}});
    let r = agent
        .post(&format!("{base}/runsync"))
        .set("Authorization", "k3y")
        .send_string(&big.to_string());
    match r {
        Err(ureq::Error::Status(413, _)) => {}
        // The server may close the connection while the body is still being sent.
        Err(ureq::Error::Transport(_)) => {}
        other => panic!("an oversized body was accepted: {:?}", other.map(|r| r.status())),
    }

    sigterm(server.pid());
    let status = server.wait_for(Duration::from_secs(30)).expect("no exit after SIGTERM");
    assert_eq!(status.code(), Some(0));
}
