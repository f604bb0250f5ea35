//! gzip (RFC 1952) with flate2 on miniz_oxide (Debian's librust-flate2-dev),
//! pure Rust.
//!
//! Exports:
//! * `compress`: any bytes -> one gzip member (level 6);
//! * `decompress`: gzip data (one or more members) -> the original bytes.
//!   Data that is not gzip, is truncated or fails its CRC fails the call
//!   with the decoder's reason. Output is capped at 64 MiB so that a
//!   decompression bomb fails with a clear message instead of exhausting
//!   the instance's memory.

use std::io::{Read, Write};

use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use keel_guest::{export, fail};

const MAX_OUTPUT: u64 = 64 << 20;

fn compress(input: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(
        Vec::with_capacity(input.len() / 2 + 64),
        Compression::new(6),
    );
    encoder
        .write_all(input)
        .expect("writing to a Vec cannot fail");
    encoder.finish().expect("writing to a Vec cannot fail")
}

fn decompress(input: &[u8]) -> Result<Vec<u8>, String> {
    if !input.starts_with(&[0x1f, 0x8b]) {
        return Err("not gzip data (no 1f 8b header)".to_owned());
    }
    let mut out = Vec::new();
    let mut decoder = MultiGzDecoder::new(input).take(MAX_OUTPUT + 1);
    decoder
        .read_to_end(&mut out)
        .map_err(|e| format!("invalid gzip data: {e}"))?;
    if out.len() as u64 > MAX_OUTPUT {
        fail(format_args!("output exceeds {} MiB", MAX_OUTPUT >> 20));
    }
    Ok(out)
}

export!(compress, compress);
export!(decompress, decompress);
