//! Property tests for the gold reply: any body at all is parsed or refused without panicking, naming a field.

use super::*;
use proptest::prelude::*;

/// Any JSON value, a few levels deep, with NULs and odd numbers likely.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "[a-z\u{0}_:.-]{0,8}".prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::from),
            prop::collection::btree_map("[a-z\u{0}]{0,6}", inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A valid body with a few fields replaced, removed or added: close
/// enough to valid that many are accepted and the rest fail one rule.
fn body() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        prop::sample::select(FIELDS.to_vec()).prop_map(str::to_owned),
        "[a-z\u{0}]{0,6}",
    ];
    let value = prop::option::weighted(0.9, json());
    prop::collection::btree_map(key, value, 0..4).prop_map(|changes| {
        let mut body = serde_json::json!({
            "reply_id": "gr_1", "account_id": 1, "conversation_id": 7,
            "action": "approve_send", "content": "Hello", "approved_by": "priya"
        });
        let object = body.as_object_mut().expect("an object");
        for (key, value) in changes {
            match value {
                Some(v) => object.insert(key, v),
                None => object.remove(&key),
            };
        }
        body
    })
}

/// Whether `field` names something the body has or must have.
fn names_a_field(field: &str, body: &Map<String, Value>) -> bool {
    let tag = field
        .strip_prefix("tags[")
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|i| i.parse::<usize>().ok());
    let turn = field.starts_with("context[") && body.contains_key("context");
    FIELDS.contains(&field)
        || turn
        || body.contains_key(&field.replace("\\u0000", "\0"))
        || tag.is_some_and(|i| body["tags"].as_array().is_some_and(|t| i < t.len()))
}

proptest! {
    #[test]
    fn parsing_never_panics_and_every_error_names_a_field(body in body()) {
        let object = body.as_object().expect("an object");
        if let Err(errors) = GoldReply::parse(&body) {
            prop_assert!(!errors.is_empty());
            for error in errors {
                prop_assert!(!error.message.is_empty());
                prop_assert!(names_a_field(&error.field, object), "{error:?}");
            }
        }
    }

    #[test]
    fn anything_accepted_holds_no_nul_and_keeps_its_ids(body in body()) {
        if let Ok(reply) = GoldReply::parse(&body) {
            prop_assert!(reply.account_id() >= 1 && reply.conversation_id() >= 1);
            let stored = serde_json::to_string(&reply).expect("serialises");
            prop_assert!(!stored.contains("\\u0000"), "{stored}");
        }
    }

    #[test]
    fn any_value_at_all_is_refused_or_parsed_without_panicking(value in json()) {
        let _ = GoldReply::parse(&value);
    }
}
