//! Wiring: store, Chatwoot client, HTTP server, delivery worker, shutdown.

use crate::chatwoot::ChatwootClient;
use crate::config::Settings;
use crate::delivery::{Policy, Worker, WorkerLink};
use crate::http::{self, AppState, BearerTokens, Role, WebhookAuth};
use crate::jobs;
use crate::metrics::Metrics;
use crate::store::{self, SharedStore};
use actix_web::dev::Server;
use actix_web::{web, HttpServer};
use anyhow::Context;
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// A goldrelay ready to run: bound, migrated, wired.
pub struct Application {
    addr: SocketAddr,
    server: Server,
    metrics_server: Option<(SocketAddr, Server)>,
    worker: Worker,
    store: SharedStore,
    event_retention: std::time::Duration,
}

impl Application {
    /// Opens the store, binds the listener (port 0 picks a free one) and builds the worker.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let tuning = store::StoreOptions {
            max_waiting_writes: settings.write_queue,
            ..store::StoreOptions::default()
        };
        let store = store::open_with(&settings.database_url, &tuning)
            .await
            .with_context(|| format!("could not open the database at {}", settings.database_url))?;
        let client = ChatwootClient::new(
            settings.chatwoot_base_url.clone(),
            settings.chatwoot_api_token.clone(),
            settings.chatwoot_timeout,
        )
        .context("could not build the Chatwoot client")?;
        let link = WorkerLink::default();
        store.wake_on_new_jobs(link.wake.clone());
        let metrics = Arc::new(Metrics::new());
        let worker = Worker::new(
            store.clone(),
            client,
            policy(&settings),
            link.clone(),
            metrics.clone(),
        )
        .capturing_context(settings.capture_context);
        let state = app_state(&settings, &store, &link, &metrics);
        let listener = listen(settings.listen)
            .with_context(|| format!("could not listen on {}", settings.listen))?;
        let addr = listener.local_addr()?;
        let metrics_server = settings
            .metrics_listen
            .map(|at| metrics_server(state.clone(), at))
            .transpose()?;
        let stall = settings.request_timeout;
        let server = HttpServer::new(move || http::app(state.clone()))
            // A head must arrive within the deadline too; actix answers 408.
            .client_request_timeout(settings.request_timeout)
            .on_connect(move |connection, _| cut_off_when_stalled(connection, stall))
            .disable_signals()
            .shutdown_timeout(settings.shutdown_drain.as_secs().max(1))
            .listen(listener)?
            .run();
        Ok(Self {
            addr,
            server,
            metrics_server,
            worker,
            store,
            event_retention: settings.event_retention,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where `/metrics` is served when it has an address of its own.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_server.as_ref().map(|(addr, _)| *addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn store(&self) -> SharedStore {
        self.store.clone()
    }

    /// Serves until `stop` completes, then stops accepting, lets in-flight
    /// requests and deliveries finish within the drain period, and returns.
    pub async fn run_until(self, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
        let shutdown = CancellationToken::new();
        let worker = tokio::spawn(self.worker.run(shutdown.clone()));
        tokio::spawn(jobs::prune_events(
            self.store.clone(),
            self.event_retention,
            shutdown.clone(),
        ));
        let handle = self.server.handle();
        let server = tokio::spawn(self.server);
        if let Some((_, metrics)) = self.metrics_server {
            // Metrics stop with the process; nothing there needs draining.
            tokio::spawn(metrics);
        }
        stop.await;
        tracing::info!("shutting down: no new requests; finishing in-flight work");
        // The server and the worker drain at the same time, so shutdown takes
        // at most one GOLDRELAY_SHUTDOWN_DRAIN.
        shutdown.cancel();
        let ((), worker) = tokio::join!(handle.stop(true), worker);
        worker.context("the delivery worker panicked")?;
        server.await.context("the HTTP server panicked")??;
        tracing::info!("stopped");
        Ok(())
    }
}

/// What every request handler shares: the store, the callers' tokens, the limits and the worker's state.
fn app_state(
    settings: &Settings,
    store: &SharedStore,
    link: &WorkerLink,
    metrics: &Arc<Metrics>,
) -> web::Data<AppState> {
    web::Data::new(AppState {
        store: store.clone(),
        tokens: BearerTokens::new(&settings.tokens)
            .grant(Role::Operator, &settings.operator_tokens)
            .grant(Role::Viewer, &settings.viewer_tokens)
            .limit_rate(settings.token_rate)
            .client_address_header(settings.client_ip_header.as_deref()),
        max_body_bytes: settings.max_body_bytes,
        request_timeout: settings.request_timeout,
        worker: link.state.clone(),
        webhooks: WebhookAuth::new(
            settings.webhook_secrets.clone(),
            settings.webhook_tolerance,
            settings.webhook_path_token.as_ref(),
        ),
        metrics: metrics.clone(),
        metrics_here: settings.metrics_listen.is_none(),
        console_csp: crate::http::console_csp(&settings.chatwoot_base_url),
        writes: http::WriteHealth::new(settings.database_url.backend()),
        retry_look_after: policy(settings).look_after(),
    })
}

/// Connections the kernel queues for accepting. The standard library's 128
/// overflows when a burst of clients connects at once, and each overflowed
/// client waits a second for its retry; this is actix's own default.
const BACKLOG: u32 = 1024;

/// A listener on `addr` with a backlog of [`BACKLOG`].
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)?.into_std()
}

/// A second, private listener that serves only `/metrics`.
fn metrics_server(
    state: web::Data<AppState>,
    at: SocketAddr,
) -> anyhow::Result<(SocketAddr, Server)> {
    let listener =
        TcpListener::bind(at).with_context(|| format!("could not listen for metrics on {at}"))?;
    let addr = listener.local_addr()?;
    let server = HttpServer::new(move || {
        actix_web::App::new().app_data(state.clone()).route(
            "/metrics",
            web::get()
                .to(|state: web::Data<AppState>| async move { http::metrics_text(&state).await }),
        )
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run();
    Ok((addr, server))
}

/// A client that stops reading an answer is cut off once what goldrelay
/// sent has waited `timeout` unacknowledged or behind a full window: the
/// kernel ends the connection (`TCP_USER_TIMEOUT`), which drops the answer
/// and the page it holds. actix itself waits for a slow reader forever.
fn cut_off_when_stalled(connection: &dyn std::any::Any, timeout: std::time::Duration) {
    #[cfg(target_os = "linux")]
    if let Some(stream) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() {
        if let Err(e) = socket2::SockRef::from(stream).set_tcp_user_timeout(Some(timeout)) {
            tracing::warn!(error = %e, "could not bound how long a client may stall an answer");
        }
    }
}

fn policy(settings: &Settings) -> Policy {
    Policy {
        retry_base: settings.retry_base,
        retry_max: settings.retry_max,
        max_attempts: settings.max_attempts,
        lookup_delay: settings.lookup_delay,
        max_age: settings.max_age,
        concurrency: settings.delivery_concurrency,
        send_rate: settings.send_rate,
        lease: settings.lease(),
        drain: settings.shutdown_drain,
        idempotent_creates: settings.chatwoot_idempotent,
        status_reconcile: (!settings.status_reconcile.is_zero())
            .then_some(settings.status_reconcile),
    }
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
