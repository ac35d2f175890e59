//! The source tree is layered: every folder under `src/` is a layer, and a module may only use
//! modules of its own folder or of a lower layer. This test reads every `crate::…`, `super::…`
//! path in `src/` (code only: comments and string literals are skipped), resolves it to the
//! top-level folder it names and fails on any edge the table below does not allow.
//!
//! To add a layer, add it to `LAYERS` and to the table in docs/ARCHITECTURE.md. When lower
//! code needs something that lives higher up, move that thing down; never loosen the table.

// Tests set up their fixtures and tools directly; the layer rules are for src/.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    clippy::disallowed_types
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layers from the bottom up. Layers with the same rank are siblings and may not use each
/// other.
const LAYERS: &[(&str, u8, &str)] = &[
    (
        "util",
        0,
        "addresses, hex, Go durations, error text, secrets",
    ),
    (
        "format",
        1,
        "pure file and wire formats: args files, kubeconfig, join strings, traefik, :25000 wire types, launch configurations",
    ),
    (
        "pki",
        2,
        "CA, leaves, fingerprints, rustls configurations",
    ),
    ("state", 3, "the state directory: the only user of std::fs"),
    (
        "sys",
        4,
        "service manager, command runner, host identity, clock, resolver, signals, blocking pool",
    ),
    (
        "dqlite",
        5,
        "wire codec, client, embedded member, membership",
    ),
    ("clients", 6, "pinned peer client, Kubernetes API client"),
    (
        "cluster",
        7,
        "node, datastore, tokens and their audit log, bootstrap, roles policy and driver, calico",
    ),
    (
        "grant",
        8,
        "what :25000 grants: joins, sign-cert, callbacks (no HTTP)",
    ),
    (
        "local",
        8,
        "what the CLI asks of its node: add-node, tokens, status, join, leave, remove-node, launch configurations",
    ),
    (
        "api",
        9,
        ":25000 routes and handlers, HTTP status mapping, guard, rate limit",
    ),
    (
        "control",
        9,
        "the control socket: server, client, wire types",
    ),
    ("proxy", 10, "the worker's apiserver-proxy"),
    ("daemon", 11, "wiring: configuration, start, serve, stop, launch watcher"),
    ("cli", 12, "the command line and the exit-code table"),
];

fn rank(layer: &str) -> Option<u8> {
    LAYERS
        .iter()
        .find(|(l, _, _)| *l == layer)
        .map(|(_, r, _)| *r)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file: `src/a/b.rs` → `[a, b]`, `src/a/mod.rs` → `[a]`.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts
}

/// Source text with comments, string and char literals replaced by spaces (so a path named
/// in a doc comment or a message is not an import).
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let blank = |out: &mut Vec<u8>, c: u8| out.push(if c == b'\n' { b'\n' } else { b' ' });
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                out.push(b' ');
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    out.extend_from_slice(b"  ");
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    out.extend_from_slice(b"  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
        } else if b[i] == b'r' && (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#')) {
            // Raw string r"…" / r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push(b[i]);
                i += 1;
                continue;
            }
            let mut end = vec![b'"'];
            end.extend(std::iter::repeat(b'#').take(hashes));
            let mut k = j + 1;
            while k < b.len() && !b[k..].starts_with(&end) {
                k += 1;
            }
            let stop = (k + end.len()).min(b.len());
            for &c in &b[i..stop] {
                blank(&mut out, c);
            }
            i = stop;
        } else if b[i] == b'"' {
            out.push(b' ');
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' && i + 1 < b.len() {
                    blank(&mut out, b[i]);
                    i += 1;
                }
                blank(&mut out, b[i]);
                i += 1;
            }
            out.push(b' ');
            i += 1;
        } else if b[i] == b'\'' {
            // A char literal ('x', '\n', '\u{1F600}'), not a lifetime ('a).
            let close = if b.get(i + 1) == Some(&b'\\') {
                b[i + 2..]
                    .iter()
                    .position(|&c| c == b'\'')
                    .map(|p| i + 2 + p)
            } else if b.get(i + 2) == Some(&b'\'') {
                Some(i + 2)
            } else {
                None
            };
            match close {
                Some(end) => {
                    for &c in &b[i..=end] {
                        blank(&mut out, c);
                    }
                    i = end + 1;
                }
                None => {
                    out.push(b[i]);
                    i += 1;
                }
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

fn ident_at(b: &[u8], mut i: usize) -> (String, usize) {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    let start = i;
    while i < b.len() && is_ident(b[i]) {
        i += 1;
    }
    (String::from_utf8_lossy(&b[start..i]).into_owned(), i)
}

/// The top-level names of a `{a, b::c, d::{e, f}}` group starting at `b[i] == '{'`.
fn group_heads(b: &[u8], i: usize) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut expect_head = true;
    let mut j = i;
    while j < b.len() {
        match b[j] {
            b'{' => {
                depth += 1;
                if depth == 1 {
                    expect_head = true;
                }
                j += 1;
            }
            b'}' => {
                depth -= 1;
                j += 1;
                if depth == 0 {
                    break;
                }
            }
            b',' if depth == 1 => {
                expect_head = true;
                j += 1;
            }
            c if depth == 1 && expect_head && is_ident(c) => {
                let (name, next) = ident_at(b, j);
                heads.push(name);
                expect_head = false;
                j = next;
            }
            _ => j += 1,
        }
    }
    heads
}

/// Every top-level module a file refers to through `crate::` or `super::` paths.
fn references(file_module: &[String], code: &str) -> BTreeSet<String> {
    let b = code.as_bytes();
    let mut found = BTreeSet::new();
    // Inline `mod name {` blocks, as (name, brace depth at which they close).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        let boundary = i == 0 || !is_ident(b[i - 1]);
        match b[i] {
            b'{' => {
                depth += 1;
                i += 1;
                continue;
            }
            b'}' => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                i += 1;
                continue;
            }
            _ => {}
        }
        if boundary && b[i..].starts_with(b"mod ") {
            let (name, next) = ident_at(b, i + 4);
            let mut k = next;
            while k < b.len() && b[k].is_ascii_whitespace() {
                k += 1;
            }
            if b.get(k) == Some(&b'{') {
                inline.push((name, depth));
            }
            i = next;
            continue;
        }
        let here: Vec<String> = file_module
            .iter()
            .cloned()
            .chain(inline.iter().map(|(n, _)| n.clone()))
            .collect();
        let (base, rest) = if boundary && b[i..].starts_with(b"crate::") {
            (Vec::new(), i + "crate::".len())
        } else if boundary && b[i..].starts_with(b"super::") {
            let mut up = 0;
            let mut j = i;
            while b[j..].starts_with(b"super::") {
                up += 1;
                j += "super::".len();
            }
            let keep = here.len().saturating_sub(up);
            (here[..keep].to_vec(), j)
        } else {
            i += 1;
            continue;
        };
        let heads = if b.get(rest) == Some(&b'{') {
            group_heads(b, rest)
        } else {
            vec![ident_at(b, rest).0]
        };
        for head in heads {
            let top = match base.first() {
                Some(top) => top.clone(),
                None => head,
            };
            if !top.is_empty() && top != "self" {
                found.insert(top);
            }
        }
        i = rest;
    }
    found
}

#[test]
fn every_import_points_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);

    let mut problems = Vec::new();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut folders = BTreeSet::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap().display().to_string();
        if rel == "main.rs" || rel == "lib.rs" {
            continue;
        }
        let module = module_path(&src, file);
        let Some(own) = module.first().cloned() else {
            continue;
        };
        if module.len() == 1 && !rel.ends_with("mod.rs") {
            problems.push(format!(
                "{rel}: a module at the top of src/ belongs in a layer folder"
            ));
        }
        folders.insert(own.clone());
        let Some(own_rank) = rank(&own) else {
            problems.push(format!("{rel}: folder {own}/ is not in the layer table"));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for target in references(&module, &code_only(&text)) {
            if target == own {
                continue;
            }
            edges.entry(own.clone()).or_default().insert(target.clone());
            match rank(&target) {
                None => problems.push(format!("{rel}: uses {target}, which is not a layer")),
                Some(r) if r >= own_rank => problems.push(format!(
                    "{rel}: {own} (layer {own_rank}) uses {target} (layer {r}), which is not below it"
                )),
                Some(_) => {}
            }
        }
    }
    for (layer, _, _) in LAYERS {
        if !folders.contains(*layer) {
            problems.push(format!("layer {layer} has no folder src/{layer}/"));
        }
    }

    println!("layer  rank  uses");
    for (layer, rank, what) in LAYERS {
        let uses: Vec<&str> = edges
            .get(*layer)
            .map(|s| s.iter().map(String::as_str).collect())
            .unwrap_or_default();
        println!("{layer:<8} {rank:>2}  {}  ({what})", uses.join(", "));
    }
    assert!(
        problems.is_empty(),
        "layering violations:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_reader_sees_paths_the_way_rustc_does() {
    let code = code_only(
        "use crate::{a::x, b::{c, d}};\n// crate::comment\nfn f() { let s = \"crate::string\"; crate::e::g(); }\nmod tests { use super::*; use super::super::h; }\n",
    );
    let got = references(&["top".into(), "m".into()], &code);
    let want: BTreeSet<String> = ["a", "b", "e", "top"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(got, want);
    // `super` from a folder's mod.rs names the crate root.
    let got = references(&["top".into()], &code_only("use super::other::Thing;\n"));
    assert_eq!(got, ["other".to_string()].into_iter().collect());
    // Char literals and lifetimes do not hide code.
    let got = references(
        &["top".into()],
        &code_only("fn f<'a>(x: &'a str) { let c = '\"'; crate::z::y(); }\n"),
    );
    assert_eq!(got, ["z".to_string()].into_iter().collect());
}
