//! The structure drawing of the workspace: for each crate, its modules (one
//! per source file) and which of them each imports, read from the sources.
//! Two rules are checked on it: no import circle between the modules of a
//! crate, and no source file longer than [`MAX_LINES`] lines outside test
//! code.
//!
//! A module imports another when its non-test code names something of it
//! through `crate::`, `super::` or `self::` paths (in `use` trees or inline).
//! A name re-exported with `pub use` counts as its defining module's, and
//! `pub use` lines themselves are a facade, not an import. Test code is left
//! out: `#[cfg(test)]` items, and files declared as `#[cfg(test)] mod x;`.
//! The reading is lexical (comments and string literals are blanked first),
//! which is enough for the plain paths this workspace writes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The longest a source file may be, in lines, outside test code.
pub const MAX_LINES: usize = 800;

/// One module: a source file of a crate.
#[derive(Debug, Clone, Default)]
pub struct Module {
    pub file: PathBuf,
    /// Lines of non-test code.
    pub lines: usize,
    /// The whole file is test code (declared `#[cfg(test)] mod x;`).
    pub test_only: bool,
    /// Child modules declared only under `#[cfg(test)]`.
    test_children: BTreeSet<String>,
    /// `pub use` re-exports: name -> the path it comes from.
    reexports: BTreeMap<String, Vec<String>>,
    /// Every path the non-test code names, resolved to absolute segments.
    paths: Vec<Vec<String>>,
}

/// A crate's modules, keyed by their path (`""` is the crate root,
/// `"state::rollout"` a nested one), and the imports between them.
#[derive(Debug, Default)]
pub struct CrateGraph {
    pub name: String,
    pub modules: BTreeMap<String, Module>,
    pub edges: BTreeMap<String, BTreeSet<String>>,
}

impl CrateGraph {
    /// Reads the crate whose sources are under `src` (`lib.rs` or `main.rs`
    /// at the root).
    pub fn read(name: &str, src: &Path) -> std::io::Result<CrateGraph> {
        let mut files = Vec::new();
        collect_rs(src, &mut files)?;
        let mut sources = BTreeMap::new();
        for f in files {
            let rel = f.strip_prefix(src).unwrap_or(&f).to_path_buf();
            let Some(module) = module_path(&rel) else {
                continue; // another binary's root (src/bin/x.rs): not ours
            };
            sources.insert(module, (f.clone(), std::fs::read_to_string(&f)?));
        }
        Ok(CrateGraph::from_sources(name, sources))
    }

    /// Builds the graph from `module path -> (file, text)`.
    pub fn from_sources(name: &str, sources: BTreeMap<String, (PathBuf, String)>) -> CrateGraph {
        let mut modules: BTreeMap<String, Module> = sources
            .into_iter()
            .map(|(path, (file, text))| {
                let m = parse_module(&path, &text, file);
                (path, m)
            })
            .collect();
        // Files declared as test-only modules, and everything under them.
        let test_roots: Vec<String> = modules
            .iter()
            .flat_map(|(p, m)| m.test_children.iter().map(move |c| join(p, c)))
            .collect();
        for (p, m) in modules.iter_mut() {
            if test_roots
                .iter()
                .any(|t| p == t || p.starts_with(&format!("{t}::")))
            {
                m.test_only = true;
                m.paths.clear();
            }
        }
        let known: BTreeSet<String> = modules.keys().cloned().collect();
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (p, m) in &modules {
            let targets = edges.entry(p.clone()).or_default();
            for path in &m.paths {
                if let Some(t) = resolve(&known, &modules, path, 0) {
                    if &t != p && !modules[&t].test_only {
                        targets.insert(t);
                    }
                }
            }
        }
        CrateGraph {
            name: name.to_string(),
            modules,
            edges,
        }
    }

    /// The import circles: groups of two or more modules that reach each
    /// other, each sorted, in a stable order.
    pub fn cycles(&self) -> Vec<Vec<String>> {
        strongly_connected(&self.edges)
            .into_iter()
            .filter(|c| c.len() > 1)
            .collect()
    }

    /// Files over [`MAX_LINES`] lines of non-test code, with their length.
    pub fn too_long(&self) -> Vec<(PathBuf, usize)> {
        self.modules
            .values()
            .filter(|m| !m.test_only && m.lines > MAX_LINES)
            .map(|m| (m.file.clone(), m.lines))
            .collect()
    }

    /// The drawing: one line per module with what it imports.
    pub fn drawing(&self) -> String {
        let mut out = format!("{}\n", self.name);
        for (p, m) in &self.modules {
            if m.test_only {
                continue;
            }
            let deps: Vec<&str> = self.edges[p].iter().map(|d| display(d)).collect();
            out.push_str(&format!(
                "  {:<28} {:>4} lines  -> {}\n",
                display(p),
                m.lines,
                if deps.is_empty() {
                    "-".to_string()
                } else {
                    deps.join(", ")
                }
            ));
        }
        out
    }
}

fn display(module: &str) -> &str {
    if module.is_empty() {
        "(root)"
    } else {
        module
    }
}

fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else {
        format!("{parent}::{child}")
    }
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_rs(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// `lib.rs`/`main.rs` -> `""`, `a.rs` and `a/mod.rs` -> `a`, `a/b.rs` ->
/// `a::b`; `None` for `bin/*.rs` (roots of their own).
fn module_path(rel: &Path) -> Option<String> {
    let parts: Vec<String> = rel
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    if parts.first().is_some_and(|p| p == "bin") {
        return None;
    }
    let mut segs: Vec<String> = parts
        .iter()
        .map(|p| p.trim_end_matches(".rs").to_string())
        .collect();
    let last = segs.pop().unwrap_or_default();
    if !(segs.is_empty() && (last == "lib" || last == "main")) && last != "mod" {
        segs.push(last);
    }
    Some(segs.join("::"))
}

/// Blanks comments, string and char literals (keeping line breaks), so
/// that only code is searched for paths.
fn strip(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |out: &mut String, s: &[u8]| {
        for &c in s {
            out.push(if c == b'\n' { '\n' } else { ' ' });
        }
    };
    while i < b.len() {
        let rest = &b[i..];
        if rest.starts_with(b"//") {
            let end = rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len());
            blank(&mut out, &rest[..end]);
            i += end;
        } else if rest.starts_with(b"/*") {
            let mut depth = 0usize;
            let mut j = 0;
            while j < rest.len() {
                if rest[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if rest[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&mut out, &rest[..j]);
            i += j;
        } else if rest.starts_with(b"r#\"") || rest.starts_with(b"r\"") || rest.starts_with(b"br\"")
        {
            let start = rest.iter().position(|&c| c == b'"').unwrap_or(0);
            let hashes = rest[..start].iter().filter(|&&c| c == b'#').count();
            let mut close = vec![b'"'];
            close.extend(std::iter::repeat_n(b'#', hashes));
            let end = rest[start + 1..]
                .windows(close.len())
                .position(|w| w == close.as_slice())
                .map_or(rest.len(), |p| start + 1 + p + close.len());
            blank(&mut out, &rest[..end]);
            i += end;
        } else if rest[0] == b'"' {
            let mut j = 1;
            while j < rest.len() && rest[j] != b'"' {
                j += if rest[j] == b'\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(rest.len());
            blank(&mut out, &rest[..end]);
            i += end;
        } else if rest[0] == b'\'' {
            // A char literal ('x', '\n', '\u{1F}'); a lifetime has no
            // closing quote right after its first character.
            let end = if rest.get(1) == Some(&b'\\') {
                rest[2..].iter().position(|&c| c == b'\'').map(|p| p + 3)
            } else {
                let ch = text[i + 1..].chars().next().map_or(1, char::len_utf8);
                (rest.get(1 + ch) == Some(&b'\'')).then_some(ch + 2)
            };
            match end {
                Some(e) => {
                    blank(&mut out, &rest[..e]);
                    i += e;
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            let ch = text[i..].chars().next().unwrap_or(' ');
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// Where the item starting at `start` ends: after its matching `}` or its
/// `;`, whichever closes it.
fn item_end(code: &str, start: usize) -> usize {
    let b = code.as_bytes();
    let mut depth = 0i32;
    let mut i = start;
    while i < b.len() {
        match b[i] {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            b';' if depth == 0 => return i + 1,
            _ => {}
        }
        i += 1;
    }
    b.len()
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Splits a module's code into its non-test part, noting the child modules
/// declared only for tests.
fn without_tests(code: &str, test_children: &mut BTreeSet<String>) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "#[cfg(test)]".len()..];
        // Skip further attributes to the item itself.
        let mut item = after.trim_start();
        while item.starts_with("#[") {
            let close = item.find(']').map_or(item.len(), |c| c + 1);
            item = item[close..].trim_start();
        }
        let item_start = rest.len() - item.len();
        let end = item_end(rest, item_start);
        let words: Vec<&str> = rest[item_start..end]
            .split(|c: char| !is_ident(c))
            .filter(|w| !w.is_empty())
            .collect();
        if let Some(i) = words.iter().position(|w| *w == "mod") {
            if rest[item_start..end].trim_end().ends_with(';') {
                if let Some(name) = words.get(i + 1) {
                    test_children.insert((*name).to_string());
                }
            }
        }
        // Test code is left out whole (with the rest of its last line): it
        // neither imports nor counts.
        let end = end + rest[end..].find('\n').map_or(rest.len() - end, |n| n + 1);
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// A path a `use` tree names, and the name it is known by here (its last
/// segment, or its `as` alias; none for `self`).
type UsePath = (Vec<String>, Option<String>);

/// Expands a `use` tree (`a::{b, c::{d as e}}`) into its paths.
fn expand_use(tree: &str) -> Vec<UsePath> {
    fn go(prefix: &[String], s: &str, out: &mut Vec<UsePath>) {
        let s = s.trim();
        if s.is_empty() {
            return;
        }
        if let Some(open) = s.find('{') {
            let head: Vec<String> = s[..open]
                .split("::")
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect();
            let inner = &s[open + 1..s.rfind('}').unwrap_or(s.len())];
            let mut base = prefix.to_vec();
            base.extend(head);
            // Split the inner list at top-level commas.
            let (mut depth, mut from) = (0, 0);
            for (i, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        go(&base, &inner[from..i], out);
                        from = i + 1;
                    }
                    _ => {}
                }
            }
            go(&base, &inner[from..], out);
        } else {
            let mut parts = s.split(" as ");
            let s = parts.next().unwrap_or(s);
            let alias = parts.next().map(|a| a.trim().to_string());
            let mut path = prefix.to_vec();
            path.extend(
                s.split("::")
                    .map(|p| p.trim().to_string())
                    .filter(|p| !p.is_empty()),
            );
            let name = if path.last().is_some_and(|l| l == "self") {
                path.pop();
                None
            } else {
                alias.or_else(|| path.last().cloned())
            };
            out.push((path, name));
        }
    }
    let mut out = Vec::new();
    go(&[], tree, &mut out);
    out
}

/// Makes a path absolute: `crate::a` -> `[a]`, `super::a` from `x::y` ->
/// `[x, a]`, `self::a` and `a` -> `[x, y, a]`.
fn absolute(module: &str, path: &[String]) -> Option<Vec<String>> {
    let mut here: Vec<String> = if module.is_empty() {
        Vec::new()
    } else {
        module.split("::").map(String::from).collect()
    };
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            here.clear();
            rest = &rest[1..];
        }
        Some("super") | Some("self") => {
            while let Some(first) = rest.first() {
                match first.as_str() {
                    "super" => {
                        here.pop();
                    }
                    "self" => {}
                    _ => break,
                }
                rest = &rest[1..];
            }
        }
        // Relative to this module (a child module's name, or another
        // crate's: the latter resolve to this module and are dropped).
        _ => {}
    }
    here.extend(rest.iter().cloned());
    Some(here)
}

/// Cuts the inline modules (`mod name { ... }`) out of a module's code:
/// their paths are read relative to themselves (`super::` inside one is
/// the file's module) but count as the file's.
fn inline_modules(code: &str) -> (String, Vec<(String, String)>) {
    let mut outer = String::with_capacity(code.len());
    let mut inner = Vec::new();
    let mut rest = code;
    loop {
        let found = rest.match_indices("mod ").find(|(at, _)| {
            let before = rest[..*at].chars().next_back();
            let after = rest[at + 4..].trim_start();
            let name_len = after.find(|c: char| !is_ident(c)).unwrap_or(after.len());
            before.is_none_or(|c| !is_ident(c))
                && name_len > 0
                && after[name_len..].trim_start().starts_with('{')
        });
        let Some((at, _)) = found else {
            outer.push_str(rest);
            break;
        };
        outer.push_str(&rest[..at]);
        let after = rest[at + 4..].trim_start();
        let name: String = after.chars().take_while(|c| is_ident(*c)).collect();
        let open = at + rest[at..].find('{').unwrap_or(0);
        let end = item_end(rest, open);
        inner.push((name, rest[open + 1..end.saturating_sub(1)].to_string()));
        rest = &rest[end..];
    }
    (outer, inner)
}

fn parse_module(module: &str, text: &str, file: PathBuf) -> Module {
    let mut m = Module {
        file,
        ..Module::default()
    };
    let code = strip(text);
    let code = without_tests(&code, &mut m.test_children);
    m.lines = code.lines().count();
    let (code, inline) = inline_modules(&code);
    for (name, inner) in inline {
        let nested = parse_paths(&join(module, &name), &inner);
        m.paths.extend(nested.0);
    }
    let (paths, reexports) = parse_paths(module, &code);
    m.paths.extend(paths);
    m.reexports = reexports;
    m
}

type Paths = (Vec<Vec<String>>, BTreeMap<String, Vec<String>>);

/// The paths a piece of code names (from `use` trees and inline), made
/// absolute from `module`, and its `pub use` re-exports apart.
fn parse_paths(module: &str, code: &str) -> Paths {
    let mut paths = Vec::new();
    let mut reexports = BTreeMap::new();
    // `use` statements first (re-exports kept apart), then inline paths.
    let mut inline = String::with_capacity(code.len());
    let mut rest = code;
    loop {
        let found = ["pub use ", "pub(crate) use ", "pub(super) use ", "use "]
            .iter()
            .filter_map(|k| {
                let mut from = 0;
                while let Some(p) = rest[from..].find(k) {
                    let at = from + p;
                    let before = rest[..at].chars().next_back();
                    if before.is_none_or(|c| !is_ident(c) && c != '(' && c != ')') {
                        return Some((at, *k));
                    }
                    from = at + k.len();
                }
                None
            })
            .min_by_key(|(at, k)| (*at, std::cmp::Reverse(k.len())));
        let Some((at, keyword)) = found else {
            inline.push_str(rest);
            break;
        };
        inline.push_str(&rest[..at]);
        let end = rest[at..].find(';').map_or(rest.len(), |e| at + e + 1);
        let tree = &rest[at + keyword.len()..end.saturating_sub(1)];
        let public = keyword.starts_with("pub");
        for (path, name) in expand_use(tree) {
            let Some(abs) = absolute(module, &path) else {
                continue;
            };
            if public {
                if let Some(name) = name {
                    reexports.insert(name, abs);
                }
            } else {
                paths.push(abs);
            }
        }
        inline.extend(std::iter::repeat_n(
            '\n',
            rest[at..end].matches('\n').count(),
        ));
        rest = &rest[end..];
    }
    // Inline paths: `crate::a::b`, `super::x`, `child::y`.
    let chars: Vec<char> = inline.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let at_start =
            is_ident(chars[i]) && (i == 0 || (!is_ident(chars[i - 1]) && chars[i - 1] != ':'));
        if !at_start {
            i += 1;
            continue;
        }
        let mut j = i;
        let mut segs = Vec::new();
        loop {
            let s = j;
            while j < chars.len() && is_ident(chars[j]) {
                j += 1;
            }
            if s == j {
                break;
            }
            segs.push(chars[s..j].iter().collect::<String>());
            if chars.get(j) == Some(&':') && chars.get(j + 1) == Some(&':') {
                j += 2;
            } else {
                break;
            }
        }
        if segs.len() > 1 {
            if let Some(abs) = absolute(module, &segs) {
                paths.push(abs);
            }
        }
        i = j.max(i + 1);
    }
    (paths, reexports)
}

/// The module a path names: the longest known module prefix, followed
/// through `pub use` re-exports to where the name is defined.
fn resolve(
    known: &BTreeSet<String>,
    modules: &BTreeMap<String, Module>,
    path: &[String],
    depth: usize,
) -> Option<String> {
    let mut best = (String::new(), 0);
    for n in 1..=path.len() {
        let candidate = path[..n].join("::");
        if known.contains(&candidate) {
            best = (candidate, n);
        }
    }
    let (module, used) = best;
    if !known.contains(&module) {
        return None;
    }
    if depth < 8 {
        if let Some(name) = path.get(used) {
            if let Some(source) = modules[&module].reexports.get(name) {
                if source.as_slice() != path {
                    return resolve(known, modules, source, depth + 1).or(Some(module));
                }
            }
        }
    }
    Some(module)
}

/// Tarjan's strongly connected components, in a stable order.
fn strongly_connected(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(w: &mut Walk<'a>, v: &'a str) {
        w.index.insert(v, w.next);
        w.low.insert(v, w.next);
        w.next += 1;
        w.stack.push(v);
        w.on_stack.insert(v);
        if let Some(targets) = w.edges.get(v) {
            for t in targets {
                let t = t.as_str();
                if !w.index.contains_key(t) {
                    visit(w, t);
                    let low = w.low[v].min(w.low[t]);
                    w.low.insert(v, low);
                } else if w.on_stack.contains(t) {
                    let low = w.low[v].min(w.index[t]);
                    w.low.insert(v, low);
                }
            }
        }
        if w.low[v] == w.index[v] {
            let mut group = Vec::new();
            while let Some(x) = w.stack.pop() {
                w.on_stack.remove(x);
                group.push(x.to_string());
                if x == v {
                    break;
                }
            }
            group.sort();
            w.out.push(group);
        }
    }
    let mut w = Walk {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !w.index.contains_key(v.as_str()) {
            visit(&mut w, v);
        }
    }
    w.out.sort();
    w.out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(files: &[(&str, &str)]) -> CrateGraph {
        let sources = files
            .iter()
            .map(|(m, t)| {
                (
                    m.to_string(),
                    (PathBuf::from(format!("{m}.rs")), t.to_string()),
                )
            })
            .collect();
        CrateGraph::from_sources("demo", sources)
    }

    #[test]
    fn modules_that_import_each_other_are_a_circle() {
        let g = graph(&[
            ("", "mod a;\nmod b;\nmod c;\n"),
            ("a", "use crate::b::Thing;\n"),
            ("b", "pub struct Thing;\nfn f() { crate::c::g() }\n"),
            (
                "c",
                "// crate::a is only a comment\npub fn g() { let _ = super::a::X; }\n",
            ),
        ]);
        assert_eq!(g.cycles(), vec![vec!["a", "b", "c"]]);
        assert_eq!(g.edges["a"].iter().collect::<Vec<_>>(), [&"b".to_string()]);
    }

    #[test]
    fn re_exports_lead_to_the_defining_module_and_tests_do_not_count() {
        let g = graph(&[
            ("", "mod job;\nmod spec;\npub use job::{Job, Kind as K};\n"),
            ("job", "pub struct Job;\npub enum Kind {}\n#[cfg(test)]\nmod tests { use crate::spec::parse; }\n"),
            ("spec", "use crate::{Job, K};\npub fn parse() -> Job { todo!() }\n"),
        ]);
        assert!(g.cycles().is_empty(), "{}", g.drawing());
        assert_eq!(
            g.edges["spec"].iter().collect::<Vec<_>>(),
            [&"job".to_string()]
        );
        assert!(g.edges[""].is_empty(), "a re-export is a facade");
        assert_eq!(g.modules["job"].lines, 2);
    }

    #[test]
    fn test_only_files_are_left_out() {
        let g = graph(&[
            ("", "mod a;\n#[cfg(test)]\nmod tests;\n"),
            ("a", "pub fn f() {}\n"),
            ("tests", &"use crate::a::f;\n".repeat(900)),
        ]);
        assert!(g.modules["tests"].test_only);
        assert!(g.too_long().is_empty());
        assert!(g.edges.get("tests").is_none_or(|e| e.is_empty()));
    }

    #[test]
    fn strings_and_chars_do_not_hide_or_invent_paths() {
        let code = "fn f<'a>(x: &'a str) -> char { let _ = \"crate::x\"; let _ = '\\''; crate::y::z(); 'q' }";
        let s = strip(code);
        assert!(!s.contains("crate::x"));
        assert!(s.contains("crate::y::z"));
        assert!(s.contains("'a str"));
    }
}
