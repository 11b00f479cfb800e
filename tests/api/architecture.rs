//! Holds `docs/architecture.md` and the README's *Layout* to the tree: every
//! file under `src/` has a row in the page's file index (a new file without
//! one fails here), no row names a file that is gone, and every path either
//! page quotes exists.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// Every file under `dir`, as a path relative to the repository.
fn files_under(dir: &Path, found: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path: PathBuf = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, found);
        } else {
            let relative = path.strip_prefix(root()).unwrap();
            found.insert(relative.to_string_lossy().replace('\\', "/"));
        }
    }
}

/// The text between `heading` and the next heading of the same level or higher.
fn section<'a>(text: &'a str, heading: &str) -> &'a str {
    let start = text
        .find(heading)
        .unwrap_or_else(|| panic!("no section {heading:?}"));
    let body = &text[start + heading.len()..];
    let end = body.find("\n## ").unwrap_or(body.len());
    &body[..end]
}

/// The first cell of each table row, when it is one quoted path.
fn index_rows(section: &str) -> BTreeSet<String> {
    section
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once('`'))
        .map(|(path, _)| path.to_owned())
        .collect()
}

/// Every quoted token that names a place in the repository.
fn quoted_paths(text: &str) -> Vec<String> {
    const ROOTS: [&str; 9] = [
        "src/",
        "tests/",
        "migrations/",
        "deploy/",
        "docs/",
        "smoke/",
        "bench/",
        ".ci/",
        "Cargo",
    ];
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|token| ROOTS.iter().any(|root| token.starts_with(root)))
        .filter(|token| !token.contains(' ') && !token.contains('*') && !token.contains('<'))
        .map(|token| token.trim_end_matches(['.', ',', ':']).to_owned())
        .collect()
}

#[test]
fn every_source_file_has_a_row_in_the_architecture_pages_index_and_every_row_a_file() {
    let page = read("docs/architecture.md");
    let listed = index_rows(section(&page, "## Every file"));
    let mut present = BTreeSet::new();
    files_under(&root().join("src"), &mut present);
    // A `tests.rs` holds the unit tests of the file beside it: the page says so once.
    present.retain(|path| !path.ends_with("/tests.rs"));
    let unlisted: Vec<_> = present.difference(&listed).collect();
    let gone: Vec<_> = listed.difference(&present).collect();
    assert!(
        unlisted.is_empty() && gone.is_empty(),
        "docs/architecture.md's file index is out of date:\n  files without a row: {unlisted:?}\n  rows without a file: {gone:?}"
    );
}

#[test]
fn every_path_the_architecture_page_and_the_readme_layout_quote_exists() {
    let page = read("docs/architecture.md");
    let readme = read("README.md");
    let layout = section(&readme, "## Layout");
    let missing: Vec<_> = quoted_paths(&page)
        .into_iter()
        .chain(quoted_paths(layout))
        .filter(|path| !root().join(path).exists())
        .collect();
    assert!(
        missing.is_empty(),
        "quoted but not in the tree: {missing:?}"
    );
}

/// The house's size rules, held by CI: a file a newcomer can read whole, a
/// function that fits on a screen.
const MOST_LINES_IN_A_FILE: usize = 600;
const MOST_LINES_IN_A_FUNCTION: usize = 60;

#[test]
fn no_file_under_src_is_over_600_lines() {
    let mut files = BTreeSet::new();
    files_under(&root().join("src"), &mut files);
    let long: Vec<String> = files
        .iter()
        .filter(|path| !path.ends_with(".png"))
        .filter_map(|path| {
            let lines = read(path).lines().count();
            (lines > MOST_LINES_IN_A_FILE).then(|| format!("{path}: {lines}"))
        })
        .collect();
    assert!(
        long.is_empty(),
        "over {MOST_LINES_IN_A_FILE} lines: {long:?}"
    );
}

/// Functions with a body (a declaration ending in `;` has none), from the
/// `fn` line to the `}` at its indentation, by their line counts.
fn function_lengths(text: &str) -> Vec<(String, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    for (start, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let signature = [
            "fn ",
            "pub fn ",
            "async fn ",
            "pub async fn ",
            "pub(crate) fn ",
        ]
        .iter()
        .chain(&[
            "pub(super) fn ",
            "pub(crate) async fn ",
            "pub(super) async fn ",
            "const fn ",
        ])
        .find_map(|prefix| trimmed.strip_prefix(prefix));
        let Some(rest) = signature else { continue };
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        // The signature runs to the first line ending in `{` or `;`.
        let Some(open) = (start..lines.len()).find(|&i| {
            let l = lines[i].trim_end();
            l.ends_with('{') || l.ends_with(';')
        }) else {
            continue;
        };
        if lines[open].trim_end().ends_with(';') {
            continue;
        }
        let close = (open + 1..lines.len()).find(|&i| {
            let l = lines[i];
            l.len() - l.trim_start().len() == indent && l.trim_start().starts_with('}')
        });
        if let Some(close) = close {
            found.push((name, close - start + 1));
        }
    }
    found
}

#[test]
fn no_function_under_src_is_over_60_lines() {
    let mut files = BTreeSet::new();
    files_under(&root().join("src"), &mut files);
    let long: Vec<String> = files
        .iter()
        .filter(|path| path.ends_with(".rs"))
        .flat_map(|path| {
            function_lengths(&read(path))
                .into_iter()
                .filter(|(_, lines)| *lines > MOST_LINES_IN_A_FUNCTION)
                .map(move |(name, lines)| format!("{path}: {name} ({lines} lines)"))
        })
        .collect();
    assert!(
        long.is_empty(),
        "over {MOST_LINES_IN_A_FUNCTION} lines: {long:?}"
    );
}

#[test]
fn a_function_is_measured_from_its_signature_to_its_closing_brace_and_a_declaration_is_not() {
    let text = "trait T {\n    fn declared(\n        a: u8,\n    ) -> u8;\n}\n\nfn body(\n    a: u8,\n) -> u8 {\n    a\n}\n";
    assert_eq!(function_lengths(text), [("body".to_owned(), 5)]);
}
