//! Chatwoot renders every outgoing message as a Liquid template before it
//! stores it (`app/models/concerns/liquidable.rb`, 4.13.0): `{{contact.name}}`
//! becomes the contact's name, an unknown variable becomes nothing, and text
//! between a pair of backticks is wrapped in `{% raw %}` first, so code is left
//! alone. A gold reply is sent as approved unless it asks for Liquid
//! (`"liquid": true`): outside code, every `{{` and `{%` is written as a Liquid
//! string literal (`{{ '{{' }}`), which Chatwoot renders back to the very same
//! two characters, so the customer reads exactly the approved text.
//!
//! Not covered: a code span that itself contains `{% endraw %}` ends
//! Chatwoot's raw block early; such content was never safe in Chatwoot.

/// What to send for `content`: as it is when the reply asked for Liquid,
/// otherwise its literal form.
pub fn as_sent(content: &str, liquid: bool) -> std::borrow::Cow<'_, str> {
    if liquid || !(content.contains("{{") || content.contains("{%")) {
        std::borrow::Cow::Borrowed(content)
    } else {
        std::borrow::Cow::Owned(literal(content))
    }
}

/// The text Chatwoot must receive so that, once rendered, it reads `content`.
pub fn literal(content: &str) -> String {
    let mut out = String::with_capacity(content.len());
    let mut rest = content;
    // Backticks pair up left to right, as Chatwoot's /`(.*?)`/m does.
    while let Some(open) = rest.find('`') {
        let Some(close) = rest[open + 1..].find('`') else {
            break;
        };
        let code_end = open + 1 + close + 1;
        escape_into(&rest[..open], &mut out);
        out.push_str(&rest[open..code_end]);
        rest = &rest[code_end..];
    }
    escape_into(rest, &mut out);
    out
}

/// Writes `text` with each Liquid opener replaced by a literal of itself.
fn escape_into(text: &str, out: &mut String) {
    let mut rest = text;
    while let Some(at) = rest.find('{') {
        let opener = &rest[at..];
        if opener.starts_with("{{") || opener.starts_with("{%") {
            out.push_str(&rest[..at]);
            out.push_str("{{ '");
            out.push_str(&opener[..2]);
            out.push_str("' }}");
            rest = &opener[2..];
        } else {
            out.push_str(&rest[..at + 1]);
            rest = &opener[1..];
        }
    }
    out.push_str(rest);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_without_liquid_is_sent_as_it_is() {
        assert_eq!(as_sent("Hi {there} 100%", false), "Hi {there} 100%");
    }

    #[test]
    fn openers_outside_code_become_literals_and_code_is_left_alone() {
        assert_eq!(
            literal("Hi {{contact.name}}, run `{{x}}` {% if %}"),
            "Hi {{ '{{' }}contact.name}}, run `{{x}}` {{ '{%' }} if %}"
        );
    }

    #[test]
    fn a_reply_that_asks_for_liquid_is_sent_as_written() {
        assert_eq!(as_sent("Hi {{contact.name}}", true), "Hi {{contact.name}}");
    }
}
