//! The Liquid rendering Chatwoot applies to outgoing content before it is
//! stored (`app/models/concerns/liquidable.rb`, 4.13.0):
//!
//! ```ruby
//! before_create :process_liquid_in_content   # outgoing, content present
//! template = Liquid::Template.parse(modified_liquid_content)
//! self.content = template.render(message_drops)
//! rescue Liquid::Error                         # content left as it was
//! content.gsub(/`(.*?)`/m, '{% raw %}`\1`{% endraw %}')
//! ```
//!
//! This is our own small renderer for the subset that matters to a relay:
//! `{{ path }}` output with lax lookups (unknown → empty), a few filters,
//! `{% raw %}`, `{% comment %}`, `{% # … %}`, whitespace control, and the
//! syntax errors that make Chatwoot keep the content untouched. Control-flow
//! tags (`if`, `for`, `assign`, …) are not rendered: a content using them is
//! left as it was, which a test can tell from Chatwoot's output. The `liquid`
//! crate would render those too, but pulls in a parser generator and a
//! standard library for what is a dozen lines of need here.

use serde_json::Value;

/// Tags Liquid knows but this renderer does not render; Chatwoot would.
const UNRENDERED_TAGS: &[&str] = &[
    "if",
    "unless",
    "case",
    "for",
    "tablerow",
    "assign",
    "capture",
    "increment",
    "decrement",
    "cycle",
    "echo",
    "liquid",
    "render",
    "include",
    "ifchanged",
];

/// Renders outgoing `content` as `liquidable.rb` does; `drops` is the
/// `{contact, agent, conversation, inbox}` object. Returns the content
/// unchanged when it does not parse.
pub fn render_outgoing(content: &str, drops: &Value) -> String {
    render(&protect_backticks(content), drops).unwrap_or_else(|| content.to_owned())
}

/// `content.gsub(/`(.*?)`/m, '{% raw %}`\1`{% endraw %}')`: every pair of
/// backticks, and what is between them, is kept out of Liquid's reach. A
/// triple-backtick block becomes three pairs, which covers its body too.
pub fn protect_backticks(content: &str) -> String {
    let mut out = String::with_capacity(content.len());
    let mut rest = content;
    while let Some(open) = rest.find('`') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('`') else {
            break;
        };
        out.push_str(&rest[..open]);
        out.push_str("{% raw %}`");
        out.push_str(&after[..close]);
        out.push_str("`{% endraw %}");
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

/// One piece of a template, as Liquid's tokenizer cuts it.
enum Token<'a> {
    Text(&'a str),
    Output(&'a str),
    Tag(&'a str),
}

/// Cuts like Liquid's `TemplateParser`: `{%.*?%}` or `{{.*?}}?`. A token
/// that opens and does not close properly is a syntax error (`None`).
fn tokenize(template: &str) -> Option<Vec<Token<'_>>> {
    let mut tokens = Vec::new();
    let mut rest = template;
    while let Some(start) = next_opening(rest) {
        if start > 0 {
            tokens.push(Token::Text(&rest[..start]));
        }
        let from = &rest[start..];
        let (token, end) = match from.strip_prefix("{%") {
            Some(tag) => {
                let close = tag.find("%}")?; // "Tag '{%' was not properly terminated"
                (Token::Tag(&tag[..close]), close + 4)
            }
            None => {
                let end = output_end(from)?;
                (Token::Output(&from[2..end - 2]), end)
            }
        };
        tokens.push(token);
        rest = &from[end..];
    }
    if !rest.is_empty() {
        tokens.push(Token::Text(rest));
    }
    Some(tokens)
}

/// Where `{{.*?}}?` ends: lazily at the first `}`, then one more `}` if it
/// follows. Anything but `}}` there is "Variable '{{' was not properly terminated".
fn output_end(from: &str) -> Option<usize> {
    let first = from[2..].find('}')? + 3;
    let end = first + usize::from(from[first..].starts_with('}'));
    from[..end].ends_with("}}").then_some(end)
}

fn next_opening(text: &str) -> Option<usize> {
    match (text.find("{%"), text.find("{{")) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Markup without Liquid's `-` whitespace-control marks, and which sides had one.
fn strip_controls(markup: &str) -> (&str, bool, bool) {
    let left = markup.starts_with('-');
    let markup = markup.strip_prefix('-').unwrap_or(markup);
    let right = markup.ends_with('-');
    (markup.strip_suffix('-').unwrap_or(markup), left, right)
}

/// A tag's name (`\w+` or `#`) and the rest of its markup.
fn tag_parts(markup: &str) -> (&str, &str) {
    let markup = markup.trim_start();
    if let Some(rest) = markup.strip_prefix('#') {
        return ("#", rest);
    }
    let end = markup
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(markup.len());
    (&markup[..end], &markup[end..])
}

/// Renders a template; `None` is a Liquid syntax error.
pub fn render(template: &str, drops: &Value) -> Option<String> {
    let tokens = tokenize(template)?;
    let mut out = String::new();
    let mut text_start: Option<usize> = None;
    let mut trim_next = false;
    let mut iter = tokens.into_iter();
    while let Some(token) = iter.next() {
        let markup = match token {
            Token::Text(text) => {
                text_start = Some(out.len());
                out.push_str(if trim_next { text.trim_start() } else { text });
                trim_next = false;
                continue;
            }
            Token::Output(m) | Token::Tag(m) => m,
        };
        let (inner, left, right) = strip_controls(markup);
        // `{{-`/`{%-` strips the text node just before, and only that one.
        if let (true, Some(start)) = (left, text_start) {
            let kept = out[start..].trim_end().len();
            out.truncate(start + kept);
        }
        text_start = None;
        trim_next = right;
        match token {
            Token::Output(_) => out.push_str(&output(inner, drops)),
            _ => out.push_str(&tag(inner, &mut iter)?),
        }
    }
    Some(out)
}

/// A tag at the top level: what it renders to, or `None` for a syntax error
/// (an unknown tag, a block never closed) or a tag this renderer leaves alone.
fn tag<'a>(markup: &str, rest: &mut impl Iterator<Item = Token<'a>>) -> Option<String> {
    match tag_parts(markup) {
        ("#", _) => Some(String::new()),
        ("raw", args) if args.trim().is_empty() => raw_body(rest, "endraw"),
        ("comment", _) => raw_body(rest, "endcomment").map(|_| String::new()),
        (name, _) if UNRENDERED_TAGS.contains(&name) => None,
        _ => None, // "Unknown tag '…'"
    }
}

/// Every token up to `{% <end> %}`, verbatim; `None` if it never comes.
fn raw_body<'a>(rest: &mut impl Iterator<Item = Token<'a>>, end: &str) -> Option<String> {
    let mut body = String::new();
    for token in rest {
        match token {
            Token::Tag(m) if tag_parts(strip_controls(m).0).0 == end => return Some(body),
            Token::Text(t) => body.push_str(t),
            Token::Output(m) => body.push_str(&format!("{{{{{m}}}}}")),
            Token::Tag(m) => body.push_str(&format!("{{%{m}%}}")),
        }
    }
    None // "'raw' tag was never closed"
}

/// `{{ expr | filter: arg | … }}` in lax mode: an unknown variable is empty,
/// an unknown filter passes its input through (no `strict_filters`).
fn output(markup: &str, drops: &Value) -> String {
    let mut parts = markup.split('|');
    let mut value = lookup(parts.next().unwrap_or("").trim(), drops);
    for filter in parts {
        value = apply_filter(filter.trim(), value, drops);
    }
    to_liquid_string(&value)
}

fn lookup(expr: &str, drops: &Value) -> Value {
    if let Some(literal) = quoted(expr) {
        return Value::from(literal);
    }
    if let Ok(number) = expr.parse::<i64>() {
        return Value::from(number);
    }
    expr.split('.')
        .try_fold(drops, |value, key| value.get(key.trim()))
        .cloned()
        .unwrap_or(Value::Null)
}

fn quoted(expr: &str) -> Option<&str> {
    ['\'', '"']
        .iter()
        .find_map(|q| expr.strip_prefix(*q)?.strip_suffix(*q))
}

fn apply_filter(filter: &str, input: Value, drops: &Value) -> Value {
    let (name, arg) = filter.split_once(':').unwrap_or((filter, ""));
    let text = to_liquid_string(&input);
    match name.trim() {
        "default" if blank(&input) => lookup(arg.trim(), drops),
        "upcase" => Value::from(text.to_uppercase()),
        "downcase" => Value::from(text.to_lowercase()),
        "capitalize" => Value::from(capitalize(&text)),
        _ => input,
    }
}

fn blank(value: &Value) -> bool {
    match value {
        Value::Null | Value::Bool(false) => true,
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |first| {
        first
            .to_uppercase()
            .chain(chars.flat_map(char::to_lowercase))
            .collect()
    })
}

fn to_liquid_string(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn drops() -> Value {
        json!({"contact": {"name": "Maria Lopez", "first_name": "Maria"},
               "agent": {"name": "Priya"}, "conversation": {"display_id": 187},
               "inbox": {"name": "Support API"}})
    }

    #[test]
    fn variables_are_filled_and_unknown_ones_are_empty() {
        let out = render_outgoing(
            "Hi {{contact.name}}, {{ agent.name }} here ({{conversation.display_id}}, {{inbox.name}}){{ contact.nope }}.",
            &drops(),
        );
        assert_eq!(out, "Hi Maria Lopez, Priya here (187, Support API).");
    }

    #[test]
    fn backticks_and_raw_blocks_are_left_alone() {
        let text = "run `{{contact.name}}` or\n```\n{{ x }}\n```\n{% raw %}{{a}}{% endraw %}";
        assert_eq!(
            render_outgoing(text, &drops()),
            "run `{{contact.name}}` or\n```\n{{ x }}\n```\n{{a}}"
        );
    }

    #[test]
    fn a_syntax_error_leaves_the_content_as_it_was() {
        for text in [
            "{{ contact.name",
            "{{ a }",
            "{% raw %}x",
            "{% bogus %}",
            "{% endraw %}",
            "{%}",
        ] {
            assert_eq!(render_outgoing(text, &drops()), text);
        }
    }

    #[test]
    fn control_flow_tags_are_not_rendered_by_the_sandbox() {
        let text = "a {% if x %}b{% endif %}";
        assert_eq!(render_outgoing(text, &drops()), text);
    }

    #[test]
    fn whitespace_control_and_filters_work_as_in_liquid() {
        let out = render_outgoing(
            "a  {{- contact.first_name | upcase -}}  b {{ x | default: 'there' }}",
            &drops(),
        );
        assert_eq!(out, "aMARIAb there");
    }
}
