//! The source layout stays as issue 20 laid it out: each backing store is the
//! only place that knows it, the increment machinery knows no store, no file
//! imports one that imports it back (but the cycles listed below, a list that
//! only shrinks), and only `main.rs` and `src/cli/` know the command line.
//!
//! Reads `src/**/*.rs` as text. A file's code is what comes before its first
//! `#[cfg(test)]`, without whole-line comments. Its imports are the paths it
//! writes: `use` trees (braces expanded) and `crate::`/`super::`/`self::`
//! paths anywhere in its code, each resolved to the longest prefix that is a
//! module file. A `mod.rs` naming its own children (`pub use child::X`) is not
//! an import: parents declare their children.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// kine's SQL and bookkeeping names: only under `src/store/kine/`.
const KINE_WORDS: [&str; 5] = [
    "FROM kine",
    "compact_rev_key",
    "sqlite_sequence",
    "INTO kine",
    "UPDATE kine",
];
const KINE_HOME: &str = "src/store/kine/";

/// etcd's client and the bbolt reader: only under `src/store/etcd/`.
const ETCD_WORDS: [&str; 5] = [
    "etcd_client",
    "BoltFile",
    "RevisionScanner",
    "ValueAt",
    "bolt::",
];
const ETCD_HOME: &str = "src/store/etcd/";

/// Import cycles still allowed. Each entry is one strongly connected set of
/// files; the test fails when one is gone or changed, so the list only
/// shrinks. Empty: issue 20 left none.
const ALLOWED_CYCLES: &[&[&str]] = &[];

/// The command line is read only by `main.rs` and `src/cli/`: commands and
/// the domain take typed configurations, never clap's arguments.
const CLI_HOME: &str = "src/cli/";
const CLI_READERS: [&str; 1] = ["src/main.rs"];

struct File {
    /// Relative to the crate root, with `/`: `src/store/kine/mod.rs`.
    path: String,
    /// The code before the tests, without whole-line comments.
    code: String,
    /// The whole text.
    text: String,
}

fn sources() -> Vec<File> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut paths = Vec::new();
    collect(&root.join("src"), &mut paths);
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|err| panic!("read {}: {err}", path.display()));
            let relative = path
                .strip_prefix(root)
                .expect("a source under the crate root")
                .to_string_lossy()
                .replace('\\', "/");
            File {
                code: code_of(&text),
                path: relative,
                text,
            }
        })
        .collect()
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|err| panic!("read {}: {err}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn code_of(text: &str) -> String {
    let before_tests = match text.find("#[cfg(test)]") {
        Some(at) => &text[..at],
        None => text,
    };
    before_tests
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every place a word appears in a file's code outside `home`.
fn strays(files: &[File], words: &[&str], home: &str) -> Vec<String> {
    let mut found = Vec::new();
    for file in files.iter().filter(|f| !f.path.starts_with(home)) {
        for line in file.code.lines() {
            for word in words.iter().filter(|w| line.contains(*w)) {
                found.push(format!("{}: `{word}` in: {}", file.path, line.trim()));
            }
        }
    }
    found
}

/// Files under `src/increment/` that mention a store, anywhere in their text.
fn increment_knows_a_store(files: &[File]) -> Vec<String> {
    files
        .iter()
        .filter(|f| f.path.starts_with("src/increment/") && f.text.contains("crate::store"))
        .map(|f| f.path.clone())
        .collect()
}

/// `src/store/mod.rs` holds the traits: it names no store's module.
fn store_traits_name_a_store(files: &[File]) -> Vec<String> {
    let mut found = Vec::new();
    for file in files.iter().filter(|f| f.path == "src/store/mod.rs") {
        for line in file.code.lines() {
            let t = line.trim();
            let declaration = t == "pub mod kine;" || t == "pub mod etcd;";
            if !declaration && (t.contains("kine") || t.contains("etcd::")) && t.contains("::") {
                found.push(format!("{}: {t}", file.path));
            }
        }
    }
    found
}

/// Files outside `src/cli/` and `main.rs` that mention `crate::cli`, anywhere
/// in their text (tests included: they would build on clap's arguments too).
fn cli_readers(files: &[File]) -> Vec<String> {
    files
        .iter()
        .filter(|f| !f.path.starts_with(CLI_HOME) && !CLI_READERS.contains(&f.path.as_str()))
        .filter(|f| f.text.contains("crate::cli"))
        .map(|f| f.path.clone())
        .collect()
}

/// The module path of a file: `src/a/b.rs` and `src/a/b/mod.rs` are `[a, b]`.
fn module_of(path: &str) -> Vec<String> {
    let inner = path
        .strip_prefix("src/")
        .unwrap_or(path)
        .trim_end_matches(".rs");
    let mut parts: Vec<String> = inner.split('/').map(str::to_string).collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "main" | "lib")
    ) {
        parts.pop();
    }
    parts
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Expands a `use` tree (`a::{b, c::{d}}`) into its paths.
fn expand(tree: &str) -> Vec<Vec<String>> {
    // `x as y` names `x`: mark the rename before the spaces go.
    let tree: String = tree
        .replace(" as ", "@")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let mut out = Vec::new();
    expand_into(&tree, Vec::new(), &mut out);
    out
}

fn expand_into(tree: &str, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    match tree.find('{') {
        None => {
            let mut path = prefix;
            for part in tree.split("::").filter(|p| !p.is_empty()) {
                let part = part.split('@').next().unwrap_or(part);
                path.push(part.to_string());
            }
            out.push(path);
        }
        Some(open) => {
            let mut path = prefix;
            path.extend(
                tree[..open]
                    .split("::")
                    .filter(|p| !p.is_empty())
                    .map(str::to_string),
            );
            let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
            let mut depth = 0;
            let mut start = 0;
            for (i, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        expand_into(&inner[start..i], path.clone(), out);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            if start < inner.len() {
                expand_into(&inner[start..], path, out);
            }
        }
    }
}

/// The paths a file's code writes that start with `crate`, `super` or `self`.
fn written_paths(code: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    // `use` statements (formatted: one starts a line) have their trees
    // expanded; the rest is scanned for paths.
    let mut rest = String::new();
    let mut tree: Option<String> = None;
    for line in code.lines() {
        let t = line.trim_start();
        let t = t
            .strip_prefix("pub(crate) ")
            .or_else(|| t.strip_prefix("pub(super) "))
            .or_else(|| t.strip_prefix("pub "))
            .unwrap_or(t);
        if tree.is_none() {
            if let Some(start) = t.strip_prefix("use ") {
                tree = Some(String::new());
                push_use_line(start, &mut tree, &mut paths);
                continue;
            }
            rest.push_str(line);
            rest.push('\n');
        } else {
            push_use_line(line, &mut tree, &mut paths);
        }
    }
    let chars: Vec<char> = rest.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let starts_word = i == 0 || !is_ident_char(chars[i - 1]);
        if starts_word && is_ident_char(chars[i]) {
            let mut path = Vec::new();
            let mut j = i;
            loop {
                let begin = j;
                while j < chars.len() && is_ident_char(chars[j]) {
                    j += 1;
                }
                if begin == j {
                    break;
                }
                path.push(chars[begin..j].iter().collect::<String>());
                if j + 1 < chars.len() && chars[j] == ':' && chars[j + 1] == ':' {
                    j += 2;
                } else {
                    break;
                }
            }
            if path.len() > 1 && matches!(path[0].as_str(), "crate" | "super" | "self") {
                paths.push(path);
            }
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    paths
        .into_iter()
        .filter(|p| {
            matches!(
                p.first().map(String::as_str),
                Some("crate" | "super" | "self")
            )
        })
        .collect()
}

/// Adds a line to the `use` tree being read; expands it at its `;`.
fn push_use_line(line: &str, tree: &mut Option<String>, paths: &mut Vec<Vec<String>>) {
    let Some(text) = tree.as_mut() else {
        return;
    };
    match line.find(';') {
        Some(end) => {
            text.push_str(&line[..end]);
            paths.extend(expand(text));
            *tree = None;
        }
        None => {
            text.push_str(line);
            text.push(' ');
        }
    }
}

/// Resolves a written path to the module file it reaches: the longest prefix
/// of its absolute module path that is a file.
fn resolve(
    from: &[String],
    path: &[String],
    modules: &BTreeMap<Vec<String>, String>,
) -> Option<String> {
    // `super` of `a/b.rs` and of `a/b/mod.rs` (both module [a, b]) is [a].
    let mut absolute: Vec<String> = Vec::new();
    let mut segments = path.iter().peekable();
    match segments.peek().map(|s| s.as_str()) {
        Some("crate") => {
            segments.next();
        }
        Some("self") => {
            segments.next();
            absolute = from.to_vec();
        }
        Some("super") => {
            absolute = from.to_vec();
            while segments.peek().map(|s| s.as_str()) == Some("super") {
                segments.next();
                absolute.pop();
            }
        }
        _ => return None,
    }
    absolute.extend(segments.filter(|s| *s != "*").cloned());
    (0..=absolute.len())
        .rev()
        .find_map(|n| modules.get(&absolute[..n]))
        .cloned()
}

fn import_graph(files: &[File]) -> BTreeMap<String, BTreeSet<String>> {
    let modules: BTreeMap<Vec<String>, String> = files
        .iter()
        .map(|f| (module_of(&f.path), f.path.clone()))
        .collect();
    let mut graph = BTreeMap::new();
    for file in files {
        let from = module_of(&file.path);
        let edges: BTreeSet<String> = written_paths(&file.code)
            .iter()
            .filter_map(|p| resolve(&from, p, &modules))
            .filter(|to| *to != file.path)
            .collect();
        graph.insert(file.path.clone(), edges);
    }
    graph
}

/// The strongly connected sets of more than one file (Tarjan's algorithm).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> BTreeSet<BTreeSet<String>> {
    struct State<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        next: usize,
        found: BTreeSet<BTreeSet<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, node: &'a str) {
        s.index.insert(node, s.next);
        s.low.insert(node, s.next);
        s.next += 1;
        s.stack.push(node);
        s.on_stack.insert(node);
        let graph = s.graph;
        for to in graph.get(node).into_iter().flatten() {
            let to = to.as_str();
            if !graph.contains_key(to) {
                continue;
            }
            if !s.index.contains_key(to) {
                visit(s, to);
                let low = s.low[node].min(s.low[to]);
                s.low.insert(node, low);
            } else if s.on_stack.contains(to) {
                let low = s.low[node].min(s.index[to]);
                s.low.insert(node, low);
            }
        }
        if s.low[node] == s.index[node] {
            let mut set = BTreeSet::new();
            while let Some(top) = s.stack.pop() {
                s.on_stack.remove(top);
                set.insert(top.to_string());
                if top == node {
                    break;
                }
            }
            if set.len() > 1 {
                s.found.insert(set);
            }
        }
    }
    let mut state = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        found: BTreeSet::new(),
    };
    for node in graph.keys() {
        if !state.index.contains_key(node.as_str()) {
            visit(&mut state, node);
        }
    }
    state.found
}

/// The cycles not allowed, and the allowed ones no longer there.
fn cycle_problems(found: &BTreeSet<BTreeSet<String>>, allowed: &[&[&str]]) -> Vec<String> {
    let allowed: BTreeSet<BTreeSet<String>> = allowed
        .iter()
        .map(|c| c.iter().map(|f| f.to_string()).collect())
        .collect();
    let mut problems = Vec::new();
    for cycle in found.difference(&allowed) {
        problems.push(format!(
            "import cycle: {}",
            cycle.iter().cloned().collect::<Vec<_>>().join(" <-> ")
        ));
    }
    for gone in allowed.difference(found) {
        problems.push(format!(
            "allowlisted cycle no longer exists (or changed): remove it from ALLOWED_CYCLES: {}",
            gone.iter().cloned().collect::<Vec<_>>().join(" <-> ")
        ));
    }
    problems
}

#[test]
fn kine_sql_lives_only_in_the_kine_store() {
    let found = strays(&sources(), &KINE_WORDS, KINE_HOME);
    assert!(
        found.is_empty(),
        "outside {KINE_HOME}:\n{}",
        found.join("\n")
    );
}

#[test]
fn etcd_client_and_bbolt_live_only_in_the_etcd_store() {
    let found = strays(&sources(), &ETCD_WORDS, ETCD_HOME);
    assert!(
        found.is_empty(),
        "outside {ETCD_HOME}:\n{}",
        found.join("\n")
    );
}

#[test]
fn increments_know_no_store() {
    let found = increment_knows_a_store(&sources());
    assert!(found.is_empty(), "mention crate::store: {found:?}");
}

#[test]
fn the_store_traits_name_no_store() {
    let found = store_traits_name_a_store(&sources());
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn only_main_and_the_cli_read_the_command_line() {
    let found = cli_readers(&sources());
    assert!(found.is_empty(), "mention crate::cli: {found:?}");
}

#[test]
fn no_file_imports_one_that_imports_it_back() {
    let found = cycles(&import_graph(&sources()));
    let problems = cycle_problems(&found, ALLOWED_CYCLES);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// Each rule fails on what it is there to catch.

fn file(path: &str, text: &str) -> File {
    File {
        path: path.to_string(),
        code: code_of(text),
        text: text.to_string(),
    }
}

#[test]
fn each_rule_catches_what_it_is_about() {
    let stray_sql = [file(
        "src/restore.rs",
        "fn f() { q(\"SELECT 1 FROM kine\"); }\n// FROM kine in a comment is fine\n",
    )];
    assert_eq!(strays(&stray_sql, &KINE_WORDS, KINE_HOME).len(), 1);
    let at_home = [file("src/store/kine/mod.rs", "q(\"UPDATE kine SET\");")];
    assert!(strays(&at_home, &KINE_WORDS, KINE_HOME).is_empty());

    let stray_bolt = [file(
        "src/export.rs",
        "use crate::store::etcd::bolt::BoltFile;",
    )];
    assert!(!strays(&stray_bolt, &ETCD_WORDS, ETCD_HOME).is_empty());

    let knowing = [file(
        "src/increment/ship.rs",
        "use crate::store::kine::KineRow;",
    )];
    assert_eq!(increment_knows_a_store(&knowing), ["src/increment/ship.rs"]);

    let naming = [file(
        "src/store/mod.rs",
        "pub mod kine;\npub use kine::SqliteSource;",
    )];
    assert_eq!(store_traits_name_a_store(&naming).len(), 1);

    let reading = [
        file("src/command/verify.rs", "use crate::cli::VerifyArgs;"),
        file("src/cli/read.rs", "use crate::command::list::ListConfig;"),
        file("src/main.rs", "use crate::cli::{Cli, Command};"),
    ];
    assert_eq!(cli_readers(&reading), ["src/command/verify.rs"]);

    // a.rs -> b/c.rs -> b/mod.rs -> a.rs, through `super::` and a brace tree.
    let circle = [
        file("src/main.rs", "mod a;\nmod b;"),
        file("src/a.rs", "use crate::b::{c::Thing, other};"),
        file("src/b/mod.rs", "fn f() { crate::a::go(); }"),
        file(
            "src/b/c.rs",
            "use super::Base;\n#[cfg(test)]\nuse crate::a::x;",
        ),
    ];
    let graph = import_graph(&circle);
    assert_eq!(
        graph["src/b/c.rs"],
        BTreeSet::from(["src/b/mod.rs".to_string()]),
        "tests are not imports"
    );
    let found = cycles(&graph);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(cycle_problems(&found, &[]).len(), 1);
    let allowed: &[&[&str]] = &[&["src/a.rs", "src/b/c.rs", "src/b/mod.rs"]];
    assert!(cycle_problems(&found, allowed).is_empty(), "allowlisted");
    let exact: &[&[&str]] = &[&["src/a.rs", "src/b/mod.rs"], &["src/x.rs", "src/y.rs"]];
    // Without c.rs the circle is a.rs <-> b/mod.rs: allowed; x <-> y is gone.
    let problems = cycle_problems(&cycles(&import_graph(&circle[..3])), exact);
    assert_eq!(problems.len(), 1, "a gone cycle fails: {problems:?}");
    assert!(problems[0].contains("no longer exists"), "{problems:?}");
}
