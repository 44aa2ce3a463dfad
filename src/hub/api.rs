//! The parts of the Hugging Face Hub's HTTP API that downloads need: a repo's file list at a revision
//! (`GET {endpoint}/api/models/{repo}/revision/{rev}?blobs=true`) and file contents
//! (`GET {endpoint}/{repo}/resolve/{commit}/{path}`, redirects followed, `Range` to resume), with the
//! bearer token, bounded retries with exponential backoff, and errors the user can act on.

use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

use crate::error::UserError;

/// The hub used when `HF_ENDPOINT` is not set.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Tries per request (network errors, 429 and 5xx) unless `QWEN_EDIT_HTTP_RETRIES` says otherwise.
pub const DEFAULT_ATTEMPTS: u32 = 5;

/// A repo's state at one commit, as `GET /api/models/{repo}/revision/{rev}?blobs=true` reports it.
#[derive(Debug, Clone, Deserialize)]
pub struct RepoInfo {
    /// The commit the revision resolved to.
    pub sha: String,
    #[serde(default)]
    pub siblings: Vec<Sibling>,
}

/// One file of the repo.
#[derive(Debug, Clone, Deserialize)]
pub struct Sibling {
    pub rfilename: String,
    #[serde(default)]
    pub size: Option<u64>,
    /// The git blob id (the ETag of a regular file).
    #[serde(rename = "blobId", default)]
    pub blob_id: Option<String>,
    /// Present for files stored in LFS / Xet (weights).
    #[serde(default)]
    pub lfs: Option<LfsInfo>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LfsInfo {
    pub sha256: String,
    pub size: u64,
}

impl Sibling {
    /// The file's size in bytes, when the API gave one.
    pub fn len(&self) -> Option<u64> {
        self.lfs.as_ref().map(|l| l.size).or(self.size)
    }

    /// Whether the API reported an empty file.
    pub fn is_empty(&self) -> bool {
        self.len() == Some(0)
    }

    /// The blob's name in the cache: the sha256 of an LFS file, else the git blob id (both are
    /// what the hub sends as the file's ETag, which is what huggingface_hub names blobs by).
    pub fn blob_name(&self) -> Option<String> {
        self.lfs
            .as_ref()
            .map(|l| l.sha256.to_ascii_lowercase())
            .or_else(|| self.blob_id.clone())
    }
}

/// `HF_ENDPOINT` without a trailing slash, else [`DEFAULT_ENDPOINT`].
pub fn endpoint_from_env() -> String {
    std::env::var("HF_ENDPOINT")
        .ok()
        .map(|e| e.trim().trim_end_matches('/').to_string())
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
}

/// The token huggingface_hub would use when none is given: `$HF_TOKEN`, else the file
/// `$HF_TOKEN_PATH`, else `$HF_HOME/token` (default `~/.cache/huggingface/token`, written by
/// `hf auth login`).
pub fn token_from_env() -> Option<String> {
    let nonempty = |s: String| {
        let t = s.trim().to_string();
        (!t.is_empty()).then_some(t)
    };
    if let Some(t) = std::env::var("HF_TOKEN").ok().and_then(nonempty) {
        return Some(t);
    }
    let path = match std::env::var_os("HF_TOKEN_PATH").filter(|p| !p.is_empty()) {
        Some(p) => std::path::PathBuf::from(p),
        None => {
            let home = std::env::var_os("HF_HOME")
                .filter(|p| !p.is_empty())
                .map(std::path::PathBuf::from)
                .or_else(|| {
                    std::env::var_os("XDG_CACHE_HOME")
                        .filter(|p| !p.is_empty())
                        .map(|d| std::path::PathBuf::from(d).join("huggingface"))
                })
                .or_else(|| directories::BaseDirs::new().map(|b| b.home_dir().join(".cache").join("huggingface")))?;
            home.join("token")
        }
    };
    std::fs::read_to_string(path).ok().and_then(nonempty)
}

/// Percent-encodes one URL path segment (everything but RFC 3986 unreserved characters).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `org/name` with each part encoded.
fn encode_repo(repo: &str) -> String {
    repo.split('/').map(encode_segment).collect::<Vec<_>>().join("/")
}

/// A client of one hub endpoint.
#[derive(Clone)]
pub struct Hub {
    endpoint: String,
    token: Option<String>,
    agent: ureq::Agent,
    attempts: u32,
    backoff: Duration,
}

/// What a request was for, to word its errors.
enum Target<'a> {
    Repo { repo: &'a str, revision: &'a str },
    File { repo: &'a str, path: &'a str },
}

impl Hub {
    /// A client of `endpoint` (e.g. `https://huggingface.co`) sending `token` when given.
    pub fn new(endpoint: &str, token: Option<&str>) -> Self {
        let secs = |k: &str, default: u64| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|v| *v > 0.0)
                .map(Duration::from_secs_f64)
                .unwrap_or(Duration::from_secs(default))
        };
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(secs("HF_HUB_ETAG_TIMEOUT", 10))
            .timeout_read(secs("HF_HUB_DOWNLOAD_TIMEOUT", 30))
            .redirects(10)
            .redirect_auth_headers(ureq::RedirectAuthHeaders::SameHost)
            .user_agent(&format!("qwen-edit/{}", env!("CARGO_PKG_VERSION")))
            .build();
        let attempts = std::env::var("QWEN_EDIT_HTTP_RETRIES")
            .ok()
            .and_then(|v| v.trim().parse::<u32>().ok())
            .unwrap_or(DEFAULT_ATTEMPTS)
            .clamp(1, 20);
        Self {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token: token.map(str::trim).filter(|t| !t.is_empty()).map(str::to_string),
            agent,
            attempts,
            backoff: Duration::from_millis(500),
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// How many times a failing request is tried.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The pause before try `attempt + 1` (exponential, 0.5 s doubling up to 8 s).
    pub fn backoff(&self, attempt: u32) -> Duration {
        (self.backoff * 2u32.saturating_pow(attempt.saturating_sub(1))).min(Duration::from_secs(8))
    }

    /// The repo's commit and file list at `revision`.
    pub fn repo_info(&self, repo: &str, revision: &str) -> anyhow::Result<RepoInfo> {
        let url = format!(
            "{}/api/models/{}/revision/{}?blobs=true",
            self.endpoint,
            encode_repo(repo),
            encode_segment(revision)
        );
        let resp = self.get(&url, None, &Target::Repo { repo, revision })?;
        let text = resp
            .into_string()
            .with_context(|| format!("reading the hub's answer from {url}"))?;
        let info: RepoInfo = serde_json::from_str(&text)
            .with_context(|| format!("the hub's answer from {url} is not the expected JSON"))?;
        if !super::is_commit_hash(&info.sha) {
            anyhow::bail!(
                "the hub's answer from {url} names `{}` as the commit, not a commit hash",
                info.sha
            );
        }
        Ok(info)
    }

    /// Starts downloading `path` of `repo` at `commit`, from byte `offset` on (`Range`). The answer
    /// is 200 (whole file) or 206 (from `offset`); 416 is passed back too.
    pub fn open_file(&self, repo: &str, commit: &str, path: &str, offset: u64) -> anyhow::Result<ureq::Response> {
        let url = self.file_url(repo, commit, path);
        self.get(&url, Some(offset), &Target::File { repo, path })
    }

    /// `{endpoint}/{repo}/resolve/{commit}/{path}`.
    pub fn file_url(&self, repo: &str, commit: &str, path: &str) -> String {
        let path: Vec<String> = path.split('/').map(encode_segment).collect();
        format!(
            "{}/{}/resolve/{}/{}",
            self.endpoint,
            encode_repo(repo),
            encode_segment(commit),
            path.join("/")
        )
    }

    /// GET with retries: network errors, 429 and 5xx are tried again after a pause.
    fn get(&self, url: &str, range_from: Option<u64>, target: &Target<'_>) -> anyhow::Result<ureq::Response> {
        let mut last = String::new();
        for attempt in 1..=self.attempts {
            if attempt > 1 {
                tracing::debug!("retrying {url} (try {attempt} of {})", self.attempts);
                std::thread::sleep(self.backoff(attempt - 1));
            }
            let mut req = self.agent.get(url);
            if let Some(token) = &self.token {
                req = req.set("Authorization", &format!("Bearer {token}"));
            }
            if let Some(offset) = range_from {
                // Byte-exact bodies: no transfer compression (it would break Range arithmetic).
                req = req.set("Accept-Encoding", "identity");
                if offset > 0 {
                    req = req.set("Range", &format!("bytes={offset}-"));
                }
            }
            match req.call() {
                Ok(resp) => return Ok(resp),
                Err(ureq::Error::Status(416, resp)) if range_from.is_some() => return Ok(resp),
                Err(ureq::Error::Status(code, resp)) if code == 429 || code >= 500 => {
                    last = format!("the hub answered {code} {}", resp.status_text());
                }
                Err(ureq::Error::Status(code, resp)) => {
                    return Err(self.status_error(code, resp, target));
                }
                Err(ureq::Error::Transport(t)) => {
                    if matches!(
                        t.kind(),
                        ureq::ErrorKind::InvalidUrl | ureq::ErrorKind::UnknownScheme | ureq::ErrorKind::InvalidProxyUrl
                    ) {
                        anyhow::bail!("cannot request {url}: {t}");
                    }
                    last = t.to_string();
                }
            }
        }
        Err(anyhow::anyhow!(
            "cannot reach the hub at {} ({} tries): {last}; check the network connection, or set HF_HUB_OFFLINE=1 to use only the cache",
            self.endpoint,
            self.attempts
        ))
    }

    /// The error for a 4xx answer: 401/403/404 are "model missing" (exit 4) with a hint.
    fn status_error(&self, code: u16, resp: ureq::Response, target: &Target<'_>) -> anyhow::Error {
        let error_code = resp.header("X-Error-Code").unwrap_or("").to_string();
        let server_msg = resp.header("X-Error-Message").map(str::to_string).unwrap_or_default();
        let repo = match target {
            Target::Repo { repo, .. } | Target::File { repo, .. } => *repo,
        };
        let page = format!("{}/{repo}", self.endpoint);
        let token_hint = format!(
            "pass --token <TOKEN> or set HF_TOKEN (a read token from {}/settings/tokens), and accept the model's licence on {page}",
            self.endpoint
        );
        let detail = if server_msg.is_empty() {
            String::new()
        } else {
            format!(": {server_msg}")
        };
        match code {
            401 if !self.has_token() => UserError::model_missing(format!(
                "the hub refused access to {repo} without a token (401{detail}): it is gated, private, or does not exist"
            ))
            .with_hint(token_hint)
            .into(),
            401 => UserError::model_missing(format!(
                "the hub refused the token for {repo} (401{detail})"
            ))
            .with_hint(format!("check that the token (--token / HF_TOKEN) is valid and can read {repo}; {token_hint}"))
            .into(),
            403 => UserError::model_missing(format!("access to {repo} is denied (403{detail})"))
                .with_hint(format!("accept the model's licence on {page} with the account the token belongs to"))
                .into(),
            404 => {
                let err = match (target, error_code.as_str()) {
                    (Target::Repo { revision, .. }, "RevisionNotFound") => UserError::model_missing(
                        format!("{repo} has no revision `{revision}` on {}", self.endpoint),
                    )
                    .with_hint("check --revision (a branch, tag or commit of the repo)"),
                    (Target::File { path, .. }, _) => UserError::model_missing(format!(
                        "{repo} has no file {path} at the resolved commit (404)"
                    )),
                    _ => UserError::model_missing(format!(
                        "repository {repo} not found on {}{detail}",
                        self.endpoint
                    ))
                    .with_hint(if self.has_token() {
                        "check --model (a hub repo id `org/name`, or edit, 2509, 2511)".to_string()
                    } else {
                        format!("check --model (a hub repo id `org/name`, or edit, 2509, 2511); for a private repo {token_hint}")
                    }),
                };
                err.into()
            }
            _ => anyhow::anyhow!(
                "the hub answered {code} {} for {repo}{detail}",
                resp.status_text()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(encode_segment("refs/pr/1"), "refs%2Fpr%2F1");
        assert_eq!(encode_segment("a b+c.json"), "a%20b%2Bc.json");
        assert_eq!(encode_repo("Qwen/Qwen-Image-Edit"), "Qwen/Qwen-Image-Edit");
        let hub = Hub::new("http://h/", None);
        assert_eq!(
            hub.file_url("o/n", "abc", "vae/config.json"),
            "http://h/o/n/resolve/abc/vae/config.json"
        );
    }

    #[test]
    fn backoff_grows_and_is_bounded() {
        let hub = Hub::new("http://h", None);
        assert_eq!(hub.backoff(1), Duration::from_millis(500));
        assert_eq!(hub.backoff(2), Duration::from_millis(1000));
        assert_eq!(hub.backoff(10), Duration::from_secs(8));
    }

    #[test]
    fn blob_names_follow_the_etag() {
        let s: Sibling = serde_json::from_str(
            r#"{"rfilename":"a.safetensors","size":5,"blobId":"b1","lfs":{"sha256":"ABC","size":7,"pointerSize":130}}"#,
        )
        .unwrap();
        assert_eq!(s.blob_name().as_deref(), Some("abc"));
        assert_eq!(s.len(), Some(7));
        let s: Sibling = serde_json::from_str(r#"{"rfilename":"c.json","size":5,"blobId":"b1"}"#).unwrap();
        assert_eq!(s.blob_name().as_deref(), Some("b1"));
    }
}
