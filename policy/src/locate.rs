//! Turning a `toml` error (syntax, unknown key, wrong type, missing key) into a
//! [`PolicyError`]. The error carries a byte span but not the key path, so we
//! find the field by walking the document's spanned parse tree.

use std::fmt::Write as _;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::error::{Doc, PolicyError, Pos};

/// The [`PolicyError`] for a `toml` deserialisation error.
pub(crate) fn toml_error(doc: Doc<'_>, error: &toml::de::Error) -> PolicyError {
    let message = plain_types(&error.message().trim().replace('\n', "; "));
    let span = error.span();
    let pos = span
        .as_ref()
        .map_or(Pos { line: 1, col: 1 }, |span| doc.pos(span.start));
    let tree = DeTable::parse(doc.text).ok();
    let Some(tree) = tree else {
        return doc.error_at(pos, "syntax", message, None);
    };
    if let Some(key) = missing_field(&message).map(str::to_owned) {
        // The span covers the table that lacks the key; the only required key
        // is the top-level `user`.
        let help = (key == "user")
            .then(|| "add `user = \"NAME\"`, or `user = \"dynamic\"` to allocate one".to_owned());
        return doc.error_at(pos, &key, message, help);
    }
    let field = span
        .and_then(|span| {
            let mut path = String::new();
            find_in_table(tree.get_ref(), span.start, &mut path).then_some(path)
        })
        .unwrap_or_default();
    doc.error_at(pos, &field, message, None)
}

/// serde names Rust types (`struct RawNetwork`, `i64`); say what to write.
fn plain_types(message: &str) -> String {
    let message = message.replace("expected i64", "expected an integer");
    match message.split_once("expected struct ") {
        Some((before, after)) => {
            let rest = after.trim_start_matches(|c: char| c.is_ascii_alphanumeric());
            format!("{before}expected a table{rest}")
        }
        None => message,
    }
}

/// The key named by serde's "missing field `key`" message.
fn missing_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("missing field `")?
        .split_once('`')
        .map(|(key, _)| key)
}

/// Append to `path` the dotted path of the key or value at `offset`.
fn find_in_table(table: &DeTable<'_>, offset: usize, path: &mut String) -> bool {
    for (key, value) in table {
        let len = path.len();
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key.get_ref());
        if covers(key, offset) || find_in_value(value, offset, path) {
            return true;
        }
        path.truncate(len);
    }
    false
}

/// Whether `offset` is inside `value`, extending `path` into it if it is a
/// table or array. Tables opened by a `[header]` have no useful span of their
/// own, so we always look inside.
fn find_in_value(value: &Spanned<DeValue<'_>>, offset: usize, path: &mut String) -> bool {
    match value.get_ref() {
        DeValue::Table(table) => find_in_table(table, offset, path) || covers(value, offset),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                let _ = write!(path, "[{i}]");
                if find_in_value(item, offset, path) {
                    return true;
                }
                path.truncate(len);
            }
            covers(value, offset)
        }
        _ => covers(value, offset),
    }
}

fn covers<T>(spanned: &Spanned<T>, offset: usize) -> bool {
    let span = spanned.span();
    span.start <= offset && offset < span.end.max(span.start + 1)
}
