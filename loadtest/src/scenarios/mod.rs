//! The scenarios, one module each, and what they share: the run context
//! (where the server is, how to connect, whose memory to watch), making the
//! customers a scenario needs, and waiting for a run to finish or stall.
//!
//! - [`connections`]: many idle authenticated connections.
//! - [`group`]: fan-out of one sender to one large group.
//! - [`chat`]: many two-member conversations with paced senders.
//! - [`storm`]: clients dropping and reconnecting, catching up with `sync`.
//! - [`dispatch`]: consults against online agents.

pub(crate) mod chat;
pub(crate) mod connections;
pub(crate) mod dispatch;
pub(crate) mod group;
pub(crate) mod storm;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::net::Connector;
use crate::procfs::{Sample, Watched};
use crate::progress::Progress;
use crate::report::{Comparison, Report};
use crate::setup::{Account, Rest};

/// Connects (TCP + upgrade + `auth`) in flight at once, unless a scenario's
/// `--concurrency` says otherwise. Why 128: it is the accept backlog of a
/// listener bound with std or tokio's `bind` (Switchboard's, today); more
/// connects in flight overflow that queue, the kernel drops the SYNs and each
/// dropped one costs a 1 s retransmit that then dominates the latency.
pub(crate) const DEFAULT_CONCURRENCY: usize = 128;

/// Where and how a scenario runs.
pub(crate) struct Ctx {
    /// `http://host:port` of Switchboard's REST API (unused for the baseline).
    pub(crate) http_base: String,
    pub(crate) admin_user: String,
    pub(crate) admin_password: String,
    pub(crate) connector: Arc<Connector>,
    /// The server process whose memory and CPU are reported, if known.
    pub(crate) server: Option<Watched>,
    /// Distinguishes this run's users, groups and message ids from earlier
    /// runs against the same database.
    pub(crate) run_id: String,
}

impl Ctx {
    /// A context for the baseline server at `addr` (child process `pid`).
    pub(crate) fn for_baseline(&self, addr: SocketAddr, pid: Option<u32>) -> Ctx {
        let (_, ws_url) = crate::target::urls(addr);
        Ctx {
            http_base: String::new(),
            admin_user: String::new(),
            admin_password: String::new(),
            connector: Arc::new(Connector::new(addr, ws_url, self.connector.sources())),
            server: pid.map(Watched::new),
            run_id: self.run_id.clone(),
        }
    }

    /// Logs in as the administrator.
    pub(crate) async fn rest(&self) -> anyhow::Result<Rest> {
        Rest::login(
            &self.http_base,
            &self.admin_user,
            &self.admin_password,
            &self.run_id,
        )
        .await
    }
}

/// The scenario needs a server feature that answered `unavailable`; the
/// tool exits with [`UNAVAILABLE_EXIT`] and this message.
#[derive(Debug)]
pub(crate) struct FeatureUnavailable(pub(crate) String);

impl std::fmt::Display for FeatureUnavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FeatureUnavailable {}

/// Exit status when the server does not offer what the scenario measures.
pub(crate) const UNAVAILABLE_EXIT: u8 = 3;

/// Makes `n` customers, showing progress.
pub(crate) async fn customers(rest: &Rest, n: usize) -> anyhow::Result<Vec<Account>> {
    let done = Arc::new(AtomicUsize::new(0));
    let progress = {
        let done = done.clone();
        let started = Instant::now();
        Progress::start(move || {
            format!(
                "setup: {}/{n} users ({:.1}s)",
                done.load(Ordering::Relaxed),
                started.elapsed().as_secs_f64()
            )
        })
    };
    let made = rest.customers(n, done).await;
    progress.finish().await;
    made
}

/// Waits until `done()` holds, or until `progress()` (a count that grows
/// while the run moves) has not changed for `stall`. Returns whether it
/// finished (true) or stalled (false).
pub(crate) async fn wait_done_or_stalled(
    done: impl Fn() -> bool,
    progress: impl Fn() -> u64,
    stall: Duration,
) -> bool {
    // Why 20 ms: short next to any measured duration, cheap to poll.
    let poll = Duration::from_millis(20);
    let mut last = progress();
    let mut last_change = Instant::now();
    loop {
        if done() {
            return true;
        }
        let now = progress();
        if now != last {
            last = now;
            last_change = Instant::now();
        } else if last_change.elapsed() >= stall {
            return false;
        }
        tokio::time::sleep(poll).await;
    }
}

/// Seconds between two instants, at least a microsecond (for rates).
pub(crate) fn secs(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64().max(1e-6)
}

/// Checks the tool's own open-file limit for `needed` sockets, and the
/// server's if its pid is known (a note only: the server is not ours).
pub(crate) fn check_fd_limits(
    needed: usize,
    server: Option<&Watched>,
) -> anyhow::Result<Vec<String>> {
    // Why 64: the runtime, stdio, the REST pool and the baseline child's pipes.
    let margin = 64;
    let mut notes = Vec::new();
    if let Some(limit) = crate::procfs::open_files_limit("self") {
        if (needed + margin) as u64 > limit {
            anyhow::bail!(
                "{needed} connections need about {} open files but this process may open {limit}: \
                 raise it first (ulimit -n {})",
                needed + margin,
                needed + 1024
            );
        }
    }
    if let Some(server) = server {
        if let Some(limit) = crate::procfs::open_files_limit(&server.pid().to_string()) {
            if (needed + margin) as u64 > limit {
                notes.push(format!(
                    "the server (pid {}) may open only {limit} files; {needed} connections will \
                     fail past that: raise its limit (ulimit -n, or LimitNOFILE= under systemd)",
                    server.pid()
                ));
            }
        }
    }
    Ok(notes)
}

/// Which server a measurement runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Switchboard,
    /// The bare fan-out server of `baseline.rs`: no auth, raw bodies.
    Baseline,
}

impl Mode {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Mode::Switchboard => "switchboard",
            Mode::Baseline => "baseline",
        }
    }
}

/// A scenario's result: one report, or a baseline and a Switchboard report
/// from the same run with what to compare.
pub(crate) enum Outcome {
    Single(Report),
    Compared {
        baseline: Report,
        switchboard: Report,
        comparison: Comparison<'static>,
    },
}

/// Runs `measure` against Switchboard, or against a freshly started baseline
/// server (`baseline`), or both one after the other (`compare`: baseline
/// first, so Switchboard's database state cannot slow the baseline).
pub(crate) async fn with_baseline(
    ctx: &Ctx,
    baseline: bool,
    compare: bool,
    comparison: Comparison<'static>,
    measure: impl AsyncFn(&Ctx, Mode) -> anyhow::Result<Report>,
) -> anyhow::Result<Outcome> {
    if !baseline {
        return Ok(Outcome::Single(measure(ctx, Mode::Switchboard).await?));
    }
    let child = crate::baseline::spawn().await?;
    let base_ctx = ctx.for_baseline(child.addr(), child.pid());
    let base = measure(&base_ctx, Mode::Baseline).await;
    child.stop().await;
    let base = base?;
    if !compare {
        return Ok(Outcome::Single(base));
    }
    let switchboard = measure(ctx, Mode::Switchboard).await?;
    Ok(Outcome::Compared {
        baseline: base,
        switchboard,
        comparison,
    })
}

/// Memory and CPU of the server (when its pid is known) and of the tool
/// itself over the measured part of a run: the CPU split shows whether the
/// server or the load generator used up the machine.
pub(crate) struct Usage {
    server: Option<Watched>,
    tool: Watched,
    before: (Option<Sample>, Sample),
    after: Option<(Option<Sample>, Sample)>,
}

impl Usage {
    /// Takes the "before" samples.
    pub(crate) fn start(ctx: &Ctx) -> Usage {
        let server = ctx.server.as_ref().map(|s| Watched::new(s.pid()));
        let tool = Watched::new(std::process::id());
        let before = (server.as_ref().map(Watched::sample), tool.sample());
        Usage {
            server,
            tool,
            before,
            after: None,
        }
    }

    /// Takes the "after" samples.
    pub(crate) fn stop(&mut self) {
        self.after = Some((
            self.server.as_ref().map(Watched::sample),
            self.tool.sample(),
        ));
    }

    /// The server's resident memory now, in KiB (a sample between the two).
    pub(crate) fn sample_server(&self) -> Option<u64> {
        self.server.as_ref()?.sample().rss_kib
    }

    /// The server's resident memory at the "after" sample, in KiB.
    pub(crate) fn server_rss_after_kib(&self) -> Option<u64> {
        self.after?.0?.rss_kib
    }

    /// Resident memory growth of the server and of the tool, in KiB.
    pub(crate) fn rss_growth_kib(&self) -> (Option<i64>, Option<i64>) {
        let Some((server_after, tool_after)) = self.after else {
            return (None, None);
        };
        let growth =
            |b: Option<Sample>, a: Option<Sample>| Some(a?.rss_kib? as i64 - b?.rss_kib? as i64);
        (
            growth(self.before.0, server_after),
            growth(Some(self.before.1), Some(tool_after)),
        )
    }

    /// Adds the figures to `report`.
    pub(crate) fn report(&self, report: &mut Report) {
        let Some((server_after, tool_after)) = self.after else {
            return;
        };
        if let (Some(server), Some(b), Some(a)) = (&self.server, self.before.0, server_after) {
            report.server_usage(server.pid(), b, a);
        }
        if let (Some(b), Some(a)) = (self.before.1.cpu_s, tool_after.cpu_s) {
            report.figure("tool_cpu_s", ((a - b) * 100.0).round() / 100.0, "s");
        }
    }
}
