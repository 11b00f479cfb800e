//! PostgreSQL for tests: a schema of their own on the `TEST_DATABASE_URL`
//! server, and a clear failure for a PostgreSQL-only test run without one.

use goldrelay::store::Backend;

/// The `TEST_DATABASE_URL` server, which a PostgreSQL-only test cannot do
/// without: such a test is `#[ignore]`d, and run with `--include-ignored` and
/// no server it fails here rather than passing without having run.
pub fn server_url() -> String {
    let url = std::env::var("TEST_DATABASE_URL").unwrap_or_default();
    assert!(
        !url.trim().is_empty(),
        "this test needs PostgreSQL: set TEST_DATABASE_URL to a server \
         (e.g. postgres://postgres:postgres@127.0.0.1:5432/postgres)"
    );
    assert_eq!(
        Backend::of(&url),
        Some(Backend::Postgres),
        "TEST_DATABASE_URL does not name a PostgreSQL server"
    );
    url
}

/// A fresh schema on the `TEST_DATABASE_URL` server (see [`server_url`]).
pub fn fresh_database() -> String {
    fresh_schema(&server_url())
}

/// A schema of its own on the test server, named in the URL's search_path.
/// Schemas are cheap to create, where a database per test would copy a
/// template and fill the server's WAL.
pub fn fresh_schema(admin: &str) -> String {
    use sqlx::{Connection, Executor};
    let name = format!("goldrelay_test_{}", uuid::Uuid::new_v4().simple());
    let (admin_url, create) = (admin.to_owned(), format!("CREATE SCHEMA {name}"));
    // Settings are built outside any runtime, so this creates on a thread of its own.
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut conn = sqlx::PgConnection::connect(&admin_url)
                .await
                .expect("TEST_DATABASE_URL accepts connections");
            conn.execute(create.as_str()).await.expect("CREATE SCHEMA");
        });
    })
    .join()
    .unwrap();
    let mut url = reqwest::Url::parse(admin).expect("TEST_DATABASE_URL is a URL");
    url.query_pairs_mut()
        .append_pair("options[search_path]", &name);
    url.to_string()
}
