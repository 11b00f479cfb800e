//! Chatwoot renders every outgoing message as a Liquid template before it
//! stores it (`app/models/concerns/liquidable.rb`, 4.13.0): `{{contact.name}}`
//! becomes the contact's name, an unknown variable becomes nothing, text
//! between a pair of backticks is wrapped in `{% raw %}…{% endraw %}` first,
//! and a template that does not parse is stored as it was sent. A gold reply
//! is sent as approved unless it asks for Liquid (`"liquid": true`); otherwise
//! it is sent in a form that renders back to exactly the approved text.
//!
//! Chatwoot's Gemfile does not pin `liquid` (its lock has 5.4.0), so the form
//! must hold under both tokenizers Liquid has had (Shopify/liquid,
//! `lib/liquid/tokenizer.rb`):
//!
//! - up to v5.6.0 (v5.4.0 read; Debian's ruby-liquid 5.4.0 run): the source is
//!   split on `TemplateParser` (`lib/liquid.rb`): `{%.*?%}` or `{{.*?}}?`
//!   from the leftmost `{{` or `{%`.
//! - from v5.6.1 (read at v5.6.1, v5.7.0 and v5.13.0, the newest tag): a byte
//!   scanner. Inside `{{ … }}`, `next_variable_token` stops at the first `}`,
//!   but a `{%` met first turns the token into a tag running to the next `%}`
//!   (`next_tag_token_with_start`). The old escape `{{ '{%' }}` therefore no
//!   longer closes, the template fails to parse, and the customer reads it.
//!
//! The one form both accept: every `{` that the next character would turn
//! into a Liquid opener — a `{` before `{` or `%`, or before the backtick
//! Chatwoot puts `{% raw %}` in front of — is written as `{{ '{' }}`. That
//! token holds no `{%` and no `}` before its end, so both tokenizers cut it
//! the same way, and the lax parser (`Variable#lax_parse`,
//! `Expression.parse`, the default `error_mode` in both) renders the string
//! literal `'{'` as `{`. What is left between such tokens contains no `{{`
//! or `{%`, so it is plain text to either tokenizer, whatever `}}`, `%}` or
//! UTF-8 it holds.
//!
//! Inside a code span Chatwoot's `{% raw %}` is in force, and a raw block
//! ends at the first token that ends in an `endraw` tag
//! (`FullTokenPossiblyInvalid`, `lib/liquid/tags/raw.rb` at v5.4.0,
//! `lib/liquid/block_body.rb` at v5.13.0), which may be one the approved
//! text holds. So there the same `{` is written as
//! `{% endraw %}{{ '{' }}{% raw %}`: the raw block is closed by us, the brace
//! printed, and a new raw block opened, so no text of the reply can close it.
//! None of these forms holds a backtick, so Chatwoot pairs the same backticks
//! as the approved text has.

use std::borrow::Cow;

/// A `{` outside code, as a Liquid string literal.
const BRACE: &str = "{{ '{' }}";
/// A `{` inside Chatwoot's raw block: close it, print the brace, reopen it.
const BRACE_IN_RAW: &str = "{% endraw %}{{ '{' }}{% raw %}";

/// What to send for `content`: as it is when the reply asked for Liquid,
/// otherwise its literal form.
pub fn as_sent(content: &str, liquid: bool) -> Cow<'_, str> {
    if liquid || !content.as_bytes().windows(2).any(opens) {
        Cow::Borrowed(content)
    } else {
        Cow::Owned(literal(content))
    }
}

/// Whether a `{` followed by this byte can start Liquid markup once Chatwoot
/// has wrapped code in `{% raw %}`.
fn opens(pair: &[u8]) -> bool {
    pair[0] == b'{' && matches!(pair[1], b'{' | b'%' | b'`')
}

/// The text Chatwoot must receive so that, once rendered, it reads `content`.
pub fn literal(content: &str) -> String {
    let mut out = String::with_capacity(content.len() + content.len() / 4);
    let mut rest = content;
    // Backticks pair up left to right, as Chatwoot's /`(.*?)`/m does.
    while let Some(open) = rest.find('`') {
        let Some(close) = rest[open + 1..].find('`') else {
            break;
        };
        let code_end = open + 1 + close + 1;
        escape_into(&rest[..open + 1], BRACE, &mut out);
        escape_into(&rest[open + 1..code_end], BRACE_IN_RAW, &mut out);
        rest = &rest[code_end..];
    }
    escape_into(rest, BRACE, &mut out);
    out
}

/// Writes `text` with each `{` that would open Liquid markup as `brace`.
fn escape_into(text: &str, brace: &str, out: &mut String) {
    let bytes = text.as_bytes();
    let mut from = 0;
    for at in 0..bytes.len().saturating_sub(1) {
        if opens(&bytes[at..at + 2]) {
            out.push_str(&text[from..at]);
            out.push_str(brace);
            from = at + 1;
        }
    }
    out.push_str(&text[from..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::liquid::{render_outgoing, LiquidTokenizer};
    use proptest::prelude::*;

    const TOKENIZERS: [LiquidTokenizer; 2] = [LiquidTokenizer::Regex, LiquidTokenizer::ByteScanner];

    /// What the customer reads when goldrelay sends `approved` to a Chatwoot
    /// whose Liquid cuts templates with `tokenizer`.
    fn read(approved: &str, tokenizer: LiquidTokenizer) -> String {
        let drops = serde_json::json!({"contact": {"name": "Maria"}});
        render_outgoing(&as_sent(approved, false), &drops, tokenizer)
    }

    #[test]
    fn text_without_liquid_is_sent_as_it_is() {
        assert_eq!(
            as_sent("Hi {there} 100% {a}} %}", false),
            "Hi {there} 100% {a}} %}"
        );
    }

    #[test]
    fn openers_outside_code_become_a_literal_brace_and_code_reopens_raw() {
        assert_eq!(
            literal("Hi {{contact.name}}, run `{%x` {% if %}{`a`"),
            "Hi {{ '{' }}{contact.name}}, run \
             `{% endraw %}{{ '{' }}{% raw %}%x` {{ '{' }}% if %}{{ '{' }}`a`"
        );
    }

    #[test]
    fn a_reply_that_asks_for_liquid_is_sent_as_written() {
        assert_eq!(as_sent("Hi {{contact.name}}", true), "Hi {{contact.name}}");
    }

    #[test]
    fn hard_texts_read_as_approved_under_both_tokenizers() {
        let texts = [
            "{{ '{%' }}",
            "{{contact.name}} {% raw %}{{x}}{% endraw %} {%- endraw -%} {% endraw %}",
            "a {{ b {% c %} d }} e",
            "`{% endraw %}{{contact.name}}` and `{%- endraw %}` `{{x` `{%y` {{z}}",
            "{{{{%%}}}}{%{%}%}{{}}{%}{{-x-}}{%-#-%}",
            "{`x`} {{`y`}} `a{` {`{`}",
            "unbalanced {{ and {% and }} and %} and { and }",
            "ünïcödé {{ 名前 }} {% 🙂 %} `{{ ✓`",
            "```\n{% raw %}\n{{ x }}\n{% endraw %}\n```",
            "trailing {",
            "trailing {{",
            "`unpaired {{ backtick",
        ];
        for text in texts {
            for tokenizer in TOKENIZERS {
                assert_eq!(read(text, tokenizer), text, "{tokenizer:?}");
            }
        }
    }

    #[test]
    fn the_old_escape_fails_under_the_byte_scanner_and_the_new_one_holds() {
        // What the previous release sent for "{% if %}".
        let old = "{{ '{%' }} if %}";
        let drops = serde_json::json!({});
        assert_eq!(
            render_outgoing(old, &drops, LiquidTokenizer::Regex),
            "{% if %}"
        );
        assert_eq!(
            render_outgoing(old, &drops, LiquidTokenizer::ByteScanner),
            old
        );
        assert_eq!(read("{% if %}", LiquidTokenizer::ByteScanner), "{% if %}");
    }

    /// Texts built from the characters that matter to Liquid, with words it knows.
    fn liquidish() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("{"),
            Just("}"),
            Just("%"),
            Just("`"),
            Just("-"),
            Just("'"),
            Just(" "),
            Just("\n"),
            Just("raw"),
            Just("endraw"),
            Just("comment"),
            Just("contact.name"),
            Just("é"),
            Just("🙂"),
            Just("a"),
        ];
        proptest::collection::vec(piece, 0..40).prop_map(|p| p.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn every_text_reads_as_approved_under_both_tokenizers(text in liquidish()) {
            for tokenizer in TOKENIZERS {
                prop_assert_eq!(read(&text, tokenizer), text.clone());
            }
        }

        #[test]
        fn any_unicode_text_reads_as_approved_under_both_tokenizers(text in "\\PC{0,60}") {
            for tokenizer in TOKENIZERS {
                prop_assert_eq!(read(&text, tokenizer), text.clone());
            }
        }
    }
}
