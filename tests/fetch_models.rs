//! `qwen-edit fetch-models` against a local stand-in for the Hugging Face Hub: an HTTP server on
//! 127.0.0.1 (std TcpListener, one thread per connection, `Connection: close`) that serves a small
//! diffusers-layout model with the hub's API routes and headers (`/api/models/.../revision/...`,
//! `/resolve/` with `X-Repo-Commit`, `ETag`/`X-Linked-Etag`, a redirect of LFS files to a
//! "CDN" route that honours `Range`). Behaviours per test: cut a file's connection after N bytes
//! once, corrupt a file, answer 503 once, require a token.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest, Sha256};

const COMMIT: &str = "5f1c2b3a4d5e6f708192a3b4c5d6e7f809a1b2c3";
const REPO: &str = "test-org/tiny-edit";
const SHARD1: &str = "transformer/diffusion_pytorch_model-00001-of-00002.safetensors";

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A safetensors file with one F32 tensor of `n` values (deterministic, `seed`-dependent).
fn safetensors(name: &str, n: usize, seed: u32) -> Vec<u8> {
    let mut header = format!(
        r#"{{"{name}":{{"dtype":"F32","shape":[{n}],"data_offsets":[0,{}]}}}}"#,
        4 * n
    );
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    let mut x = seed.wrapping_mul(2654435761).wrapping_add(1);
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out.extend_from_slice(&((x % 2000) as f32 / 1000.0 - 1.0).to_le_bytes());
    }
    out
}

struct RepoFile {
    path: String,
    bytes: Vec<u8>,
    lfs: bool,
}

/// The synthetic model: everything the pipeline needs, plus files the fetch must skip.
fn tiny_model() -> Vec<RepoFile> {
    let json = |v: serde_json::Value| serde_json::to_vec_pretty(&v).unwrap();
    let text = |path: &str, bytes: Vec<u8>| RepoFile {
        path: path.into(),
        bytes,
        lfs: false,
    };
    let lfs = |path: &str, bytes: Vec<u8>| RepoFile {
        path: path.into(),
        bytes,
        lfs: true,
    };
    vec![
        text(
            ".gitattributes",
            b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n".to_vec(),
        ),
        text("README.md", b"# tiny edit\n".to_vec()),
        text(
            "model_index.json",
            json(serde_json::json!({
                "_class_name": "QwenImageEditPlusPipeline",
                "_diffusers_version": "0.36.0",
                "processor": ["transformers", "Qwen2VLProcessor"],
                "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
                "text_encoder": ["transformers", "Qwen2_5_VLForConditionalGeneration"],
                "tokenizer": ["transformers", "Qwen2Tokenizer"],
                "transformer": ["diffusers", "QwenImageTransformer2DModel"],
                "vae": ["diffusers", "AutoencoderKLQwenImage"]
            })),
        ),
        text(
            "scheduler/scheduler_config.json",
            json(serde_json::json!({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 1.0})),
        ),
        text("transformer/config.json", json(serde_json::json!({"num_layers": 2}))),
        text(
            "transformer/diffusion_pytorch_model.safetensors.index.json",
            json(serde_json::json!({
                "metadata": {"total_size": 4 * (80_000 + 20_000)},
                "weight_map": {
                    "a": "diffusion_pytorch_model-00001-of-00002.safetensors",
                    "b": "diffusion_pytorch_model-00002-of-00002.safetensors"
                }
            })),
        ),
        lfs(SHARD1, safetensors("a", 80_000, 1)),
        lfs(
            "transformer/diffusion_pytorch_model-00002-of-00002.safetensors",
            safetensors("b", 20_000, 2),
        ),
        text("vae/config.json", json(serde_json::json!({"base_dim": 8}))),
        lfs("vae/diffusion_pytorch_model.safetensors", safetensors("v", 5_000, 3)),
        text("text_encoder/config.json", json(serde_json::json!({"hidden_size": 16}))),
        lfs("text_encoder/model.safetensors", safetensors("t", 10_000, 4)),
        lfs("text_encoder/pytorch_model.bin", vec![7u8; 3_000]),
        text("tokenizer/vocab.json", b"{}".to_vec()),
        text(
            "processor/tokenizer.json",
            json(serde_json::json!({"model": {"type": "BPE"}})),
        ),
        text(
            "processor/preprocessor_config.json",
            json(serde_json::json!({"patch_size": 14})),
        ),
    ]
}

/// Files a fetch must bring (the pipeline's components, no tokenizer/, no .bin, no README).
fn expected_paths() -> Vec<&'static str> {
    vec![
        "model_index.json",
        "scheduler/scheduler_config.json",
        "transformer/config.json",
        "transformer/diffusion_pytorch_model.safetensors.index.json",
        SHARD1,
        "transformer/diffusion_pytorch_model-00002-of-00002.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "processor/tokenizer.json",
        "processor/preprocessor_config.json",
    ]
}

#[derive(Default)]
struct State {
    /// Paths whose first download is cut after this many body bytes.
    cut_after: HashMap<String, usize>,
    corrupt: HashSet<String>,
    api_503_once: bool,
    token: Option<String>,
    /// (request target, Range header, Authorization header)
    log: Vec<(String, Option<String>, Option<String>)>,
}

struct Hub {
    addr: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Hub {
    fn start(state: State) -> Hub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(Mutex::new(state));
        let stop = Arc::new(AtomicBool::new(false));
        let files = Arc::new(tiny_model());
        let (st, sp) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (st, files) = (st.clone(), files.clone());
                std::thread::spawn(move || handle(conn, &st, &files));
            }
        });
        Hub {
            addr,
            state,
            stop,
            thread: Some(thread),
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn log(&self) -> Vec<(String, Option<String>, Option<String>)> {
        self.state.lock().unwrap().log.clone()
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn respond(conn: &mut TcpStream, status: &str, headers: &[(String, String)], body: &[u8]) {
    let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(body);
}

fn handle(mut conn: TcpStream, state: &Mutex<State>, files: &[RepoFile]) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let range = headers.get("range").cloned();
    let auth = headers.get("authorization").cloned();
    let path = target.split('?').next().unwrap_or("").to_string();
    let mut st = state.lock().unwrap();
    st.log.push((path.clone(), range.clone(), auth.clone()));
    let authorized = match &st.token {
        None => true,
        Some(t) => auth.as_deref() == Some(format!("Bearer {t}").as_str()),
    };
    let commit_headers = vec![("X-Repo-Commit".to_string(), COMMIT.to_string())];

    if let Some(rest) = path.strip_prefix("/api/models/") {
        let Some((repo, rev)) = rest.split_once("/revision/") else {
            return respond(&mut conn, "400 Bad Request", &[], b"");
        };
        if repo != REPO {
            let h = [("X-Error-Code".to_string(), "RepoNotFound".to_string())];
            return respond(&mut conn, "404 Not Found", &h, br#"{"error":"Repository not found"}"#);
        }
        if !authorized {
            let h = [("X-Error-Code".to_string(), "GatedRepo".to_string())];
            return respond(&mut conn, "401 Unauthorized", &h, br#"{"error":"Access restricted"}"#);
        }
        if st.api_503_once {
            st.api_503_once = false;
            return respond(&mut conn, "503 Service Unavailable", &[], b"busy");
        }
        if rev != "main" && rev != COMMIT {
            let h = [("X-Error-Code".to_string(), "RevisionNotFound".to_string())];
            return respond(&mut conn, "404 Not Found", &h, br#"{"error":"Invalid rev id"}"#);
        }
        let siblings: Vec<serde_json::Value> = files
            .iter()
            .map(|f| {
                let sha = sha256(&f.bytes);
                let mut s = serde_json::json!({
                    "rfilename": f.path,
                    "size": f.bytes.len(),
                    "blobId": &sha[..40],
                });
                if f.lfs {
                    s["lfs"] = serde_json::json!({"sha256": sha, "size": f.bytes.len(), "pointerSize": 134});
                    s["size"] = serde_json::json!(f.bytes.len());
                }
                s
            })
            .collect();
        let body = serde_json::to_vec(&serde_json::json!({
            "id": REPO, "sha": COMMIT, "private": false, "siblings": siblings
        }))
        .unwrap();
        let h = [("Content-Type".to_string(), "application/json".to_string())];
        return respond(&mut conn, "200 OK", &h, &body);
    }

    if let Some(sha) = path.strip_prefix("/cdn/") {
        let Some(f) = files.iter().find(|f| sha256(&f.bytes) == sha) else {
            return respond(&mut conn, "404 Not Found", &[], b"");
        };
        let mut body = f.bytes.clone();
        if st.corrupt.contains(&f.path) {
            let mid = body.len() / 2;
            body[mid] ^= 0xff;
        }
        let cut = st.cut_after.remove(&f.path);
        drop(st);
        return serve_body(&mut conn, &body, range.as_deref(), cut, &format!("\"{sha}\""));
    }

    let prefix = format!("/{REPO}/resolve/");
    let Some(rest) = path.strip_prefix(&prefix) else {
        return respond(
            &mut conn,
            "404 Not Found",
            &[("X-Error-Code".into(), "RepoNotFound".into())],
            b"",
        );
    };
    if !authorized {
        return respond(&mut conn, "401 Unauthorized", &[], b"");
    }
    let Some((_rev, file)) = rest.split_once('/') else {
        return respond(&mut conn, "404 Not Found", &[], b"");
    };
    let Some(f) = files.iter().find(|f| f.path == file) else {
        return respond(
            &mut conn,
            "404 Not Found",
            &[("X-Error-Code".into(), "EntryNotFound".into())],
            b"",
        );
    };
    let sha = sha256(&f.bytes);
    if f.lfs {
        let mut h = commit_headers;
        h.push(("X-Linked-Etag".into(), format!("\"{sha}\"")));
        h.push(("X-Linked-Size".into(), f.bytes.len().to_string()));
        h.push(("Location".into(), format!("/cdn/{sha}")));
        return respond(&mut conn, "302 Found", &h, b"");
    }
    let mut body = f.bytes.clone();
    if st.corrupt.contains(&f.path) {
        body[0] ^= 0xff;
    }
    let cut = st.cut_after.remove(&f.path);
    drop(st);
    serve_body(&mut conn, &body, range.as_deref(), cut, &format!("\"{}\"", &sha[..40]))
}

/// 200 or 206 (for `Range: bytes=N-`); with `cut`, sends the headers of the whole answer but
/// only `cut` body bytes, then closes the connection.
fn serve_body(conn: &mut TcpStream, body: &[u8], range: Option<&str>, cut: Option<usize>, etag: &str) {
    let start = range
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok());
    let mut headers = vec![
        ("ETag".to_string(), etag.to_string()),
        ("Accept-Ranges".to_string(), "bytes".to_string()),
        ("X-Repo-Commit".to_string(), COMMIT.to_string()),
    ];
    let (status, part) = match start {
        Some(s) if s >= body.len() => {
            return respond(conn, "416 Range Not Satisfiable", &headers, b"");
        }
        Some(s) => {
            headers.push((
                "Content-Range".into(),
                format!("bytes {s}-{}/{}", body.len() - 1, body.len()),
            ));
            ("206 Partial Content", &body[s..])
        }
        None => ("200 OK", body),
    };
    match cut {
        None => respond(conn, status, &headers, part),
        Some(n) => {
            let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
            for (k, v) in &headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str(&format!("Content-Length: {}\r\n\r\n", part.len()));
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(&part[..n.min(part.len())]);
            let _ = conn.flush();
            let _ = conn.shutdown(Shutdown::Both);
        }
    }
}

/// The binary with a clean hub environment pointing at `endpoint`.
fn qwen_edit(endpoint: &str, home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_qwen-edit"));
    c.env("HF_ENDPOINT", endpoint)
        .env("HF_HOME", home)
        .env("QWEN_EDIT_HTTP_RETRIES", "3")
        .env_remove("HF_TOKEN")
        .env_remove("HF_TOKEN_PATH")
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG");
    c
}

fn fetch(hub: &Hub, cache: &Path, extra: &[&str]) -> Output {
    let mut c = qwen_edit(&hub.endpoint(), cache);
    c.args(["fetch-models", "--model", REPO, "--cache-dir"])
        .arg(cache)
        .args(extra);
    c.output().unwrap()
}

fn json_of(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn repo_dir(cache: &Path) -> PathBuf {
    cache.join("models--test-org--tiny-edit")
}

fn snapshot(cache: &Path) -> PathBuf {
    repo_dir(cache).join("snapshots").join(COMMIT)
}

fn content(path: &str) -> Vec<u8> {
    tiny_model().into_iter().find(|f| f.path == path).unwrap().bytes
}

/// The snapshot is complete, every file links to a blob with the right bytes, nothing extra.
fn assert_complete_cache(cache: &Path) {
    let snap = snapshot(cache);
    assert!(
        qwen_edit::pipeline::layout::missing_files(&snap).is_empty(),
        "missing: {:?}",
        qwen_edit::pipeline::layout::missing_files(&snap)
    );
    for f in tiny_model() {
        let p = snap.join(&f.path);
        if !expected_paths().contains(&f.path.as_str()) {
            assert!(!p.exists(), "{} should not be fetched", f.path);
            continue;
        }
        let link = std::fs::read_link(&p).unwrap_or_else(|e| panic!("{}: {e}", f.path));
        assert!(link.starts_with(".."), "{} links to {link:?}", f.path);
        let blob = std::fs::canonicalize(&p).unwrap();
        assert_eq!(
            blob.parent().unwrap(),
            std::fs::canonicalize(repo_dir(cache).join("blobs")).unwrap()
        );
        let bytes = std::fs::read(&blob).unwrap();
        assert_eq!(bytes, f.bytes, "{}", f.path);
        if f.lfs {
            let name = blob.file_name().unwrap().to_string_lossy().into_owned();
            assert_eq!(name, sha256(&bytes), "LFS blobs are named by their sha256");
        }
    }
    let leftovers: Vec<_> = std::fs::read_dir(repo_dir(cache).join("blobs"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".incomplete"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let main = std::fs::read_to_string(repo_dir(cache).join("refs/main")).unwrap();
    assert_eq!(main, COMMIT);
}

#[test]
fn full_download_has_the_hub_layout_and_json_summary() {
    let hub = Hub::start(State::default());
    let tmp = tempfile::tempdir().unwrap();
    let out = fetch(&hub, tmp.path(), &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_complete_cache(tmp.path());
    let j = json_of(&out);
    assert_eq!(j["repo"], REPO);
    assert_eq!(j["revision"], "main");
    assert_eq!(j["commit"], COMMIT);
    assert_eq!(j["cache_dir"], tmp.path().to_str().unwrap());
    assert_eq!(j["snapshot"], snapshot(tmp.path()).to_str().unwrap());
    assert_eq!(j["complete"], true);
    let files = j["files"].as_array().unwrap();
    let mut paths: Vec<&str> = files.iter().map(|f| f["path"].as_str().unwrap()).collect();
    paths.sort();
    let mut want = expected_paths();
    want.sort();
    assert_eq!(paths, want);
    let total: u64 = expected_paths().iter().map(|p| content(p).len() as u64).sum();
    assert_eq!(j["total_bytes"], total);
    assert_eq!(j["downloaded_bytes"], total);
    assert_eq!(j["reused_bytes"], 0);
    assert!(j["seconds"].as_f64().unwrap() >= 0.0);
    for f in files {
        assert_eq!(f["status"], "downloaded");
        let p = f["path"].as_str().unwrap();
        assert_eq!(f["size"], content(p).len() as u64);
        assert_eq!(f["lfs"], p.ends_with(".safetensors"));
        if f["lfs"] == true {
            assert_eq!(f["sha256"], sha256(&content(p)));
        }
    }
    // Python's lock files live beside the cache.
    assert!(tmp.path().join(".locks/models--test-org--tiny-edit").is_dir());
}

#[test]
fn a_cut_connection_is_resumed_with_range() {
    let mut state = State::default();
    state.cut_after.insert(SHARD1.to_string(), 70_000);
    let hub = Hub::start(state);
    let tmp = tempfile::tempdir().unwrap();
    let out = fetch(&hub, tmp.path(), &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_complete_cache(tmp.path());
    let cdn = format!("/cdn/{}", sha256(&content(SHARD1)));
    let hits: Vec<_> = hub.log().into_iter().filter(|(p, _, _)| *p == cdn).collect();
    assert_eq!(hits.len(), 2, "{hits:?}");
    assert_eq!(hits[0].1, None);
    let range = hits[1].1.clone().expect("the second request carries Range");
    let from: usize = range
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(from > 0 && from <= 70_000, "{range}");
    let j = json_of(&out);
    assert_eq!(j["downloaded_bytes"], j["total_bytes"]);
}

#[test]
fn an_interrupted_earlier_run_is_continued() {
    let hub = Hub::start(State::default());
    let tmp = tempfile::tempdir().unwrap();
    let bytes = content(SHARD1);
    let blobs = repo_dir(tmp.path()).join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(format!("{}.incomplete", sha256(&bytes))), &bytes[..50_000]).unwrap();
    let out = fetch(&hub, tmp.path(), &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_complete_cache(tmp.path());
    let cdn = format!("/cdn/{}", sha256(&bytes));
    let hits: Vec<_> = hub.log().into_iter().filter(|(p, _, _)| *p == cdn).collect();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].1.as_deref(), Some("bytes=50000-"));
    let j = json_of(&out);
    assert_eq!(j["resumed_bytes"], 50_000);
    let shard = j["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == SHARD1)
        .unwrap();
    assert_eq!(shard["status"], "resumed");
}

#[test]
fn a_sha256_mismatch_is_refused_and_nothing_is_left_in_place() {
    let mut state = State::default();
    state.corrupt.insert(SHARD1.to_string());
    let hub = Hub::start(state);
    let tmp = tempfile::tempdir().unwrap();
    let out = fetch(&hub, tmp.path(), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("sha256 mismatch"), "{err}");
    assert!(err.contains(SHARD1), "{err}");
    let sha = sha256(&content(SHARD1));
    let blobs = repo_dir(tmp.path()).join("blobs");
    assert!(!blobs.join(&sha).exists());
    assert!(!blobs.join(format!("{sha}.incomplete")).exists());
    assert!(!snapshot(tmp.path()).join(SHARD1).exists());
    assert!(!repo_dir(tmp.path()).join("refs/main").exists());
}

#[test]
fn an_unknown_repo_exits_4() {
    let hub = Hub::start(State::default());
    let tmp = tempfile::tempdir().unwrap();
    let out = qwen_edit(&hub.endpoint(), tmp.path())
        .args(["fetch-models", "--model", "nobody/nothing", "--cache-dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("nobody/nothing not found"), "{}", stderr(&out));
    let out = fetch(&hub, tmp.path(), &["--revision", "v9"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("no revision `v9`"), "{}", stderr(&out));
}

#[test]
fn a_gated_repo_without_token_exits_4_with_the_hint() {
    let state = State {
        token: Some("s3cret".into()),
        ..State::default()
    };
    let hub = Hub::start(state);
    let tmp = tempfile::tempdir().unwrap();
    let out = fetch(&hub, tmp.path(), &[]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("401"), "{err}");
    assert!(
        err.contains("hint:") && err.contains("--token") && err.contains("HF_TOKEN"),
        "{err}"
    );
    assert!(err.contains("licence"), "{err}");

    // With the token (flag or HF_TOKEN) it downloads, sending it as a bearer token.
    let out = fetch(&hub, tmp.path(), &["--token", "s3cret"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_complete_cache(tmp.path());
    let tmp2 = tempfile::tempdir().unwrap();
    let out = qwen_edit(&hub.endpoint(), tmp2.path())
        .env("HF_TOKEN", "s3cret")
        .args(["fetch-models", "--model", REPO, "--cache-dir"])
        .arg(tmp2.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(hub
        .log()
        .iter()
        .filter(|(p, _, _)| p.starts_with("/api/"))
        .any(|(_, _, a)| a.as_deref() == Some("Bearer s3cret")));
}

#[test]
fn offline_mode_reads_only_the_cache() {
    let hub = Hub::start(State::default());
    let tmp = tempfile::tempdir().unwrap();
    let offline = |extra: &[&str]| {
        let mut c = qwen_edit(&hub.endpoint(), tmp.path());
        c.env("HF_HUB_OFFLINE", "1")
            .args(["fetch-models", "--model", REPO, "--cache-dir"])
            .arg(tmp.path())
            .args(extra);
        c.output().unwrap()
    };
    let out = offline(&["--json"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let j = json_of(&out);
    assert_eq!(j["offline"], true);
    assert_eq!(j["complete"], false);
    assert!(stderr(&out).contains("qwen-edit fetch-models --model test-org/tiny-edit"));
    assert!(hub.log().is_empty(), "offline mode touched the network");

    let out = fetch(&hub, tmp.path(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let requests = hub.log().len();
    let out = offline(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        snapshot(tmp.path()).to_str().unwrap()
    );
    assert_eq!(hub.log().len(), requests, "offline mode touched the network");

    // A snapshot that lost a weight file is incomplete.
    std::fs::remove_file(snapshot(tmp.path()).join("vae/diffusion_pytorch_model.safetensors")).unwrap();
    let out = offline(&["--json"]);
    assert_eq!(out.status.code(), Some(4));
    let missing = json_of(&out)["missing"].to_string();
    assert!(missing.contains("vae/"), "{missing}");
}

#[test]
fn an_existing_cache_is_reused() {
    let hub = Hub::start(State::default());
    let tmp = tempfile::tempdir().unwrap();
    assert_eq!(fetch(&hub, tmp.path(), &[]).status.code(), Some(0));
    let first = hub.log().len();
    let out = fetch(&hub, tmp.path(), &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let j = json_of(&out);
    assert_eq!(j["downloaded_bytes"], 0);
    assert_eq!(j["reused_bytes"], j["total_bytes"]);
    assert!(j["files"].as_array().unwrap().iter().all(|f| f["status"] == "reused"));
    // Only the API call: no file was requested again.
    let again: Vec<_> = hub.log()[first..].to_vec();
    assert_eq!(again.len(), 1, "{again:?}");
    assert!(again[0].0.starts_with("/api/models/"));
    assert_complete_cache(tmp.path());
}

#[test]
fn dry_run_lists_files_and_writes_nothing() {
    let hub = Hub::start(State::default());
    let tmp = tempfile::tempdir().unwrap();
    let out = fetch(&hub, tmp.path(), &["--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for p in expected_paths() {
        assert!(text.contains(p), "{p} not listed:\n{text}");
    }
    assert!(!text.contains("tokenizer/vocab.json"));
    assert!(text.contains("total "), "{text}");
    assert!(!repo_dir(tmp.path()).exists(), "a dry run wrote to the cache");

    let out = fetch(&hub, tmp.path(), &["--dry-run", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let j = json_of(&out);
    assert_eq!(j["dry_run"], true);
    assert_eq!(j["to_download_bytes"], j["total_bytes"]);
    assert_eq!(j["downloaded_bytes"], 0);
    assert!(j["files"].as_array().unwrap().iter().all(|f| f["status"] == "pending"));
    assert!(j["free_bytes"].as_u64().is_some());
    assert!(!repo_dir(tmp.path()).exists());
}

#[test]
fn server_errors_are_retried_and_unreachable_hubs_fail_clearly() {
    let hub = Hub::start(State {
        api_503_once: true,
        ..State::default()
    });
    let tmp = tempfile::tempdir().unwrap();
    let out = fetch(&hub, tmp.path(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let api_calls = hub.log().iter().filter(|(p, _, _)| p.starts_with("/api/")).count();
    assert_eq!(api_calls, 2);

    // Nothing listens on a port just freed: connection refused, tried twice, exit 1.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = qwen_edit(&format!("http://127.0.0.1:{port}"), tmp.path())
        .env("QWEN_EDIT_HTTP_RETRIES", "2")
        .args(["fetch-models", "--model", REPO, "--cache-dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot reach the hub"), "{}", stderr(&out));
    assert!(stderr(&out).contains("2 tries"), "{}", stderr(&out));
}

#[test]
fn ensure_model_downloads_once_then_uses_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let printer = qwen_edit::printer::Printer::silent();
    let dir = {
        let hub = Hub::start(State::default());
        // Only this test sets HF_ENDPOINT in-process; the others pass it to the child explicitly.
        std::env::set_var("HF_ENDPOINT", hub.endpoint());
        std::env::remove_var("HF_HUB_OFFLINE");
        qwen_edit::hub::ensure_model(REPO, "main", tmp.path(), false, None, &printer).unwrap()
    };
    assert_eq!(dir, snapshot(tmp.path()));
    assert_complete_cache(tmp.path());
    // The hub is gone now: a complete snapshot needs no network, offline or not.
    let again = qwen_edit::hub::ensure_model(REPO, "main", tmp.path(), true, None, &printer).unwrap();
    assert_eq!(again, dir);
    let again = qwen_edit::hub::ensure_model(REPO, "main", tmp.path(), false, None, &printer).unwrap();
    assert_eq!(again, dir);
}

#[test]
fn a_hub_lora_file_is_downloaded_into_the_cache_then_reused_offline() {
    let hub = Hub::start(State::default());
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/tiny-plus");
    let input = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden/lora_pipeline_plus_input0.png");
    // The shard is no LoRA: it is fetched as a LoRA file, then refused (exit 3) naming its key.
    let edit = |extra: &[&str]| {
        let mut c = qwen_edit(&hub.endpoint(), tmp.path());
        c.arg("edit")
            .arg(&input)
            .args(["-p", "x", "--device", "cpu", "--model"])
            .arg(&model)
            .args(["--lora", &format!("{REPO}:{SHARD1}@0.5"), "-o"])
            .arg(tmp.path().join("out.png"))
            .env("HF_HUB_CACHE", &cache)
            .args(extra);
        c.output().unwrap()
    };
    let out = edit(&[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("not a LoRA key layout"), "{}", stderr(&out));
    let linked = repo_dir(&cache).join("snapshots").join(COMMIT).join(SHARD1);
    assert_eq!(std::fs::read(&linked).unwrap(), content(SHARD1));
    assert_eq!(
        std::fs::read_to_string(repo_dir(&cache).join("refs/main")).unwrap(),
        COMMIT
    );
    // Offline: served from the cache, no request.
    let before = hub.log().len();
    let out = edit(&["--offline"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(hub.log().len(), before);
    // A file the repo does not have: exit 4 naming it.
    let mut c = qwen_edit(&hub.endpoint(), tmp.path());
    let out = c
        .arg("edit")
        .arg(&input)
        .args(["-p", "x", "--device", "cpu", "--model"])
        .arg(&model)
        .args(["--lora", &format!("{REPO}:nope.safetensors"), "-o"])
        .arg(tmp.path().join("out.png"))
        .env("HF_HUB_CACHE", &cache)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("nope.safetensors"), "{}", stderr(&out));
}
