//! Downloading an image over http(s): per-attempt connect/read/total timeouts, redirects followed by
//! hand (so the limit and the http(s)-only rule are ours), a body size limit enforced while reading,
//! and retries with exponential backoff on connection errors, timeouts, HTTP 5xx and 429.

use std::io::Read;
use std::time::{Duration, Instant};

use super::{bad, bad_hint, too_large, FetchOptions};

/// The URL without user info, query or fragment (they may carry secrets).
pub(super) fn url_label(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let cut = rest.find(['?', '#']).unwrap_or(rest.len());
    let (main, tail) = rest.split_at(cut);
    let (authority, path) = main.split_at(main.find('/').unwrap_or(main.len()));
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!("{scheme}://{host}{path}{}", if tail.is_empty() { "" } else { "?…" })
}

/// Where a redirect's `Location` points, resolved against `current`; refuses schemes other than
/// http(s).
fn resolve_location(current: &str, location: &str) -> Result<String, String> {
    let location = location.trim();
    let scheme_end = location.find(':').filter(|&i| {
        let s = &location[..i];
        !s.is_empty()
            && s.starts_with(|c: char| c.is_ascii_alphabetic())
            && s.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    });
    if let Some(i) = scheme_end {
        let scheme = location[..i].to_ascii_lowercase();
        return if scheme == "http" || scheme == "https" {
            Ok(location.to_string())
        } else {
            Err(format!("a `{scheme}:` URL, which is not http(s)"))
        };
    }
    let (scheme, rest) = current
        .split_once("://")
        .ok_or_else(|| "an address relative to an unparsable URL".to_string())?;
    if let Some(net) = location.strip_prefix("//") {
        return Ok(format!("{scheme}://{net}"));
    }
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let origin = format!("{scheme}://{}", &rest[..authority_end]);
    let path_and_query = &rest[authority_end..];
    let path = &path_and_query[..path_and_query.find(['?', '#']).unwrap_or(path_and_query.len())];
    if location.starts_with('/') {
        Ok(format!("{origin}{location}"))
    } else if location.starts_with('?') {
        Ok(format!("{origin}{path}{location}"))
    } else {
        let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
        let dir = if dir.is_empty() { "/" } else { dir };
        Ok(format!("{origin}{dir}{location}"))
    }
}

enum Attempt {
    Body(Vec<u8>),
    Redirect(String),
}

/// A failed attempt: the error, whether a retry may help, and a server-requested delay.
struct Failure {
    error: anyhow::Error,
    retry: bool,
    retry_after: Option<Duration>,
}

impl Failure {
    fn fatal(error: anyhow::Error) -> Self {
        Self {
            error,
            retry: false,
            retry_after: None,
        }
    }
    fn transient(error: anyhow::Error) -> Self {
        Self {
            error,
            retry: true,
            retry_after: None,
        }
    }
}

pub(super) fn download(url: &str, label: &str, opts: &FetchOptions) -> anyhow::Result<Vec<u8>> {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(opts.connect_timeout)
        .timeout_read(opts.read_timeout)
        .timeout_write(opts.read_timeout)
        .redirects(0)
        .user_agent(concat!("qwen-edit/", env!("CARGO_PKG_VERSION")))
        .build();
    let mut current = url.to_string();
    let mut seen = vec![current.clone()];
    loop {
        match attempt_with_retries(&agent, &current, label, opts)? {
            Attempt::Body(bytes) => return Ok(bytes),
            Attempt::Redirect(next) => {
                if seen.len() as u32 > opts.max_redirects {
                    let looped = seen.contains(&next);
                    return Err(bad_hint(
                        format!(
                            "downloading `{label}` failed: more than {} redirects{}",
                            opts.max_redirects,
                            if looped { " (a redirect loop)" } else { "" }
                        ),
                        "use the final address of the image",
                    ));
                }
                tracing::debug!("`{label}` redirects to `{}`", url_label(&next));
                seen.push(next.clone());
                current = next;
            }
        }
    }
}

fn attempt_with_retries(agent: &ureq::Agent, url: &str, label: &str, opts: &FetchOptions) -> anyhow::Result<Attempt> {
    let mut tries = 0u32;
    loop {
        match attempt(agent, url, label, opts) {
            Ok(a) => return Ok(a),
            Err(f) if f.retry && tries < opts.retries => {
                let backoff = opts.backoff_base.saturating_mul(1u32 << tries.min(16));
                let delay = f.retry_after.map_or(backoff, |ra| ra.max(backoff));
                tracing::warn!(
                    "{:#}; retrying in {:.1} s ({} of {})",
                    f.error,
                    delay.as_secs_f64(),
                    tries + 1,
                    opts.retries
                );
                std::thread::sleep(delay);
                tries += 1;
            }
            Err(f) => {
                return Err(if f.retry && opts.retries > 0 {
                    f.error.context(format!("gave up after {} attempts", opts.retries + 1))
                } else {
                    f.error
                })
            }
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock)
}

fn attempt(agent: &ureq::Agent, url: &str, label: &str, opts: &FetchOptions) -> Result<Attempt, Failure> {
    let started = Instant::now();
    let response = match agent.get(url).call() {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => {
            let msg = format!("downloading `{label}` failed: HTTP {code} {}", r.status_text());
            return Err(if code == 429 || code >= 500 {
                let retry_after = r
                    .header("Retry-After")
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(|s| Duration::from_secs(s.min(60)));
                let error = bad_hint(msg, "the server is busy or failing; try again later");
                Failure {
                    error,
                    retry: true,
                    retry_after,
                }
            } else {
                Failure::fatal(bad_hint(msg, "check the URL"))
            });
        }
        Err(ureq::Error::Transport(t)) => {
            let retry = matches!(t.kind(), ureq::ErrorKind::ConnectionFailed | ureq::ErrorKind::Io);
            let what = match t.kind() {
                ureq::ErrorKind::Dns => "the host name does not resolve".to_string(),
                ureq::ErrorKind::ConnectionFailed => match std::error::Error::source(&t) {
                    Some(cause) => format!("cannot connect: {cause}"),
                    None => format!("cannot connect: {}", t.message().unwrap_or("connection failed")),
                },
                ureq::ErrorKind::Io
                    if std::error::Error::source(&t)
                        .and_then(|s| s.downcast_ref::<std::io::Error>())
                        .is_some_and(is_timeout) =>
                {
                    format!("timed out after {:.1} s without data", opts.read_timeout.as_secs_f64())
                }
                _ => t.to_string(),
            };
            let error = bad_hint(
                format!("downloading `{label}` failed: {what}"),
                "check the URL and the network",
            );
            return Err(Failure {
                error,
                retry,
                retry_after: None,
            });
        }
    };
    let status = response.status();
    if (300..400).contains(&status) {
        let Some(location) = response.header("Location") else {
            return Err(Failure::fatal(bad(format!(
                "downloading `{label}` failed: HTTP {status} without a Location"
            ))));
        };
        if !matches!(status, 301 | 302 | 303 | 307 | 308) {
            return Err(Failure::fatal(bad(format!(
                "downloading `{label}` failed: unexpected HTTP {status}"
            ))));
        }
        return resolve_location(url, location).map(Attempt::Redirect).map_err(|why| {
            Failure::fatal(bad_hint(
                format!("downloading `{label}` failed: it redirects to {why}"),
                "only http:// and https:// addresses are followed",
            ))
        });
    }
    if let Some(len) = response
        .header("Content-Length")
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        if len > opts.max_bytes {
            return Err(Failure::fatal(too_large(label, opts.max_bytes)));
        }
    }
    read_body(response.into_reader(), label, opts, started)
}

fn read_body(reader: impl Read, label: &str, opts: &FetchOptions, started: Instant) -> Result<Attempt, Failure> {
    let mut body = Vec::new();
    let mut limited = reader.take(opts.max_bytes.saturating_add(1));
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        if started.elapsed() > opts.total_timeout {
            return Err(Failure::transient(bad(format!(
                "downloading `{label}` failed: not finished after {:.0} s",
                opts.total_timeout.as_secs_f64()
            ))));
        }
        let n = match limited.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let what = if is_timeout(&e) {
                    format!("timed out after {:.1} s without data", opts.read_timeout.as_secs_f64())
                } else {
                    e.to_string()
                };
                return Err(Failure::transient(bad(format!(
                    "downloading `{label}` failed while reading the body: {what}"
                ))));
            }
        };
        body.extend_from_slice(&chunk[..n]);
        if body.len() as u64 > opts.max_bytes {
            return Err(Failure::fatal(too_large(label, opts.max_bytes)));
        }
    }
    if body.is_empty() {
        return Err(Failure::fatal(bad(format!("`{label}` returned an empty body"))));
    }
    Ok(Attempt::Body(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_labels_drop_secrets() {
        assert_eq!(url_label("https://u:p@host/a/b.png?sig=1"), "https://host/a/b.png?…");
        assert_eq!(url_label("http://host"), "http://host");
    }

    #[test]
    fn locations_resolve() {
        let cur = "http://h:1/a/b.png?x=1";
        assert_eq!(resolve_location(cur, "/c").as_deref(), Ok("http://h:1/c"));
        assert_eq!(resolve_location(cur, "c.png").as_deref(), Ok("http://h:1/a/c.png"));
        assert_eq!(resolve_location(cur, "?y=2").as_deref(), Ok("http://h:1/a/b.png?y=2"));
        assert_eq!(resolve_location(cur, "//g/x").as_deref(), Ok("http://g/x"));
        assert_eq!(resolve_location(cur, "HTTPS://g/x").as_deref(), Ok("HTTPS://g/x"));
        assert!(resolve_location(cur, "file:///etc/passwd").is_err());
        assert!(resolve_location(cur, "javascript:alert(1)").is_err());
    }
}
