//! The module graph of a crate, read from its sources: which module imports which, import
//! cycles, and imports that go up a layer. Both the key service's layer test
//! (`crates/server/tests/layers.rs`) and the filter's (`tests/modules.rs`) use it.
//!
//! It reads the sources under `src/`, finds every path a module names through `crate::`,
//! `$crate::`, `super::`, `self::` or one of its own child modules (grouped
//! `use crate::{a, b::{c, d}}` included) and resolves each to the module that defines it.
//! Comments, strings and unit tests (`#[cfg(test)] mod ...`, which may drive their module from
//! above) are left out; `mod` declarations are not imports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

pub const ROOT: &str = "crate";

/// A module path such as `http::keys` (the root is [`ROOT`]).
pub type Module = String;

fn layer_of<'a>(layers: &[(&'a str, &[&str])], module: &str) -> Option<(usize, &'a str)> {
    if module == ROOT {
        return Some((layers.len(), "crate root"));
    }
    let first = module.split("::").next()?;
    layers
        .iter()
        .enumerate()
        .find(|(_, (_, tops))| tops.contains(&first))
        .map(|(rank, (name, _))| (rank, *name))
}

/// The library's source files and their module paths (`main.rs`, the binary, is not one).
pub fn modules(src: &Path) -> BTreeMap<Module, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(src, &mut files);
    let mut modules = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(src).unwrap().with_extension("");
        let mut parts: Vec<String> = relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if parts == ["main"] {
            continue;
        }
        if parts.last().is_some_and(|p| p == "mod") {
            parts.pop();
        }
        let module = if parts == ["lib"] {
            ROOT.to_owned()
        } else {
            parts.join("::")
        };
        modules.insert(module, file);
    }
    modules
}

/// `text` with comments, string and character literals blanked out (newlines kept).
fn strip(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if (c == 'r' || c == 'b')
            && (i == 0 || !ident(chars[i - 1]))
            && matches!(next, Some('"' | '#' | 'r'))
            && raw_string_len(&chars[i..]).is_some()
        {
            let len = raw_string_len(&chars[i..]).unwrap_or(1);
            out.extend(chars[i..i + len].iter().map(|&c| blank(c)));
            i += len;
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < chars.len() {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' && next == Some('\\') {
            // An escaped character literal: '\n', '\'', '\u{..}'.
            out.push(' ');
            i += 2;
            while i < chars.len() && chars[i] != '\'' {
                out.push(' ');
                i += 1;
            }
            out.push(' ');
            out.push(' ');
            i += 1;
        } else if c == '\'' && chars.get(i + 2) == Some(&'\'') {
            out.push_str("   ");
            i += 3;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// The length of a raw or byte string literal (`r"…"`, `r#"…"#`, `b"…"`, `br"…"`) at the
/// start of `chars`, if one starts there.
fn raw_string_len(chars: &[char]) -> Option<usize> {
    let mut i = 0;
    if chars.first() == Some(&'b') {
        i += 1;
    }
    let raw = chars.get(i) == Some(&'r');
    if raw {
        i += 1;
    }
    let mut hashes = 0;
    while raw && chars.get(i) == Some(&'#') {
        hashes += 1;
        i += 1;
    }
    if chars.get(i) != Some(&'"') || (i == 0) {
        return None;
    }
    i += 1;
    while i < chars.len() {
        if !raw && chars[i] == '\\' {
            i += 2;
            continue;
        }
        if chars[i] == '"' && (0..hashes).all(|h| chars.get(i + 1 + h) == Some(&'#')) {
            return Some(i + 1 + hashes);
        }
        i += 1;
    }
    None
}

/// `text` without its `#[cfg(test)] mod name { … }` blocks.
fn without_unit_tests(text: &str) -> String {
    let mut out = text.to_owned();
    while let Some(at) = out.find("#[cfg(test)]") {
        let rest = &out[at + "#[cfg(test)]".len()..];
        let trimmed = rest.trim_start();
        let is_mod = trimmed.starts_with("mod ") || trimmed.starts_with("pub mod ");
        let Some(open) = rest.find('{').filter(|_| is_mod) else {
            // A test-only item that is not a module: blank the attribute and go on.
            out.replace_range(at..at + "#[cfg(test)]".len(), "            ");
            continue;
        };
        let start = at + "#[cfg(test)]".len() + open;
        let mut depth = 0;
        let mut end = out.len();
        for (offset, c) in out[start..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = start + offset + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        out.replace_range(at..end, "");
    }
    out
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Ident(String),
    PathSep,
    Open,
    Close,
    Comma,
    Star,
    Other,
}

fn tokens(text: &str) -> Vec<Token> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Token::Ident(chars[start..i].iter().collect()));
            continue;
        }
        let token = match c {
            ':' if chars.get(i + 1) == Some(&':') => {
                i += 1;
                Token::PathSep
            }
            '{' => Token::Open,
            '}' => Token::Close,
            ',' => Token::Comma,
            '*' => Token::Star,
            c if c.is_whitespace() => {
                i += 1;
                continue;
            }
            _ => Token::Other,
        };
        out.push(token);
        i += 1;
    }
    out
}

/// Reads the path (tree) after `prefix` from `tokens[*at..]`: `::a::b`, `::{a, b::c}`, `::*`.
fn read_tree(tokens: &[Token], at: &mut usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut path = prefix;
    while tokens.get(*at) == Some(&Token::PathSep) {
        *at += 1;
        match tokens.get(*at) {
            Some(Token::Ident(name)) => {
                *at += 1;
                path.push(name.clone());
            }
            Some(Token::Open) => {
                *at += 1;
                read_group(tokens, at, &path, out);
                return;
            }
            _ => break,
        }
    }
    out.push(path);
}

/// Reads the members of a group `{a, b::c, self, {d, e}}` after its `{`, up to its `}`.
fn read_group(tokens: &[Token], at: &mut usize, path: &[String], out: &mut Vec<Vec<String>>) {
    while let Some(token) = tokens.get(*at) {
        *at += 1;
        match token {
            Token::Ident(name) if name == "self" => out.push(path.to_vec()),
            Token::Ident(name) => {
                let mut inner = path.to_vec();
                inner.push(name.clone());
                read_tree(tokens, at, inner, out);
            }
            Token::Open => read_group(tokens, at, path, out),
            Token::Close => return,
            _ => {}
        }
    }
}

fn parent(module: &str) -> String {
    match module.rsplit_once("::") {
        Some((parent, _)) => parent.to_owned(),
        None => ROOT.to_owned(),
    }
}

fn join(base: &str, segments: &[String]) -> String {
    let mut parts: Vec<&str> = Vec::new();
    if base != ROOT {
        parts.push(base);
    }
    parts.extend(segments.iter().map(String::as_str));
    if parts.is_empty() {
        ROOT.to_owned()
    } else {
        parts.join("::")
    }
}

/// The modules `module` imports, given its (stripped) source and every module of the crate.
fn imports(module: &str, source: &str, known: &BTreeSet<Module>) -> BTreeSet<Module> {
    let tokens = tokens(source);
    let mut found = BTreeSet::new();
    let mut at = 0;
    while at < tokens.len() {
        let starts_path = tokens.get(at + 1) == Some(&Token::PathSep)
            && (at == 0 || tokens[at - 1] != Token::PathSep);
        let Some(Token::Ident(first)) = tokens.get(at).filter(|_| starts_path) else {
            at += 1;
            continue;
        };
        let child = join(module, std::slice::from_ref(first));
        let base = match first.as_str() {
            "crate" => ROOT.to_owned(),
            "self" => module.to_owned(),
            "super" => parent(module),
            _ if known.contains(&child) && module != ROOT => module.to_owned(),
            _ => {
                at += 1;
                continue;
            }
        };
        let mut base = base;
        let mut prefix = Vec::new();
        if !matches!(first.as_str(), "crate" | "self" | "super") {
            prefix.push(first.clone());
        }
        at += 1;
        // `super::super::…`
        while first == "super"
            && tokens.get(at) == Some(&Token::PathSep)
            && tokens.get(at + 1) == Some(&Token::Ident("super".to_owned()))
        {
            base = parent(&base);
            at += 2;
        }
        let mut paths = Vec::new();
        read_tree(&tokens, &mut at, prefix, &mut paths);
        for path in paths {
            // The longest prefix of the path that is a module defines what it names.
            let target = (0..=path.len())
                .rev()
                .map(|len| join(&base, &path[..len]))
                .find(|candidate| known.contains(candidate) || candidate == ROOT)
                .unwrap_or_else(|| ROOT.to_owned());
            if target != module {
                found.insert(target);
            }
        }
    }
    found
}

/// Module → the modules it imports, for the crate in `src`.
pub fn graph(src: &Path) -> BTreeMap<Module, BTreeSet<Module>> {
    let modules = modules(src);
    let known: BTreeSet<Module> = modules.keys().cloned().collect();
    modules
        .iter()
        .map(|(module, file)| {
            let text = std::fs::read_to_string(file).unwrap();
            let source = without_unit_tests(&strip(&text));
            (module.clone(), imports(module, &source, &known))
        })
        .collect()
}

/// Every import that goes up a layer (or into the crate root), as `from -> to` lines.
pub fn upward_imports(
    graph: &BTreeMap<Module, BTreeSet<Module>>,
    layers: &[(&str, &[&str])],
) -> Vec<String> {
    let mut problems = Vec::new();
    for (module, targets) in graph {
        let Some((rank, layer)) = layer_of(layers, module) else {
            problems.push(format!("{module}: in no layer; add it to the layers"));
            continue;
        };
        if module == ROOT {
            continue;
        }
        for target in targets {
            match layer_of(layers, target) {
                Some((target_rank, target_layer)) if target_rank > rank => problems.push(format!(
                    "{module} ({layer}) imports {target} ({target_layer}), a higher layer"
                )),
                Some(_) => {}
                None => problems.push(format!("{target}: in no layer")),
            }
        }
    }
    problems
}

/// One import cycle, if there is any: the modules along it, the first one repeated last.
pub fn find_cycle(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<Module>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        module: &Module,
        graph: &BTreeMap<Module, BTreeSet<Module>>,
        marks: &mut BTreeMap<Module, Mark>,
        stack: &mut Vec<Module>,
    ) -> Option<Vec<Module>> {
        match marks.get(module) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let from = stack.iter().position(|m| m == module).unwrap_or(0);
                let mut cycle = stack[from..].to_vec();
                cycle.push(module.clone());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(module.clone(), Mark::Open);
        stack.push(module.clone());
        for next in graph.get(module).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, marks, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        marks.insert(module.clone(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    graph
        .keys()
        .find_map(|module| visit(module, graph, &mut marks, &mut Vec::new()))
}

/// The groups of modules that import each other (directly or not), each sorted.
pub fn cyclic_groups(graph: &BTreeMap<Module, BTreeSet<Module>>) -> BTreeSet<Vec<Module>> {
    let reach = |from: &Module| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.clone()];
        while let Some(module) = todo.pop() {
            for next in graph.get(&module).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    };
    let reachable: BTreeMap<&Module, BTreeSet<Module>> =
        graph.keys().map(|module| (module, reach(module))).collect();
    graph
        .keys()
        .filter(|module| reachable[module].contains(*module))
        .map(|module| {
            graph
                .keys()
                .filter(|other| {
                    reachable[module].contains(*other) && reachable[other].contains(module)
                })
                .cloned()
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reader_sees_every_kind_of_import() {
        let known: BTreeSet<Module> = [
            "http",
            "http::state",
            "http::keys",
            "service",
            "service::error",
            "service::keys",
            "store",
            "cli",
            "cli::args",
            "cli::print",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        let source = strip(
            r#"
            use crate::{service::{error::ApiError, keys::{self, create}}, store};
            use super::state::AppState; // crate::cli::args in a comment
            const URL: &str = "crate::cli::print";
            fn f() { keys::create(); $crate::cli::print::write(); }
            "#,
        );
        let found = imports("http::keys", &source, &known);
        let expected: BTreeSet<Module> = [
            "service::error",
            "service::keys",
            "store",
            "http::state",
            "cli::print",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        assert_eq!(found, expected);
        let parent = imports(
            "http",
            "use keys::KeyView; fn g() { state::AppState::new(); }",
            &known,
        );
        assert_eq!(
            parent,
            ["http::keys", "http::state"]
                .into_iter()
                .map(str::to_owned)
                .collect()
        );
        let tests_left_out = without_unit_tests(
            "use crate::store::X;\n#[cfg(test)]\nmod tests {\n use crate::cli::args::Cli; fn x() { {} }\n}\n",
        );
        assert_eq!(
            imports("service::keys", &tests_left_out, &known),
            ["store"].into_iter().map(str::to_owned).collect()
        );
        let mut cyclic = BTreeMap::new();
        cyclic.insert("a".to_owned(), BTreeSet::from(["b".to_owned()]));
        cyclic.insert("b".to_owned(), BTreeSet::from(["a".to_owned()]));
        assert_eq!(
            find_cycle(&cyclic),
            Some(vec!["a".to_owned(), "b".to_owned(), "a".to_owned()])
        );
    }
}
