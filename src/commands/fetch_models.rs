//! `qwen-edit fetch-models`: download a model repo into the hub cache (or, offline / `--dry-run`,
//! report what the cache holds and what a download would bring). stdout carries the data: the
//! snapshot folder, the file list of a dry run, or the `--json` summary; messages go to stderr.

use std::io::Write;

use crate::cli::FetchModelsArgs;
use crate::error::UserError;
use crate::hub::files::FileRequest;
use crate::hub::{self, api, FetchOptions, FetchSummary, FileStatus};
use crate::pipeline::lightning::{lightning_file, LightningFile, ModelVariant, LIGHTNING_STEPS};
use crate::printer::Printer;

pub fn run(args: FetchModelsArgs, printer: Printer) -> anyhow::Result<u8> {
    let repo = hub::expand_shorthand(&args.model);
    if !hub::is_repo_id(&repo) {
        return Err(UserError::bad_input(format!(
            "`{}` is not a hub repo id (`org/name`) or a shorthand (edit, 2509, 2511)",
            args.model
        ))
        .into());
    }
    let cache = hub::cache_dir(args.cache_dir.as_deref());
    let lightning = lightning_files(&args, &repo)?;

    if args.offline || hub::offline_from_env() {
        let summary = hub::offline_summary(&repo, &args.revision, &cache);
        print_offline(&summary, args.json, &printer)?;
        let loras_ok = fetch_lightning(&lightning, &cache, None, true, false, &printer)?;
        return Ok(if summary.complete && loras_ok { 0 } else { 4 });
    }

    let token = args
        .token
        .clone()
        .filter(|t| !t.trim().is_empty())
        .or_else(api::token_from_env);
    let endpoint = api::endpoint_from_env();
    let summary = hub::fetch(
        &FetchOptions {
            repo: &repo,
            revision: &args.revision,
            cache: &cache,
            endpoint: &endpoint,
            token: token.as_deref(),
            dry_run: args.dry_run,
            jobs: usize::from(args.jobs),
        },
        &printer,
    )?;
    fetch_lightning(&lightning, &cache, token.as_deref(), false, args.dry_run, &printer)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &summary)?;
        writeln!(out)?;
    } else if args.dry_run {
        print_dry_run(&mut out, &summary)?;
    } else {
        if let Some(dir) = &summary.snapshot {
            writeln!(out, "{}", dir.display())?;
        }
        printer.status(format!(
            "{}@{}: {} files, {} ({} downloaded, {} resumed, {} already cached) in {:.1} s",
            summary.repo,
            short_commit(&summary),
            summary.files.len(),
            hub::human_bytes(summary.total_bytes),
            hub::human_bytes(summary.downloaded_bytes),
            hub::human_bytes(summary.resumed_bytes),
            hub::human_bytes(summary.reused_bytes),
            summary.seconds
        ));
    }
    Ok(0)
}

/// The Lightning LoRA files `--lightning` asks for, for the model repo `repo`.
fn lightning_files(args: &FetchModelsArgs, repo: &str) -> anyhow::Result<Vec<LightningFile>> {
    let Some(which) = args.lightning.as_deref() else {
        return Ok(Vec::new());
    };
    let variant = ModelVariant::from_repo(repo).ok_or_else(|| {
        UserError::bad_input(format!(
            "cannot tell which Lightning LoRA fits {repo}: --lightning knows Qwen-Image-Edit, -2509 and -2511"
        ))
        .with_hint("fetch a LoRA of another repo with `qwen-edit edit --lora ORG/NAME:FILE` (downloads on first use)")
    })?;
    let steps: Vec<usize> = match which {
        "4" => vec![4],
        "8" => vec![8],
        _ => LIGHTNING_STEPS.to_vec(),
    };
    steps.into_iter().map(|n| lightning_file(variant, n)).collect()
}

/// Fetches (or, offline / dry run, checks) the Lightning files; returns whether all are cached.
fn fetch_lightning(
    files: &[LightningFile],
    cache: &std::path::Path,
    token: Option<&str>,
    offline: bool,
    dry_run: bool,
    printer: &Printer,
) -> anyhow::Result<bool> {
    let mut all = true;
    for f in files {
        let req = FileRequest {
            repo: f.repo,
            revision: "main",
            cache,
            offline,
            token,
            dry_run,
        };
        match hub::files::ensure_files(&req, std::slice::from_ref(&f.file), printer) {
            Ok(got) => {
                for g in got {
                    let size = g.size.map(hub::human_bytes).unwrap_or_default();
                    let state = if g.cached { "cached" } else { "to fetch" };
                    printer.status(format!("Lightning LoRA {}:{} ({size}, {state})", g.repo, g.path));
                    all &= g.cached;
                }
            }
            Err(e) if offline => {
                printer.warn(format!("{e:#}"));
                all = false;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(all)
}

fn short_commit(s: &FetchSummary) -> &str {
    s.commit.as_deref().map(|c| &c[..c.len().min(12)]).unwrap_or("?")
}

/// One line per file (size, state, path), then the totals.
fn print_dry_run(out: &mut impl Write, s: &FetchSummary) -> std::io::Result<()> {
    for f in &s.files {
        let state = match f.status {
            FileStatus::Reused => "cached".to_string(),
            _ if f.partial_bytes > 0 => format!("partial {}", hub::human_bytes(f.partial_bytes)),
            _ => "fetch".to_string(),
        };
        writeln!(out, "{:>10}  {:<16}  {}", hub::human_bytes(f.size), state, f.path)?;
    }
    writeln!(
        out,
        "total {} in {} files; to download {} ({}@{} into {}){}",
        hub::human_bytes(s.total_bytes),
        s.files.len(),
        hub::human_bytes(s.to_download_bytes),
        s.repo,
        short_commit(s),
        s.cache_dir.display(),
        s.free_bytes
            .map(|f| format!("; {} free", hub::human_bytes(f)))
            .unwrap_or_default()
    )
}

fn print_offline(s: &FetchSummary, json: bool, printer: &Printer) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, s)?;
        writeln!(out)?;
    } else if s.complete {
        if let Some(dir) = &s.snapshot {
            writeln!(out, "{}", dir.display())?;
        }
    }
    if s.complete {
        printer.status(format!(
            "offline: {} ({}) is complete in {}",
            s.repo,
            s.revision,
            s.cache_dir.display()
        ));
    } else {
        let what = match &s.snapshot {
            None => "is not in".to_string(),
            Some(_) => format!("is incomplete (missing {}) in", s.missing.join(", ")),
        };
        // Shown even with --quiet: it is why the exit code is 4.
        printer.warn(format!(
            "offline: {} ({}) {what} {}; run `{}` with network access",
            s.repo,
            s.revision,
            s.cache_dir.display(),
            hub::fetch_command(&s.repo, &s.revision)
        ));
    }
    Ok(())
}
