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

//! Chatwoot does not pin `liquid` (its lock has 5.4.0), and Liquid has cut
//! templates in two ways (Shopify/liquid, `lib/liquid/tokenizer.rb`), so the
//! sandbox cuts with either, chosen by [`LiquidTokenizer`]
//! (`SandboxConfig::liquid_tokenizer`); the newest is the default.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How Liquid cuts a template into text, `{{ … }}` and `{% … %}` tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LiquidTokenizer {
    /// Liquid up to 5.6.0, and 5.4.0 of Chatwoot's `Gemfile.lock`:
    /// `source.split(TemplateParser)`, that is `{%.*?%}` or `{{.*?}}?` from
    /// the leftmost `{{` or `{%` (`lib/liquid.rb`, v5.4.0). A raw block ends
    /// at a token ending in `{% endraw %}`, without `-` (`tags/raw.rb`).
    Regex,
    /// Liquid from 5.6.1 to the newest release read, 5.13.0: a byte scanner
    /// where a `{%` inside `{{ … }}` makes the token a tag running to the next
    /// `%}` (`next_variable_token`, `next_tag_token_with_start`). A raw block
    /// also ends at `{%- endraw -%}` (`BlockBody::FullTokenPossiblyInvalid`).
    #[default]
    ByteScanner,
}

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
pub fn render_outgoing(content: &str, drops: &Value, tokenizer: LiquidTokenizer) -> String {
    render(&protect_backticks(content), drops, tokenizer).unwrap_or_else(|| content.to_owned())
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

/// The tokens of `template`, verbatim and in order, as Liquid cuts them.
pub fn tokenize(template: &str, tokenizer: LiquidTokenizer) -> Vec<&str> {
    match tokenizer {
        LiquidTokenizer::Regex => split(template),
        LiquidTokenizer::ByteScanner => scan(template),
    }
}

/// `source.split(TemplateParser)`: at the leftmost opener, `{%.*?%}`, else
/// `{{.*?}}?`, else the bare two-character opener.
fn split(template: &str) -> Vec<&str> {
    let mut tokens = Vec::new();
    let mut rest = template;
    while let Some(start) = next_opening(rest) {
        tokens.push(&rest[..start]);
        let from = &rest[start..];
        // Every opener is two ASCII bytes; what follows it is searched.
        let (opener, after) = from.split_at(2);
        let end = if opener == "{%" {
            after.find("%}").map_or(2, |close| close + 4)
        } else {
            after.find('}').map_or(2, |close| {
                let first = close + 3;
                first + usize::from(from[first..].starts_with('}'))
            })
        };
        tokens.push(&from[..end]);
        rest = &from[end..];
    }
    tokens.push(rest);
    tokens
}

fn next_opening(text: &str) -> Option<usize> {
    match (text.find("{%"), text.find("{{")) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `Tokenizer#tokenize` from v5.6.1 on: `next_token` until the end.
fn scan(template: &str) -> Vec<&str> {
    let mut tokens = Vec::new();
    let mut pos = 0;
    while pos < template.len() {
        let (token, next) = next_token(template, pos);
        tokens.push(token);
        pos = next;
    }
    tokens
}

/// One token from `pos`, and where the scanner stands after it.
fn next_token(source: &str, pos: usize) -> (&str, usize) {
    let bytes = source.as_bytes();
    if bytes[pos] == b'{' {
        match bytes.get(pos + 1) {
            Some(b'%') => return tag_token(source, pos, pos + 2, "{%"),
            Some(b'{') => return variable_token(source, pos),
            _ => {}
        }
    }
    match next_opening(&source[pos..]) {
        Some(at) => (&source[pos..pos + at], pos + at),
        None => (&source[pos..], source.len()),
    }
}

/// `skip_until(TAG_END)` from `from`; without one the token is `unclosed`
/// (`next_tag_token`: `"{%"`; `next_tag_token_with_start`: up to `from`).
fn tag_token<'a>(
    source: &'a str,
    start: usize,
    from: usize,
    unclosed: &'a str,
) -> (&'a str, usize) {
    match source[from..].find("%}") {
        Some(at) => (&source[start..from + at + 2], from + at + 2),
        None => (unclosed, from),
    }
}

/// `next_variable_token`: up to the first `}` (and a second one if it
/// follows), unless a `{%` comes first, which makes the token a tag.
fn variable_token(source: &str, start: usize) -> (&str, usize) {
    let bytes = source.as_bytes();
    let mut pos = start + 2;
    while let Some(at) = bytes[pos..].iter().position(|b| matches!(b, b'{' | b'}')) {
        let a = pos + at;
        let Some(&b) = bytes.get(a + 1) else {
            // The last byte: `{{ … }` is a token, `{{ … {` only "{{".
            return match bytes[a] {
                b'}' => (&source[start..], source.len()),
                _ => ("{{", source.len()),
            };
        };
        match (bytes[a], b) {
            (b'}', b'}') => return (&source[start..a + 2], a + 2),
            (b'}', _) => return (&source[start..a + 1], a + 1),
            (b'{', b'%') => return tag_token(source, start, a + 2, &source[start..a + 2]),
            _ => pos = a + 1,
        }
    }
    ("{{", source.len())
}

/// What a text node reads when a `-` mark trims it.
fn strip_controls(markup: &str) -> (&str, bool, bool) {
    let left = markup.starts_with('-');
    let markup = markup.strip_prefix('-').unwrap_or(markup);
    let right = markup.ends_with('-');
    (markup.strip_suffix('-').unwrap_or(markup), left, right)
}

/// A tag's name (`\w+` or `#`) and the rest of its markup.
fn tag_parts(markup: &str) -> (&str, &str) {
    let markup = markup.trim_start_matches(ruby_space);
    if let Some(rest) = markup.strip_prefix('#') {
        return ("#", rest);
    }
    let end = markup.find(|c: char| !is_word(c)).unwrap_or(markup.len());
    (&markup[..end], &markup[end..])
}

/// Ruby's `\w`: ASCII only.
fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Ruby's `\s`.
fn ruby_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

/// A token as the document parser reads it; `None` is a syntax error
/// ("Variable '{{' was not properly terminated", the same for tags).
enum Token<'a> {
    Text(&'a str),
    Output(&'a str),
    Tag(&'a str),
}

fn classify(token: &str) -> Option<Token<'_>> {
    let inner = || (token.len() >= 4).then(|| &token[2..token.len() - 2]);
    if token.starts_with("{%") {
        token.ends_with("%}").then(inner).flatten().map(Token::Tag)
    } else if token.starts_with("{{") {
        token
            .ends_with("}}")
            .then(inner)
            .flatten()
            .map(Token::Output)
    } else {
        Some(Token::Text(token))
    }
}

/// Renders a template; `None` is a Liquid syntax error.
pub fn render(template: &str, drops: &Value, tokenizer: LiquidTokenizer) -> Option<String> {
    let mut out = String::new();
    let mut text_start: Option<usize> = None;
    let mut trim_next = false;
    let mut iter = tokenize(template, tokenizer)
        .into_iter()
        .filter(|t| !t.is_empty());
    while let Some(token) = iter.next() {
        let markup = match classify(token)? {
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
        if token.starts_with("{{") {
            out.push_str(&output(inner, drops));
            continue;
        }
        let (body, trim) = tag(inner, &mut iter, tokenizer)?;
        out.push_str(&body);
        trim_next |= trim;
    }
    Some(out)
}

/// A tag at the top level: what it renders to and whether its end tag trims
/// the text after it, or `None` for a syntax error (an unknown tag, a block
/// never closed) or a tag this renderer leaves alone.
fn tag<'a>(
    markup: &str,
    rest: &mut impl Iterator<Item = &'a str>,
    tokenizer: LiquidTokenizer,
) -> Option<(String, bool)> {
    match tag_parts(markup) {
        ("#", _) => Some((String::new(), false)),
        ("raw", args) if args.trim_matches(ruby_space).is_empty() => raw_body(rest, tokenizer),
        ("comment", _) => comment_body(rest).map(|()| (String::new(), false)),
        (name, _) if UNRENDERED_TAGS.contains(&name) => None,
        _ => None, // "Unknown tag '…'"
    }
}

/// Every token up to the one that ends the raw block, verbatim, and whether
/// that one trims what follows (from 5.5 on); `None` if it never comes.
fn raw_body<'a>(
    rest: &mut impl Iterator<Item = &'a str>,
    tokenizer: LiquidTokenizer,
) -> Option<(String, bool)> {
    let dash = tokenizer == LiquidTokenizer::ByteScanner;
    let mut body = String::new();
    for token in rest {
        match ends_in_tag(token, dash) {
            Some((before, "endraw")) => {
                body.push_str(before);
                return Some((body, dash && token.ends_with("-%}")));
            }
            _ => body.push_str(token),
        }
    }
    None // "'raw' tag was never closed"
}

/// `FullTokenPossiblyInvalid`, `\A(.*)\{%-?\s*(\w+)\s*(.*)?-?%\}\z` (the
/// `-` marks from 5.5 on): the text before the last `{%` that is followed by
/// a word, and that word, when the token ends with `%}`.
fn ends_in_tag(token: &str, dash: bool) -> Option<(&str, &str)> {
    let head = token.strip_suffix("%}")?;
    let mut search = head.len();
    while let Some(open) = token[..search].rfind("{%") {
        let mut after = &token[open + 2..];
        if dash {
            after = after.strip_prefix('-').unwrap_or(after);
        }
        let after = after.trim_start_matches(ruby_space);
        let word = &after[..after.find(|c: char| !is_word(c)).unwrap_or(after.len())];
        let word_end = token.len() - after.len() + word.len();
        if !word.is_empty() && word_end <= head.len() {
            return Some((&token[..open], word));
        }
        search = open + 1;
    }
    None
}

/// A comment block, up to its `{% endcomment %}`; `None` if it never comes.
fn comment_body<'a>(rest: &mut impl Iterator<Item = &'a str>) -> Option<()> {
    rest.map(classify)
        .any(|t| matches!(t, Some(Token::Tag(m)) if tag_parts(strip_controls(m).0).0 == "endcomment"))
        .then_some(())
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
    use LiquidTokenizer::{ByteScanner, Regex};

    fn drops() -> Value {
        json!({"contact": {"name": "Maria Lopez", "first_name": "Maria"},
               "agent": {"name": "Priya"}, "conversation": {"display_id": 187},
               "inbox": {"name": "Support API"}})
    }

    /// What either tokenizer renders `text` to, when both agree.
    fn rendered(text: &str) -> String {
        let old = render_outgoing(text, &drops(), Regex);
        assert_eq!(old, render_outgoing(text, &drops(), ByteScanner), "{text}");
        old
    }

    #[test]
    fn variables_are_filled_and_unknown_ones_are_empty() {
        let out = rendered(
            "Hi {{contact.name}}, {{ agent.name }} here ({{conversation.display_id}}, {{inbox.name}}){{ contact.nope }}.",
        );
        assert_eq!(out, "Hi Maria Lopez, Priya here (187, Support API).");
    }

    #[test]
    fn backticks_and_raw_blocks_are_left_alone() {
        let text =
            "run `{{contact.name}}` or\n```\n{{ x }}\n```\n{% raw %}{{a}}{% endraw %} `{{b` `{%c`";
        assert_eq!(
            rendered(text),
            "run `{{contact.name}}` or\n```\n{{ x }}\n```\n{{a}} `{{b` `{%c`"
        );
    }

    #[test]
    fn a_syntax_error_leaves_the_content_as_it_was() {
        for text in [
            "{{ contact.name",
            "{{ a }",
            "{{ a } b",
            "{% raw %}x",
            "{% bogus %}",
            "{% endraw %}",
            "{%}",
            "{{ a {% b %} }}",
            "`{% endraw %}`",
        ] {
            assert_eq!(rendered(text), text);
        }
    }

    #[test]
    fn a_tag_opener_inside_an_output_is_cut_differently_by_each_tokenizer() {
        let text = "{{ '{%' }} x %}";
        assert_eq!(tokenize(text, Regex), ["", "{{ '{%' }}", " x %}"]);
        assert_eq!(tokenize(text, ByteScanner), ["{{ '{%' }} x %}"]);
        assert_eq!(render_outgoing(text, &drops(), Regex), "{% x %}");
        assert_eq!(render_outgoing(text, &drops(), ByteScanner), text);
    }

    #[test]
    fn the_byte_scanner_cuts_as_liquids_own_tokenizer_does() {
        // Cases from Shopify/liquid's test/unit/tokenizer_unit_test.rb and
        // the branches of `next_variable_token`.
        for (text, tokens) in [
            (
                "{{funk}} {{so}} {{brother}}",
                &["{{funk}}", " ", "{{so}}", " ", "{{brother}}"][..],
            ),
            ("{{ a }x", &["{{ a }", "x"]),
            ("{{ a }", &["{{ a }"]),
            ("{{ a", &["{{"]),
            ("{{ a { b", &["{{"]),
            ("{{{%x%}y", &["{{{%x%}", "y"]),
            ("{{ {% x", &["{{ {%", " x"]),
            ("{% x", &["{%", " x"]),
            ("a{b{{c}}", &["a{b", "{{c}}"]),
        ] {
            assert_eq!(tokenize(text, ByteScanner), tokens, "{text}");
        }
    }

    #[test]
    fn only_the_newer_liquid_ends_raw_at_an_endraw_with_dashes() {
        let text = "{% raw %}a{%- endraw -%}  b{% endraw %}";
        assert_eq!(render_outgoing(text, &drops(), Regex), "a{%- endraw -%}  b");
        assert_eq!(render_outgoing(text, &drops(), ByteScanner), text);
        assert_eq!(
            render_outgoing("{% raw %}a{%- endraw -%}  b", &drops(), ByteScanner),
            "ab"
        );
    }

    #[test]
    fn control_flow_tags_are_not_rendered_by_the_sandbox() {
        let text = "a {% if x %}b{% endif %}";
        assert_eq!(rendered(text), text);
    }

    #[test]
    fn whitespace_control_and_filters_work_as_in_liquid() {
        let out = rendered("a  {{- contact.first_name | upcase -}}  b {{ x | default: 'there' }}");
        assert_eq!(out, "aMARIAb there");
    }
}
