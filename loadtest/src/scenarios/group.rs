//! `group`: fan-out. One group of N connected members; one more member sends
//! M messages of `size` bytes, in a burst (pipelined, a bounded number of
//! unacknowledged sends) or paced at R/s. Every member counts what it
//! receives; latency runs from the send instant to the receive instant of
//! each delivery, both taken in this process (one clock). Reports
//! deliveries/s (all deliveries ÷ time from the first send to the last
//! delivery), latency percentiles, delivered vs expected (N × M), and the
//! close codes of members the server dropped (4008: too slow).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{Sink, SinkExt, StreamExt};
use switchboard_protocol::{ClientFrame, MessageKind, OkBody, ServerFrame};
use tokio::sync::{watch, Notify, Semaphore};
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::{customers, secs, wait_done_or_stalled, Ctx, Mode, Outcome, DEFAULT_CONCURRENCY};
use crate::body::{self, Incoming};
use crate::client;
use crate::net::Ws;
use crate::progress::Progress;
use crate::report::{Comparison, Report};
use crate::stats::{Latency, LatestInstant, SendTimes, Stats};

/// Largest group: Switchboard's 10,000 members include the sender.
const MAX_MEMBERS: u64 = 9_999;

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct GroupArgs {
    /// Receiving members of the group (the sender is one more).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=MAX_MEMBERS))]
    members: u64,
    /// Messages the sender sends.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    messages: u64,
    /// Messages per second; without it, a burst.
    #[arg(long)]
    rate: Option<f64>,
    /// Body size in bytes (at most 8000, the protocol's limit).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=8000))]
    size: u64,
    /// Sends without an ack at most (burst mode against Switchboard).
    #[arg(long, default_value_t = 1024)]
    in_flight: usize,
    /// Connects in flight at once while members connect.
    #[arg(long, default_value_t = DEFAULT_CONCURRENCY)]
    concurrency: usize,
    /// Give up waiting for deliveries after this many seconds without progress.
    #[arg(long, default_value_t = 10.0)]
    drain_timeout_s: f64,
    /// Measure the built-in bare tokio-tungstenite fan-out server instead.
    #[arg(long)]
    baseline: bool,
    /// With --baseline: run the baseline, then Switchboard, and compare.
    #[arg(long, requires = "baseline")]
    compare: bool,
}

/// What `--compare` sets side by side.
const COMPARISON: Comparison<'static> = Comparison {
    rates: &["deliveries_per_s"],
    latencies: &["delivery_latency"],
};

/// Frames fed before a flush in a burst. Why 64: about 10 KB of `send`
/// frames per write system call; the server reads them in one go too.
const FLUSH_EVERY: u32 = 64;

pub(crate) async fn run(ctx: &Ctx, args: &GroupArgs) -> anyhow::Result<Outcome> {
    if let Some(rate) = args.rate {
        if !(rate > 0.0 && rate <= 10_000_000.0) {
            anyhow::bail!("--rate must be above 0 and at most 10,000,000");
        }
    }
    if !(args.drain_timeout_s > 0.0 && args.drain_timeout_s <= 600.0) {
        anyhow::bail!("--drain-timeout-s must be above 0 and at most 600");
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

/// What all member tasks and the sender share.
struct Shared {
    stats: Stats,
    send_times: SendTimes,
    latency: Latency,
    ack_latency: Latency,
    /// Distinct (member, message) deliveries so far.
    delivered: AtomicU64,
    /// Deliveries that complete the run; set once members are connected.
    target: AtomicU64,
    last_delivery: LatestInstant,
    acked: AtomicU64,
    last_ack: LatestInstant,
    send_errors: AtomicU64,
    first_send_error: Mutex<Option<String>>,
    sent: AtomicU64,
}

/// What one member saw.
#[derive(Default)]
struct MemberResult {
    distinct: u64,
    duplicates: u64,
    /// Message events without a tag of this run, or unreadable frames.
    foreign: u64,
    /// The server closed the connection before the run ended.
    dropped: bool,
}

async fn measure(ctx: &Ctx, args: &GroupArgs, mode: Mode) -> anyhow::Result<Report> {
    let n = args.members as usize;
    let m = args.messages;
    let mut report = Report::new("group", mode.name());
    report.param("members", n);
    report.param("messages", m);
    report.param(
        "rate",
        args.rate
            .map_or_else(|| "burst".into(), serde_json::Value::from),
    );
    report.param("size", args.size);
    report.param("in_flight", args.in_flight);
    report.param("source_ips", ctx.connector.sources().len());
    for note in super::check_fd_limits(n + 1, ctx.server.as_ref())? {
        report.note(note);
    }

    // Setup: users and the group (Switchboard only).
    let (tokens, sender_token, conv) = match mode {
        Mode::Switchboard => {
            let rest = ctx.rest().await?;
            let mut accounts = customers(&rest, n + 1).await?;
            let sender = accounts.pop().expect("n + 1 accounts");
            let mut ids: Vec<String> = accounts.iter().map(|a| a.id.clone()).collect();
            ids.push(sender.id.clone());
            let conv = rest.groups(vec![ids]).await?.remove(0);
            let tokens = accounts.into_iter().map(|a| Some(a.token)).collect();
            (tokens, Some(sender.token), conv)
        }
        Mode::Baseline => (vec![None; n], None, String::new()),
    };

    let epoch = Instant::now();
    let shared = Arc::new(Shared {
        stats: Stats::default(),
        send_times: SendTimes::new(epoch, m as usize),
        latency: Latency::default(),
        ack_latency: Latency::default(),
        delivered: AtomicU64::new(0),
        target: AtomicU64::new(u64::MAX),
        last_delivery: LatestInstant::new(epoch),
        acked: AtomicU64::new(0),
        last_ack: LatestInstant::new(epoch),
        send_errors: AtomicU64::new(0),
        first_send_error: Mutex::new(None),
        sent: AtomicU64::new(0),
    });
    let (stop, stopped) = watch::channel(false);

    // Members connect (bounded concurrency) and start receiving at once.
    let slots = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let connected = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let attempts_done = Arc::new(AtomicU64::new(0));
    let all_attempted = Arc::new(Notify::new());
    let first_connect_error: Arc<Mutex<Option<String>>> = Arc::default();
    let mut members = Vec::with_capacity(n);
    for (i, token) in tokens.into_iter().enumerate() {
        let connector = ctx.connector.clone();
        let shared = shared.clone();
        let slots = slots.clone();
        let (connected, failed) = (connected.clone(), failed.clone());
        let (attempts_done, all_attempted) = (attempts_done.clone(), all_attempted.clone());
        let first_connect_error = first_connect_error.clone();
        let stopped = stopped.clone();
        members.push(tokio::spawn(async move {
            let permit = slots.acquire_owned().await.expect("semaphore never closed");
            let ws = match &token {
                Some(t) => client::connect_authed(&connector, t, &shared.stats)
                    .await
                    .map(|(ws, _)| ws),
                None => client::connect_baseline(&connector, &shared.stats).await,
            };
            drop(permit);
            match &ws {
                Ok(_) => connected.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    first_connect_error
                        .lock()
                        .expect("error lock")
                        .get_or_insert_with(|| format!("{e:#}"));
                    failed.fetch_add(1, Ordering::Relaxed)
                }
            };
            if attempts_done.fetch_add(1, Ordering::AcqRel) + 1 == n as u64 {
                all_attempted.notify_one();
            }
            match ws {
                Ok(ws) => Some(receive(ws, i, mode, m, &shared, stopped).await),
                Err(_) => None,
            }
        }));
    }
    let progress = {
        let (connected, failed) = (connected.clone(), failed.clone());
        Progress::start(move || {
            format!(
                "connecting members: {}/{n}, {} failed",
                connected.load(Ordering::Relaxed),
                failed.load(Ordering::Relaxed)
            )
        })
    };
    all_attempted.notified().await;
    progress.finish().await;
    let connected = connected.load(Ordering::Relaxed);
    let failed = failed.load(Ordering::Relaxed);
    shared.target.store(connected * m, Ordering::Release);

    // The sender.
    let sender_ws = match &sender_token {
        Some(t) => {
            client::connect_authed(&ctx.connector, t, &shared.stats)
                .await?
                .0
        }
        None => client::connect_baseline(&ctx.connector, &shared.stats).await?,
    };
    let mut usage = super::Usage::start(ctx);
    let (mut sink, stream) = sender_ws.split();
    let permits = Arc::new(Semaphore::new(args.in_flight.max(1)));
    let ack_reader = (mode == Mode::Switchboard).then(|| {
        let shared = shared.clone();
        let permits = permits.clone();
        let stopped = stopped.clone();
        tokio::spawn(read_acks(stream, m, shared, permits, stopped))
    });

    let progress = {
        let shared = shared.clone();
        let target = connected * m;
        Progress::start(move || {
            let d = shared.delivered.load(Ordering::Relaxed);
            let first = shared.send_times.sent_at(0);
            let rate = first.map_or(0.0, |f| d as f64 / secs(f, Instant::now()));
            format!(
                "sent {}/{m}, acked {}, delivered {d}/{target} ({:.0}%), {rate:.0} deliveries/s",
                shared.sent.load(Ordering::Relaxed),
                shared.acked.load(Ordering::Relaxed),
                100.0 * d as f64 / target.max(1) as f64,
            )
        })
    };
    let permits_for_sender = (mode == Mode::Switchboard).then_some(&*permits);
    let run_id = ctx.run_id.clone();
    let size = args.size as usize;
    let send_result = send_all(
        &mut sink,
        m,
        args.rate,
        permits_for_sender,
        &shared,
        |tag| match mode {
            Mode::Baseline => body::encode(tag, size),
            Mode::Switchboard => ClientFrame::Send {
                req: Some(tag + 2),
                conv: conv.clone(),
                client_msg_id: format!("lt-{run_id}-{tag}"),
                kind: MessageKind::Text,
                body: Some(body::encode(tag, size)),
                attachment: None,
            }
            .to_json(),
        },
    )
    .await;
    let sent_all_at = Instant::now();
    let finished = if send_result.is_ok() {
        let shared = shared.clone();
        let with_acks = mode == Mode::Switchboard;
        wait_done_or_stalled(
            || {
                shared.delivered.load(Ordering::Acquire) >= shared.target.load(Ordering::Acquire)
                    && (!with_acks
                        || shared.acked.load(Ordering::Relaxed)
                            + shared.send_errors.load(Ordering::Relaxed)
                            >= m)
            },
            || shared.delivered.load(Ordering::Relaxed) + shared.acked.load(Ordering::Relaxed),
            Duration::from_secs_f64(args.drain_timeout_s),
        )
        .await
    } else {
        false
    };
    progress.finish().await;
    usage.stop();
    let _ = stop.send(true);
    if let Some(reader) = ack_reader {
        if let Ok(stream) = reader.await {
            if let Ok(ws) = sink.reunite(stream) {
                client::close_quietly(ws).await;
            }
        }
    } else {
        let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
    }
    let mut totals = MemberResult::default();
    let mut dropped_members = 0u64;
    for member in members {
        if let Ok(Some(r)) = member.await {
            totals.distinct += r.distinct;
            totals.duplicates += r.duplicates;
            totals.foreign += r.foreign;
            dropped_members += u64::from(r.dropped);
        }
    }

    // Figures.
    let expected = n as u64 * m;
    let sent = shared.sent.load(Ordering::Relaxed);
    let first_send = shared.send_times.sent_at(0).unwrap_or(epoch);
    let last_delivery = shared.last_delivery.get();
    let all_events = totals.distinct + totals.duplicates;
    report.figure("members_connected", connected, "");
    report.figure("connect_failures", failed, "");
    report.figure("sent", sent, "");
    if mode == Mode::Switchboard {
        report.figure("acked", shared.acked.load(Ordering::Relaxed), "");
        report.figure(
            "send_errors",
            shared.send_errors.load(Ordering::Relaxed),
            "",
        );
    }
    report.figure("expected", expected, "");
    report.figure("delivered", totals.distinct, "");
    report.figure("missing", expected - totals.distinct.min(expected), "");
    report.figure("duplicates", totals.duplicates, "");
    report.rate(
        "deliveries_per_s",
        all_events,
        secs(first_send, last_delivery),
    );
    // How fast the sender wrote (bounded by the in-flight window), and for
    // Switchboard how fast sends were durably stored and acked.
    report.rate("sender_writes_per_s", sent, secs(first_send, sent_all_at));
    if mode == Mode::Switchboard {
        let acked = shared.acked.load(Ordering::Relaxed);
        report.rate("acks_per_s", acked, secs(first_send, shared.last_ack.get()));
    }
    report.figure(
        "first_send_to_last_delivery_s",
        (secs(first_send, last_delivery) * 1000.0).round() / 1000.0,
        "s",
    );
    usage.report(&mut report);
    report.counts("close_codes", shared.stats.closes());
    report.counts("error_codes", shared.stats.errors());
    report.histogram("delivery_latency", shared.latency.merged());
    if mode == Mode::Switchboard {
        report.histogram("ack_latency", shared.ack_latency.merged());
    }

    // Verdict.
    if let Err(e) = send_result {
        report.fail(format!("sending failed: {e:#}"));
    }
    if failed > 0 {
        let first = first_connect_error.lock().expect("error lock").clone();
        report.fail(format!(
            "{failed} members could not connect (first: {})",
            first.unwrap_or_default()
        ));
    }
    let send_errors = shared.send_errors.load(Ordering::Relaxed);
    if send_errors > 0 {
        let first = shared.first_send_error.lock().expect("error lock").clone();
        report.fail(format!(
            "{send_errors} sends were refused (first: {})",
            first.unwrap_or_default()
        ));
    }
    if totals.distinct < expected {
        report.fail(format!(
            "{} of {expected} deliveries missing{}",
            expected - totals.distinct,
            if finished {
                ""
            } else {
                " (stopped waiting: no progress)"
            }
        ));
    }
    if totals.duplicates > 0 {
        report.fail(format!("{} duplicate deliveries", totals.duplicates));
    }
    if dropped_members > 0 {
        report.fail(format!(
            "{dropped_members} members were disconnected by the server (see close_codes)"
        ));
    }
    if totals.foreign > 0 {
        report.note(format!(
            "{} frames were not messages of this run (ignored)",
            totals.foreign
        ));
    }
    for hint in shared.stats.hints() {
        report.note(hint);
    }
    Ok(report)
}

/// One member: counts every tagged message once, until told to stop.
async fn receive(
    mut ws: Ws,
    index: usize,
    mode: Mode,
    m: u64,
    shared: &Shared,
    mut stopped: watch::Receiver<bool>,
) -> MemberResult {
    let mut seen = vec![0u64; (m as usize).div_ceil(64)];
    let mut result = MemberResult::default();
    loop {
        let text = tokio::select! {
            _ = client::until_set(&mut stopped) => break,
            text = client::next_text(&mut ws, &shared.stats) => text,
        };
        let Some(text) = text else {
            result.dropped = true;
            return result;
        };
        let tag = match mode {
            Mode::Baseline => body::decode(&text),
            Mode::Switchboard => match body::classify(&text) {
                Ok(Incoming::Message(ev)) => ev.tag,
                Ok(Incoming::Frame(frame)) => {
                    if let ServerFrame::Error { code, .. } = *frame {
                        shared.stats.error_reply(code);
                    }
                    // `conversation` events and the like are not deliveries.
                    continue;
                }
                Err(_) => None,
            },
        };
        let now = Instant::now();
        let Some(tag) = tag.filter(|t| *t < m) else {
            result.foreign += 1;
            continue;
        };
        let (word, bit) = ((tag / 64) as usize, 1u64 << (tag % 64));
        if seen[word] & bit != 0 {
            result.duplicates += 1;
            continue;
        }
        seen[word] |= bit;
        result.distinct += 1;
        if let Some(sent) = shared.send_times.sent_at(tag) {
            shared
                .latency
                .record(index, now.saturating_duration_since(sent));
        }
        shared.last_delivery.observe(now);
        shared.delivered.fetch_add(1, Ordering::Release);
    }
    client::close_quietly(ws).await;
    result
}

/// Sends tags `0..m`: paced at `rate`, or as fast as `permits` (released by
/// acks) and the socket allow. Frames are fed and flushed in batches.
async fn send_all<S>(
    sink: &mut S,
    m: u64,
    rate: Option<f64>,
    permits: Option<&Semaphore>,
    shared: &Shared,
    frame: impl Fn(u64) -> String,
) -> anyhow::Result<()>
where
    S: Sink<WsMessage, Error = WsError> + Unpin,
{
    let start = tokio::time::Instant::now();
    let mut unflushed = 0u32;
    for tag in 0..m {
        if let Some(rate) = rate {
            let due = start + Duration::from_secs_f64(tag as f64 / rate);
            if tokio::time::Instant::now() < due {
                if unflushed > 0 {
                    sink.flush().await?;
                    unflushed = 0;
                }
                tokio::time::sleep_until(due).await;
            }
        }
        if let Some(permits) = permits {
            match permits.try_acquire() {
                Ok(p) => p.forget(),
                Err(_) => {
                    // Window full: push out what is buffered, then wait for acks.
                    if unflushed > 0 {
                        sink.flush().await?;
                        unflushed = 0;
                    }
                    permits.acquire().await?.forget();
                }
            }
        }
        let text = frame(tag);
        shared.send_times.mark(tag);
        sink.feed(WsMessage::text(text)).await?;
        shared.sent.fetch_add(1, Ordering::Relaxed);
        unflushed += 1;
        if unflushed >= FLUSH_EVERY {
            sink.flush().await?;
            unflushed = 0;
        }
    }
    sink.flush().await?;
    Ok(())
}

/// The sender's replies: each `ok` or `error` frees one in-flight slot.
/// Returns the stream so the connection can be closed politely.
async fn read_acks<S>(
    mut stream: S,
    m: u64,
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    mut stopped: watch::Receiver<bool>,
) -> S
where
    S: futures_util::Stream<Item = Result<WsMessage, WsError>> + Unpin,
{
    loop {
        if shared.acked.load(Ordering::Relaxed) + shared.send_errors.load(Ordering::Relaxed) >= m {
            return stream;
        }
        let text = tokio::select! {
            _ = client::until_set(&mut stopped) => return stream,
            text = client::next_text(&mut stream, &shared.stats) => text,
        };
        let Some(text) = text else {
            // The sender's connection ended: let the sender stop waiting.
            permits.close();
            return stream;
        };
        let Ok(Incoming::Frame(frame)) = body::classify(&text) else {
            continue;
        };
        match *frame {
            ServerFrame::Ok {
                req: Some(req),
                body: OkBody::Sent { .. },
            } if req >= 2 => {
                if let Some(sent) = shared.send_times.sent_at(req - 2) {
                    shared.ack_latency.record(0, sent.elapsed());
                }
                shared.acked.fetch_add(1, Ordering::Relaxed);
                shared.last_ack.observe(Instant::now());
                permits.add_permits(1);
            }
            ServerFrame::Error {
                req: Some(req),
                code,
                message,
            } if req >= 2 => {
                shared.stats.error_reply(code);
                shared.send_errors.fetch_add(1, Ordering::Relaxed);
                shared
                    .first_send_error
                    .lock()
                    .expect("error lock")
                    .get_or_insert_with(|| format!("{}: {message}", code.as_str()));
                permits.add_permits(1);
            }
            _ => {}
        }
    }
}
