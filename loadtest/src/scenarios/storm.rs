//! `storm`: N clients in groups of ten (one group per ten clients, plus one
//! sender per group that sends at a low rate throughout). Every client
//! drops its connection and reconnects K times: connect, `auth`, then `sync`
//! after the last contiguous `seq` it has, paging while `has_more`, then it
//! stays a little while receiving events. Once the senders stop, each
//! client catches up one last time and its view must be exactly seq
//! 1..=last with the bodies that were acked, no gaps and no duplicates.
//! Reports reconnects per second and reconnect latency (connect → caught up).
//!
//! What counts as a duplicate: the same `seq` as two `message` events on one
//! connection, one `seq` seen with two different bodies, or a `sync` page
//! out of order or overlapping the previous page. A message that arrives both
//! as an event and in a `sync` page is the protocol's normal overlap (clients
//! deduplicate by id); it is reported, not failed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use switchboard_protocol::{ClientFrame, Message, MessageKind, OkBody, ServerFrame};
use tokio::sync::{watch, Notify, Semaphore};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::{customers, secs, wait_done_or_stalled, Ctx, Mode, Outcome, DEFAULT_CONCURRENCY};
use crate::body::{self, Incoming};
use crate::client;
use crate::net::{Connector, Ws};
use crate::progress::Progress;
use crate::report::Report;
use crate::stats::{Latency, Stats};

/// Page size asked of `sync`. Why 200: the protocol's maximum, so a client
/// that missed much catches up in the fewest round trips.
const SYNC_LIMIT: u32 = 200;
/// How long one `sync` reply may take. Why 15 s: a page is one indexed
/// query; only a server drowning in the storm is slower, and that is a
/// failure to report rather than wait for.
const SYNC_TIMEOUT: Duration = Duration::from_secs(15);
/// Connect attempts per reconnect before the client gives up. Why 5: with
/// the backoff below that is ~3 s of retrying, enough to ride out a full
/// accept backlog, bounded so a dead server ends the run.
const CONNECT_ATTEMPTS: u32 = 5;
/// First retry delay, doubled after each failed attempt.
const RETRY_DELAY: Duration = Duration::from_millis(100);

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct StormArgs {
    /// Reconnecting clients.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    clients: u64,
    /// Times each client drops and reconnects.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=1000))]
    rounds: u64,
    /// Clients per group (each group also has its sender).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=9_999))]
    group_size: u64,
    /// Messages per second of each group's sender.
    #[arg(long, default_value_t = 5.0)]
    send_rate: f64,
    /// Milliseconds a connection stays up before it is dropped (±50 %);
    /// 0 reconnects as fast as the server allows.
    #[arg(long, default_value_t = 100)]
    hold_ms: u64,
    /// Connects in flight at once.
    #[arg(long, default_value_t = DEFAULT_CONCURRENCY)]
    concurrency: usize,
    /// Give up waiting for the senders' acks after this many seconds without progress.
    #[arg(long, default_value_t = 10.0)]
    drain_timeout_s: f64,
}

/// One client's view of its conversation, and what looked wrong while
/// building it.
#[derive(Default, Debug)]
pub(crate) struct View {
    /// seq → body tag (`None`: a body without a tag).
    seqs: BTreeMap<i64, Option<u64>>,
    /// Highest seq up to which every seq is present.
    contiguous: i64,
    /// Same seq twice as an event on one connection.
    dup_events: u64,
    /// One seq seen with two different bodies.
    conflicts: u64,
    /// Sync pages out of order, or overlapping what they should follow.
    sync_disorder: u64,
    /// Seqs received both ways (event and sync): deduplicated, not an error.
    overlaps: u64,
}

impl View {
    fn merge(&mut self, seq: i64, tag: Option<u64>) {
        match self.seqs.get(&seq) {
            Some(existing) if *existing != tag => self.conflicts += 1,
            Some(_) => self.overlaps += 1,
            None => {
                self.seqs.insert(seq, tag);
                while self.seqs.contains_key(&(self.contiguous + 1)) {
                    self.contiguous += 1;
                }
            }
        }
    }

    /// A `message` event on a connection that has already had `on_conn`.
    fn on_event(&mut self, seq: i64, tag: Option<u64>, on_conn: &mut HashSet<i64>) {
        if !on_conn.insert(seq) {
            self.dup_events += 1;
            return;
        }
        self.merge(seq, tag);
    }

    /// A `sync` page asked with `after`.
    fn on_page(&mut self, after: i64, messages: &[Message]) {
        let mut prev = after;
        for m in messages {
            if m.seq <= prev {
                self.sync_disorder += 1;
                continue;
            }
            prev = m.seq;
            self.merge(m.seq, body::decode(&m.body));
        }
    }

    /// Gaps, extra seqs and body mismatches against the sender's acks
    /// (seq → tag), whose highest seq is `last`.
    fn check(&self, acked: &HashMap<i64, u64>, last: i64) -> (u64, u64, u64) {
        let present = self.seqs.range(1..=last).count() as i64;
        let gaps = (last - present.min(last)) as u64;
        let extra = (self.seqs.len() as i64 - present) as u64;
        let mismatched = self
            .seqs
            .iter()
            .filter(|(seq, tag)| acked.get(seq).is_some_and(|a| Some(*a) != **tag))
            .count() as u64;
        (gaps, extra, mismatched)
    }

    fn duplicates(&self) -> u64 {
        self.dup_events + self.conflicts + self.sync_disorder
    }
}

/// What all tasks share.
struct Shared {
    stats: Stats,
    connector: Arc<Connector>,
    slots: Semaphore,
    reconnects: AtomicU64,
    reconnect_latency: Latency,
    connect_failures: AtomicU64,
    first_error: Mutex<Option<String>>,
    rounds_done: AtomicU64,
    sent: AtomicU64,
    acked: AtomicU64,
    send_errors: AtomicU64,
}

impl Shared {
    fn error(&self, e: &anyhow::Error) {
        self.first_error
            .lock()
            .expect("error lock")
            .get_or_insert_with(|| format!("{e:#}"));
    }
}

pub(crate) async fn run(ctx: &Ctx, args: &StormArgs) -> anyhow::Result<Outcome> {
    if !(args.send_rate > 0.0 && args.send_rate <= 10_000.0) {
        anyhow::bail!("--send-rate must be above 0 and at most 10,000");
    }
    if args.hold_ms > 600_000 {
        anyhow::bail!("--hold-ms must be at most 600000");
    }
    if !(args.drain_timeout_s > 0.0 && args.drain_timeout_s <= 600.0) {
        anyhow::bail!("--drain-timeout-s must be above 0 and at most 600");
    }
    Ok(Outcome::Single(measure(ctx, args).await?))
}

async fn measure(ctx: &Ctx, args: &StormArgs) -> anyhow::Result<Report> {
    let n = args.clients as usize;
    let size = args.group_size as usize;
    let groups = n.div_ceil(size);
    let mut report = Report::new("storm", Mode::Switchboard.name());
    report.param("clients", n);
    report.param("rounds", args.rounds);
    report.param("group_size", size);
    report.param("send_rate_per_group", args.send_rate);
    report.param("hold_ms", args.hold_ms);
    report.param("source_ips", ctx.connector.sources().len());
    for note in super::check_fd_limits(n + groups, ctx.server.as_ref())? {
        report.note(note);
    }

    let rest = ctx.rest().await?;
    let mut accounts = customers(&rest, n + groups).await?;
    let senders = accounts.split_off(n);
    let lists = (0..groups)
        .map(|g| {
            let mut ids: Vec<String> = accounts[g * size..((g + 1) * size).min(n)]
                .iter()
                .map(|a| a.id.clone())
                .collect();
            ids.push(senders[g].id.clone());
            ids
        })
        .collect();
    let convs = rest.groups(lists).await?;

    let shared = Arc::new(Shared {
        stats: Stats::default(),
        connector: ctx.connector.clone(),
        slots: Semaphore::new(args.concurrency.max(1)),
        reconnects: AtomicU64::new(0),
        reconnect_latency: Latency::default(),
        connect_failures: AtomicU64::new(0),
        first_error: Mutex::new(None),
        rounds_done: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        send_errors: AtomicU64::new(0),
    });

    // Senders first: connected and sending before the storm starts.
    let (stop_sending, sending_stopped) = watch::channel(false);
    let (stop_all, all_stopped) = watch::channel(false);
    let mut sender_tasks = Vec::with_capacity(groups);
    for (g, account) in senders.into_iter().enumerate() {
        let (ws, _) = client::connect_authed(&ctx.connector, &account.token, &shared.stats).await?;
        let shared = shared.clone();
        let conv = convs[g].clone();
        let run_id = format!("{}-{g}", ctx.run_id);
        let rate = args.send_rate;
        let (sending_stopped, all_stopped) = (sending_stopped.clone(), all_stopped.clone());
        sender_tasks.push(tokio::spawn(async move {
            sender(
                ws,
                conv,
                run_id,
                rate,
                &shared,
                sending_stopped,
                all_stopped,
            )
            .await
        }));
    }
    let mut usage = super::Usage::start(ctx);

    let (final_sync, final_sync_rx) = watch::channel(false);
    let all_rounds_done = Arc::new(Notify::new());
    let started = Instant::now();
    let mut client_tasks = Vec::with_capacity(n);
    for (i, account) in accounts.into_iter().enumerate() {
        let shared = shared.clone();
        let conv = convs[i / size].clone();
        let rounds = args.rounds;
        let hold = Duration::from_millis(args.hold_ms);
        let final_sync_rx = final_sync_rx.clone();
        let all_rounds_done = all_rounds_done.clone();
        client_tasks.push(tokio::spawn(async move {
            let result = storm_client(
                i,
                &account.token,
                &conv,
                rounds,
                hold,
                &shared,
                final_sync_rx,
                || {
                    if shared.rounds_done.fetch_add(1, Ordering::AcqRel) + 1 == n as u64 {
                        all_rounds_done.notify_one();
                    }
                },
            )
            .await;
            if let Err(e) = &result {
                shared.error(e);
            }
            result.ok()
        }));
    }
    let progress = {
        let shared = shared.clone();
        let total = n as u64 * args.rounds;
        Progress::start(move || {
            let r = shared.reconnects.load(Ordering::Relaxed);
            format!(
                "storm: {r}/{total} reconnects ({:.0}/s), {} clients done, {} failures, sent {}",
                r as f64 / secs(started, Instant::now()),
                shared.rounds_done.load(Ordering::Relaxed),
                shared.connect_failures.load(Ordering::Relaxed),
                shared.sent.load(Ordering::Relaxed),
            )
        })
    };
    all_rounds_done.notified().await;
    let storm_s = secs(started, Instant::now());
    progress.finish().await;

    // Stop the senders and wait for their last acks, then let every client
    // catch up one last time.
    let _ = stop_sending.send(true);
    let drained = {
        let shared = shared.clone();
        wait_done_or_stalled(
            || {
                shared.acked.load(Ordering::Acquire) + shared.send_errors.load(Ordering::Acquire)
                    == shared.sent.load(Ordering::Acquire)
            },
            || shared.acked.load(Ordering::Relaxed),
            Duration::from_secs_f64(args.drain_timeout_s),
        )
        .await
    };
    let _ = final_sync.send(true);
    let mut views = Vec::with_capacity(n);
    for t in client_tasks {
        views.push(t.await.ok().flatten());
    }
    usage.stop();
    let _ = stop_all.send(true);
    let mut acked_by_group = Vec::with_capacity(groups);
    for t in sender_tasks {
        acked_by_group.push(t.await.unwrap_or_default());
    }

    // Verify every client against its group's acks.
    let (mut gaps, mut extra, mut mismatched, mut duplicates, mut overlaps) = (0, 0, 0, 0, 0);
    let mut failed_clients = 0;
    let mut worst: Option<String> = None;
    for (i, view) in views.iter().enumerate() {
        let Some(view) = view else {
            failed_clients += 1;
            continue;
        };
        let acked = &acked_by_group[i / size];
        let last = acked.keys().max().copied().unwrap_or(0);
        let (g, x, m) = view.check(acked, last);
        let d = view.duplicates();
        if (g + x + m + d) > 0 && worst.is_none() {
            worst = Some(format!(
                "client {i}: {g} gaps, {x} extra, {m} mismatched, {d} duplicates (last seq {last})"
            ));
        }
        gaps += g;
        extra += x;
        mismatched += m;
        duplicates += d;
        overlaps += view.overlaps;
    }
    let acked_seq_gaps: u64 = acked_by_group
        .iter()
        .map(|a| {
            let last = a.keys().max().copied().unwrap_or(0);
            (last - a.len() as i64).max(0) as u64
        })
        .sum();

    let reconnects = shared.reconnects.load(Ordering::Relaxed);
    report.figure("reconnects", reconnects, "");
    report.rate("reconnects_per_s", reconnects, storm_s);
    report.figure("storm_s", (storm_s * 1000.0).round() / 1000.0, "s");
    report.figure(
        "connect_failures",
        shared.connect_failures.load(Ordering::Relaxed),
        "",
    );
    report.figure("failed_clients", failed_clients, "");
    report.figure("sent", shared.sent.load(Ordering::Relaxed), "");
    report.figure("acked", shared.acked.load(Ordering::Relaxed), "");
    report.figure(
        "send_errors",
        shared.send_errors.load(Ordering::Relaxed),
        "",
    );
    report.figure("gaps", gaps, "");
    report.figure("duplicates", duplicates, "");
    report.figure("extra_seqs", extra, "");
    report.figure("mismatched_bodies", mismatched, "");
    report.figure("acked_seq_gaps", acked_seq_gaps, "");
    report.figure("event_sync_overlaps_deduplicated", overlaps, "");
    usage.report(&mut report);
    report.counts("close_codes", shared.stats.closes());
    report.counts("error_codes", shared.stats.errors());
    report.histogram("reconnect_latency", shared.reconnect_latency.merged());

    if failed_clients > 0 {
        let first = shared.first_error.lock().expect("error lock").clone();
        report.fail(format!(
            "{failed_clients} clients failed (first: {})",
            first.unwrap_or_default()
        ));
    }
    if !drained {
        report.fail("the senders' last messages were never acked");
    }
    let send_errors = shared.send_errors.load(Ordering::Relaxed);
    if send_errors > 0 {
        report.fail(format!("{send_errors} sends were refused"));
    }
    for (count, what) in [
        (gaps, "gaps in clients' views"),
        (duplicates, "duplicates"),
        (extra, "seqs beyond the last acked"),
        (mismatched, "bodies that differ from the acked ones"),
        (acked_seq_gaps, "gaps in the senders' acked seqs"),
    ] {
        if count > 0 {
            report.fail(format!("{count} {what}"));
        }
    }
    if let Some(w) = worst {
        report.note(format!("first client with a problem: {w}"));
    }
    for hint in shared.stats.hints() {
        report.note(hint);
    }
    Ok(report)
}

/// A group's sender: paced sends until `sending_stopped`, acks read until
/// `all_stopped`. Returns seq → tag of its acked messages.
async fn sender(
    ws: Ws,
    conv: String,
    run_id: String,
    rate: f64,
    shared: &Shared,
    mut sending_stopped: watch::Receiver<bool>,
    mut all_stopped: watch::Receiver<bool>,
) -> HashMap<i64, u64> {
    let (mut sink, mut stream) = ws.split();
    let mut acked = HashMap::new();
    let writer = async {
        let period = Duration::from_secs_f64(1.0 / rate);
        let mut tick = tokio::time::interval(period);
        // Keep the schedule: a late tick sends at once, not in a burst.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tag = 0u64;
        loop {
            tokio::select! {
                _ = client::until_set(&mut sending_stopped) => break,
                _ = tick.tick() => {}
            }
            let frame = ClientFrame::Send {
                req: Some(tag + 2),
                conv: conv.clone(),
                client_msg_id: format!("lt-{run_id}-{tag}"),
                kind: MessageKind::Text,
                body: Some(body::encode(tag, 64)),
                attachment: None,
            };
            if sink.send(WsMessage::text(frame.to_json())).await.is_err() {
                break;
            }
            shared.sent.fetch_add(1, Ordering::Release);
            tag += 1;
        }
    };
    let reader = async {
        loop {
            let text = tokio::select! {
                _ = client::until_set(&mut all_stopped) => break,
                text = client::next_text(&mut stream, &shared.stats) => text,
            };
            let Some(text) = text else { break };
            let Ok(Incoming::Frame(frame)) = body::classify(&text) else {
                continue;
            };
            match *frame {
                ServerFrame::Ok {
                    req: Some(req),
                    body: OkBody::Sent { msg },
                } if req >= 2 => {
                    acked.insert(msg.seq, req - 2);
                    shared.acked.fetch_add(1, Ordering::Release);
                }
                ServerFrame::Error { req, code, .. } => {
                    shared.stats.error_reply(code);
                    if req.is_some_and(|r| r >= 2) {
                        shared.send_errors.fetch_add(1, Ordering::Release);
                    }
                }
                _ => {}
            }
        }
    };
    tokio::join!(writer, reader);
    if let Ok(ws) = sink.reunite(stream) {
        client::close_quietly(ws).await;
    }
    acked
}

/// One client: the first connection, `rounds` drop-and-reconnects, then the
/// final catch-up once `final_sync` fires. `rounds_done` is called once the
/// last reconnect has caught up (or the client failed).
#[allow(clippy::too_many_arguments)]
async fn storm_client(
    index: usize,
    token: &str,
    conv: &str,
    rounds: u64,
    hold: Duration,
    shared: &Shared,
    mut final_sync: watch::Receiver<bool>,
    rounds_done: impl FnOnce(),
) -> anyhow::Result<View> {
    let mut rounds_done = Some(rounds_done);
    let result = async {
        let mut view = View::default();
        let mut rng = Jitter::new(index as u64);
        let mut round = 0;
        loop {
            let (mut ws, t) = connect(token, shared).await?;
            let mut on_conn = HashSet::new();
            let mut next_req = client::AUTH_REQ + 1;
            catch_up(
                &mut ws,
                conv,
                &mut view,
                &mut on_conn,
                &mut next_req,
                &shared.stats,
            )
            .await?;
            if round > 0 {
                shared.reconnects.fetch_add(1, Ordering::Relaxed);
                shared.reconnect_latency.record(index, t.elapsed());
            }
            if round == rounds {
                if let Some(done) = rounds_done.take() {
                    done();
                }
                // Stay connected until the senders are done, then catch up.
                receive_until(&mut ws, &mut view, &mut on_conn, &shared.stats, async {
                    client::until_set(&mut final_sync).await;
                })
                .await?;
                catch_up(
                    &mut ws,
                    conv,
                    &mut view,
                    &mut on_conn,
                    &mut next_req,
                    &shared.stats,
                )
                .await?;
                client::close_quietly(ws).await;
                return Ok(view);
            }
            let stay = rng.around(hold);
            receive_until(
                &mut ws,
                &mut view,
                &mut on_conn,
                &shared.stats,
                tokio::time::sleep(stay),
            )
            .await?;
            // Dropped without a close frame, as a lost network would.
            drop(ws);
            round += 1;
        }
    }
    .await;
    if let Some(done) = rounds_done.take() {
        done();
    }
    result
}

/// Connects and authenticates, retrying with backoff; holds one of the
/// bounded connect slots meanwhile. Also returns when the successful
/// attempt got its slot: reconnect latency starts there, so that waiting
/// for a slot (the tool's own queue) is not counted.
async fn connect(token: &str, shared: &Shared) -> anyhow::Result<(Ws, Instant)> {
    let mut delay = RETRY_DELAY;
    let mut attempt = 1;
    loop {
        let (result, started) = {
            let _slot = shared.slots.acquire().await?;
            let started = Instant::now();
            let result = client::connect_authed(&shared.connector, token, &shared.stats).await;
            (result, started)
        };
        match result {
            Ok((ws, _)) => return Ok((ws, started)),
            Err(e) => {
                shared.connect_failures.fetch_add(1, Ordering::Relaxed);
                if attempt >= CONNECT_ATTEMPTS {
                    return Err(e.context(format!("{CONNECT_ATTEMPTS} connect attempts failed")));
                }
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
        }
    }
}

/// `sync` after the last contiguous seq, page after page, while handling
/// the events that arrive meanwhile.
async fn catch_up(
    ws: &mut Ws,
    conv: &str,
    view: &mut View,
    on_conn: &mut HashSet<i64>,
    next_req: &mut u64,
    stats: &Stats,
) -> anyhow::Result<()> {
    let mut after = view.contiguous;
    loop {
        let req = *next_req;
        *next_req += 1;
        let frame = ClientFrame::Sync {
            req: Some(req),
            conv: conv.to_string(),
            after: Some(after),
            before: None,
            limit: Some(SYNC_LIMIT),
        };
        client::send(ws, &frame).await?;
        let page = tokio::time::timeout(SYNC_TIMEOUT, async {
            loop {
                let Some(text) = client::next_text(ws, stats).await else {
                    anyhow::bail!("connection closed during sync");
                };
                match body::classify(&text)? {
                    Incoming::Message(ev) => view.on_event(ev.seq, ev.tag, on_conn),
                    Incoming::Frame(f) => match *f {
                        ServerFrame::Ok {
                            req: Some(r),
                            body: OkBody::Sync(page),
                        } if r == req => return Ok(page),
                        ServerFrame::Error {
                            req: Some(r),
                            code,
                            message,
                        } if r == req => {
                            stats.error_reply(code);
                            anyhow::bail!("sync refused: {}: {message}", code.as_str());
                        }
                        _ => {}
                    },
                }
            }
        })
        .await
        .map_err(|_| anyhow::anyhow!("no sync reply within {SYNC_TIMEOUT:?}"))??;
        view.on_page(after, &page.messages);
        if !page.has_more {
            return Ok(());
        }
        match page.messages.last() {
            Some(last) if last.seq > after => after = last.seq,
            _ => anyhow::bail!("sync said has_more but returned no newer message"),
        }
    }
}

/// Handles events until `until` completes.
async fn receive_until(
    ws: &mut Ws,
    view: &mut View,
    on_conn: &mut HashSet<i64>,
    stats: &Stats,
    until: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    tokio::pin!(until);
    loop {
        tokio::select! {
            _ = &mut until => return Ok(()),
            text = client::next_text(ws, stats) => {
                let Some(text) = text else {
                    anyhow::bail!("the server closed the connection");
                };
                if let Incoming::Message(ev) = body::classify(&text)? {
                    view.on_event(ev.seq, ev.tag, on_conn);
                }
            }
        }
    }
}

/// A tiny deterministic generator (xorshift) for hold times, so clients do
/// not all drop at the same instant; no need for a random crate.
struct Jitter(u64);

impl Jitter {
    fn new(seed: u64) -> Self {
        Jitter(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// `d` ± 50 %.
    fn around(&mut self, d: Duration) -> Duration {
        let f = 0.5 + (self.next() % 1000) as f64 / 1000.0;
        d.mul_f64(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_protocol::{Role, UserRef};

    fn msg(seq: i64, tag: u64) -> Message {
        Message {
            id: format!("m_{seq}"),
            conv: "cv".into(),
            seq,
            sender: UserRef {
                id: "u".into(),
                role: Role::Customer,
                name: "n".into(),
            },
            kind: MessageKind::Text,
            body: body::encode(tag, 16),
            attachment: None,
            client_msg_id: None,
            ts: 0,
            recalled: false,
        }
    }

    #[test]
    fn a_view_built_from_events_and_pages_checks_out() {
        let mut v = View::default();
        let mut conn = HashSet::new();
        v.on_event(1, Some(0), &mut conn);
        v.on_event(3, Some(2), &mut conn);
        assert_eq!(v.contiguous, 1);
        let mut conn = HashSet::new();
        v.on_page(1, &[msg(2, 1), msg(3, 2)]);
        assert_eq!(v.contiguous, 3);
        assert_eq!(v.overlaps, 1);
        v.on_event(4, Some(3), &mut conn);
        let acked: HashMap<i64, u64> = [(1, 0), (2, 1), (3, 2), (4, 3)].into();
        assert_eq!(v.check(&acked, 4), (0, 0, 0));
        assert_eq!(v.duplicates(), 0);
        // One missing seq at the end is a gap.
        assert_eq!(v.check(&acked, 5), (1, 0, 0));
    }

    #[test]
    fn duplicates_and_conflicts_are_caught() {
        let mut v = View::default();
        let mut conn = HashSet::new();
        v.on_event(1, Some(0), &mut conn);
        v.on_event(1, Some(0), &mut conn);
        assert_eq!(v.dup_events, 1);
        v.on_page(0, &[msg(1, 9)]);
        assert_eq!(v.conflicts, 1);
        v.on_page(1, &[msg(3, 2), msg(2, 1)]);
        assert_eq!(v.sync_disorder, 1);
        assert_eq!(v.duplicates(), 3);
        let acked: HashMap<i64, u64> = [(1, 0), (2, 5), (3, 2)].into();
        // seq 2 never merged (out of order), seq 3 present.
        assert_eq!(v.check(&acked, 3), (1, 0, 0));
    }

    #[test]
    fn jitter_stays_within_half() {
        let mut j = Jitter::new(7);
        for _ in 0..1000 {
            let d = j.around(Duration::from_millis(100));
            assert!(d >= Duration::from_millis(50) && d < Duration::from_millis(150));
        }
    }
}
