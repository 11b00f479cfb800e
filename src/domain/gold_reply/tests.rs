//! Unit tests for the gold reply: parsing, every violation named, the fingerprint and the posted context.

use super::*;
use serde_json::json;

fn valid() -> Value {
    json!({
        "reply_id": "gr_1", "account_id": 1, "conversation_id": 7,
        "action": "approve_send", "content": "Hello", "approved_by": "priya"
    })
}

#[test]
fn a_valid_body_parses_with_defaults_filled_in() {
    let reply = GoldReply::parse(&valid()).expect("valid");
    assert!(!reply.private());
    assert!(reply.tags().is_empty());
    assert_eq!(reply.action(), Action::ApproveSend);
}

#[test]
fn liquid_defaults_to_off_and_only_turning_it_on_changes_the_fingerprint() {
    let plain = GoldReply::parse(&valid()).unwrap();
    let mut off = valid();
    off["liquid"] = json!(false);
    let off = GoldReply::parse(&off).unwrap();
    assert!(!off.liquid());
    assert_eq!(plain.fingerprint(), off.fingerprint());
    let mut on = valid();
    on["liquid"] = json!(true);
    let on = GoldReply::parse(&on).unwrap();
    assert!(on.liquid());
    assert_ne!(plain.fingerprint(), on.fingerprint());
}

#[test]
fn every_violation_is_reported_at_once() {
    let body = json!({"reply_id": "a b", "account_id": 0, "action": "send", "extra": 1});
    let errors = GoldReply::parse(&body).unwrap_err();
    let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
    for f in [
        "extra",
        "reply_id",
        "account_id",
        "conversation_id",
        "action",
        "content",
    ] {
        assert!(fields.contains(&f), "{f} missing from {fields:?}");
    }
}

#[test]
fn explicit_defaults_and_key_order_do_not_change_the_fingerprint() {
    let a = GoldReply::parse(&valid()).unwrap();
    let mut b = valid();
    b["private"] = json!(false);
    b["tags"] = json!([]);
    assert_eq!(a.fingerprint(), GoldReply::parse(&b).unwrap().fingerprint());
}

#[test]
fn a_nul_anywhere_is_refused_naming_its_field() {
    let cases = [
        ("content", json!("Hel\u{0}lo")),
        ("approved_by", json!("pri\u{0}ya")),
        ("reply_id", json!("gr\u{0}1")),
        ("tags", json!(["ok", "b\u{0}d"])),
        ("draft", json!({"text": ["fine", {"deep": "n\u{0}l"}]})),
        ("metadata", json!({"k\u{0}ey": 1})),
    ];
    for (field, value) in cases {
        let mut body = valid();
        body[field] = value;
        let errors = GoldReply::parse(&body).unwrap_err();
        let named = if field == "tags" { "tags[1]" } else { field };
        assert_eq!(errors.len(), 1, "{field}: {errors:?}");
        assert_eq!(errors[0].field, named);
    }
}

#[test]
fn an_integer_written_with_a_zero_fraction_is_an_integer() {
    let mut body = valid();
    body["conversation_id"] = json!(2372.0);
    assert_eq!(GoldReply::parse(&body).unwrap().conversation_id(), 2372);
    for refused in [json!(2372.5), json!(1e300), json!(0.0)] {
        body["conversation_id"] = refused;
        assert_eq!(
            GoldReply::parse(&body).unwrap_err()[0].field,
            "conversation_id"
        );
    }
}

#[test]
fn a_posted_context_is_kept_in_order_and_an_empty_one_means_no_turns() {
    let mut body = valid();
    body["context"] = json!([
        {"role": "user", "content": "Where is my parcel?"},
        {"role": "assistant", "content": "Let me check."}
    ]);
    let reply = GoldReply::parse(&body).unwrap();
    let turns = reply.context().unwrap();
    assert_eq!(turns.len(), 2);
    assert_eq!(turns[0].role, TurnRole::User);
    assert_eq!(turns[1].content, "Let me check.");
    assert_ne!(
        reply.fingerprint(),
        GoldReply::parse(&valid()).unwrap().fingerprint()
    );
    body["context"] = json!([]);
    assert_eq!(GoldReply::parse(&body).unwrap().context(), Some(&[][..]));
    body["context"] = Value::Null;
    assert_eq!(GoldReply::parse(&body).unwrap().context(), None);
}

#[test]
fn every_broken_turn_is_named_by_its_index() {
    let mut body = valid();
    body["context"] = json!([
        {"role": "system", "content": "You are helpful"},
        {"role": "user", "content": "  "},
        {"role": "user", "content": 7, "name": "x"},
        42,
        {"role": "assistant", "content": "n\u{0}l"}
    ]);
    let errors = GoldReply::parse(&body).unwrap_err();
    let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "context[0].role",
            "context[1].content",
            "context[2].name",
            "context[2].content",
            "context[3]",
            "context[4].content"
        ]
    );
    body["context"] = json!([1234, 5678]);
    assert_eq!(GoldReply::parse(&body).unwrap_err()[0].field, "context[0]");
    body["context"] = json!({"role": "user"});
    assert_eq!(GoldReply::parse(&body).unwrap_err()[0].field, "context");
}

#[test]
fn a_context_past_its_caps_is_refused_as_a_whole() {
    let mut body = valid();
    let turn = json!({"role": "user", "content": "hi"});
    body["context"] = Value::from(vec![turn; MAX_CONTEXT_TURNS + 1]);
    assert_eq!(GoldReply::parse(&body).unwrap_err()[0].field, "context");
    let long = "x".repeat(MAX_CONTENT_CHARS);
    let turn = json!({"role": "user", "content": long});
    let turns = MAX_CONTEXT_CHARS / MAX_CONTENT_CHARS + 1;
    body["context"] = Value::from(vec![turn; turns]);
    let errors = GoldReply::parse(&body).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].message.contains("in all"), "{errors:?}");
}

#[test]
fn reject_needs_no_approver_but_approve_does() {
    let mut body = valid();
    body.as_object_mut().unwrap().remove("approved_by");
    body["action"] = json!("reject");
    assert!(GoldReply::parse(&body).is_ok());
    body["action"] = json!("approve");
    assert_eq!(GoldReply::parse(&body).unwrap_err()[0].field, "approved_by");
}
