//! `connections`: open N idle authenticated connections as fast as the
//! server accepts them (bounded concurrency), hold them, and report
//! authenticated connects per second, failures, and — when the server's pid
//! is known — its resident memory per connection.
//!
//! Memory is reported two ways. `server_rss_per_connection_kib` is the whole
//! growth over all N connections; it includes what the first connections
//! warm up once for all (the store's page cache filling with the users'
//! rows, allocator arenas, the registry's first tables).
//! `server_rss_per_added_connection_kib` is the growth while the second half
//! connects, divided by that half: what one more idle connection costs once
//! the server is warm. The second half starts after the first has finished.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify, Semaphore};

use super::{check_fd_limits, customers, secs, Ctx, Mode, Outcome, DEFAULT_CONCURRENCY};
use crate::client;
use crate::progress::Progress;
use crate::report::{Comparison, Report};
use crate::stats::{Latency, LatestInstant, Stats};

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct ConnectionsArgs {
    /// Idle connections to open.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    count: u64,
    /// Seconds to hold them once all are open (memory is read at the end).
    #[arg(long, default_value_t = 2.0)]
    hold_s: f64,
    /// Connects in flight at once.
    #[arg(long, default_value_t = DEFAULT_CONCURRENCY)]
    concurrency: usize,
    /// Measure the built-in bare tokio-tungstenite server instead.
    #[arg(long)]
    baseline: bool,
    /// With --baseline: run the baseline, then Switchboard, and compare.
    #[arg(long, requires = "baseline")]
    compare: bool,
}

/// What `--compare` sets side by side.
const COMPARISON: Comparison<'static> = Comparison {
    rates: &[
        "connects_per_s",
        "server_rss_per_connection_kib",
        "server_rss_per_added_connection_kib",
    ],
    latencies: &["connect_latency"],
};

pub(crate) async fn run(ctx: &Ctx, args: &ConnectionsArgs) -> anyhow::Result<Outcome> {
    if !(args.hold_s >= 0.0 && args.hold_s <= 3600.0) {
        anyhow::bail!("--hold-s must be between 0 and 3600");
    }
    super::with_baseline(
        ctx,
        args.baseline,
        args.compare,
        COMPARISON,
        async |c, mode| measure(c, args, mode).await,
    )
    .await
}

async fn measure(ctx: &Ctx, args: &ConnectionsArgs, mode: Mode) -> anyhow::Result<Report> {
    let n = args.count as usize;
    let concurrency = args.concurrency.max(1);
    let mut report = Report::new("connections", mode.name());
    report.param("count", n);
    report.param("hold_s", args.hold_s);
    report.param("concurrency", concurrency);
    report.param("source_ips", ctx.connector.sources().len());
    for note in check_fd_limits(n, ctx.server.as_ref())? {
        report.note(note);
    }
    let tokens: Vec<Option<String>> = match mode {
        Mode::Switchboard => customers(&ctx.rest().await?, n)
            .await?
            .into_iter()
            .map(|a| Some(a.token))
            .collect(),
        Mode::Baseline => vec![None; n],
    };

    let stats = Arc::new(Stats::default());
    let mut usage = super::Usage::start(ctx);
    let (stop, stopped) = watch::channel(false);
    let slots = Arc::new(Semaphore::new(concurrency));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let dropped = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(AtomicU64::new(0));
    let all_finished = Arc::new(Notify::new());
    let first_error: Arc<Mutex<Option<String>>> = Arc::default();
    let latency = Arc::new(Latency::default());
    let started = Instant::now();
    let last_ok = Arc::new(LatestInstant::new(started));
    // The second half waits for the first to finish (see the module doc).
    let half = n / 2;
    let (second_half_go, second_half_gate) = watch::channel(false);

    let mut tasks = Vec::with_capacity(n);
    for (i, token) in tokens.into_iter().enumerate() {
        let connector = ctx.connector.clone();
        let stats = stats.clone();
        let slots = slots.clone();
        let (ok, failed, dropped) = (ok.clone(), failed.clone(), dropped.clone());
        let (finished, all_finished) = (finished.clone(), all_finished.clone());
        let first_error = first_error.clone();
        let latency = latency.clone();
        let last_ok = last_ok.clone();
        let stopped = stopped.clone();
        let mut gate = (i >= half).then(|| second_half_gate.clone());
        tasks.push(tokio::spawn(async move {
            if let Some(gate) = &mut gate {
                let _ = gate.wait_for(|go| *go).await;
            }
            let permit = slots.acquire_owned().await.expect("semaphore never closed");
            let t = Instant::now();
            let result = match &token {
                Some(token) => client::connect_authed(&connector, token, &stats)
                    .await
                    .map(|(ws, ok)| (ws, client::heartbeat_of(&ok))),
                None => client::connect_baseline(&connector, &stats)
                    .await
                    .map(|ws| (ws, None)),
            };
            drop(permit);
            let conn = match result {
                Ok(conn) => {
                    let now = Instant::now();
                    latency.record(i, now - t);
                    last_ok.observe(now);
                    ok.fetch_add(1, Ordering::Relaxed);
                    Some(conn)
                }
                Err(e) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    first_error
                        .lock()
                        .expect("error lock")
                        .get_or_insert_with(|| format!("{e:#}"));
                    None
                }
            };
            let done = finished.fetch_add(1, Ordering::AcqRel) + 1;
            if done == half as u64 || done == n as u64 {
                all_finished.notify_one();
            }
            if let Some((ws, heartbeat)) = conn {
                if !client::hold_idle(ws, heartbeat, stopped, &stats).await {
                    dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }

    let progress = {
        let (ok, failed) = (ok.clone(), failed.clone());
        Progress::start(move || {
            let o = ok.load(Ordering::Relaxed);
            format!(
                "connecting: {o}/{n} authenticated, {} failed, {:.0}/s",
                failed.load(Ordering::Relaxed),
                o as f64 / secs(started, Instant::now())
            )
        })
    };
    let mut at_half = None;
    if half > 0 {
        while finished.load(Ordering::Acquire) < half as u64 {
            all_finished.notified().await;
        }
        at_half = Some((ok.load(Ordering::Relaxed), usage.sample_server()));
    }
    let _ = second_half_go.send(true);
    while finished.load(Ordering::Acquire) < n as u64 {
        all_finished.notified().await;
    }
    progress.finish().await;
    let connected = ok.load(Ordering::Relaxed);
    let connect_s = secs(started, last_ok.get());

    let progress = {
        let dropped = dropped.clone();
        Progress::start(move || {
            format!(
                "holding {connected} connections, {} dropped by the server",
                dropped.load(Ordering::Relaxed)
            )
        })
    };
    tokio::time::sleep(Duration::from_secs_f64(args.hold_s)).await;
    usage.stop();
    progress.finish().await;
    let _ = stop.send(true);
    for t in tasks {
        let _ = t.await;
    }

    let failed = failed.load(Ordering::Relaxed);
    let dropped = dropped.load(Ordering::Relaxed);
    report.figure("authenticated", connected, "");
    report.figure("failed", failed, "");
    report.rate("connects_per_s", connected, connect_s);
    report.figure(
        "connect_phase_s",
        (connect_s * 1000.0).round() / 1000.0,
        "s",
    );
    report.figure("dropped_while_held", dropped, "");
    usage.report(&mut report);
    let (server_growth, tool_growth) = usage.rss_growth_kib();
    if server_growth.is_some() {
        report.note(
            "server memory per connection is the growth of its RSS: measure it on a freshly \
             started server, since memory freed by earlier runs is reused and hides growth",
        );
    }
    for (key, growth) in [
        ("server_rss_per_connection_kib", server_growth),
        ("tool_rss_per_connection_kib", tool_growth),
    ] {
        if let (Some(g), true) = (growth, connected > 0) {
            let per = g as f64 / connected as f64;
            report.figure(key, (per * 100.0).round() / 100.0, "KiB");
        }
    }
    if let (Some((ok_at_half, Some(rss_at_half))), Some(rss_after)) =
        (at_half, usage.server_rss_after_kib())
    {
        let added = connected.saturating_sub(ok_at_half);
        if added > 0 {
            let per = (rss_after as f64 - rss_at_half as f64) / added as f64;
            report.figure(
                "server_rss_per_added_connection_kib",
                (per * 100.0).round() / 100.0,
                "KiB",
            );
        }
    }
    report.counts("close_codes", stats.closes());
    report.counts("error_codes", stats.errors());
    report.histogram("connect_latency", latency.merged());
    if failed > 0 {
        let first = first_error.lock().expect("error lock").clone();
        report.fail(format!(
            "{failed} of {n} connections failed (first: {})",
            first.unwrap_or_default()
        ));
    }
    if dropped > 0 {
        report.fail(format!(
            "{dropped} connections were closed by the server while held"
        ));
    }
    for hint in stats.hints() {
        report.note(hint);
    }
    Ok(report)
}
