//! Finding the model folder that `--model` names: a local diffusers folder, or a hub repo in the
//! standard cache (downloaded on demand through the fetch code unless offline).

use std::path::Path;

use crate::cli::ModelArgs;
use crate::error::UserError;
use crate::hub;
use crate::pipeline::layout::ModelFolder;
use crate::printer::Printer;

/// Resolves and checks the model folder of `args`.
pub fn resolve(args: &ModelArgs, printer: &Printer) -> anyhow::Result<ModelFolder> {
    let path = Path::new(&args.model);
    if path.is_dir() {
        return ModelFolder::open(path);
    }
    let repo = hub::expand_shorthand(&args.model);
    if !hub::is_repo_id(&repo) {
        return Err(UserError::model_missing(format!(
            "`{}` is neither a model folder nor a hub repo id (org/name)",
            args.model
        ))
        .with_hint(
            "pass a folder in the diffusers layout, a repo id like Qwen/Qwen-Image-Edit-2511, or `edit`/`2509`/`2511`",
        )
        .into());
    }
    let cache = hub::cache_dir(args.cache_dir.as_deref());
    let offline = args.offline || hub::offline_from_env();
    let snapshot = ensure_snapshot(&repo, &args.revision, &cache, offline, printer)?;
    ModelFolder::open(&snapshot)
}

fn ensure_snapshot(
    repo: &str,
    revision: &str,
    cache: &Path,
    offline: bool,
    printer: &Printer,
) -> anyhow::Result<std::path::PathBuf> {
    let token = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty());
    hub::ensure_model(repo, revision, cache, offline, token.as_deref(), printer)
}
