//! The store seam: SQLite (a file in WAL mode) or PostgreSQL, behind one code path.
//!
//! Both engines are reached through sqlx's `Any` driver with one SQL dialect
//! subset: `$N` placeholders (SQLite accepts them too), TEXT and BIGINT columns,
//! `RETURNING`, `ON CONFLICT`. The domain modules own their queries and run them
//! on [`Store::write`] or [`Store::read`]. Where the engines really differ —
//! pool shape and connection pragmas — [`Backend`] decides here, in one place.
//!
//! SQLite allows one writer at a time; rather than let several pooled
//! connections fight over the lock with busy-wait sleeps, writes go through a
//! pool of exactly one connection (queued fairly by the pool) and reads through
//! a separate pool that WAL lets run beside the writer. PostgreSQL uses one pool
//! for both.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;

/// Which engine is behind the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The engine behind a connection (inside a transaction, where the
    /// [`Store`] is not at hand).
    pub fn of(conn: &sqlx::AnyConnection) -> Backend {
        if conn.backend_name().eq_ignore_ascii_case("sqlite") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        }
    }
}

/// Per-connection SQLite settings. WAL: readers never block the writer.
/// synchronous=FULL: an acked message survives a power cut, not only a crash.
/// temp_store=MEMORY: the statement journal of a batch `INSERT` stays off disk
/// (it cost a tenth of the writer's time under load). cache_size: 16 MiB for
/// the writer keeps the hot index pages of a busy node in memory; each reader
/// (of three) keeps SQLite's default 2 MiB, since readers each cache their own copy of
/// what they read (every `auth` reads a user's rows: with 16 MiB the four
/// readers held about 1 KiB per connected user, measured) and a miss is a
/// read from the operating system's page cache.
/// wal_autocheckpoint: only a safety net (see [`WRITER_CHECKPOINT_PAGES`]);
/// checkpoints run on a connection of their own ([`start_checkpoints`]).
fn sqlite_pragmas(
    conn: &mut sqlx::AnyConnection,
    cache_kib: u32,
) -> futures_util::future::BoxFuture<'_, Result<(), sqlx::Error>> {
    Box::pin(async move {
        conn.execute(
            format!(
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; \
                 PRAGMA foreign_keys=ON; PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}; \
                 PRAGMA temp_store=MEMORY; PRAGMA cache_size=-{cache_kib}; \
                 PRAGMA wal_autocheckpoint={WRITER_CHECKPOINT_PAGES};"
            )
            .as_str(),
        )
        .await?;
        Ok(())
    })
}

/// WAL pages after which a committing connection checkpoints by itself.
/// Why this large (about 128 MiB): the checkpointer task keeps the WAL far
/// below it; a checkpoint on the committing connection holds every send
/// waiting behind the writer while it copies pages and syncs the database
/// file, so this only bounds the WAL should the checkpointer fall behind.
const WRITER_CHECKPOINT_PAGES: u32 = 32_000;

/// How often the checkpointer copies committed WAL pages into the database
/// file. Why 250 ms: each checkpoint writes each page changed since the last
/// one once and syncs the file once, so at a few per second the hot pages of
/// a busy node are copied a few times a second rather than once per commit,
/// and the WAL stays a few MiB, small enough to be restarted from its start
/// often.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// The SQLite writer's page cache, in KiB (see `sqlite_pragmas`).
const SQLITE_WRITER_CACHE_KIB: u32 = 16 * 1024;
/// The checkpointer's page cache, in KiB: a checkpoint copies pages from the
/// WAL to the database file without going through it.
const SQLITE_CHECKPOINTER_CACHE_KIB: u32 = 256;
/// Each SQLite reader's page cache, in KiB (SQLite's default).
const SQLITE_READER_CACHE_KIB: u32 = 2 * 1024;

/// A cheap handle to the database pools.
#[derive(Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    backend: Backend,
    write: AnyPool,
    read: AnyPool,
    /// SQLite: the checkpointer's own connection, so that checkpoints run
    /// beside the writer instead of on it.
    checkpoint: Option<AnyPool>,
}

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// How long a request waits for a pooled connection before failing with
/// `unavailable`: long enough to ride out a burst, short enough that a dead
/// database turns into an error a client sees instead of a hang.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// A pooled PostgreSQL connection idle for longer than this is pinged before
/// it is handed out. Why not every time (sqlx's default): the ping is a full
/// round trip, which doubled the round trips of every short statement; a
/// connection in steady use is known to be alive, and one idle for this long
/// is the one a server restart or a dropped link would have broken.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(10);

/// Hands out a PostgreSQL connection, pinging it first only when it has been
/// idle for [`PING_IF_IDLE_FOR`] (a failed ping discards it and the pool
/// opens another).
fn ping_if_idle(
    conn: &mut sqlx::AnyConnection,
    meta: sqlx::pool::PoolConnectionMetadata,
) -> futures_util::future::BoxFuture<'_, Result<bool, sqlx::Error>> {
    Box::pin(async move {
        if meta.idle_for >= PING_IF_IDLE_FOR {
            sqlx::Connection::ping(conn).await?;
        }
        Ok(true)
    })
}

/// A pool of `size` SQLite connections to `url`, each with the connection
/// settings of [`sqlite_pragmas`] and a page cache of `cache_kib`. No test
/// before acquire: a SQLite connection is a file handle in this process and
/// cannot go stale, and sqlx's default ping is a round trip through the
/// connection's worker thread per statement.
async fn sqlite_pool(url: &str, size: u32, cache_kib: u32) -> Result<AnyPool, sqlx::Error> {
    AnyPoolOptions::new()
        .max_connections(size)
        .test_before_acquire(false)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .after_connect(move |conn, _| sqlite_pragmas(conn, cache_kib))
        .connect(url)
        .await
}

/// SQLite waits this long for a lock held by another process (the CLI, a
/// second server on the same file) before answering `SQLITE_BUSY`.
const SQLITE_BUSY_TIMEOUT_MS: u64 = 5000;

impl Store {
    /// Opens the store the configuration names: PostgreSQL when `database_url`
    /// says so, else the SQLite file `switchboard.db` in the data directory.
    pub async fn open(config: &Config) -> Result<Store, sqlx::Error> {
        match &config.database_url {
            Some(url) => Store::connect(url.expose()).await,
            None => {
                std::fs::create_dir_all(&config.data_dir).map_err(sqlx::Error::Io)?;
                Store::open_sqlite_file(&config.data_dir.join("switchboard.db")).await
            }
        }
    }

    /// Opens (creating if needed) a SQLite database file.
    pub async fn open_sqlite_file(path: &Path) -> Result<Store, sqlx::Error> {
        Store::connect(&format!("sqlite://{}?mode=rwc", path.display())).await
    }

    /// Connects to a `postgres://` or `sqlite:` URL.
    pub async fn connect(url: &str) -> Result<Store, sqlx::Error> {
        sqlx::any::install_default_drivers();
        if url.starts_with("sqlite:") {
            let write = sqlite_pool(url, 1, SQLITE_WRITER_CACHE_KIB).await?;
            // Why 3 readers: two cores; more readers only queue on the CPU,
            // and each keeps its own page cache (2 MiB). A fourth was no
            // faster side by side (storm 3,050-3,841 against 3,337-4,066
            // reconnects/s with three) and cost 0.2 KiB per connection at
            // 10,000 idle connections.
            let read = sqlite_pool(url, 3, SQLITE_READER_CACHE_KIB).await?;
            let checkpoint = sqlite_pool(url, 1, SQLITE_CHECKPOINTER_CACHE_KIB).await?;
            Ok(Store {
                inner: Arc::new(StoreInner {
                    backend: Backend::Sqlite,
                    write,
                    read,
                    checkpoint: Some(checkpoint),
                }),
            })
        } else {
            let pool = AnyPoolOptions::new()
                // Why 16: enough for concurrent transactions from one node without
                // exhausting PostgreSQL's default 100 connections across a few nodes.
                .max_connections(16)
                .test_before_acquire(false)
                .before_acquire(ping_if_idle)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect(url)
                .await?;
            Ok(Store {
                inner: Arc::new(StoreInner {
                    backend: Backend::Postgres,
                    write: pool.clone(),
                    read: pool,
                    checkpoint: None,
                }),
            })
        }
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        MIGRATOR.run(&self.inner.write).await
    }

    /// The pool for statements that write (and for transactions).
    pub fn write(&self) -> &AnyPool {
        &self.inner.write
    }

    /// The pool for reads outside transactions.
    pub fn read(&self) -> &AnyPool {
        &self.inner.read
    }

    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    /// Whether the database answers; used by `/readyz`.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        let _: Option<AnyRow> = sqlx::query("SELECT 1").fetch_optional(self.read()).await?;
        Ok(())
    }

    /// Copies committed WAL pages into the SQLite database file, beside the
    /// writer (a passive checkpoint waits for no reader or writer and copies
    /// what it can). Returns the WAL's size and the pages copied so far, in
    /// pages; `None` on PostgreSQL.
    pub async fn checkpoint(&self) -> Result<Option<(i64, i64)>, sqlx::Error> {
        let Some(pool) = &self.inner.checkpoint else {
            return Ok(None);
        };
        let row = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(pool)
            .await?;
        Ok(Some((row.try_get(1)?, row.try_get(2)?)))
    }

    /// Closes the pools, waiting for connections in use to be returned.
    pub async fn close(&self) {
        self.inner.write.close().await;
        self.inner.read.close().await;
        if let Some(pool) = &self.inner.checkpoint {
            pool.close().await;
        }
    }
}

/// On SQLite, checkpoints the WAL every [`CHECKPOINT_EVERY`] until `stop`.
/// Why a task of its own: SQLite's automatic checkpoint runs on the
/// connection that commits, inside the commit, so every send queued behind
/// the single writer waited while thousands of pages were copied and the
/// database file synced: the tail of the send acks. Here the copy runs on
/// its own connection (its own thread) while the writer keeps committing.
pub fn start_checkpoints(store: &Store, tasks: &TaskTracker, stop: CancellationToken) {
    if store.inner.checkpoint.is_none() {
        return;
    }
    let store = store.clone();
    tasks.spawn(async move {
        let mut every = crate::util::Every::new(CHECKPOINT_EVERY);
        while every.tick(&stop).await {
            if let Err(e) = store.checkpoint().await {
                tracing::warn!(error = %e, "WAL checkpoint failed; the writer checkpoints by itself past its limit");
            }
        }
    });
}

/// How PostgreSQL plans the rest of a transaction's statements
/// (`SET LOCAL plan_cache_mode`), chosen per kind of batch statement.
#[derive(Clone, Copy)]
pub enum Plans {
    /// Generic plans. Why: a batch statement's text changes with the batch
    /// size, so most of its runs are a prepared statement's first five on its
    /// pooled connection, which PostgreSQL plans afresh with the parameters'
    /// values; planning 64-row statements was a fifth of PostgreSQL's time
    /// while a queue drained (dispatch's assignment batch uses it for its
    /// multi-row INSERTs). Only for statements that read no table: a generic
    /// plan of one that does is chosen from the table's size at the time and
    /// kept (see [`Plans::Custom`]).
    Generic,
    /// Each statement planned for the values it is run with, never with a
    /// cached generic plan. Why: a generic plan is chosen once, after a
    /// prepared statement's fifth run, from the table sizes of that moment,
    /// and kept for the life of the pooled connection. The message
    /// committer's look-ups join a `VALUES` list with `messages`; a plan
    /// chosen while the table was small scans the whole table for every
    /// batch (a hash join over a sequential scan) long after it has grown:
    /// under `chat_pg` that scan was 44 % of both cores.
    Custom,
}

/// Inside a transaction of batch statements: plans the rest of it as
/// `plans` says, on PostgreSQL. SQLite plans every statement as it is
/// prepared and has no plan cache to steer: nothing is done.
pub async fn plan_with(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    plans: Plans,
) -> Result<(), sqlx::Error> {
    if backend == Backend::Postgres {
        conn.execute(match plans {
            Plans::Generic => "SET LOCAL plan_cache_mode = force_generic_plan",
            Plans::Custom => "SET LOCAL plan_cache_mode = force_custom_plan",
        })
        .await?;
    }
    Ok(())
}

/// Numbers the placeholders of a generated statement, in binding order:
/// `$1, $2, …` on PostgreSQL, anonymous `?` on SQLite. Why not `$N` on SQLite
/// too: SQLite looks each named parameter up by a linear scan, so binding the
/// thousands of parameters of a batch `INSERT` was quadratic and took a
/// quarter of the server's CPU under load. Every placeholder is bound exactly
/// once, in the order it appears in the text.
pub struct Placeholders {
    backend: Backend,
    next: usize,
}

impl Placeholders {
    pub fn new(backend: Backend) -> Self {
        Placeholders { backend, next: 0 }
    }

    pub fn one(&mut self) -> String {
        self.next += 1;
        match self.backend {
            Backend::Sqlite => "?".to_string(),
            Backend::Postgres => format!("${}", self.next),
        }
    }

    /// `(p, p, …), (p, p, …)`: `rows` tuples of `width`.
    pub fn rows(&mut self, rows: usize, width: usize) -> String {
        (0..rows)
            .map(|_| {
                let cells: Vec<String> = (0..width).map(|_| self.one()).collect();
                format!("({})", cells.join(", "))
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}
