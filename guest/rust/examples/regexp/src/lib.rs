//! Regular expressions with the regex crate (Debian's librust-regex-dev),
//! as JSON calls.
//!
//! Exports:
//! * `find`: `{"pattern": P, "text": T, "limit": N?}` ->
//!   `{"matches": [{"start": S, "end": E, "text": M, "groups": {NAME: G}}]}`
//!   with byte offsets into T; `groups` holds the named groups that took
//!   part in the match. At most `limit` matches (default: all).
//! * `replace`: `{"pattern": P, "text": T, "replacement": R, "limit": N?}`
//!   -> `{"text": T2, "replaced": COUNT}`. R may use `$1`, `$name`,
//!   `${name}`; `limit` 0 or absent replaces every match.
//!
//! Patterns use the regex crate's syntax (no look-around or
//! back-references; matching is linear in the input). A pattern that does
//! not compile fails the call with the parser's message.

use std::collections::BTreeMap;

use keel_guest::{export_json, fail};
use regex::Regex;
use serde::{Deserialize, Serialize};

/// Compiled programs are capped so that a pattern like `\w{1000}{1000}`
/// fails cleanly instead of exhausting the instance's memory.
const SIZE_LIMIT: usize = 8 << 20;

fn compile(pattern: &str) -> Regex {
    regex::RegexBuilder::new(pattern)
        .size_limit(SIZE_LIMIT)
        .build()
        .unwrap_or_else(|e| fail(format_args!("invalid pattern: {e}")))
}

#[derive(Deserialize)]
struct FindRequest {
    pattern: String,
    text: String,
    limit: Option<usize>,
}

#[derive(Serialize)]
struct Match {
    start: usize,
    end: usize,
    text: String,
    groups: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct FindResponse {
    matches: Vec<Match>,
}

fn find(req: FindRequest) -> FindResponse {
    let re = compile(&req.pattern);
    let names: Vec<&str> = re.capture_names().flatten().collect();
    let matches = re
        .captures_iter(&req.text)
        .take(req.limit.unwrap_or(usize::MAX))
        .map(|caps| {
            let whole = caps.get(0).expect("group 0 always matches");
            let groups = names
                .iter()
                .filter_map(|&n| caps.name(n).map(|g| (n.to_owned(), g.as_str().to_owned())))
                .collect();
            Match {
                start: whole.start(),
                end: whole.end(),
                text: whole.as_str().to_owned(),
                groups,
            }
        })
        .collect();
    FindResponse { matches }
}

#[derive(Deserialize)]
struct ReplaceRequest {
    pattern: String,
    text: String,
    replacement: String,
    limit: Option<usize>,
}

#[derive(Serialize)]
struct ReplaceResponse {
    text: String,
    replaced: usize,
}

fn replace(req: ReplaceRequest) -> ReplaceResponse {
    let re = compile(&req.pattern);
    let limit = req.limit.unwrap_or(0);
    let available = re.find_iter(&req.text).count();
    let replaced = if limit == 0 {
        available
    } else {
        available.min(limit)
    };
    let text = re
        .replacen(&req.text, limit, req.replacement.as_str())
        .into_owned();
    ReplaceResponse { text, replaced }
}

export_json!(find, find);
export_json!(replace, replace);
