//! The judgement in the console: each reply's draft beside the approved text
//! with the changed words marked, and the summary view's charts, in a real
//! headless Chromium (see `console.rs` for how it is found and why the
//! browser tests are `#[ignore]`d outside CI); and the summary endpoint
//! behind them over HTTP.
//!
//! `GOLDRELAY_SCREENSHOTS=1` writes the README's screenshots to `docs/images/`.

use crate::console::cdp::Browser;
use crate::export::VIEWER_TOKEN;
use crate::helpers::browser::{console_url, screenshot_path, ChatwootOrigin};
use crate::helpers::{assert_problem, database_url, error_fields, TestApp, OPERATOR_TOKEN};
use chrono::{DateTime, Days, Utc};
use goldrelay::config::{BearerToken, DatabaseUrl};
use goldrelay::domain::{GoldReply, ReplyId};
use goldrelay::store::{Outcome, SharedStore};
use serde_json::{json, Value};
use std::time::Duration;
use tempfile::TempDir;

/// A viewer token bound to account 2.
const BOUND_VIEWER: &str = "bound-viewer-token-0123456789abcdefghij";

async fn spawn_console(database: Option<DatabaseUrl>, chatwoot: Option<&str>) -> TestApp {
    crate::helpers::browser::spawn_console(|s| {
        s.viewer_tokens.push(BearerToken::bound(2, BOUND_VIEWER));
        if let Some(url) = database {
            s.database_url = url;
        }
        if let Some(origin) = chatwoot {
            s.chatwoot_base_url = origin.parse().unwrap();
        }
    })
    .await
}

/// A stored-only decision on a draft (`draft: None`: sent without one).
fn decision(reply_id: &str, action: &str, draft: Option<&str>, content: &str) -> Value {
    let mut body = crate::helpers::browser::decision(reply_id, 21, action, content);
    body["draft"] = json!(draft.map(|text| json!({ "text": text, "model": "m-1" })));
    body
}

// ------------------------------------------------------------ the diff

/// The text of every element `selector` finds inside `reply_id`'s card.
fn texts_in(reply_id: &str, selector: &str) -> String {
    format!(
        "[...document.querySelectorAll('[data-reply-id=\"{reply_id}\"] {selector}')]\
         .map(e => e.textContent)"
    )
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "drives headless Chromium (apt-get install chromium); CI runs it with --include-ignored"]
async fn each_reply_shows_its_draft_beside_the_approved_text_with_the_changed_words_marked() {
    let app = spawn_console(None, None).await;
    let draft = "Hi Ann,\nyour order shipped today and arrives Friday.";
    let approved = "Hi Ann,\nyour parcel shipped today, arrives Monday.";
    for body in [
        decision("j-edited", "approve", Some(draft), approved),
        decision("j-same", "approve", Some("Thanks!\n"), "Thanks!"),
        decision(
            "j-rejected",
            "reject",
            Some("Refunds take a year."),
            "Refunds take a year.",
        ),
        decision("j-nodraft", "approve", None, "Written by hand."),
        decision(
            "j-markup",
            "approve",
            Some("<b>bold</b> claim"),
            "<i>calm</i> claim",
        ),
    ] {
        app.api.accept(&body).await;
    }
    let browser = Browser::launch().await;
    let fragment = format!("token={VIEWER_TOKEN}&account=1&conversation=21");
    let tab = browser
        .open(&console_url(&app.api.address, &fragment), 900, 1100)
        .await;
    tab.wait_for("document.querySelectorAll('#replies .card').length === 5")
        .await;

    // Exactly the words a person replaced or dropped, and those they wrote.
    let removed = tab
        .eval(&texts_in("j-edited", ".draft-text del.changed"))
        .await;
    assert_eq!(removed, json!(["order", "today", "and", "Friday."]));
    let added = tab
        .eval(&texts_in("j-edited", ".content ins.changed"))
        .await;
    assert_eq!(added, json!(["parcel", "today,", "Monday."]));
    // Both sides read exactly as written, line breaks included.
    let sides = tab.eval(&texts_in("j-edited", ".side .text")).await;
    assert_eq!(sides, json!([draft, approved]));
    assert_eq!(
        tab.eval(&texts_in("j-edited", ".side-label")).await,
        json!(["AI draft", "Approved text"])
    );

    let verdicts = tab
        .eval(
            "[...document.querySelectorAll('#replies .card')].map(c => \
             [c.dataset.replyId, c.querySelector('.verdict').textContent, \
              c.querySelector('.decider').textContent])",
        )
        .await;
    assert_eq!(
        verdicts,
        json!([
            ["j-edited", "edited", "approved by priya@example.com"],
            [
                "j-same",
                "approved as drafted",
                "approved by priya@example.com"
            ],
            ["j-rejected", "rejected", "rejected by priya@example.com"],
            ["j-nodraft", "edited", "approved by priya@example.com"],
            ["j-markup", "edited", "approved by priya@example.com"],
        ])
    );
    for unmarked in ["j-same", "j-rejected", "j-nodraft"] {
        assert_eq!(
            tab.eval(&texts_in(unmarked, ".changed")).await,
            json!([]),
            "{unmarked}"
        );
    }
    assert_eq!(
        tab.eval(&texts_in("j-nodraft", ".side-label")).await,
        json!(["Approved text · no AI draft was sent"])
    );
    // Markup in a draft is text: marked as changed, never made an element.
    assert_eq!(
        tab.eval(&texts_in("j-markup", "del.changed")).await,
        json!(["<b>bold</b>"])
    );
    assert_eq!(
        tab.eval("document.querySelectorAll('.card b, .card i').length")
            .await,
        0
    );
    tab.screenshot(&screenshot_path("images/console-judgement.png"))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "drives headless Chromium (apt-get install chromium); CI runs it with --include-ignored"]
async fn the_word_diff_marks_the_fewest_words_and_keeps_every_character() {
    let app = spawn_console(None, None).await;
    let browser = Browser::launch().await;
    let tab = browser
        .open(&console_url(&app.api.address, ""), 400, 300)
        .await;
    // [before, after, removed, added]
    let cases = json!([
        ["a b c", "a b c", [], []],
        ["", "new words", [], ["new", "words"]],
        ["old words", "", ["old", "words"], []],
        ["a b c d", "a x c d e", ["b"], ["x", "e"]],
        [
            "one two three",
            "three two one",
            ["one", "two"],
            ["two", "one"]
        ],
        ["  padded  text ", "padded text", [], []],
        ["la même chose", "la même chose !", [], ["!"]],
    ]);
    let marked = tab
        .eval(&format!(
            "{cases}.map(([before, after]) => {{ const d = wordDiff(before, after); \
             const back = (side) => side.map(t => t.word + t.space).join(''); \
             return [before, after, d.before.filter(t => t.changed).map(t => t.word), \
               d.after.filter(t => t.changed).map(t => t.word), back(d.before) === before && back(d.after) === after]; }})"
        ))
        .await;
    for (case, got) in cases
        .as_array()
        .unwrap()
        .iter()
        .zip(marked.as_array().unwrap())
    {
        assert_eq!(
            &got.as_array().unwrap()[..4],
            &case.as_array().unwrap()[..],
            "{case}"
        );
        assert_eq!(got[4], true, "{case}: a side does not read back as written");
    }
    // Past the size a table may take, the changed middle is marked whole.
    let long = tab
        .eval(
            "(() => { const a = Array.from({length: 3000}, (_, i) => 'a' + i).join(' '); \
             const b = Array.from({length: 3000}, (_, i) => 'b' + i).join(' '); \
             const d = wordDiff('same ' + a + ' end', 'same ' + b + ' end'); \
             return [d.before.filter(t => t.changed).length, d.after.filter(t => t.changed).length]; })()",
        )
        .await;
    assert_eq!(long, json!([3000, 3000]));
}

// ------------------------------------------------------------ the summary

/// Noon UTC `days_ago` days before today.
fn noon(days_ago: u64) -> DateTime<Utc> {
    let day = Utc::now().date_naive() - Days::new(days_ago);
    day.and_hms_opt(12, 0, 0).unwrap().and_utc()
}

fn day(days_ago: u64) -> String {
    (Utc::now().date_naive() - Days::new(days_ago)).to_string()
}

/// A database seeded with decisions on earlier days (which no HTTP post can
/// date), two of them delivered 2 s and 10 s after acceptance.
async fn seeded_database() -> (DatabaseUrl, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = DatabaseUrl::parse(&database_url(&dir)).unwrap();
    let store = goldrelay::store::open(&url).await.unwrap();
    let drafted = |id: &str, action: &str, content: &str| {
        let mut body = decision(id, action, Some("Your order shipped."), content);
        body["account_id"] = json!(1);
        GoldReply::parse(&body).unwrap()
    };
    let seeds = [
        (2, drafted("d2-a", "approve", "Your order shipped.")),
        (2, drafted("d2-b", "approve", "Your order shipped.")),
        // One word changed, then three.
        (2, drafted("d2-c", "approve", "Your parcel shipped.")),
        (1, drafted("d1-a", "approve", "Your parcel left us today.")),
        (1, drafted("d1-b", "reject", "Your order shipped.")),
        (1, drafted("d1-s1", "approve_send", "Your order shipped.")),
        (1, drafted("d1-s2", "approve_send", "Your order shipped.")),
    ];
    for (days_ago, reply) in &seeds {
        store.ingest(reply, noon(*days_ago)).await.unwrap();
    }
    deliver(&store, "d1-s1", noon(1) + chrono::Duration::seconds(2), 901).await;
    deliver(
        &store,
        "d1-s2",
        noon(1) + chrono::Duration::seconds(10),
        902,
    )
    .await;
    // Another account's decision, which account 1's summary leaves out.
    let mut other = decision("other-1", "reject", Some("x"), "x");
    other["account_id"] = json!(2);
    store
        .ingest(&GoldReply::parse(&other).unwrap(), noon(1))
        .await
        .unwrap();
    drop(store);
    (url, dir)
}

/// Claims `reply_id`'s job and records it delivered at `at`.
async fn deliver(store: &SharedStore, reply_id: &str, at: DateTime<Utc>, message_id: i64) {
    let id = ReplyId::parse(reply_id).unwrap();
    let lease = Duration::from_secs(60);
    loop {
        let jobs = store
            .claim("seed", at, lease, Duration::ZERO, 10)
            .await
            .unwrap();
        assert!(!jobs.is_empty(), "{reply_id} was never claimed");
        for job in jobs {
            let outcome = if job.reply_id == id {
                Outcome::Delivered { message_id }
            } else {
                Outcome::Unsent {
                    at,
                    maybe_sent: false,
                    attempts: 0,
                    why: None,
                }
            };
            store
                .finish(&job.reply_id, "seed", outcome, at)
                .await
                .unwrap();
            if job.reply_id == id {
                return;
            }
        }
    }
}

async fn summary(app: &TestApp, query: &str, token: &str) -> reqwest::Response {
    app.api
        .client
        .get(format!(
            "{}/api/gold-replies/summary?{query}",
            app.api.address
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

/// Today's decisions, posted over HTTP: one as drafted, one edited (two
/// words), one rejected; none sent.
async fn post_today(app: &TestApp) {
    let draft = Some("See you soon.");
    for body in [
        decision("t-same", "approve", draft, "See you soon."),
        decision("t-edit", "approve", draft, "See you next week."),
        decision("t-reject", "reject", draft, "See you soon."),
    ] {
        app.api.accept(&body).await;
    }
}

#[tokio::test]
async fn the_summary_counts_each_days_decisions_by_verdict_with_shares_edits_and_delivery_times() {
    let (url, _dir) = seeded_database().await;
    let app = spawn_console(Some(url), None).await;
    post_today(&app).await;
    let query = format!("account_id=1&from={}&to={}", day(3), day(0));
    let response = summary(&app, &query, VIEWER_TOKEN).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let count = |d: u64, a: u64, e: u64, r: u64| json!({"day": day(d), "as_drafted": a, "edited": e, "rejected": r});
    assert_eq!(
        body["days"],
        json!([
            count(3, 0, 0, 0),
            count(2, 2, 1, 0),
            count(1, 2, 1, 1),
            count(0, 1, 1, 1)
        ])
    );
    assert_eq!(
        body["totals"],
        json!({"as_drafted": 5, "edited": 3, "rejected": 2})
    );
    assert_eq!(
        body["shares"],
        json!({"as_drafted": 0.5, "edited": 0.3, "rejected": 0.2})
    );
    // Edited by 1 (order → parcel), 2 (soon. → next week.) and 4 words.
    assert_eq!(body["median_edit_distance"], 2);
    // 2 s and 10 s, exact: times are kept to three significant digits.
    assert_eq!(
        body["delivery"],
        json!({"delivered": 2, "median_ms": 2000, "p95_ms": 10000})
    );
    assert_eq!(
        (body["from"].clone(), body["account_id"].clone()),
        (json!(day(3)), json!(1))
    );
}

#[tokio::test]
async fn a_bound_viewer_summarises_its_own_account_only_and_a_bad_day_is_refused() {
    let (url, _dir) = seeded_database().await;
    let app = spawn_console(Some(url), None).await;
    let query = format!("from={}", day(3));
    let own: Value = summary(&app, &query, BOUND_VIEWER)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(own["account_id"], 2);
    assert_eq!(
        own["totals"],
        json!({"as_drafted": 0, "edited": 0, "rejected": 1})
    );
    let other = summary(&app, "account_id=1", BOUND_VIEWER).await;
    let problem = assert_problem(other, 403).await;
    assert_eq!(problem["type"], "urn:goldrelay:problem:account-forbidden");

    let everyone: Value = summary(&app, &query, OPERATOR_TOKEN)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(everyone["account_id"], Value::Null);
    assert_eq!(
        everyone["totals"],
        json!({"as_drafted": 4, "edited": 2, "rejected": 2})
    );

    let refused = summary(&app, "from=2026-02-30&to=yesterday", VIEWER_TOKEN).await;
    let problem = assert_problem(refused, 422).await;
    assert_eq!(error_fields(&problem), ["to", "from"]);
    // A period longer than 366 days keeps its last 366; a reversed one is empty.
    let long: Value = summary(&app, "from=2000-01-01&to=2024-12-31", VIEWER_TOKEN)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (long["from"].clone(), long["days"].as_array().unwrap().len()),
        (json!("2024-01-01"), 366)
    );
    let reversed: Value = summary(&app, "from=2024-12-31&to=2024-12-01", VIEWER_TOKEN)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(reversed["days"], json!([]));
    assert_eq!(reversed["shares"]["edited"], Value::Null);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_summary_counts_every_decision_of_a_period_read_over_many_pages() {
    let dir = tempfile::tempdir().unwrap();
    let url = DatabaseUrl::parse(&database_url(&dir)).unwrap();
    let store = goldrelay::store::open(&url).await.unwrap();
    // 1 201 decisions, more than two pages of rows, on the three days before
    // today (today's noon is still ahead in the morning, and the summary
    // counts nothing yet to come); every
    // third one rejected; and one half a second before the period (inside
    // the second the read starts early by), which stays out.
    let writes = (0..1202_i64).map(|i| {
        let store = store.clone();
        async move {
            let action = if i % 3 == 0 { "reject" } else { "approve" };
            let body = decision(&format!("many-{i:04}"), action, Some("Same."), "Same.");
            let at = if i == 1201 {
                noon(3) - chrono::Duration::hours(12) - chrono::Duration::milliseconds(500)
            } else {
                noon(1 + i as u64 % 3) + chrono::Duration::milliseconds(i)
            };
            store
                .ingest(&GoldReply::parse(&body).unwrap(), at)
                .await
                .unwrap();
        }
    });
    futures_util::future::join_all(writes).await;
    drop(store);
    let app = spawn_console(Some(url), None).await;
    let query = format!("from={}&to={}", day(3), day(1));
    let body: Value = summary(&app, &query, VIEWER_TOKEN)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        body["totals"],
        json!({"as_drafted": 800, "edited": 0, "rejected": 401})
    );
    let per_day: Vec<u64> = body["days"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["as_drafted"].as_u64().unwrap() + d["rejected"].as_u64().unwrap())
        .collect();
    assert_eq!(per_day, [400, 400, 401]);
}

/// A reply whose draft keeps its text at `output.text`, approved unchanged.
fn nested_draft() -> Value {
    let mut body = decision("nested-1", "approve", None, "Hi there.");
    body["draft"] = json!({ "output": { "text": "Hi there." }, "model": "m-2" });
    body
}

#[tokio::test]
async fn the_summary_reads_each_drafts_text_where_draft_field_says() {
    let app = spawn_console(None, None).await;
    app.api.accept(&nested_draft()).await;
    let totals = |body: Value| body["totals"].clone();
    let by_default = summary(&app, "", VIEWER_TOKEN).await.json().await.unwrap();
    assert_eq!(
        totals(by_default),
        json!({"as_drafted": 0, "edited": 1, "rejected": 0})
    );
    let named = summary(&app, "draft_field=output.text", VIEWER_TOKEN).await;
    let named: Value = named.json().await.unwrap();
    assert_eq!(
        totals(named),
        json!({"as_drafted": 1, "edited": 0, "rejected": 0})
    );
    let refused = summary(&app, "draft_field=output..text", VIEWER_TOKEN).await;
    let problem = assert_problem(refused, 422).await;
    assert_eq!(error_fields(&problem), ["draft_field"]);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "drives headless Chromium (apt-get install chromium); CI runs it with --include-ignored"]
async fn the_console_reads_each_drafts_text_where_the_fragments_draft_field_says() {
    let app = spawn_console(None, None).await;
    app.api.accept(&nested_draft()).await;
    let browser = Browser::launch().await;
    let verdict = "document.querySelector('[data-reply-id=\"nested-1\"] .verdict')?.textContent";
    let fragment = format!("token={VIEWER_TOKEN}&account=1&conversation=21");
    let tab = browser
        .open(&console_url(&app.api.address, &fragment), 800, 600)
        .await;
    assert_eq!(tab.wait_for(verdict).await, "edited");
    let named = format!("{fragment}&draft_field=output.text");
    let tab = browser
        .open(&console_url(&app.api.address, &named), 800, 600)
        .await;
    assert_eq!(tab.wait_for(verdict).await, "approved as drafted");
    assert_eq!(
        tab.eval(&texts_in("nested-1", ".side-label")).await,
        json!(["AI draft", "Approved text"])
    );
}

/// `[day, verdict, count]` of every bar of the per-day chart.
const BARS: &str = "[...document.querySelectorAll('#chart-days rect[data-verdict]')]\
     .map(r => [r.dataset.day, r.dataset.verdict, Number(r.dataset.count)])";

#[tokio::test(flavor = "multi_thread")]
#[ignore = "drives headless Chromium (apt-get install chromium); CI runs it with --include-ignored"]
async fn the_summary_view_draws_its_charts_from_the_periods_decisions() {
    let (url, _dir) = seeded_database().await;
    let app = spawn_console(Some(url), None).await;
    post_today(&app).await;
    let browser = Browser::launch().await;
    let fragment = format!("token={VIEWER_TOKEN}&view=summary&account=1");
    let tab = browser
        .open(&console_url(&app.api.address, &fragment), 1000, 1150)
        .await;
    tab.wait_for("document.querySelectorAll('#chart-days rect[data-verdict]').length > 0")
        .await;
    // The default period: the 30 days up to today, every one drawn.
    assert_eq!(
        tab.eval("document.getElementById('summary-from').value")
            .await,
        day(29)
    );
    assert_eq!(
        tab.eval("document.getElementById('summary-to').value")
            .await,
        day(0)
    );
    assert_eq!(
        tab.eval(BARS).await,
        json!([
            [day(2), "as_drafted", 2],
            [day(2), "edited", 1],
            [day(1), "as_drafted", 2],
            [day(1), "edited", 1],
            [day(1), "rejected", 1],
            [day(0), "as_drafted", 1],
            [day(0), "edited", 1],
            [day(0), "rejected", 1],
        ])
    );
    // Taller bars for more decisions: day 1's stack (4) beside today's (3).
    let heights = tab
        .eval(&format!(
            "['{}', '{}'].map(d => [...document.querySelectorAll(`#chart-days rect[data-day=\"${{d}}\"]`)]\
             .reduce((sum, r) => sum + Number(r.getAttribute('height')), 0))",
            day(1),
            day(0)
        ))
        .await;
    let (four, three) = (heights[0].as_f64().unwrap(), heights[1].as_f64().unwrap());
    assert!((four / three - 4.0 / 3.0).abs() < 0.01, "{heights}");
    assert_eq!(
        tab.eval(
            "[...document.querySelectorAll('#chart-shares text.legend')].map(t => t.textContent)"
        )
        .await,
        json!(["approved as drafted 50 %", "edited 30 %", "rejected 20 %"])
    );
    let stats = tab
        .eval("['stat-edit', 'stat-median', 'stat-p95'].map(id => document.getElementById(id).textContent)")
        .await;
    assert_eq!(stats, json!(["2 words", "2.0 s", "10.0 s"]));
    let text = tab
        .eval("document.getElementById('summary-text').textContent")
        .await;
    assert!(
        text.as_str().unwrap().starts_with("10 decisions from "),
        "{text}"
    );
    // Every chart is named for a screen reader, and the table has the same days.
    assert_eq!(
        tab.eval("[...document.querySelectorAll('svg.chart')].map(s => s.getAttribute('role') + ':' + !!s.getAttribute('aria-label'))")
            .await,
        json!(["img:true", "img:true", "img:true"])
    );
    assert_eq!(
        tab.eval("document.querySelectorAll('#summary-rows tr').length")
            .await,
        3
    );
    tab.screenshot(&screenshot_path("images/console-summary.png"))
        .await;

    // A narrower period, asked through the form.
    let ask = format!(
        "document.getElementById('summary-from').value = '{}'; \
         document.getElementById('summary-to').value = '{}'; \
         document.getElementById('summary-form').requestSubmit(); true",
        day(2),
        day(2)
    );
    tab.eval(&ask).await;
    tab.wait_for("document.querySelectorAll('#chart-days rect[data-verdict]').length === 2")
        .await;
    assert_eq!(
        tab.eval(BARS).await,
        json!([[day(2), "as_drafted", 2], [day(2), "edited", 1]])
    );
}

// ------------------------------------------------------------ the theme

/// A page on "Chatwoot"'s origin that frames the console and answers its
/// fetch-info with an `appContext` carrying `theme`, as Chatwoot does
/// (`app/javascript/dashboard/components/widgets/DashboardApp/Frame.vue`).
fn themed_chatwoot_page(console: &str, theme: &str) -> String {
    format!(
        r#"<!doctype html><html><body style="margin:0;background:#1b1f24">
<iframe id="app" src="{console}" style="width:900px;height:800px;border:0"></iframe>
<script>
window.addEventListener('message', function (e) {{
  if (e.data !== 'chatwoot-dashboard-app:fetch-info') return;
  e.source.postMessage(JSON.stringify({{ event: 'appContext', data: {{
    conversation: {{ id: 21, account_id: 1 }}, contact: {{ id: 5 }},
    currentAgent: {{ id: 1, name: 'Priya' }}, customAttributes: [], theme: '{theme}' }} }}), '*');
}});
</script></body></html>"#
    )
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "drives headless Chromium (apt-get install chromium); CI runs it with --include-ignored"]
async fn inside_chatwoot_the_console_takes_the_dark_theme_its_app_context_carries() {
    let chatwoot = ChatwootOrigin::bind().await;
    let origin = chatwoot.origin.clone();
    let app = spawn_console(None, Some(&origin)).await;
    app.api
        .accept(&decision(
            "dark-1",
            "approve",
            Some("Your order shipped today."),
            "Your parcel shipped today.",
        ))
        .await;
    let console = console_url(&app.api.address, &format!("token={VIEWER_TOKEN}"));
    chatwoot.serve(themed_chatwoot_page(&console, "dark"));

    let browser = Browser::launch().await;
    let tab = browser.open(&format!("{origin}/"), 900, 800).await;
    let frame = tab.child_frame().await;
    tab.wait_for_in(
        Some(&frame),
        "document.body.classList.contains('theme-dark')",
    )
    .await;
    tab.wait_for_in(
        Some(&frame),
        "document.querySelector('[data-reply-id=\"dark-1\"]') !== null",
    )
    .await;
    let background = tab
        .eval_in(
            Some(&frame),
            "getComputedStyle(document.body).backgroundColor",
        )
        .await;
    assert_eq!(background, "rgb(13, 17, 23)");
    let card = tab
        .eval_in(
            Some(&frame),
            "getComputedStyle(document.querySelector('.card')).backgroundColor",
        )
        .await;
    assert_eq!(card, "rgb(22, 27, 34)");
    tab.screenshot(&screenshot_path("images/console-judgement-dark.png"))
        .await;

    // Outside a frame no message changes the theme: the page is its own
    // parent. The test's listener, added last, runs after the console's.
    let alone = browser
        .open(
            &console_url(&app.api.address, &format!("token={VIEWER_TOKEN}")),
            600,
            400,
        )
        .await;
    let after = alone
        .eval(
            "new Promise(done => { \
               window.addEventListener('message', () => done(document.body.className), { once: true }); \
               window.postMessage(JSON.stringify({event: 'appContext', data: {theme: 'dark'}}), '*'); })",
        )
        .await;
    assert_eq!(after, "");
}
