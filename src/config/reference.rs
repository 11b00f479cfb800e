//! The configuration reference `serve --help` prints: the README's table itself, so the two cannot drift.

const README: &str = include_str!("../../README.md");
const HEADER: &str = "| variable | default | meaning |";

/// One row of the README's configuration table, as plain text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    /// One name, or several sharing a row (`OTEL_…`), comma-separated.
    pub names: String,
    pub default: String,
    pub meaning: String,
}

/// The README's configuration table, row by row.
pub fn variables() -> Vec<Variable> {
    let rows = README
        .lines()
        .skip_while(|l| l.trim() != HEADER)
        .skip(2)
        .take_while(|l| l.starts_with('|'));
    rows.filter_map(|row| {
        let cells = cells(row);
        let [names, default, meaning] = cells.as_slice() else {
            return None;
        };
        Some(Variable {
            names: plain(names),
            default: plain(default),
            meaning: plain(meaning),
        })
    })
    .collect()
}

/// A table row's cells, an escaped `\|` kept inside its cell.
fn cells(row: &str) -> Vec<String> {
    let inner = row.trim().trim_start_matches('|').trim_end_matches('|');
    let mut cells = Vec::new();
    let mut cell = String::new();
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                cell.push('|');
                chars.next();
            }
            '|' => cells.push(std::mem::take(&mut cell).trim().to_owned()),
            _ => cell.push(c),
        }
    }
    cells.push(cell.trim().to_owned());
    cells
}

/// Markdown to terminal text: code spans unmarked, links reduced to their text.
fn plain(cell: &str) -> String {
    let mut out = String::with_capacity(cell.len());
    let mut rest = cell;
    while let Some(open) = rest.find('[') {
        let (before, from) = rest.split_at(open);
        out.push_str(before);
        let link = from.find("](").and_then(|mid| {
            let close = from[mid..].find(')')? + mid;
            Some((mid, close))
        });
        match link {
            Some((mid, close)) => {
                out.push_str(&from[1..mid]);
                rest = &from[close + 1..];
            }
            None => {
                out.push('[');
                rest = &from[1..];
            }
        }
    }
    out.push_str(rest);
    out.replace('`', "")
}

/// `serve --help`'s configuration section, wrapped for an 80-column terminal.
pub fn help() -> String {
    let mut out = String::new();
    wrap(
        &mut out,
        "Configuration, from the environment (the README's table; durations are \
         written like 250ms, 5s, 10m, 1h, 30d):",
        "",
        80,
    );
    for v in variables() {
        out.push('\n');
        let named = match v.default.as_str() {
            "required" => format!("{} [required]", v.names),
            default => format!("{} [default: {default}]", v.names),
        };
        wrap(&mut out, &named, "  ", 80);
        wrap(&mut out, &v.meaning, "      ", 80);
    }
    out
}

/// Appends `text` in lines of at most `width` columns (a longer word stands
/// alone), each starting with `indent`.
fn wrap(out: &mut String, text: &str, indent: &str, width: usize) {
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && indent.len() + line.len() + 1 + word.len() > width {
            out.push_str(indent);
            out.push_str(&line);
            out.push('\n');
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        out.push_str(indent);
        out.push_str(&line);
        out.push('\n');
    }
}
