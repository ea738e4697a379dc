//! The docs as readers follow them: the README stays a short front page, each task has its
//! page under `docs/`, and every relative link in `README.md`, `deploy/README.md` and
//! `docs/*.md` resolves: its file exists beside the linking file, and its `#anchor` is made by a
//! heading of the target, as GitHub makes anchors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The README's budget: what it is, the quick start, deploy in brief, links.
const README_MAX_LINES: usize = 250;

/// One page per task, each linked from the README.
const PAGES: [&str; 10] = [
    "deploy-eks.md",
    "restore.md",
    "continuous-backups.md",
    "drills-and-fleet.md",
    "metrics-and-alerts.md",
    "configuration.md",
    "benchmark.md",
    "security.md",
    "comparison.md",
    "development.md",
];

/// Every Markdown file the docs are made of, relative to the repository.
fn markdown_files() -> Vec<PathBuf> {
    let mut files = vec![
        PathBuf::from("README.md"),
        PathBuf::from("deploy/README.md"),
    ];
    let mut pages: Vec<PathBuf> = std::fs::read_dir(Path::new(ROOT).join("docs"))
        .expect("docs/ exists")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .map(|path| path.strip_prefix(ROOT).unwrap().to_path_buf())
        .collect();
    pages.sort();
    files.extend(pages);
    files
}

fn read(relative: &Path) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(relative))
        .unwrap_or_else(|err| panic!("{}: {err}", relative.display()))
}

/// The lines outside fenced code blocks (``` or ~~~, indented or not), numbered from 1.
fn prose(text: &str) -> Vec<(usize, &str)> {
    let mut lines = Vec::new();
    let mut fence: Option<(char, usize)> = None;
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let marker = trimmed.chars().next().filter(|c| *c == '`' || *c == '~');
        let run = marker.map_or(0, |m| trimmed.chars().take_while(|c| *c == m).count());
        match (fence, marker) {
            (None, Some(m)) if run >= 3 => fence = Some((m, run)),
            (Some((m, open)), Some(c))
                if c == m && run >= open && trimmed[run..].trim().is_empty() =>
            {
                fence = None
            }
            (None, _) => lines.push((index + 1, line)),
            (Some(_), _) => {}
        }
    }
    lines
}

/// `line` without its inline code spans (a run of N backticks up to the next run of N).
fn without_code(line: &str) -> String {
    let chars: Vec<char> = line.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '`' {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let run = chars[i..].iter().take_while(|c| **c == '`').count();
        let mut j = i + run;
        let mut close = None;
        while j < chars.len() {
            let other = chars[j..].iter().take_while(|c| **c == '`').count();
            if other == run {
                close = Some(j + other);
                break;
            }
            j += other.max(1);
        }
        match close {
            Some(end) => i = end,
            None => {
                out.extend(&chars[i..i + run]);
                i += run;
            }
        }
    }
    out
}

/// The targets of the inline links and images on `line` (`[text](target "title")`).
fn link_targets(line: &str) -> Vec<String> {
    let line = without_code(line);
    let mut targets = Vec::new();
    let mut rest = line.as_str();
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let mut depth = 1;
        let mut end = None;
        for (i, c) in after.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = Some(i);
                        break;
                    }
                }
                _ => {}
            }
        }
        let Some(end) = end else { break };
        let inner = after[..end].trim();
        let target = inner.split_whitespace().next().unwrap_or("");
        targets.push(
            target
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string(),
        );
        rest = &after[end + 1..];
    }
    targets
}

/// The anchor GitHub gives a heading: lowercase, backticks and punctuation dropped except
/// `-` and `_`, each space a `-`. A link in the heading counts by its text.
fn slug(heading: &str) -> String {
    let mut text = String::new();
    let mut rest = heading;
    // [text](target) -> text
    while let Some(open) = rest.find('[') {
        let Some(mid) = rest[open..].find("](") else {
            break;
        };
        let Some(close) = rest[open + mid..].find(')') else {
            break;
        };
        text.push_str(&rest[..open]);
        text.push_str(&rest[open + 1..open + mid]);
        rest = &rest[open + mid + close + 1..];
    }
    text.push_str(rest);
    text.trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .collect()
}

/// Every anchor the headings of `text` produce, duplicates numbered as GitHub does (`x`, `x-1`).
fn anchors(text: &str) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut anchors = Vec::new();
    for (_, line) in prose(text) {
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let title = line[hashes..].trim().trim_end_matches('#').trim_end();
        let base = slug(title);
        let count = seen.entry(base.clone()).or_insert(0);
        anchors.push(if *count == 0 {
            base
        } else {
            format!("{base}-{count}")
        });
        *count += 1;
    }
    anchors
}

/// `a/b/../c` -> `a/c`, without touching the disk.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[test]
fn every_relative_link_resolves_to_a_file_and_a_heading() {
    let mut broken = Vec::new();
    let mut checked = 0;
    let mut anchored = 0;
    for file in markdown_files() {
        let text = read(&file);
        for (number, line) in prose(&text) {
            for target in link_targets(line) {
                if target.starts_with("http://")
                    || target.starts_with("https://")
                    || target.starts_with("mailto:")
                {
                    continue;
                }
                checked += 1;
                let (path, anchor) = match target.split_once('#') {
                    Some((path, anchor)) => (path, Some(anchor)),
                    None => (target.as_str(), None),
                };
                let linked = if path.is_empty() {
                    file.clone()
                } else {
                    normalize(&file.parent().unwrap().join(path))
                };
                let at = format!("{}:{number}: ({target})", file.display());
                if path.starts_with('/') || linked.starts_with("..") {
                    broken.push(format!("{at}: leaves the repository"));
                    continue;
                }
                if !Path::new(ROOT).join(&linked).exists() {
                    broken.push(format!("{at}: no file {}", linked.display()));
                    continue;
                }
                let Some(anchor) = anchor else { continue };
                anchored += 1;
                if linked.extension().is_none_or(|ext| ext != "md") {
                    broken.push(format!("{at}: #{anchor} in a file that is not Markdown"));
                    continue;
                }
                let known = anchors(&read(&linked));
                if !known.iter().any(|a| a == anchor) {
                    broken.push(format!(
                        "{at}: no heading of {} makes #{anchor}; its anchors: {}",
                        linked.display(),
                        known.join(", ")
                    ));
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "{} broken link(s):\n{}",
        broken.len(),
        broken.join("\n")
    );
    // The walk found the links at all (a parser that sees none would pass anything).
    assert!(checked > 50, "only {checked} relative links found");
    assert!(anchored > 15, "only {anchored} links with an #anchor found");
}

#[test]
fn the_readme_is_a_short_front_page_linking_every_docs_page() {
    let readme = read(Path::new("README.md"));
    let lines = readme.lines().count();
    assert!(
        lines <= README_MAX_LINES,
        "README.md has {lines} lines, more than {README_MAX_LINES}: move the detail to a page under docs/"
    );
    for command in ["scripts/demo", "scripts/test"] {
        assert!(
            readme.contains(&format!("```sh\n{command}\n```")),
            "README.md's quick start lost `{command}`"
        );
    }
    let linked: Vec<String> = prose(&readme)
        .into_iter()
        .flat_map(|(_, line)| link_targets(line))
        .collect();
    let missing: Vec<&str> = PAGES
        .into_iter()
        .filter(|page| !linked.iter().any(|t| t == &format!("docs/{page}")))
        .collect();
    assert!(
        missing.is_empty(),
        "README.md links no page docs/{}",
        missing.join(", docs/")
    );
}

#[test]
fn each_docs_page_exists_and_opens_with_its_title_and_who_it_is_for() {
    let mut wrong = Vec::new();
    for page in PAGES {
        let relative = Path::new("docs").join(page);
        if !Path::new(ROOT).join(&relative).exists() {
            wrong.push(format!("{}: missing", relative.display()));
            continue;
        }
        let text = read(&relative);
        let mut lines = text.lines();
        let title = lines.next().unwrap_or("");
        let blank = lines.next().unwrap_or("x");
        let first = lines.next().unwrap_or("");
        if !title.starts_with("# ") || !blank.is_empty() || !first.starts_with("For ") {
            wrong.push(format!(
                "{}: should open with `# Title`, a blank line, and one sentence `For <reader>: <what it covers>.`",
                relative.display()
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn anchors_are_made_as_github_makes_them() {
    for (heading, anchor) in [
        ("Restoring", "restoring"),
        (
            "Out of the control plane's way",
            "out-of-the-control-planes-way",
        ),
        (
            "Exporting for `vcluster restore` and `vcluster create --restore`",
            "exporting-for-vcluster-restore-and-vcluster-create---restore",
        ),
        (
            "What a drill record proves (trust model)",
            "what-a-drill-record-proves-trust-model",
        ),
        ("The sidecar: `vcbackup run`", "the-sidecar-vcbackup-run"),
        ("snake_case and v0.30–v0.36", "snake_case-and-v030v036"),
        ("See [the page](x.md#y)", "see-the-page"),
    ] {
        assert_eq!(slug(heading), anchor, "{heading}");
    }
    assert_eq!(
        anchors("# A\n```sh\n# not a heading\n```\n## A\n#not one either\n### B ##\n"),
        ["a", "a-1", "b"]
    );
    assert_eq!(
        link_targets("[a](x.md#y) `[b](in-code.md)` ![c](img.png \"title\") [d](f(1).md)"),
        ["x.md#y", "img.png", "f(1).md"]
    );
}
