//! The layering rule of ARCHITECTURE.md, checked on the sources: a module of
//! `src/` names (`crate::…`) only modules of lower layers, besides its own
//! files. Test code (`tests.rs`, and everything after `#[cfg(test)]` in a
//! file) may reach higher, since it builds what it tests. Comments are not
//! read.

use std::collections::BTreeMap;
use std::path::Path;

/// The layers, lowest first, as ARCHITECTURE.md lists them.
const LAYERS: &[&[&str]] = &[
    &["error", "telemetry", "filter", "linalg", "ids"],
    &["config", "deadline", "catalog"],
    &[
        "layout",
        "runtime",
        "admission",
        "movielens",
        "sample",
        "experiment",
    ],
    &["nn", "encoder", "users", "live", "fusion", "exposure"],
    &["retrieve", "rerank", "analysis"],
    &["engine"],
    &["pipeline"],
    &["serving", "eval"],
    &["grpc", "simulation"],
    &["route"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// Top-level module of a file under `src/`: `engine/search.rs` → `engine`.
fn module_of(rel: &Path) -> String {
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_owned()
}

/// The `crate::name` paths named in the non-test code of a source file.
fn named_modules(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let code = line.trim_start();
        if code.starts_with("#[cfg(test)]") {
            break;
        }
        if code.starts_with("//") {
            continue;
        }
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // `use crate::{a, b}` names several.
            if name.is_empty() && rest.starts_with('{') {
                let inner = &rest[1..rest.find('}').unwrap_or(rest.len())];
                for part in inner.split(',') {
                    let m: String = part
                        .trim()
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !m.is_empty() {
                        out.push(m);
                    }
                }
            } else if !name.is_empty() {
                out.push(name);
            }
        }
    }
    out
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_import_in_src_points_to_a_lower_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    let mut unlisted = Vec::new();
    let mut upward: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut checked = 0;
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let name = rel.file_name().unwrap().to_string_lossy();
        if matches!(name.as_ref(), "lib.rs" | "main.rs" | "tests.rs") {
            continue;
        }
        let module = module_of(rel);
        let Some(own) = layer_of(&module) else {
            unlisted.push(rel.display().to_string());
            continue;
        };
        checked += 1;
        let text = std::fs::read_to_string(file).unwrap();
        for named in named_modules(&text) {
            if named == module {
                continue;
            }
            match layer_of(&named) {
                Some(l) if l < own => {}
                Some(l) => upward
                    .entry(rel.display().to_string())
                    .or_default()
                    .push(format!("{named} (layer {l}, this file is in layer {own})")),
                None => unlisted.push(format!("{named} (named by {})", rel.display())),
            }
        }
    }
    assert!(checked > 30, "only {checked} files checked: is src/ there?");
    assert!(
        unlisted.is_empty(),
        "modules missing from LAYERS (add them, and to ARCHITECTURE.md): {unlisted:?}"
    );
    assert!(
        upward.is_empty(),
        "imports that do not point down: {upward:#?}"
    );
}

#[test]
fn the_checker_sees_use_lists_and_ignores_comments_and_tests() {
    let text = "use crate::{config, error::Result};\n// crate::grpc\nlet x = crate::engine::Engine::open;\n#[cfg(test)]\nuse crate::grpc;\n";
    assert_eq!(named_modules(text), ["config", "error", "engine"]);
}
