//! `qwen-edit batch` over a JSONL of good and bad jobs: one result line per job, in input order; the
//! good outputs written (equal to `qwen-edit edit`'s), the bad ones not at all (nothing
//! half-written, no leftovers), exit code 1.

mod support;

use serde_json::{json, Value};
use support::*;

#[test]
fn batch_runs_good_jobs_reports_bad_ones_in_order_and_exits_1() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let existing = out.join("exists.png");
    std::fs::write(&existing, b"keep me").unwrap();
    let input = input_png();
    let job = |seed: u64, extra: Value| {
        let mut j = cheap_job(seed, 1.0);
        for (k, v) in extra.as_object().unwrap() {
            j[k] = v.clone();
        }
        j.to_string()
    };
    let path = |name: &str| out.join(name).to_str().unwrap().to_string();
    let lines = [
        // 0: good, a file input.
        job(1, json!({"image": input.to_str().unwrap(), "output": path("a.png")})),
        // 1: no prompt.
        json!({"image": input.to_str().unwrap(), "output": path("b.png")}).to_string(),
        // 2: good, base64 input, into a new folder (--mkdir).
        job(
            2,
            json!({"image_base64": b64(&input_bytes()), "output": path("sub/c.png")}),
        ),
        // 3: broken base64 data URI.
        job(
            3,
            json!({"image": "data:image/png;base64,@@@@", "output": path("d.png")}),
        ),
        // 4: not JSON.
        "{this is not json".to_string(),
        // 5: the output exists (no --overwrite).
        job(
            5,
            json!({"image": input.to_str().unwrap(), "output": existing.to_str().unwrap()}),
        ),
        // 6: good, no output: --output-dir names it after the line.
        job(6, json!({"images": [input.to_str().unwrap()]})),
        // 7: an image that does not exist.
        job(
            7,
            json!({"image": tmp.path().join("nope.png").to_str().unwrap(), "output": path("e.png")}),
        ),
    ];
    let jobs = tmp.path().join("jobs.jsonl");
    std::fs::write(&jobs, lines.join("\n") + "\n").unwrap();

    let o = qwen_edit()
        .arg("batch")
        .arg(&jobs)
        .args(model_args())
        .arg("--output-dir")
        .arg(&out)
        .arg("--mkdir")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    let results: Vec<Value> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), lines.len(), "one line per job: {results:?}");
    let want_ok = [true, false, true, false, false, false, true, false];
    let want_err = [
        "",
        "no `prompt`",
        "",
        "not valid base64",
        "invalid job JSON",
        "already exists",
        "",
        "not a file",
    ];
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["index"], i, "in input order: {r}");
        assert_eq!(r["ok"], want_ok[i], "job {i}: {r}");
        if want_ok[i] {
            assert_eq!(r["seed"].as_u64(), Some([1, 0, 2, 0, 0, 0, 6][i]), "{r}");
        } else {
            let err = r["error"].as_str().unwrap();
            assert!(
                err.contains(want_err[i]),
                "job {i}: `{err}` does not say `{}`",
                want_err[i]
            );
            assert_eq!(r["exit_code"], 3, "{r}");
        }
    }

    // The good outputs, equal to what `edit` makes; nothing else in the folder.
    let a = image::open(out.join("a.png")).unwrap().to_rgb8();
    assert!(
        a == cli_edit(tmp.path(), 1, 1.0, &[]),
        "batch output differs from `qwen-edit edit`"
    );
    assert_eq!(
        image::open(out.join("sub/c.png")).unwrap().to_rgb8().dimensions(),
        (32, 32)
    );
    assert_eq!(
        image::open(out.join("00006.png")).unwrap().to_rgb8().dimensions(),
        (32, 32)
    );
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep me");
    let mut names: Vec<String> = walk(&out);
    names.sort();
    assert_eq!(
        names,
        ["00006.png", "a.png", "exists.png", "sub/c.png"],
        "leftovers in the output folder"
    );
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_str().unwrap().to_string();
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()).into_iter().map(|n| format!("{name}/{n}")));
        } else {
            out.push(name);
        }
    }
    out
}
