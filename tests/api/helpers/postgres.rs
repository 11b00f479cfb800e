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
/// template and fill the server's WAL. The schema is dropped when the test's
/// thread ends (see [`Schemas`]), pass or fail.
pub fn fresh_schema(admin: &str) -> String {
    let name = format!("goldrelay_test_{}", uuid::Uuid::new_v4().simple());
    on_server(admin, format!("CREATE SCHEMA {name}"));
    SCHEMAS.with(|schemas| schemas.borrow_mut().add(admin, &name));
    let mut url = reqwest::Url::parse(admin).expect("TEST_DATABASE_URL is a URL");
    url.query_pairs_mut()
        .append_pair("options[search_path]", &name);
    url.to_string()
}

/// Runs one statement on the server, on a thread of its own: settings are
/// built outside any runtime, and a thread's last moments have none either.
fn on_server(admin: &str, statement: String) {
    use sqlx::{Connection, Executor};
    let admin_url = admin.to_owned();
    let done = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut conn = sqlx::PgConnection::connect(&admin_url)
                .await
                .expect("TEST_DATABASE_URL accepts connections");
            conn.execute(statement.as_str())
                .await
                .unwrap_or_else(|e| panic!("{statement}: {e}"));
        });
    })
    .join();
    if let Err(panic) = done {
        std::panic::resume_unwind(panic);
    }
}

thread_local! {
    /// The schemas this thread made. libtest runs every test on a thread of
    /// its own, so this is dropped when the test ends, after its runtime and
    /// the goldrelays it started have gone.
    static SCHEMAS: std::cell::RefCell<Schemas> = const {
        std::cell::RefCell::new(Schemas(Vec::new()))
    };
}

/// Schemas to drop, with the server each is on. Without this the server
/// collected one schema per PostgreSQL test run (over a thousand), which
/// slowed its catalogue and the benchmarks run on it.
struct Schemas(Vec<(String, String)>);

impl Schemas {
    fn add(&mut self, admin: &str, name: &str) {
        self.0.push((admin.to_owned(), name.to_owned()));
    }
}

impl Drop for Schemas {
    fn drop(&mut self) {
        for (admin, name) in self.0.drain(..) {
            // A schema left behind is only clutter, and a panic in a thread's
            // last moments would abort the whole run: a failure is ignored.
            let _ = std::panic::catch_unwind(|| {
                on_server(&admin, format!("DROP SCHEMA IF EXISTS {name} CASCADE"));
            });
        }
    }
}
