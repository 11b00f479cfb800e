//! Holds fly.toml and the image to the code. Neither Fly nor Docker runs
//! here, so each test takes one promise those files make and checks it against
//! the real goldrelay: the health check, the port, the shutdown timing, the
//! release command, the secrets, and the database layout (one shared
//! PostgreSQL as written; the commented SQLite volume as the alternative). Of
//! the Dockerfile only its final stage, the image that runs, is read: which
//! binaries it carries, the user it runs as, the command it starts; how the
//! build stage gets there is left to the build. The app runs on SQLite here:
//! these tests hold the files to the code, not to a database.

use assert_cmd::Command;
use goldrelay::config::{parse_duration, Settings};
use goldrelay::sandbox::{self, SandboxConfig, SandboxHandle};
use goldrelay::startup::Application;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tempfile::TempDir;
use toml::{Table, Value};

/// Set only with `fly secrets set`: never in fly.toml or the image.
const SECRETS: [&str; 5] = [
    "GOLDRELAY_TOKENS",
    "CHATWOOT_API_TOKEN",
    "CHATWOOT_WEBHOOK_SECRETS",
    "DATABASE_URL",
    "GOLDRELAY_WEBHOOK_PATH_TOKEN",
];

/// Stands in for the Chatwoot URL the operator writes into fly.toml.
const OPERATOR_CHATWOOT_URL: &str = "https://chat.example.com";

/// What goldrelay still does after the drain before it exits: the worker hands
/// the jobs it holds back to the queue.
const AFTER_DRAIN: Duration = Duration::from_secs(5);

fn read(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn toml_file(path: &str) -> Table {
    read(path)
        .parse()
        .unwrap_or_else(|e| panic!("{path} is not valid TOML: {e}"))
}

fn table<'a>(parent: &'a Table, key: &str) -> &'a Table {
    parent
        .get(key)
        .and_then(Value::as_table)
        .unwrap_or_else(|| panic!("no [{key}] table"))
}

fn string<'a>(parent: &'a Table, key: &str) -> &'a str {
    parent
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string {key}"))
}

/// A Fly duration: a string such as "40s", or a number of seconds.
fn duration(value: &Value) -> Duration {
    match value {
        Value::String(raw) => parse_duration(raw).unwrap_or_else(|e| panic!("{raw:?}: {e}")),
        Value::Integer(secs) => Duration::from_secs((*secs).try_into().expect("not negative")),
        other => panic!("{other} is not a duration"),
    }
}

/// fly.toml's [env], as every machine of the app sees it.
fn fly_env(fly: &Table) -> HashMap<String, String> {
    table(fly, "env")
        .iter()
        .map(|(name, value)| {
            let value = value
                .as_str()
                .unwrap_or_else(|| panic!("[env] {name} is not a string"));
            (name.clone(), value.to_owned())
        })
        .collect()
}

/// What a deployed machine's environment holds: [env], the Chatwoot URL the
/// operator fills in, and the secrets from `fly secrets set`.
fn machine_env(fly: &Table, chatwoot_url: &str, database_url: &str) -> HashMap<String, String> {
    let mut env = fly_env(fly);
    let chatwoot = env.entry("CHATWOOT_BASE_URL".into()).or_default();
    if chatwoot.trim().is_empty() {
        *chatwoot = chatwoot_url.into();
    }
    let chatwoot_token = SandboxConfig::default().user_token;
    let secrets = [
        ("GOLDRELAY_TOKENS", "0123456789abcdef0123456789abcdef"),
        ("CHATWOOT_API_TOKEN", chatwoot_token.as_str()),
        ("CHATWOOT_WEBHOOK_SECRETS", "webhook-secret-from-chatwoot"),
        ("DATABASE_URL", database_url),
    ];
    env.extend(secrets.map(|(name, value)| (name.into(), value.into())));
    env
}

/// The settings `goldrelay serve` would load from that environment.
fn settings(env: &HashMap<String, String>) -> Settings {
    Settings::from_lookup(|name| env.get(name).cloned())
        .unwrap_or_else(|e| panic!("goldrelay refuses fly.toml's environment:\n{e}"))
}

fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}/goldrelay.db", dir.display())
}

/// A real goldrelay started with fly.toml's environment, on free local ports.
struct Deployed {
    api: String,
    metrics: Option<String>,
    _chatwoot: SandboxHandle,
    _dir: TempDir,
}

async fn deploy(fly: &Table) -> Deployed {
    let chatwoot = sandbox::start(SandboxConfig::default(), "127.0.0.1:0".parse().unwrap())
        .expect("sandbox starts");
    let dir = tempfile::tempdir().unwrap();
    let mut env = machine_env(fly, &chatwoot.base_url(), &sqlite_url(dir.path()));
    for listen in ["GOLDRELAY_LISTEN", "GOLDRELAY_METRICS_LISTEN"] {
        if let Some(addr) = env.get_mut(listen) {
            *addr = "127.0.0.1:0".into();
        }
    }
    let app = Application::build(settings(&env))
        .await
        .expect("goldrelay starts");
    let api = format!("http://{}", app.addr());
    let metrics = app.metrics_addr().map(|addr| format!("http://{addr}"));
    tokio::spawn(app.run_until(std::future::pending()));
    Deployed {
        api,
        metrics,
        _chatwoot: chatwoot,
        _dir: dir,
    }
}

async fn get(url: &str) -> reqwest::Response {
    reqwest::get(url).await.expect("request sent")
}

#[tokio::test]
async fn every_fly_health_check_answers_200_without_a_token() {
    let fly = toml_file("fly.toml");
    let deployed = deploy(&fly).await;
    let checks = table(&fly, "http_service")
        .get("checks")
        .and_then(Value::as_array)
        .expect("fly.toml has [[http_service.checks]]");
    assert!(!checks.is_empty(), "fly.toml has no health check");
    for check in checks
        .iter()
        .map(|c| c.as_table().expect("a check is a table"))
    {
        for timing in ["grace_period", "interval", "timeout"] {
            duration(
                check
                    .get(timing)
                    .unwrap_or_else(|| panic!("a check has no {timing}")),
            );
        }
        let method = check.get("method").and_then(Value::as_str).unwrap_or("GET");
        let path = string(check, "path");
        let response = reqwest::Client::new()
            .request(
                method.parse().expect("an HTTP method"),
                format!("{}{path}", deployed.api),
            )
            .send()
            .await
            .expect("request sent");
        assert_eq!(response.status(), 200, "{method} {path} with no token");
    }
}

#[tokio::test]
async fn fly_scrapes_metrics_from_a_port_the_public_service_does_not_expose() {
    let fly = toml_file("fly.toml");
    let scrape = table(&fly, "metrics");
    let port = scrape.get("port").and_then(Value::as_integer);
    let path = string(scrape, "path");
    let env = machine_env(&fly, OPERATOR_CHATWOOT_URL, "sqlite://goldrelay.db");
    let listen = settings(&env)
        .metrics_listen
        .expect("[env] sets GOLDRELAY_METRICS_LISTEN");
    assert_eq!(Some(i64::from(listen.port())), port, "[metrics] port");
    assert!(
        listen.ip().is_unspecified(),
        "{listen} is not all interfaces"
    );
    let public = table(&fly, "http_service").get("internal_port");
    assert_ne!(
        port.map(Value::Integer).as_ref(),
        public,
        "metrics would be public"
    );

    let deployed = deploy(&fly).await;
    let metrics = deployed.metrics.as_ref().expect("a metrics listener");
    let scraped = get(&format!("{metrics}{path}")).await;
    assert_eq!(scraped.status(), 200);
    assert!(scraped.text().await.unwrap().contains("goldrelay_"));
    let from_outside = get(&format!("{}{path}", deployed.api)).await;
    assert_eq!(from_outside.status(), 404, "{path} is public");
}

#[test]
fn fly_sends_traffic_to_the_address_goldrelay_binds() {
    let fly = toml_file("fly.toml");
    let port = table(&fly, "http_service")
        .get("internal_port")
        .and_then(Value::as_integer)
        .expect("http_service has an internal_port");
    let port = u16::try_from(port).expect("a TCP port");
    let env = machine_env(&fly, OPERATOR_CHATWOOT_URL, "sqlite://goldrelay.db");
    assert_eq!(
        settings(&env).listen,
        SocketAddr::from(([0, 0, 0, 0], port)),
        "GOLDRELAY_LISTEN must bind 0.0.0.0 on internal_port, or Fly's proxy cannot reach goldrelay"
    );
    let exposed = final_stage().args_of("EXPOSE");
    assert!(
        exposed
            .iter()
            .any(|ports| ports.split_whitespace().any(|p| p == port.to_string())),
        "the image should say `EXPOSE {port}`, not {exposed:?}"
    );
}

#[test]
fn the_image_binds_every_interface_on_the_port_it_exposes() {
    let image = final_stage();
    let exposed = image.args_of("EXPOSE");
    let port = exposed
        .iter()
        .flat_map(|ports| ports.split_whitespace())
        .next()
        .expect("the image exposes a port");
    let env = image.args_of("ENV");
    assert!(
        env.iter()
            .any(|e| e == &format!("GOLDRELAY_LISTEN=0.0.0.0:{port}")),
        "a container run without fly.toml (docker run -p) must bind 0.0.0.0:{port}: ENV is {env:?}"
    );
}

#[test]
fn fly_waits_for_goldrelay_to_finish_its_work_before_killing_it() {
    let fly = toml_file("fly.toml");
    // startup::shutdown_signal drains on SIGTERM (and SIGINT), nothing else.
    assert_eq!(string(&fly, "kill_signal"), "SIGTERM");
    let kill_timeout = duration(fly.get("kill_timeout").expect("fly.toml sets kill_timeout"));
    let env = machine_env(&fly, OPERATOR_CHATWOOT_URL, "sqlite://goldrelay.db");
    let drain = settings(&env).shutdown_drain;
    // Application::run_until drains the HTTP server and the delivery worker at
    // the same time, both within one drain.
    assert!(
        kill_timeout >= drain + AFTER_DRAIN,
        "kill_timeout {kill_timeout:?} must exceed GOLDRELAY_SHUTDOWN_DRAIN ({drain:?}) by at \
         least {AFTER_DRAIN:?}: the server and the worker drain together, then the worker \
         hands its jobs back"
    );
}

#[test]
fn the_release_command_is_a_goldrelay_subcommand_that_succeeds() {
    let fly = toml_file("fly.toml");
    let release = string(table(&fly, "deploy"), "release_command");
    let mut words = release.split_whitespace();
    assert_eq!(words.next(), Some("goldrelay"), "{release}");
    let dir = tempfile::tempdir().unwrap();
    let database = sqlite_url(dir.path());
    let env = machine_env(&fly, OPERATOR_CHATWOOT_URL, &database);
    // docs/deploy.md has the operator read the release command's output to
    // see which database it migrated.
    Command::new(env!("CARGO_BIN_EXE_goldrelay"))
        .args(words)
        .env_clear()
        .envs(&env)
        .assert()
        .success()
        .stdout(predicates::str::contains(database));
    assert!(
        dir.path().join("goldrelay.db").exists(),
        "`{release}` did not create the database"
    );
}

#[test]
fn fly_toml_mounts_no_volume_so_every_machine_shares_one_database() {
    let fly = toml_file("fly.toml");
    assert!(
        !fly.contains_key("mounts"),
        "fly.toml mounts a volume: each machine would keep its own SQLite database, and \
         scaling out would split the replies between them. As written, the machines share \
         the PostgreSQL database DATABASE_URL names; keep [mounts] commented as the \
         single-machine alternative"
    );
}

/// fly.toml as its SQLite alternative says to edit it: the commented `[mounts]`
/// and the commented lines right under it, uncommented.
fn with_sqlite_alternative(fly_toml: &str) -> Table {
    let mut in_block = false;
    let lines: Vec<&str> = fly_toml
        .lines()
        .map(|line| {
            if line.trim_end() == "# [mounts]" {
                in_block = true;
            } else if !line.starts_with("#   ") {
                in_block = false;
            }
            if in_block {
                &line[2..]
            } else {
                line
            }
        })
        .collect();
    lines
        .join("\n")
        .parse()
        .unwrap_or_else(|e| panic!("fly.toml with [mounts] uncommented is not valid TOML: {e}"))
}

#[test]
fn the_sqlite_alternative_keeps_its_database_on_the_volume_goldrelay_can_write() {
    let fly_toml = read("fly.toml");
    let alternative = with_sqlite_alternative(&fly_toml);
    let destination = string(table(&alternative, "mounts"), "destination");
    let database = fly_toml
        .split_whitespace()
        .find_map(|word| word.strip_prefix("DATABASE_URL=sqlite:"))
        .map(|path| format!("sqlite:{path}"))
        .expect("fly.toml's comments name the SQLite alternative's DATABASE_URL");
    assert!(
        database.starts_with(&format!("sqlite://{destination}/")),
        "{database} is not on the volume mounted at {destination}"
    );
    // Panics if goldrelay refuses that DATABASE_URL.
    settings(&machine_env(&alternative, OPERATOR_CHATWOOT_URL, &database));
    assert!(
        read("docs/deploy.md").contains(&database),
        "docs/deploy.md should tell the operator to set DATABASE_URL to {database}"
    );

    let image = final_stage();
    assert_eq!(
        image.args_of("WORKDIR").last().map(String::as_str),
        Some(destination),
        "the default DATABASE_URL (a relative path) should land on the volume"
    );
    let user = image.runs_as();
    let entrypoint = image.args_of("ENTRYPOINT").join(" ");
    assert!(
        entrypoint.contains(&format!("chown -R {user}:{user} {destination} ")),
        "the entrypoint should hand {destination} (a root-owned volume) to {user}"
    );
}

#[test]
fn the_image_starts_goldrelay_serve() {
    let image = final_stage();
    let cmd = image.args_of("CMD");
    let cmd = cmd.last().expect("the image has a CMD");
    let cmd: Vec<String> = serde_json::from_str(cmd).expect("CMD in exec form");
    assert_eq!(cmd, ["goldrelay", "serve"]);
    Command::new(env!("CARGO_BIN_EXE_goldrelay"))
        .args(&cmd[1..])
        .arg("--help")
        .assert()
        .success();
    // An entrypoint must hand over to the command, so goldrelay gets SIGTERM.
    let entrypoint = image.args_of("ENTRYPOINT").join(" ");
    assert!(
        entrypoint.is_empty() || entrypoint.contains("exec "),
        "{entrypoint}"
    );
}

#[test]
fn the_image_runs_goldrelay_as_a_user_it_creates_other_than_root() {
    let image = final_stage();
    let user = image.runs_as();
    assert!(
        !matches!(user.as_str(), "root" | "0"),
        "the image runs goldrelay as root"
    );
    let created = image
        .args_of("RUN")
        .iter()
        .any(|run| run.contains("useradd") && run.split_whitespace().any(|w| w == user));
    assert!(created, "the image never creates the user {user}");
}

#[test]
fn the_machine_keeps_running_and_is_reached_only_over_https() {
    let fly = toml_file("fly.toml");
    let service = table(&fly, "http_service");
    assert_eq!(service.get("force_https"), Some(&Value::Boolean(true)));
    // A stopped machine delivers nothing: the worker runs inside it.
    let auto_stop = service.get("auto_stop_machines");
    assert!(
        matches!(auto_stop, Some(Value::String(s)) if s == "off")
            || auto_stop == Some(&Value::Boolean(false)),
        "auto_stop_machines must be \"off\", not {auto_stop:?}"
    );
    let min_running = service
        .get("min_machines_running")
        .and_then(Value::as_integer);
    assert!(
        min_running >= Some(1),
        "min_machines_running is {min_running:?}"
    );
}

#[test]
fn no_secret_is_written_in_fly_toml_or_the_dockerfile() {
    let env = fly_env(&toml_file("fly.toml"));
    let dockerfile = read("Dockerfile");
    for secret in SECRETS {
        assert!(
            !env.contains_key(secret),
            "{secret} is set in [env]: use `fly secrets set`"
        );
        assert!(
            !dockerfile
                .lines()
                .any(|l| (l.starts_with("ENV ") || l.starts_with("ARG ")) && l.contains(secret)),
            "the Dockerfile sets {secret}"
        );
    }
}

/// Workspace members as (directory, manifest), from the root Cargo.toml.
fn members(key: &str) -> Vec<(String, Table)> {
    let root = toml_file("Cargo.toml");
    table(&root, "workspace")
        .get(key)
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("Cargo.toml has no workspace.{key}"))
        .iter()
        .map(|dir| {
            let dir = dir
                .as_str()
                .expect("a member is a path")
                .trim_end_matches('/');
            let prefix = if dir == "." {
                String::new()
            } else {
                format!("{dir}/")
            };
            let manifest = toml_file(&format!("{prefix}Cargo.toml"));
            (prefix, manifest)
        })
        .collect()
}

fn package_name(manifest: &Table) -> &str {
    string(table(manifest, "package"), "name")
}

/// The targets a manifest declares, as (kind, table).
fn declared_targets(manifest: &Table) -> Vec<(&'static str, &Table)> {
    let mut targets: Vec<_> = manifest
        .get("lib")
        .and_then(Value::as_table)
        .map(|lib| ("lib", lib))
        .into_iter()
        .collect();
    for kind in ["bin", "bench", "test", "example"] {
        let declared = manifest.get(kind).and_then(Value::as_array);
        targets.extend(
            declared
                .into_iter()
                .flatten()
                .filter_map(|t| Some((kind, t.as_table()?))),
        );
    }
    targets
}

#[test]
fn the_image_carries_every_binary_the_workspace_builds() {
    let installed: Vec<String> = final_stage()
        .args_of("COPY")
        .into_iter()
        .filter(|args| args.starts_with("--from=") && args.trim_end().ends_with(" /usr/local/bin/"))
        .flat_map(|args| {
            args.split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    let mut expected = Vec::new();
    for (_, manifest) in members("default-members") {
        let package = package_name(&manifest).to_owned();
        let mut binaries: Vec<String> = declared_targets(&manifest)
            .into_iter()
            .filter(|(kind, _)| *kind == "bin")
            .map(|(_, bin)| {
                bin.get("name")
                    .and_then(Value::as_str)
                    .unwrap_or(&package)
                    .to_owned()
            })
            .collect();
        if binaries.is_empty() {
            binaries.push(package);
        }
        expected.extend(binaries);
    }
    for binary in ["goldrelay", "smoke"] {
        assert!(
            expected.iter().any(|b| b == binary),
            "the workspace no longer builds {binary}"
        );
    }
    for binary in expected {
        let built = format!("/target/release/{binary}");
        assert!(
            installed.iter().any(|word| word.ends_with(&built)),
            "the image does not copy {binary} into /usr/local/bin"
        );
    }
}

#[test]
fn the_build_context_leaves_out_build_output_and_local_databases() {
    let ignored = read(".dockerignore");
    for entry in ["target/", ".git", ".goldrelay", "*.db*", "**/*.db*"] {
        assert!(
            ignored.lines().any(|line| line.trim() == entry),
            ".dockerignore should list {entry}: the Dockerfile copies the whole context"
        );
    }
}

/// One stage of the Dockerfile: its instructions, each as (keyword in
/// capitals, arguments), with continued lines joined and comments dropped.
struct Stage(Vec<(String, String)>);

impl Stage {
    /// The arguments of every `keyword` instruction, in order.
    fn args_of(&self, keyword: &str) -> Vec<String> {
        let matching = self.0.iter().filter(|(k, _)| k == keyword);
        matching.map(|(_, args)| args.clone()).collect()
    }

    /// The user the command runs as: the last `USER`, or else the user an
    /// entrypoint started as root switches to with `setpriv --reuid`.
    fn runs_as(&self) -> String {
        if let Some(user) = self.args_of("USER").last() {
            return user.split(':').next().unwrap_or_default().to_owned();
        }
        let entrypoint = self.args_of("ENTRYPOINT").join(" ");
        let switched = entrypoint
            .split_whitespace()
            .find_map(|word| word.strip_prefix("--reuid="));
        switched.map_or_else(
            || "root".to_owned(),
            |user| user.trim_matches(|c| c == '"' || c == '\\').to_owned(),
        )
    }
}

/// The Dockerfile's last stage: the image that is shipped and run.
fn final_stage() -> Stage {
    let dockerfile = read("Dockerfile");
    let mut instructions = Vec::new();
    let mut pending = String::new();
    for line in dockerfile.lines().map(str::trim) {
        if line.starts_with('#') || (line.is_empty() && pending.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(continued) => pending.push_str(continued),
            None => {
                pending.push_str(line);
                instructions.push(std::mem::take(&mut pending));
            }
        }
    }
    let last_from = instructions
        .iter()
        .rposition(|i| i.to_uppercase().starts_with("FROM "))
        .expect("the Dockerfile has a FROM");
    let stage = instructions[last_from + 1..].iter().map(|instruction| {
        let (keyword, args) = instruction.split_once(' ').unwrap_or((instruction, ""));
        (keyword.to_uppercase(), args.trim().to_owned())
    });
    Stage(stage.collect())
}
