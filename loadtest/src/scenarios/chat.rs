//! `chat`: C conversations of two members (a group of two each, standing for
//! a customer and an agent); both members send R messages per second for D
//! seconds. Measures send→ack and send→delivery latency, then checks every
//! conversation: the acked `seq`s of both members together are gapless and
//! unique, and each member received every message its peer had acked
//! exactly once, with the body that was sent. Any gap or duplicate fails
//! the run.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use switchboard_protocol::{ClientFrame, MessageKind, OkBody, ServerFrame};
use tokio::sync::{watch, Notify, Semaphore};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::{customers, secs, wait_done_or_stalled, Ctx, Mode, Outcome, DEFAULT_CONCURRENCY};
use crate::body::{self, Incoming};
use crate::client;
use crate::net::Ws;
use crate::progress::Progress;
use crate::report::Report;
use crate::stats::{Latency, LatestInstant, SendTimes, Stats};

/// Most messages one run may plan. Why 20 million: the send-instant table
/// takes 8 bytes per message (160 MB at most) and no sensible run is larger.
const MAX_PLANNED: u64 = 20_000_000;

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct ChatArgs {
    /// Two-member conversations.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=50_000))]
    pairs: u64,
    /// Messages per second sent by each member.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 5.0)]
    duration_s: f64,
    /// Body size in bytes (at most 8000).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=8000))]
    size: u64,
    /// Connects in flight at once.
    #[arg(long, default_value_t = DEFAULT_CONCURRENCY)]
    concurrency: usize,
    /// Give up waiting for acks and deliveries after this many seconds without progress.
    #[arg(long, default_value_t = 10.0)]
    drain_timeout_s: f64,
}

/// What all members share.
struct Shared {
    stats: Stats,
    send_times: SendTimes,
    ack_latency: Latency,
    delivery_latency: Latency,
    sent: AtomicU64,
    acked: AtomicU64,
    send_errors: AtomicU64,
    first_send_error: Mutex<Option<String>>,
    delivered: AtomicU64,
    last_delivery: LatestInstant,
    last_ack: LatestInstant,
    writers_done: AtomicU64,
}

/// What one member did and saw.
struct MemberLog {
    /// `last_seq` of the conversation when this member authenticated.
    base_seq: i64,
    /// (seq, tag) of each of its own acked messages.
    acked: Vec<(i64, u64)>,
    /// (seq, tag) of each `message` event received.
    received: Vec<(i64, Option<u64>)>,
    dropped: bool,
}

/// What the per-conversation checks found, summed over conversations.
#[derive(Default, Debug, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// Acked seqs missing below the highest acked seq.
    pub(crate) seq_gaps: u64,
    /// Acked seqs given to two messages.
    pub(crate) seq_duplicates: u64,
    /// Peer-acked messages a member never received.
    pub(crate) missing: u64,
    /// Messages a member received more than once.
    pub(crate) duplicate_deliveries: u64,
    /// Received with another body (tag) than the one acked for that seq.
    pub(crate) mismatched: u64,
    /// Received but never acked to the peer (e.g. the ack was lost).
    pub(crate) unexpected: u64,
}

pub(crate) async fn run(ctx: &Ctx, args: &ChatArgs) -> anyhow::Result<Outcome> {
    if !(args.rate > 0.0 && args.rate <= 100_000.0) {
        anyhow::bail!("--rate must be above 0 and at most 100,000");
    }
    if !(args.duration_s > 0.0 && args.duration_s <= 3600.0) {
        anyhow::bail!("--duration-s must be above 0 and at most 3600");
    }
    if !(args.drain_timeout_s > 0.0 && args.drain_timeout_s <= 600.0) {
        anyhow::bail!("--drain-timeout-s must be above 0 and at most 600");
    }
    let per_member = (args.rate * args.duration_s).ceil() as u64;
    if per_member * args.pairs * 2 > MAX_PLANNED {
        anyhow::bail!("this run would send more than {MAX_PLANNED} messages; make it smaller");
    }
    Ok(Outcome::Single(measure(ctx, args, per_member).await?))
}

async fn measure(ctx: &Ctx, args: &ChatArgs, per_member: u64) -> anyhow::Result<Report> {
    let pairs = args.pairs as usize;
    let n = pairs * 2;
    let mut report = Report::new("chat", Mode::Switchboard.name());
    report.param("pairs", pairs);
    report.param("rate_per_member", args.rate);
    report.param("planned_sends_per_s", args.rate * n as f64);
    report.param("duration_s", args.duration_s);
    report.param("size", args.size);
    report.param("source_ips", ctx.connector.sources().len());
    for note in super::check_fd_limits(n, ctx.server.as_ref())? {
        report.note(note);
    }

    let rest = ctx.rest().await?;
    let accounts = customers(&rest, n).await?;
    let lists = accounts
        .chunks(2)
        .map(|p| p.iter().map(|a| a.id.clone()).collect())
        .collect();
    let convs = rest.groups(lists).await?;

    let epoch = Instant::now();
    let shared = Arc::new(Shared {
        stats: Stats::default(),
        send_times: SendTimes::new(epoch, n * per_member as usize),
        ack_latency: Latency::default(),
        delivery_latency: Latency::default(),
        sent: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        send_errors: AtomicU64::new(0),
        first_send_error: Mutex::new(None),
        delivered: AtomicU64::new(0),
        last_delivery: LatestInstant::new(epoch),
        last_ack: LatestInstant::new(epoch),
        writers_done: AtomicU64::new(0),
    });
    let (start, started) = watch::channel(None::<tokio::time::Instant>);
    let (stop, stopped) = watch::channel(false);
    let slots = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let connected = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let attempts = Arc::new(AtomicU64::new(0));
    let all_attempted = Arc::new(Notify::new());
    let first_connect_error: Arc<Mutex<Option<String>>> = Arc::default();

    let mut members = Vec::with_capacity(n);
    for (i, account) in accounts.into_iter().enumerate() {
        let plan = Plan {
            index: i,
            conv: convs[i / 2].clone(),
            first_tag: i as u64 * per_member,
            count: per_member,
            rate: args.rate,
            // Spread members over one sending period so that sends do not
            // all land on the same instants.
            offset: Duration::from_secs_f64(i as f64 / n as f64 / args.rate),
            size: args.size as usize,
            run_id: ctx.run_id.clone(),
        };
        let connector = ctx.connector.clone();
        let shared = shared.clone();
        let slots = slots.clone();
        let (connected, failed) = (connected.clone(), failed.clone());
        let (attempts, all_attempted) = (attempts.clone(), all_attempted.clone());
        let first_connect_error = first_connect_error.clone();
        let (started, stopped) = (started.clone(), stopped.clone());
        members.push(tokio::spawn(async move {
            let permit = slots.acquire_owned().await.expect("semaphore never closed");
            let conn = client::connect_authed(&connector, &account.token, &shared.stats).await;
            drop(permit);
            let conn = match conn {
                Ok(c) => {
                    connected.fetch_add(1, Ordering::Relaxed);
                    Some(c)
                }
                Err(e) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    first_connect_error
                        .lock()
                        .expect("error lock")
                        .get_or_insert_with(|| format!("{e:#}"));
                    None
                }
            };
            if attempts.fetch_add(1, Ordering::AcqRel) + 1 == n as u64 {
                all_attempted.notify_one();
            }
            let (ws, ok) = conn?;
            let base_seq = ok
                .conversations
                .iter()
                .find(|c| c.id == plan.conv)
                .map_or(0, |c| c.last_seq);
            Some(member(ws, base_seq, plan, &shared, started, stopped).await)
        }));
    }

    let progress = {
        let (connected, failed) = (connected.clone(), failed.clone());
        Progress::start(move || {
            format!(
                "connecting: {}/{n}, {} failed",
                connected.load(Ordering::Relaxed),
                failed.load(Ordering::Relaxed)
            )
        })
    };
    all_attempted.notified().await;
    progress.finish().await;
    let connected = connected.load(Ordering::Relaxed);
    let failed = failed.load(Ordering::Relaxed);

    let mut usage = super::Usage::start(ctx);
    // Why 100 ms: every member task is waiting; this lets them all see the
    // start instant before it arrives.
    let t0 = tokio::time::Instant::now() + Duration::from_millis(100);
    let _ = start.send(Some(t0));
    let progress = {
        let shared = shared.clone();
        let t0 = t0.into_std();
        Progress::start(move || {
            let elapsed = secs(t0, Instant::now());
            format!(
                "{elapsed:.1}s: sent {}, acked {}, delivered {}, errors {}",
                shared.sent.load(Ordering::Relaxed),
                shared.acked.load(Ordering::Relaxed),
                shared.delivered.load(Ordering::Relaxed),
                shared.send_errors.load(Ordering::Relaxed),
            )
        })
    };
    let finished = {
        let shared = shared.clone();
        wait_done_or_stalled(
            || {
                let acked = shared.acked.load(Ordering::Acquire);
                shared.writers_done.load(Ordering::Acquire) == connected
                    && acked + shared.send_errors.load(Ordering::Acquire)
                        == shared.sent.load(Ordering::Acquire)
                    && shared.delivered.load(Ordering::Acquire) >= acked
            },
            || {
                shared.sent.load(Ordering::Relaxed)
                    + shared.acked.load(Ordering::Relaxed)
                    + shared.delivered.load(Ordering::Relaxed)
            },
            Duration::from_secs_f64(args.drain_timeout_s),
        )
        .await
    };
    progress.finish().await;
    usage.stop();
    let _ = stop.send(true);
    let mut logs: Vec<Option<MemberLog>> = Vec::with_capacity(n);
    for m in members {
        logs.push(m.await.ok().flatten());
    }

    let mut verdict = Verdict::default();
    let mut broken_pairs = 0;
    let mut dropped = 0;
    for pair in logs.chunks(2) {
        match pair {
            [Some(a), Some(b)] => {
                dropped += u64::from(a.dropped) + u64::from(b.dropped);
                check_pair(a, b, &mut verdict);
            }
            _ => broken_pairs += 1,
        }
    }

    let sent = shared.sent.load(Ordering::Relaxed);
    let acked = shared.acked.load(Ordering::Relaxed);
    let send_errors = shared.send_errors.load(Ordering::Relaxed);
    let t0 = t0.into_std();
    report.figure("members_connected", connected, "");
    report.figure("connect_failures", failed, "");
    report.figure("sent", sent, "");
    report.figure("acked", acked, "");
    report.figure("send_errors", send_errors, "");
    report.figure("delivered", shared.delivered.load(Ordering::Relaxed), "");
    // Over the time the acks took: when the server falls behind, acks
    // (and deliveries) trail the planned rate past the sending period.
    report.rate("acked_per_s", acked, secs(t0, shared.last_ack.get()));
    report.rate(
        "deliveries_per_s",
        shared.delivered.load(Ordering::Relaxed),
        secs(t0, shared.last_delivery.get()),
    );
    report.figure("seq_gaps", verdict.seq_gaps, "");
    report.figure("seq_duplicates", verdict.seq_duplicates, "");
    report.figure("missing_deliveries", verdict.missing, "");
    report.figure("duplicate_deliveries", verdict.duplicate_deliveries, "");
    report.figure("mismatched_bodies", verdict.mismatched, "");
    report.figure("unacked_but_delivered", verdict.unexpected, "");
    usage.report(&mut report);
    report.counts("close_codes", shared.stats.closes());
    report.counts("error_codes", shared.stats.errors());
    report.histogram("ack_latency", shared.ack_latency.merged());
    report.histogram("delivery_latency", shared.delivery_latency.merged());

    if failed > 0 {
        let first = first_connect_error.lock().expect("error lock").clone();
        report.fail(format!(
            "{failed} members could not connect ({broken_pairs} conversations not checked; first: {})",
            first.unwrap_or_default()
        ));
    }
    if send_errors > 0 {
        let first = shared.first_send_error.lock().expect("error lock").clone();
        report.fail(format!(
            "{send_errors} sends were refused (first: {})",
            first.unwrap_or_default()
        ));
    }
    if !finished {
        report.fail(format!(
            "stopped waiting after {} s without progress: {} sends unanswered",
            args.drain_timeout_s,
            sent - acked - send_errors
        ));
    }
    for (count, what) in [
        (verdict.seq_gaps, "gaps in acked seqs"),
        (verdict.seq_duplicates, "seqs acked twice"),
        (
            verdict.missing,
            "acked messages never delivered to the peer",
        ),
        (verdict.duplicate_deliveries, "duplicate deliveries"),
        (
            verdict.mismatched,
            "deliveries with another body than acked",
        ),
    ] {
        if count > 0 {
            report.fail(format!("{count} {what}"));
        }
    }
    if dropped > 0 {
        report.fail(format!(
            "{dropped} members were disconnected by the server (see close_codes)"
        ));
    }
    if verdict.unexpected > 0 {
        report.note(format!(
            "{} messages were delivered whose ack the sender never got",
            verdict.unexpected
        ));
    }
    for hint in shared.stats.hints() {
        report.note(hint);
    }
    Ok(report)
}

/// What one member sends.
struct Plan {
    index: usize,
    conv: String,
    first_tag: u64,
    count: u64,
    rate: f64,
    offset: Duration,
    size: usize,
    run_id: String,
}

/// One member: sends its plan paced while reading acks and events, until
/// told to stop.
async fn member(
    ws: Ws,
    base_seq: i64,
    plan: Plan,
    shared: &Shared,
    mut started: watch::Receiver<Option<tokio::time::Instant>>,
    mut stopped: watch::Receiver<bool>,
) -> MemberLog {
    let mut log = MemberLog {
        base_seq,
        acked: Vec::with_capacity(plan.count as usize),
        received: Vec::with_capacity(plan.count as usize),
        dropped: false,
    };
    let (mut sink, mut stream) = ws.split();
    let writer = async {
        let Ok(t0) = started
            .wait_for(Option::is_some)
            .await
            .map(|t| t.expect("some"))
        else {
            return;
        };
        for k in 0..plan.count {
            let due = t0 + plan.offset + Duration::from_secs_f64(k as f64 / plan.rate);
            tokio::time::sleep_until(due).await;
            let tag = plan.first_tag + k;
            let frame = ClientFrame::Send {
                req: Some(k + 2),
                conv: plan.conv.clone(),
                client_msg_id: format!("lt-{}-{tag}", plan.run_id),
                kind: MessageKind::Text,
                body: Some(body::encode(tag, plan.size)),
                attachment: None,
            };
            shared.send_times.mark(tag);
            if sink.send(WsMessage::text(frame.to_json())).await.is_err() {
                break;
            }
            shared.sent.fetch_add(1, Ordering::Relaxed);
        }
        shared.writers_done.fetch_add(1, Ordering::Release);
    };
    let reader = async {
        loop {
            let text = tokio::select! {
                _ = client::until_set(&mut stopped) => break,
                text = client::next_text(&mut stream, &shared.stats) => text,
            };
            let Some(text) = text else {
                log.dropped = true;
                break;
            };
            let now = Instant::now();
            match body::classify(&text) {
                Ok(Incoming::Message(ev)) => {
                    if let Some(sent) = ev.tag.and_then(|t| shared.send_times.sent_at(t)) {
                        shared
                            .delivery_latency
                            .record(plan.index, now.saturating_duration_since(sent));
                    }
                    log.received.push((ev.seq, ev.tag));
                    shared.last_delivery.observe(now);
                    shared.delivered.fetch_add(1, Ordering::Release);
                }
                Ok(Incoming::Frame(frame)) => match *frame {
                    ServerFrame::Ok {
                        req: Some(req),
                        body: OkBody::Sent { msg },
                    } if req >= 2 => {
                        let tag = plan.first_tag + req - 2;
                        if let Some(sent) = shared.send_times.sent_at(tag) {
                            shared
                                .ack_latency
                                .record(plan.index, now.saturating_duration_since(sent));
                        }
                        log.acked.push((msg.seq, tag));
                        shared.last_ack.observe(now);
                        shared.acked.fetch_add(1, Ordering::Release);
                    }
                    ServerFrame::Error { req, code, message } => {
                        shared.stats.error_reply(code);
                        if req.is_some_and(|r| r >= 2) {
                            shared
                                .first_send_error
                                .lock()
                                .expect("error lock")
                                .get_or_insert_with(|| format!("{}: {message}", code.as_str()));
                            shared.send_errors.fetch_add(1, Ordering::Release);
                        }
                    }
                    _ => {}
                },
                Err(_) => {}
            }
        }
    };
    tokio::join!(writer, reader);
    if let Ok(ws) = sink.reunite(stream) {
        client::close_quietly(ws).await;
    }
    log
}

/// Checks one conversation: `a` and `b` are its two members.
fn check_pair(a: &MemberLog, b: &MemberLog, v: &mut Verdict) {
    // Both members' acks together: base+1 ..= base+n, each once.
    let mut seqs: Vec<i64> = a.acked.iter().chain(&b.acked).map(|(s, _)| *s).collect();
    seqs.sort_unstable();
    let before = seqs.len();
    seqs.dedup();
    v.seq_duplicates += (before - seqs.len()) as u64;
    if let Some(&max) = seqs.last() {
        let base = a.base_seq.min(b.base_seq);
        let in_range = seqs.iter().filter(|s| **s > base).count() as i64;
        v.seq_gaps += (max - base - in_range).max(0) as u64;
    }
    check_receiver(&a.acked, &b.received, v);
    check_receiver(&b.acked, &a.received, v);
}

/// The receiver got each of the sender's acked messages exactly once.
fn check_receiver(sender_acked: &[(i64, u64)], received: &[(i64, Option<u64>)], v: &mut Verdict) {
    let acked: HashMap<i64, u64> = sender_acked.iter().copied().collect();
    let mut got: HashMap<i64, u32> = HashMap::with_capacity(received.len());
    for (seq, tag) in received {
        *got.entry(*seq).or_default() += 1;
        match acked.get(seq) {
            Some(expected) if Some(*expected) != *tag => v.mismatched += 1,
            Some(_) => {}
            None => v.unexpected += 1,
        }
    }
    v.duplicate_deliveries += got.values().map(|c| u64::from(c - 1)).sum::<u64>();
    v.missing += acked.keys().filter(|s| !got.contains_key(s)).count() as u64;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(base: i64, acked: &[(i64, u64)], received: &[(i64, u64)]) -> MemberLog {
        MemberLog {
            base_seq: base,
            acked: acked.to_vec(),
            received: received.iter().map(|(s, t)| (*s, Some(*t))).collect(),
            dropped: false,
        }
    }

    #[test]
    fn a_clean_conversation_passes() {
        let a = log(0, &[(1, 10), (3, 11)], &[(2, 20), (4, 21)]);
        let b = log(0, &[(2, 20), (4, 21)], &[(1, 10), (3, 11)]);
        let mut v = Verdict::default();
        check_pair(&a, &b, &mut v);
        assert_eq!(v, Verdict::default());
    }

    #[test]
    fn gaps_duplicates_and_losses_are_counted() {
        // seq 3 never acked (gap), seq 2 acked twice, b misses 1 and gets 5 twice.
        let a = log(0, &[(1, 10), (2, 11), (5, 12)], &[(2, 20), (4, 21)]);
        let b = log(0, &[(2, 20), (4, 21)], &[(5, 12), (5, 12), (2, 99)]);
        let mut v = Verdict::default();
        check_pair(&a, &b, &mut v);
        assert_eq!(v.seq_gaps, 1);
        assert_eq!(v.seq_duplicates, 1);
        assert_eq!(v.missing, 1);
        assert_eq!(v.duplicate_deliveries, 1);
        assert_eq!(v.mismatched, 1);
        assert_eq!(v.unexpected, 0);
    }

    #[test]
    fn a_conversation_with_history_starts_after_its_base() {
        let a = log(7, &[(8, 1)], &[(9, 2)]);
        let b = log(7, &[(9, 2)], &[(8, 1)]);
        let mut v = Verdict::default();
        check_pair(&a, &b, &mut v);
        assert_eq!(v, Verdict::default());
    }
}
