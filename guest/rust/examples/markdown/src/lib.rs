//! Markdown to HTML with pulldown-cmark (Debian's librust-pulldown-cmark-dev).
//!
//! Exports:
//! * `render`: CommonMark text -> HTML;
//! * `render_gfm`: the same with GitHub's extensions (tables,
//!   strikethrough, task lists, footnotes);
//! * `outline`: the headings as JSON, `[{"level":1,"text":"Title"},...]`.
//!
//! Input that is not UTF-8 fails the call with the offset of the first
//! invalid byte.

use keel_guest::{export, text};
use pulldown_cmark::{html, Event, Options, Parser, Tag};
use serde::Serialize;

fn to_html(input: &[u8], options: Options) -> String {
    let source = text(input);
    let mut out = String::with_capacity(source.len() + source.len() / 2);
    html::push_html(&mut out, Parser::new_ext(source, options));
    out
}

fn render(input: &[u8]) -> String {
    to_html(input, Options::empty())
}

fn render_gfm(input: &[u8]) -> String {
    to_html(
        input,
        Options::ENABLE_TABLES
            | Options::ENABLE_STRIKETHROUGH
            | Options::ENABLE_TASKLISTS
            | Options::ENABLE_FOOTNOTES,
    )
}

#[derive(Serialize)]
struct Heading {
    level: u8,
    text: String,
}

fn outline(input: &[u8]) -> Vec<u8> {
    let mut headings = Vec::new();
    let mut current: Option<Heading> = None;
    for event in Parser::new(text(input)) {
        match (event, current.as_mut()) {
            (Event::Start(Tag::Heading(level, ..)), _) => {
                current = Some(Heading {
                    level: level as u8,
                    text: String::new(),
                });
            }
            (Event::End(Tag::Heading(..)), Some(_)) => headings.extend(current.take()),
            (Event::Text(t) | Event::Code(t), Some(h)) => h.text.push_str(&t),
            (Event::SoftBreak | Event::HardBreak, Some(h)) => h.text.push(' '),
            _ => {}
        }
    }
    serde_json::to_vec(&headings).expect("headings serialize")
}

export!(render, render);
export!(render_gfm, render_gfm);
export!(outline, outline);
