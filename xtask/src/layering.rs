//! `cargo xtask layering`: keeps the enforcer's module layering true. Each top-level module of
//! `enforcer/src` (file `X.rs` or folder `X/`) may only reach the modules its rules allow; a
//! forbidden `crate::Y` (direct, grouped or inline) or a `super::…::Y` that climbs to the crate
//! root is reported with its file and line. The binary edge (`main.rs`, `cli/`) and `lib.rs`
//! may use anything.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use crate::util;

/// Why layers sit below the modules that compose and report on them.
const LAYER: &str = "a layer only builds, applies, inspects and removes; the supervisor, \
                     the daemon, metrics and audit compose layers, never the reverse";

/// (module, a module it must not use, why). Add a row to add a rule.
const RULES: &[(&str, &str, &str)] = &[
    (
        "exec",
        "daemon",
        "embedded `isolate exec` runs without a daemon; share through a lower module",
    ),
    (
        "daemon",
        "exec",
        "the daemon composes layers itself; move what both need below them",
    ),
    (
        "metrics",
        "daemon",
        "metrics renders what its caller hands it; the daemon calls metrics, not the reverse",
    ),
    ("bpf", "exec", LAYER),
    ("bpf", "daemon", LAYER),
    ("bpf", "metrics", LAYER),
    ("bpf", "audit", LAYER),
    ("nft", "exec", LAYER),
    ("nft", "daemon", LAYER),
    ("nft", "metrics", LAYER),
    ("nft", "audit", LAYER),
    ("landlock", "exec", LAYER),
    ("landlock", "daemon", LAYER),
    ("landlock", "metrics", LAYER),
    ("landlock", "audit", LAYER),
    (
        "learn",
        "exec",
        "learn mode observes and proposes; the supervisor composes it (exec/learning.rs)",
    ),
    (
        "learn",
        "daemon",
        "learn mode runs under `isolate exec` only; the daemon enforces",
    ),
];

/// Top-level entries of `src` that are no module under the rules: the binary edge and the root.
const SKIPPED: &[&str] = &["main.rs", "lib.rs", "cli"];

/// One forbidden use.
#[derive(Debug)]
pub struct Violation {
    pub file: PathBuf,
    pub line: usize,
    pub from: &'static str,
    pub forbidden: &'static str,
    pub why: &'static str,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: module `{}` must not use `{}` ({})",
            self.file.display(),
            self.line,
            self.from,
            self.forbidden,
            self.why
        )
    }
}

/// Checks the workspace's enforcer and fails listing every violation.
pub fn run() -> anyhow::Result<()> {
    let root = util::project_root();
    eprintln!("+ layering check of enforcer/src");
    let violations = check(&root.join("enforcer/src"))?;
    if violations.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = violations
        .into_iter()
        .map(|mut v| {
            // Workspace-relative paths: shorter, and what an editor resolves from the root.
            if let Ok(relative) = v.file.strip_prefix(&root) {
                v.file = relative.to_path_buf();
            }
            v.to_string()
        })
        .collect();
    bail!(
        "the enforcer's module layering is broken ({} forbidden uses):\n{}",
        lines.len(),
        lines.join("\n")
    );
}

/// Every forbidden use in the crate whose source directory is `src`, in file and line order.
pub fn check(src: &Path) -> anyhow::Result<Vec<Violation>> {
    let mut violations = Vec::new();
    for entry in sorted_entries(src)? {
        let name = entry
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if SKIPPED.contains(&name) {
            continue;
        }
        let module = if entry.is_dir() {
            name
        } else if let Some(stem) = name.strip_suffix(".rs") {
            stem
        } else {
            continue;
        };
        let Some(from) = RULES.iter().map(|r| r.0).find(|&m| m == module) else {
            continue; // no rule restricts this module
        };
        for file in rust_files(&entry)? {
            let source = fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let relative = file.strip_prefix(src).expect("found under src");
            let mut used = root_paths(&source, depth(relative));
            // One report per line and module, even when a line names it twice.
            used.sort();
            used.dedup();
            for (line, name) in used {
                for &(_, forbidden, why) in RULES.iter().filter(|r| r.0 == from && r.1 == name) {
                    violations.push(Violation {
                        file: file.clone(),
                        line,
                        from,
                        forbidden,
                        why,
                    });
                }
            }
        }
    }
    Ok(violations)
}

/// How many `super`s lead from the file's module to the crate root: `X.rs` and `X/mod.rs` are
/// one level down, `X/y.rs` two, and so on.
fn depth(relative: &Path) -> usize {
    let components = relative.components().count();
    if relative.file_name().is_some_and(|n| n == "mod.rs") {
        components - 1
    } else {
        components
    }
}

/// `path` itself when it is a file, else every `.rs` file below it, sorted.
fn rust_files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in sorted_entries(path)? {
        if entry.is_dir() {
            files.extend(rust_files(&entry)?);
        } else if entry.extension().is_some_and(|e| e == "rs") {
            files.push(entry);
        }
    }
    Ok(files)
}

fn sorted_entries(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut entries = fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("cannot list {}", dir.display()))?;
    entries.sort();
    Ok(entries)
}

/// The crate-root names `source` uses, with the line of each: `crate::Y`, every item of
/// `crate::{…}`, and `super::…::Y` (or `super::…::{…}`) whose `super`s climb exactly to the
/// root. `depth` is the number of `super`s from the file's own module to the root; each open
/// inline `mod x { … }` adds one.
fn root_paths(source: &str, depth: usize) -> Vec<(usize, String)> {
    let tokens = tokens(source);
    let text = |i: usize| tokens.get(i).map_or("", |t| t.text.as_str());
    let mut found = Vec::new();
    let mut braces = 0;
    // The brace level just inside each open inline module.
    let mut inline_mods: Vec<usize> = Vec::new();
    for i in 0..tokens.len() {
        let after_path_sep = i > 0 && text(i - 1) == "::";
        match text(i) {
            "{" => {
                braces += 1;
                if i >= 2 && text(i - 2) == "mod" {
                    inline_mods.push(braces);
                }
            }
            "}" => {
                if inline_mods.last() == Some(&braces) {
                    inline_mods.pop();
                }
                braces = braces.saturating_sub(1);
            }
            "crate" if text(i + 1) == "::" && !after_path_sep => {
                names_at(&tokens, i + 2, &mut found);
            }
            "super" if !after_path_sep => {
                let mut j = i;
                while text(j) == "super" && text(j + 1) == "::" {
                    j += 2;
                }
                if (j - i) / 2 == depth + inline_mods.len() {
                    names_at(&tokens, j, &mut found);
                }
            }
            _ => {}
        }
    }
    found
}

/// The name at `tokens[i]` right after a path's root, or each top-level item of a `{…}` group.
fn names_at(tokens: &[Token], i: usize, found: &mut Vec<(usize, String)>) {
    let Some(first) = tokens.get(i) else { return };
    if first.text != "{" {
        push_name(first, found);
        return;
    }
    let mut level = 0;
    for (j, token) in tokens.iter().enumerate().skip(i) {
        match token.text.as_str() {
            "{" => level += 1,
            "}" => level -= 1,
            _ if level == 1 && matches!(tokens[j - 1].text.as_str(), "{" | ",") => {
                push_name(token, found);
            }
            _ => {}
        }
        if level == 0 {
            break;
        }
    }
}

fn push_name(token: &Token, found: &mut Vec<(usize, String)>) {
    let is_ident = token
        .text
        .starts_with(|c: char| c == '_' || c.is_alphabetic());
    if is_ident && token.text != "self" {
        found.push((token.line, token.text.clone()));
    }
}

/// A word (identifier, keyword, number) or a punctuation mark (`::` is one) of Rust source.
#[derive(Debug)]
struct Token {
    text: String,
    line: usize,
}

/// The words and punctuation of `source`. Comments (doc comments included), string and char
/// literals yield no tokens, so text in them never looks like a path.
fn tokens(source: &str) -> Vec<Token> {
    let chars: Vec<char> = source.chars().collect();
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    let mut tokens = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < chars.len() {
        let start = i;
        let c = chars[i];
        if c == '/' && at(i + 1) == '/' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            i = skip_block_comment(&chars, i);
        } else if c == '"' {
            i = skip_string(&chars, i + 1);
        } else if c == '\'' {
            i = skip_char_or_lifetime(&chars, i);
        } else if c == '_' || c.is_alphanumeric() {
            while at(i) == '_' || at(i).is_alphanumeric() {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            // Literal prefixes: b"…", c"…", b'…', r"…", r#"…"#, br"…", cr"…"; `r#name` is a
            // raw identifier and lexes as `name` next.
            match (word.as_str(), at(i)) {
                ("b" | "c", '"') => i = skip_string(&chars, i + 1),
                ("b", '\'') => i = skip_char_or_lifetime(&chars, i),
                ("r" | "br" | "cr", '"' | '#') => i = skip_raw_string(&chars, i),
                _ => tokens.push(Token { text: word, line }),
            }
        } else if c == ':' && at(i + 1) == ':' {
            tokens.push(Token {
                text: "::".into(),
                line,
            });
            i += 2;
        } else {
            if !c.is_whitespace() {
                tokens.push(Token {
                    text: c.to_string(),
                    line,
                });
            }
            i += 1;
        }
        line += chars[start..i].iter().filter(|&&c| c == '\n').count();
    }
    tokens
}

/// Past the (possibly nested) block comment that starts at `i`.
fn skip_block_comment(chars: &[char], mut i: usize) -> usize {
    let mut level = 0;
    while i < chars.len() {
        if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
            level += 1;
            i += 2;
        } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
            level -= 1;
            i += 2;
            if level == 0 {
                break;
            }
        } else {
            i += 1;
        }
    }
    i
}

/// Past the closing quote of a string whose contents start at `i`.
fn skip_string(chars: &[char], mut i: usize) -> usize {
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            '"' => return i + 1,
            _ => i += 1,
        }
    }
    i
}

/// Past the raw string whose `#`s or opening quote are at `i`; only past the `#` when it is a
/// raw identifier (`r#name`).
fn skip_raw_string(chars: &[char], mut i: usize) -> usize {
    let hashes = chars[i..].iter().take_while(|&&c| c == '#').count();
    i += hashes;
    if chars.get(i) != Some(&'"') {
        return i;
    }
    i += 1;
    while i < chars.len() {
        if chars[i] == '"'
            && chars[i + 1..]
                .iter()
                .take(hashes)
                .filter(|&&c| c == '#')
                .count()
                == hashes
        {
            return i + 1 + hashes;
        }
        i += 1;
    }
    i
}

/// Past the char literal at `i` (`'x'`, `'\n'`, `'\u{…}'`), or only past the quote of a
/// lifetime or label, whose name then lexes as a word.
fn skip_char_or_lifetime(chars: &[char], i: usize) -> usize {
    if chars.get(i + 1) == Some(&'\\') {
        // The escaped character takes at least one place; the literal ends at the next quote.
        let end = chars[i + 3..].iter().position(|&c| c == '\'');
        return end.map_or(chars.len(), |p| i + 3 + p + 1);
    }
    if chars.get(i + 2) == Some(&'\'') {
        return i + 3;
    }
    i + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The violations `check` reports for a crate made of `files` (path below src, source), as
    /// `path:line: from -> forbidden`.
    fn violations(files: &[(&str, &str)]) -> Vec<String> {
        let src = tempfile::tempdir().unwrap();
        for (path, source) in files {
            let path = src.path().join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, source).unwrap();
        }
        check(src.path())
            .unwrap()
            .iter()
            .map(|v| {
                let file = v.file.strip_prefix(src.path()).unwrap().display();
                format!("{file}:{}: {} -> {}", v.line, v.from, v.forbidden)
            })
            .collect()
    }

    #[test]
    fn direct_use_is_reported() {
        let found = violations(&[("exec/mod.rs", "use std::fs;\nuse crate::daemon::x;\n")]);
        assert_eq!(found, ["exec/mod.rs:2: exec -> daemon"]);
    }

    #[test]
    fn multi_line_group_is_reported_at_the_item() {
        let source = "use crate::{\n    bpf,\n    daemon::control,\n};\n";
        assert_eq!(
            violations(&[("exec/child.rs", source)]),
            ["exec/child.rs:3: exec -> daemon"]
        );
    }

    #[test]
    fn only_top_level_items_of_a_group_are_modules() {
        // `exec` here is an item of `bpf`, not the crate's `exec`.
        let source = "use crate::{bpf::{exec, x}, audit};\n";
        assert_eq!(
            violations(&[("nft.rs", source)]),
            ["nft.rs:1: nft -> audit"]
        );
    }

    #[test]
    fn inline_path_is_reported() {
        let source = "fn f() {\n    let s = crate::daemon::f();\n}\n";
        assert_eq!(
            violations(&[("metrics/mod.rs", source)]),
            ["metrics/mod.rs:2: metrics -> daemon"]
        );
    }

    #[test]
    fn comments_and_strings_do_not_count() {
        let source = "//! Unlike crate::daemon, this module …\n\
                      /// See `crate::daemon::control`.\n\
                      fn f() {} // crate::daemon::f()\n\
                      /* crate::daemon /* nested */ crate::daemon */\n\
                      const S: &str = \"crate::daemon\";\n\
                      const R: &str = r#\"crate::daemon\"#;\n\
                      const C: char = '\"'; fn g<'a>(_: &'a str) {}\n";
        assert_eq!(violations(&[("exec/mod.rs", source)]), Vec::<String>::new());
    }

    #[test]
    fn super_climbing_to_the_root_is_reported() {
        let files = [
            ("daemon/registry.rs", "use super::super::exec::Layers;\n"),
            ("daemon/mod.rs", "use super::exec;\n"),
            (
                "daemon/state.rs",
                "#[cfg(test)]\nmod tests {\n    use super::super::super::{exec, bpf};\n}\n",
            ),
        ];
        let expected = [
            "daemon/mod.rs:1: daemon -> exec",
            "daemon/registry.rs:1: daemon -> exec",
            "daemon/state.rs:3: daemon -> exec",
        ];
        assert_eq!(violations(&files), expected);
    }

    #[test]
    fn super_within_the_module_is_allowed() {
        // Both name the module's own `exec` child, not the crate's.
        let files = [
            ("daemon/registry.rs", "use super::exec::Layers;\n"),
            (
                "daemon/mod.rs",
                "mod exec;\n#[cfg(test)]\nmod tests {\n    use super::exec;\n}\n",
            ),
        ];
        assert_eq!(violations(&files), Vec::<String>::new());
    }

    #[test]
    fn allowed_uses_and_the_binary_edge_are_not_reported() {
        let files = [
            (
                "exec/mod.rs",
                "use crate::bpf::{self, BpfLayer};\nuse crate::audit::AuditSink;\n",
            ),
            ("main.rs", "use isolate::daemon;\nuse crate::exec;\n"),
            ("cli/exec.rs", "use crate::daemon::control;\n"),
            ("kernel.rs", "use crate::daemon::control;\n"),
        ];
        assert_eq!(violations(&files), Vec::<String>::new());
    }

    #[test]
    fn a_line_naming_a_module_twice_is_one_violation() {
        let source = "fn f() { crate::exec::a(crate::exec::b()); }\n";
        assert_eq!(
            violations(&[("bpf/pin.rs", source)]),
            ["bpf/pin.rs:1: bpf -> exec"]
        );
    }

    #[test]
    fn message_names_file_line_modules_and_reason() {
        let v = Violation {
            file: "enforcer/src/exec/mod.rs".into(),
            line: 7,
            from: RULES[0].0,
            forbidden: RULES[0].1,
            why: RULES[0].2,
        };
        assert_eq!(
            v.to_string(),
            format!(
                "enforcer/src/exec/mod.rs:7: module `exec` must not use `daemon` ({})",
                RULES[0].2
            )
        );
    }
}
