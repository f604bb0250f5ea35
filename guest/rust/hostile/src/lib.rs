//! A Rust guest that misbehaves on purpose, for keel's tests of the SDK:
//! panics, failures and exhaustion must reach the caller as clear errors.
//!
//! Exports:
//! * `echo`: output = input (owned copy; freed in post-return);
//! * `panic`: panics with the message `deliberate panic: <input>`;
//! * `fail`: returns `Err("deliberate failure")`;
//! * `text_len`: the input's length in chars, as decimal text; fails if
//!   the input is not UTF-8;
//! * `exhaust`: tries to allocate 1.5 GiB, more than an instance's memory
//!   cap allows;
//! * `constant`: a static output, borrowed (no copy);
//! * `add(i32, i32) -> i32`: a plain numeric export beside the byte calls.

use keel_guest::{export, text};

fn echo(input: &[u8]) -> Vec<u8> {
    input.to_vec()
}

fn panic(input: &[u8]) -> Vec<u8> {
    panic!("deliberate panic: {}", String::from_utf8_lossy(input))
}

fn fail(_: &[u8]) -> Result<Vec<u8>, &'static str> {
    Err("deliberate failure")
}

fn text_len(input: &[u8]) -> String {
    text(input).chars().count().to_string()
}

fn exhaust(_: &[u8]) -> Vec<u8> {
    Vec::with_capacity(1536 << 20)
}

export!(echo, echo);
export!(panic, panic);
export!(fail, fail);
export!(text_len, text_len);
export!(exhaust, exhaust);
export!(constant, |_| "a static answer");

#[no_mangle]
pub extern "C" fn add(a: i32, b: i32) -> i32 {
    a.wrapping_add(b)
}
