//! Switchboard: a real-time messaging and customer-service server.
//!
//! [`run`] is the one seam that starts a whole server on a bound listener and
//! stops it when a cancellation token fires; `main.rs` and the integration
//! tests both call it. The server runs the same code on either store (SQLite or
//! PostgreSQL) and either bus (in-process or Redis).
//!
//! Layout:
//! - [`config`]: typed configuration from TOML and the environment.
//! - [`store`]: the database seam (SQLite or PostgreSQL through sqlx).
//! - [`bus`]: the cross-node seam (in-process or Redis pub/sub).
//! - [`auth`]: users, password hashes, tokens, quick links, anonymous customers.
//! - [`conversations`]: conversations, members, messages.
//! - [`customers`]: a customer's profile and past conversations as staff see them.
//! - [`dispatch`]: teams, queues, strategies, presence, assignment.
//! - [`jobs`]: the durable job scheduler, recurring schedules, scheduled group messages.
//! - [`calendar`]: working-hours calendars and business-time arithmetic.
//! - [`tickets`]: tickets, follow-up notes, SLA policies and clocks.
//! - [`uploads`]: attachments and their file store.
//! - [`gateway`]: the WebSocket endpoint, sessions and the connection registry.
//! - [`api`]: HTTP routes; [`web`]: the embedded web client.
//! - [`state`]: the shared handle; [`fanout`]: how events reach every node's connections.
//! - [`metrics`], [`error`], [`util`]: Prometheus metrics, the error type, helpers.

pub mod api;
pub mod auth;
pub mod bus;
pub mod calendar;
pub mod config;
pub mod conversations;
pub mod customers;
pub mod dispatch;
pub mod error;
pub mod fanout;
pub mod gateway;
pub mod jobs;
pub mod metrics;
pub mod state;
pub mod store;
pub mod tickets;
pub mod uploads;
pub mod util;
pub mod web;

use axum::serve::ListenerExt;
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bus::local::LocalNetwork;
use crate::bus::Bus;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::state::{AppState, StateParts};
use crate::store::Store;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("database: {0}")]
    Store(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Other(String),
}

/// Runs a server on `listener` until `shutdown` fires, then drains: stop
/// accepting, close every session with 1012, wait for sessions within the
/// drain timeout, stop background tasks, close the store.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    run_on(config, listener, shutdown, LocalNetwork::new()).await
}

/// Like [`run`], joining the in-process bus `network` when no Redis is
/// configured: several servers in one process on one network act as a cluster
/// (used by tests).
pub async fn run_on(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
    network: LocalNetwork,
) -> Result<(), ServerError> {
    let node_id = config
        .node_id
        .clone()
        .unwrap_or_else(|| format!("node-{}", &util::random_token()[..8]));
    let metrics = Arc::new(Metrics::new(&node_id));
    let store = Store::open(&config).await?;
    store.migrate().await?;
    let secret = auth::load_jwt_secret(&store, config.jwt_secret.as_ref().map(|s| s.expose()))
        .await
        .map_err(|e| ServerError::Other(format!("loading the JWT secret: {e}")))?;
    let keys = auth::TokenKeys::new(&secret, config.limits.access_token_ttl_s);
    let bus = match &config.redis_url {
        Some(url) => Bus::Redis(bus::redis::RedisBus::new(
            url.expose(),
            &config.redis_prefix,
            &node_id,
            metrics.clone(),
        )?),
        None => Bus::Local(network.bus(&node_id, metrics.clone())),
    };
    let files = uploads::FileStore::new(config.data_dir.join("uploads"))?;
    let engine = match &config.redis_url {
        Some(url) => dispatch::Engine::Redis(Box::new(dispatch::redis::RedisEngine::new(
            url.expose(),
            &config.redis_prefix,
            store.clone(),
        )?)),
        None => dispatch::Engine::Local(network.dispatch_engine()),
    };
    let sessions = TaskTracker::new();
    let workers = TaskTracker::new();
    let workers_stop = CancellationToken::new();
    let drain = Duration::from_secs(config.limits.shutdown_drain_s);
    let state = AppState::new(StateParts {
        config,
        node_id: node_id.clone(),
        store: store.clone(),
        bus: bus.clone(),
        keys,
        metrics,
        files,
        dispatch: dispatch::Dispatcher::new(engine),
        shutdown: shutdown.clone(),
        tracker: sessions.clone(),
    });
    {
        let state = state.clone();
        bus.start(
            Arc::new(move |msg| state.apply_bus_message(msg)),
            &workers,
            workers_stop.clone(),
        );
    }
    dispatch::start(&state, &workers, workers_stop.clone())
        .await
        .map_err(|e| ServerError::Other(format!("starting dispatch: {}", e.public_message())))?;
    // Jobs stop claiming as soon as shutdown begins; the ones still running
    // are waited for before the bus stops (below), so what they send reaches
    // the other nodes.
    let job_tasks = jobs::start(&state, shutdown.clone());
    gateway::start_idle_sweep(&state, &workers, workers_stop.clone());
    store::start_checkpoints(&store, &workers, workers_stop.clone());

    let addr = listener.local_addr()?;
    tracing::info!(%addr, node = %node_id, backend = ?store.backend(), "switchboard listening");
    let app = api::router(state.clone());
    let stop_http = {
        let state = state.clone();
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            state.stop_accepting();
        }
    };
    // With connect info: the anonymous start counts per client address.
    // TCP_NODELAY on every connection: the gateway coalesces frames into
    // one write per batch itself, and with Nagle's algorithm a frame written
    // while the previous one is unacknowledged waited for the peer's
    // delayed ACK (up to 40 ms: the p99 of a paced chat's acks).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
    });
    let mut http = tokio::spawn(
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(stop_http)
        .into_future(),
    );
    // Why biased, and the check in the second branch: once shutdown is asked
    // for, axum's serve future ends at once when no plain HTTP request is
    // open, so both branches can be ready; taking the second for "the
    // listener failed" returned without closing the sessions, and their
    // clients saw a reset instead of 1012 (a flake of the SIGTERM test).
    let mut http_done = false;
    let early = tokio::select! {
        biased;
        _ = shutdown.cancelled() => None,
        result = &mut http => {
            http_done = true;
            (!shutdown.is_cancelled()).then_some(result)
        }
    };
    if let Some(result) = early {
        // The listener failed before any shutdown was asked for.
        shutdown.cancel();
        return match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ServerError::Io(e)),
            Err(e) => Err(ServerError::Other(format!("http task: {e}"))),
        };
    }
    tracing::info!(sessions = state.registry().len(), "shutting down");
    let deadline = tokio::time::Instant::now() + drain;
    // axum's graceful shutdown covers plain HTTP only; the sessions of
    // upgraded sockets are asked to close with 1012.
    gateway::close_all_sessions(&state);
    if !http_done && tokio::time::timeout_at(deadline, &mut http).await.is_err() {
        http.abort();
    }
    sessions.close();
    if tokio::time::timeout_at(deadline, sessions.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = state.registry().len(),
            "drain timeout: dropping the remaining sessions"
        );
    }
    // Why 2 s: a job's effect takes milliseconds; one still running after
    // that is left to its lease and runs again on another node.
    let _ = tokio::time::timeout(Duration::from_secs(2), job_tasks.wait()).await;
    workers_stop.cancel();
    workers.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), workers.wait()).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), store.close()).await;
    tracing::info!("stopped");
    Ok(())
}
