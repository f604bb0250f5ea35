//! Guest SDK for keel: write byte calls as plain Rust functions.
//!
//! ```ignore
//! fn shout(input: &[u8]) -> Vec<u8> {
//!     input.to_ascii_uppercase()
//! }
//! keel_guest::export!(shout, shout); // exports `shout` and `cabi_post_shout`
//! ```
//!
//! Build the crate as a `cdylib` for `wasm32-wasi`. The SDK provides
//! `cabi_realloc` and `_initialize`; each [`export!`] adds one byte call
//! and its post-return. A crate may have any number of exports.
//!
//! # The byte convention
//!
//! For a call of export `name` with input bytes, keel:
//! 1. calls `cabi_realloc(0, 0, 1, len)` and copies the input into the
//!    buffer it returns;
//! 2. calls `name(ptr, len)`, which returns a pointer to an 8-byte
//!    little-endian pair `(data_ptr: u32, data_len: u32)`;
//! 3. copies `data_len` bytes from `data_ptr`;
//! 4. calls `cabi_post_name(pair_ptr)`, where the SDK frees the input and
//!    the output.
//!
//! # Errors
//!
//! There is no in-band error value: every output is a success. A function
//! fails with [`fail`], by returning `Err` (see [`Output`]) or by
//! panicking. All three write a message to stderr and trap; keel resolves
//! the call as a trap, attaches the captured stderr to the error and
//! replaces the instance. A panic's message reads
//! `<export>: panicked at <file>:<line>:<col>: <message>`.
//!
//! # Threads
//!
//! keel never enters an instance while a call on it is in flight, so the
//! per-call state lives in plain statics. The SDK is for single-threaded
//! wasm (no `atomics` target feature).

#![warn(missing_docs)]

use std::alloc::{self, Layout};
use std::cell::UnsafeCell;
use std::fmt::Display;
use std::io::Write;

/// Fails the call: writes `<export>: <message>` and a newline to stderr
/// (fd 2), then traps. Never returns. Outside a call the export name is
/// left out.
///
/// keel attaches what the guest wrote to stderr to the call's error, so the
/// message reaches the caller.
pub fn fail(message: impl Display) -> ! {
    // Stderr is unbuffered: the bytes are written before the trap.
    let _ = match current_export() {
        Some(name) => writeln!(std::io::stderr(), "{name}: {message}"),
        None => writeln!(std::io::stderr(), "{message}"),
    };
    trap()
}

/// The input as UTF-8 text, or a failure naming the first invalid byte.
pub fn text(input: &[u8]) -> &str {
    match std::str::from_utf8(input) {
        Ok(s) => s,
        Err(e) => fail(format_args!(
            "input is not UTF-8 (invalid byte at offset {})",
            e.valid_up_to()
        )),
    }
}

#[cfg(target_arch = "wasm32")]
fn trap() -> ! {
    core::arch::wasm32::unreachable()
}

#[cfg(not(target_arch = "wasm32"))]
fn trap() -> ! {
    std::process::abort()
}

/// What an exported function may return.
///
/// * `Vec<u8>` and `String`: owned bytes, freed in post-return;
/// * `&'static [u8]` and `&'static str`: borrowed (no copy, nothing freed);
/// * `Result<T, E>` with `T: Output` and `E: Display`: `Ok` is the output,
///   `Err(e)` fails the call as [`fail`]`(e)` does.
pub trait Output {
    /// Converts into the bytes handed to the host.
    fn into_bytes(self) -> Bytes;
}

/// Output bytes, owned or static.
#[doc(hidden)]
pub enum Bytes {
    Owned(Vec<u8>),
    Static(&'static [u8]),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Owned(v) => v,
            Bytes::Static(s) => s,
        }
    }
}

impl Output for Vec<u8> {
    fn into_bytes(self) -> Bytes {
        Bytes::Owned(self)
    }
}

impl Output for String {
    fn into_bytes(self) -> Bytes {
        Bytes::Owned(self.into_bytes())
    }
}

impl Output for &'static [u8] {
    fn into_bytes(self) -> Bytes {
        Bytes::Static(self)
    }
}

impl Output for &'static str {
    fn into_bytes(self) -> Bytes {
        Bytes::Static(self.as_bytes())
    }
}

impl<T: Output, E: Display> Output for Result<T, E> {
    fn into_bytes(self) -> Bytes {
        match self {
            Ok(v) => v.into_bytes(),
            Err(e) => fail(e),
        }
    }
}

/// A static that single-threaded wasm may mutate.
struct Global<T>(UnsafeCell<T>);

// SAFETY: guests built with this SDK are single-threaded (see the crate
// docs), and keel never re-enters an instance.
unsafe impl<T> Sync for Global<T> {}

impl<T> Global<T> {
    const fn new(v: T) -> Self {
        Global(UnsafeCell::new(v))
    }
    fn ptr(&self) -> *mut T {
        self.0.get()
    }
}

/// The (ptr, len) pair an export returns; 8-aligned as the host reads it.
#[repr(C, align(8))]
struct Pair([u32; 2]);

/// State of the call between phase one and post-return.
struct CallState {
    /// The most recent `cabi_realloc` block: the next call's input.
    last_alloc: Option<(*mut u8, Layout)>,
    /// The input being processed, freed in post-return.
    input: Option<(*mut u8, Layout)>,
    output: Option<Bytes>,
    /// A call returned and awaits post-return.
    active: bool,
}

static STATE: Global<CallState> = Global::new(CallState {
    last_alloc: None,
    input: None,
    output: None,
    active: false,
});
static PAIR: Global<Pair> = Global::new(Pair([0, 0]));
static EXPORT: Global<Option<&'static str>> = Global::new(None);

/// The name of the export being called; `None` outside a call.
pub fn current_export() -> Option<&'static str> {
    // SAFETY: single-threaded; written only between calls into user code.
    unsafe { *EXPORT.ptr() }
}

/// Frees the input and output of the previous call.
fn release(state: &mut CallState) {
    if let Some((p, layout)) = state.input.take() {
        // SAFETY: `p` came from cabi_realloc with this layout.
        unsafe { alloc::dealloc(p, layout) };
    }
    state.output = None;
    state.active = false;
}

/// Canonical-ABI realloc: `(old_ptr, old_size, align, new_size) -> ptr`.
///
/// Never returns null: on failure it traps, since a host writing through a
/// null result would corrupt low memory. A zero-size request gets a real
/// one-byte block so that it can be freed.
///
/// # Safety
///
/// `old` is null or a block this function returned with `old_size` and
/// `align`.
#[no_mangle]
pub unsafe extern "C" fn cabi_realloc(
    old: *mut u8,
    old_size: usize,
    align: usize,
    new_size: usize,
) -> *mut u8 {
    let layout = match Layout::from_size_align(new_size.max(1), align) {
        Ok(l) => l,
        Err(_) => fail(format_args!(
            "cabi_realloc: invalid request ({new_size} bytes, alignment {align})"
        )),
    };
    let p = if old.is_null() {
        alloc::alloc(layout)
    } else {
        let old_layout = Layout::from_size_align_unchecked(old_size.max(1), align);
        alloc::realloc(old, old_layout, layout.size())
    };
    if p.is_null() {
        fail(format_args!(
            "cabi_realloc: out of memory ({new_size} bytes)"
        ));
    }
    (*STATE.ptr()).last_alloc = Some((p, layout));
    p
}

/// Runs once after instantiation, before any export (WASI reactor
/// convention): runs static constructors of linked C code and installs the
/// panic hook that names the export.
#[cfg(target_arch = "wasm32")]
#[no_mangle]
pub extern "C" fn _initialize() {
    extern "C" {
        fn __wasm_call_ctors();
    }
    // SAFETY: the linker's constructor list; called once, as the reactor
    // crt does.
    unsafe { __wasm_call_ctors() };
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(non-string panic payload)");
        let prefix = current_export()
            .map(|n| format!("{n}: "))
            .unwrap_or_default();
        let _ = match info.location() {
            Some(at) => writeln!(std::io::stderr(), "{prefix}panicked at {at}: {message}"),
            None => writeln!(std::io::stderr(), "{prefix}panicked: {message}"),
        };
    }));
}

#[doc(hidden)]
pub mod __private {
    use super::*;

    /// Phase one: adopts the input, runs `f`, publishes the pair.
    ///
    /// # Safety
    ///
    /// `ptr` points to `len` readable bytes (the host's copy of the input).
    pub unsafe fn call<O: Output>(
        name: &'static str,
        ptr: *mut u8,
        len: usize,
        f: impl FnOnce(&[u8]) -> O,
    ) -> *const u32 {
        {
            let state = &mut *STATE.ptr();
            if state.active {
                release(state); // the host skipped post-return
            }
            state.active = true;
            state.input = match state.last_alloc.take() {
                Some((p, layout)) if p == ptr => Some((p, layout)),
                _ => None, // not ours to free
            };
        }
        *EXPORT.ptr() = Some(name);
        let input: &[u8] = if len == 0 {
            &[]
        } else {
            std::slice::from_raw_parts(ptr, len)
        };
        let output = f(input).into_bytes();
        let pair = &mut *PAIR.ptr();
        let bytes = output.as_slice();
        pair.0 = [bytes.as_ptr() as usize as u32, bytes.len() as u32];
        (*STATE.ptr()).output = Some(output);
        *EXPORT.ptr() = None;
        pair.0.as_ptr()
    }

    /// Phase two: frees the input and the output of the call.
    ///
    /// # Safety
    ///
    /// Called by the host only, after `call`.
    pub unsafe fn post(name: &'static str, pair: *const u32) {
        if pair != (*PAIR.ptr()).0.as_ptr() {
            fail(format_args!(
                "cabi_post_{name}: {:#x} is not the pointer the call returned",
                pair as usize
            ));
        }
        release(&mut *STATE.ptr());
        (*PAIR.ptr()).0 = [0, 0];
    }

    #[cfg(feature = "json")]
    pub use json::call_json;

    #[cfg(feature = "json")]
    mod json {
        use serde::de::DeserializeOwned;
        use serde::Serialize;

        /// Parses the input as `I`, runs `f`, serializes its result.
        pub fn call_json<I: DeserializeOwned, O: Serialize>(
            input: &[u8],
            f: impl FnOnce(I) -> O,
        ) -> Result<Vec<u8>, String> {
            let value: I =
                serde_json::from_slice(input).map_err(|e| format!("invalid JSON input: {e}"))?;
            serde_json::to_vec(&f(value)).map_err(|e| format!("cannot serialize the output: {e}"))
        }
    }
}

/// Exports the byte call `NAME` (an identifier or a string literal) from a
/// function or closure taking `&[u8]` and returning an [`Output`]: usually
/// `fn(&[u8]) -> Vec<u8>`.
///
/// Emits two wasm exports: `NAME(ptr, len) -> pair_ptr` and
/// `cabi_post_NAME(pair_ptr)`.
///
/// ```ignore
/// fn reverse(input: &[u8]) -> Vec<u8> {
///     input.iter().rev().copied().collect()
/// }
/// keel_guest::export!(reverse, reverse);
/// keel_guest::export!("to-upper", |input| input.to_ascii_uppercase());
/// ```
#[macro_export]
macro_rules! export {
    ($name:ident, $f:expr) => {
        $crate::export!(@emit stringify!($name), $f);
    };
    ($name:literal, $f:expr) => {
        $crate::export!(@emit $name, $f);
    };
    (@emit $name:expr, $f:expr) => {
        const _: () = {
            #[export_name = $name]
            unsafe extern "C" fn keel_call(ptr: *mut u8, len: usize) -> *const u32 {
                $crate::__private::call($name, ptr, len, $f)
            }
            #[export_name = concat!("cabi_post_", $name)]
            unsafe extern "C" fn keel_post(pair: *const u32) {
                $crate::__private::post($name, pair)
            }
        };
    };
}

/// Exports the byte call `NAME` from a function taking and returning serde
/// types: the input is parsed as JSON into the argument type and the result
/// is serialized as JSON. Input that does not parse fails the call with
/// `<export>: invalid JSON input: <reason>`; the function itself fails
/// with [`fail`] or a panic. Needs the `json` feature.
///
/// ```ignore
/// #[derive(serde::Deserialize)]
/// struct Sum { values: Vec<f64> }
/// keel_guest::export_json!(sum, |s: Sum| s.values.iter().sum::<f64>());
/// ```
#[cfg(feature = "json")]
#[macro_export]
macro_rules! export_json {
    ($name:ident, $f:expr) => {
        $crate::export!(@emit stringify!($name), |input: &[u8]| {
            $crate::__private::call_json(input, $f)
        });
    };
    ($name:literal, $f:expr) => {
        $crate::export!(@emit $name, |input: &[u8]| $crate::__private::call_json(input, $f));
    };
}
