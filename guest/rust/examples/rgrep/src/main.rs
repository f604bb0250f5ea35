//! rgrep: a small grep as a WASI command, for `keel run`.
//!
//!   keel run rgrep.wasm --dir-ro ./docs::/docs -- [-i] [-n] [-c] PATTERN [FILE...]
//!
//! Prints the lines of each FILE (standard input when there is none, or
//! for `-`) that match PATTERN (regex crate syntax), prefixed with the file
//! name when there are several files. `-i` ignores case, `-n` prefixes line
//! numbers, `-c` prints only the number of matching lines. Lines need not
//! be UTF-8. Exits 0 if a line matched, 1 if none did, 2 on an error (bad
//! usage or pattern, unreadable file), like grep.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};

use regex::bytes::{Regex, RegexBuilder};

struct Options {
    ignore_case: bool,
    line_numbers: bool,
    count: bool,
    pattern: String,
    files: Vec<String>,
}

const USAGE: &str = "usage: rgrep [-i] [-n] [-c] PATTERN [FILE...]";

fn parse_args(args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        ignore_case: false,
        line_numbers: false,
        count: false,
        pattern: String::new(),
        files: Vec::new(),
    };
    let mut positional = Vec::new();
    for arg in args {
        match arg.as_str() {
            "-i" => options.ignore_case = true,
            "-n" => options.line_numbers = true,
            "-c" => options.count = true,
            s if s.starts_with('-') && s != "-" => {
                return Err(format!("unknown option {s}\n{USAGE}"))
            }
            _ => positional.push(arg),
        }
    }
    if positional.is_empty() {
        return Err(USAGE.to_owned());
    }
    options.pattern = positional.remove(0);
    options.files = positional;
    Ok(options)
}

/// Writes the matching lines of `input`; returns how many matched.
fn grep(
    re: &Regex,
    input: impl BufRead,
    prefix: &str,
    options: &Options,
    out: &mut impl Write,
) -> io::Result<u64> {
    let mut matched = 0;
    for (number, line) in input.split(b'\n').enumerate() {
        let line = line?;
        if !re.is_match(&line) {
            continue;
        }
        matched += 1;
        if options.count {
            continue;
        }
        out.write_all(prefix.as_bytes())?;
        if options.line_numbers {
            write!(out, "{}:", number + 1)?;
        }
        out.write_all(&line)?;
        out.write_all(b"\n")?;
    }
    Ok(matched)
}

fn run(options: &Options) -> Result<bool, String> {
    let re = RegexBuilder::new(&options.pattern)
        .case_insensitive(options.ignore_case)
        .build()
        .map_err(|e| format!("invalid pattern: {e}"))?;
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let files = if options.files.is_empty() {
        vec!["-".to_owned()]
    } else {
        options.files.clone()
    };
    let mut any = false;
    for name in &files {
        let prefix = if files.len() > 1 {
            format!("{name}:")
        } else {
            String::new()
        };
        let matched = if name == "-" {
            grep(&re, io::stdin().lock(), &prefix, options, &mut out)
        } else {
            let file = File::open(name).map_err(|e| format!("{name}: {e}"))?;
            grep(&re, BufReader::new(file), &prefix, options, &mut out)
        }
        .map_err(|e| format!("{name}: {e}"))?;
        if options.count {
            writeln!(out, "{prefix}{matched}").map_err(|e| e.to_string())?;
        }
        any |= matched > 0;
    }
    out.flush().map_err(|e| e.to_string())?;
    Ok(any)
}

fn main() {
    let result = parse_args(std::env::args().skip(1)).and_then(|options| run(&options));
    // process::exit, not an ExitCode from main: Rust 1.63's WASI ExitCode
    // knows only success and failure (1). `run` has flushed stdout.
    std::process::exit(match result {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(message) => {
            eprintln!("rgrep: {message}");
            2
        }
    })
}
