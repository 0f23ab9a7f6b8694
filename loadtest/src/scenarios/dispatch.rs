//! `dispatch`: A agents go `online` (in a team when the server has the teams
//! API), N customers each send `consult`; agents take whatever the server
//! assigns to them (`conversation` events naming them; `accept` when the
//! conversation is only offered) and close it again to free their capacity.
//! Measures assignments per second and consult → assignment latency.
//!
//! With `--backlog` the queue is built first and then drained: one
//! gatekeeper agent with room for a single conversation is online (so the
//! team can serve and consults queue instead of becoming left messages), all
//! N customers consult and wait, and then the A agents, each with room for
//! `ceil((N - 1) / A)` conversations, go online at once. What is measured is
//! the drain alone — from the first `presence` sent to the last assignment —
//! the assignment rate of a shift starting in front of a full queue; agents
//! keep what they are given.
//!
//! The dispatch frames answer `unavailable` until the dispatch release; the
//! scenario then stops at the first such answer with a clear message and
//! the exit status 3, instead of reporting figures it could not measure.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use switchboard_protocol::{
    ClientFrame, ConversationState, ErrorCode, OkBody, PresenceStatus, ReqId, ServerFrame,
};
use tokio::sync::{mpsc, watch, Semaphore};

use super::{
    customers, secs, wait_done_or_stalled, Ctx, FeatureUnavailable, Mode, Outcome,
    DEFAULT_CONCURRENCY,
};
use crate::body::{self, Incoming};
use crate::client;
use crate::net::Ws;
use crate::progress::Progress;
use crate::report::Report;
use crate::stats::{Latency, LatestInstant, Stats};

/// How long a single reply (presence, consult) may take. Why 15 s: each is
/// one transaction; only an overwhelmed server is slower.
const REPLY_TIMEOUT: Duration = Duration::from_secs(15);
/// Frames an agent may have queued for sending (accept, close). Why 256:
/// an agent answers each assignment with one or two frames; this absorbs a
/// burst of assignments, and a full queue just makes the reader wait.
const AGENT_OUTBOX: usize = 256;

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct DispatchArgs {
    /// Online agents.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1000))]
    agents: u64,
    /// Customers, each sending one consult.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    consults: u64,
    /// Connects in flight at once.
    #[arg(long, default_value_t = DEFAULT_CONCURRENCY)]
    concurrency: usize,
    /// Give up waiting for assignments after this many seconds without progress.
    #[arg(long, default_value_t = 10.0)]
    drain_timeout_s: f64,
    /// A second node of the same cluster (loopback): agents and customers
    /// alternate between the two targets, so assignments cross nodes.
    #[arg(long)]
    second_target: Option<String>,
    /// Build the queue first, then bring the agents online and measure the
    /// drain alone (see the module documentation).
    #[arg(long)]
    backlog: bool,
}

/// When a conversation's consult was sent and when it was assigned.
type Timing = (Option<Instant>, Option<Instant>);

/// What all tasks share.
struct Shared {
    stats: Stats,
    /// conv → (consult sent, assigned) instants; whichever side learns its
    /// half second computes the latency.
    timings: Mutex<HashMap<String, Timing>>,
    latency: Latency,
    consulted: AtomicU64,
    assigned: AtomicU64,
    accepts: AtomicU64,
    errors: AtomicU64,
    first_consult: LatestInstant,
    last_assignment: LatestInstant,
    /// Backlog mode: when the agents were told to go online.
    drain_started: std::sync::OnceLock<Instant>,
    first_consult_set: std::sync::Once,
    unavailable: Mutex<Option<String>>,
}

impl Shared {
    fn timing(&self, conv: &str, consult: Option<Instant>, assigned: Option<Instant>) {
        let mut t = self.timings.lock().expect("timings lock");
        let entry = t.entry(conv.to_string()).or_default();
        if consult.is_some() {
            entry.0 = consult;
        }
        if assigned.is_some() && entry.1.is_none() {
            entry.1 = assigned;
        }
        if let (Some(c), Some(a)) = *entry {
            self.latency.record(0, a.saturating_duration_since(c));
            t.remove(conv);
        }
    }

    fn unavailable(&self, what: &str, message: &str) {
        self.unavailable
            .lock()
            .expect("unavailable lock")
            .get_or_insert_with(|| format!("`{what}` was answered `unavailable` ({message})"));
    }
}

pub(crate) async fn run(ctx: &Ctx, args: &DispatchArgs) -> anyhow::Result<Outcome> {
    if !(args.drain_timeout_s > 0.0 && args.drain_timeout_s <= 600.0) {
        anyhow::bail!("--drain-timeout-s must be above 0 and at most 600");
    }
    Ok(Outcome::Single(measure(ctx, args).await?))
}

fn unavailable_error(detail: &str) -> anyhow::Error {
    anyhow::Error::new(FeatureUnavailable(format!(
        "dispatch is not available on this server: {detail}. The dispatch scenario needs a \
         server with the dispatch release; nothing was measured."
    )))
}

async fn measure(ctx: &Ctx, args: &DispatchArgs) -> anyhow::Result<Report> {
    let a = args.agents as usize;
    let n = args.consults as usize;
    let mut report = Report::new("dispatch", Mode::Switchboard.name());
    report.param("agents", a);
    report.param("consults", n);
    for note in super::check_fd_limits(a + n, ctx.server.as_ref())? {
        report.note(note);
    }
    let rest = ctx.rest().await?;
    // Connectors by index: with a second node, even indexes use the first.
    let connectors: Vec<Arc<crate::net::Connector>> = match &args.second_target {
        None => vec![ctx.connector.clone()],
        Some(t) => {
            let addr = crate::target::loopback_target(t)?;
            let (_, ws_url) = crate::target::urls(addr);
            report.param("second_target", t.clone());
            vec![
                ctx.connector.clone(),
                Arc::new(crate::net::Connector::new(
                    addr,
                    ws_url,
                    ctx.connector.sources(),
                )),
            ]
        }
    };
    if args.backlog && n < 2 {
        anyhow::bail!("--backlog needs at least 2 consults (one goes to the gatekeeper)");
    }
    // Backlog: room for every queued consult among the agents (the server
    // allows at most 100 per agent).
    let per_agent = if args.backlog {
        (n as u64 - 1).div_ceil(a as u64)
    } else {
        100
    };
    if per_agent > 100 {
        anyhow::bail!(
            "--backlog: {} consults need more than 100 conversations per agent; use at least {} agents",
            n - 1,
            (n as u64 - 1).div_ceil(100)
        );
    }
    report.param("agent_capacity", per_agent);
    let mut agents = Vec::with_capacity(a);
    for i in 0..a {
        agents.push(rest.staff("agent", i, per_agent).await?);
    }
    let gatekeeper = if args.backlog {
        Some(rest.staff("agent", a, 1).await?)
    } else {
        None
    };
    let team = match rest
        .try_post(
            "/api/v1/teams",
            &json!({"name": format!("lt-{}", rest.run_id()), "strategy": "round_robin"}),
        )
        .await?
    {
        Some(t) => {
            let id = t["id"].as_str().unwrap_or_default().to_string();
            for agent in agents.iter().chain(&gatekeeper) {
                rest.try_post(
                    &format!("/api/v1/teams/{id}/members"),
                    &json!({"user": agent.id}),
                )
                .await?;
            }
            Some(id)
        }
        None => {
            report.note("the server has no teams API yet: consults name no team");
            None
        }
    };
    report.param("team", team.clone().unwrap_or_default());

    let shared = Arc::new(Shared {
        stats: Stats::default(),
        timings: Mutex::new(HashMap::new()),
        latency: Latency::default(),
        consulted: AtomicU64::new(0),
        assigned: AtomicU64::new(0),
        accepts: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_consult: LatestInstant::new(Instant::now()),
        last_assignment: LatestInstant::new(Instant::now()),
        drain_started: std::sync::OnceLock::new(),
        first_consult_set: std::sync::Once::new(),
        unavailable: Mutex::new(None),
    });
    let (stop, stopped) = watch::channel(false);

    // Agents: connect, go online (the first place `unavailable` shows). In
    // backlog mode only the gatekeeper goes online now; the agents connect
    // and wait.
    let mut agent_tasks = Vec::with_capacity(a + 1);
    let mut agent_outboxes = Vec::with_capacity(a);
    if let Some(keeper) = &gatekeeper {
        let (mut ws, _) =
            client::connect_authed(&connectors[0], &keeper.token, &shared.stats).await?;
        go_online(&mut ws, &shared.stats).await?;
        // It keeps its one conversation and is not counted.
        let keeper_stopped = stopped.clone();
        agent_tasks.push(tokio::spawn(async move {
            let mut keeper_stopped = keeper_stopped;
            client::until_set(&mut keeper_stopped).await;
            client::close_quietly(ws).await;
        }));
    }
    for (i, agent) in agents.iter().enumerate() {
        let connector = &connectors[i % connectors.len()];
        let (mut ws, _) = client::connect_authed(connector, &agent.token, &shared.stats).await?;
        if !args.backlog {
            go_online(&mut ws, &shared.stats).await?;
        }
        let (tx, rx) = mpsc::channel::<ClientFrame>(AGENT_OUTBOX);
        let task = agent_loop(
            ws,
            agent.id.clone(),
            shared.clone(),
            stopped.clone(),
            (tx.clone(), rx),
            !args.backlog,
        );
        agent_tasks.push(tokio::spawn(task));
        agent_outboxes.push(tx);
    }

    // Customers: connect and consult, bounded.
    let accounts = customers(&rest, n).await?;
    let mut usage = super::Usage::start(ctx);
    let slots = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let started = Instant::now();
    let mut customer_tasks = Vec::with_capacity(n);
    for (i, account) in accounts.into_iter().enumerate() {
        let shared = shared.clone();
        let slots = slots.clone();
        let connector = connectors[i % connectors.len()].clone();
        let team = team.clone();
        let mut stopped = stopped.clone();
        customer_tasks.push(tokio::spawn(async move {
            let permit = slots.acquire_owned().await.expect("semaphore never closed");
            let result = async {
                let (mut ws, _) =
                    client::connect_authed(&connector, &account.token, &shared.stats).await?;
                let consult = ClientFrame::Consult {
                    req: Some(2),
                    team,
                    topic: Some("load test".into()),
                    text: Some("load test consult".into()),
                };
                let sent_at = Instant::now();
                shared
                    .first_consult_set
                    .call_once(|| shared.first_consult.observe(sent_at));
                client::send(&mut ws, &consult).await?;
                match await_reply(&mut ws, 2, &shared.stats).await? {
                    Ok(OkBody::Consulted { conv }) => {
                        shared.consulted.fetch_add(1, Ordering::Relaxed);
                        shared.timing(&conv, Some(sent_at), None);
                    }
                    Ok(other) => anyhow::bail!("unexpected consult reply: {other:?}"),
                    Err((ErrorCode::Unavailable, message)) => {
                        shared.unavailable("consult", &message);
                    }
                    Err((code, message)) => {
                        shared.errors.fetch_add(1, Ordering::Relaxed);
                        anyhow::bail!("consult refused: {}: {message}", code.as_str());
                    }
                }
                anyhow::Ok(ws)
            }
            .await;
            drop(permit);
            // Stay connected (a waiting customer does) until the run ends.
            if let Ok(ws) = result {
                client::until_set(&mut stopped).await;
                client::close_quietly(ws).await;
            }
        }));
    }

    // Consults that must be assigned for the run to be complete: in backlog
    // mode the gatekeeper's one is not counted.
    let expected = if args.backlog { n as u64 - 1 } else { n as u64 };
    if args.backlog {
        // The queue is full once every consult is answered; then the shift starts.
        let all_in = wait_done_or_stalled(
            || shared.consulted.load(Ordering::Relaxed) >= n as u64,
            || shared.consulted.load(Ordering::Relaxed),
            Duration::from_secs_f64(args.drain_timeout_s),
        )
        .await;
        if !all_in {
            anyhow::bail!(
                "only {} of {n} consults were answered",
                shared.consulted.load(Ordering::Relaxed)
            );
        }
        let _ = shared.drain_started.set(Instant::now());
        for (i, tx) in agent_outboxes.iter().enumerate() {
            let online = ClientFrame::Presence {
                req: Some(1_000_000 + i as ReqId),
                status: PresenceStatus::Online,
            };
            tx.send(online)
                .await
                .map_err(|_| anyhow::anyhow!("an agent's connection ended before the drain"))?;
        }
    }
    drop(agent_outboxes);

    let progress = {
        let shared = shared.clone();
        Progress::start(move || {
            let assigned = shared.assigned.load(Ordering::Relaxed);
            format!(
                "consulted {}/{n}, assigned {assigned} ({:.0}/s), errors {}",
                shared.consulted.load(Ordering::Relaxed),
                assigned as f64 / secs(started, Instant::now()),
                shared.errors.load(Ordering::Relaxed),
            )
        })
    };
    let finished = {
        let shared = shared.clone();
        wait_done_or_stalled(
            || {
                shared.unavailable.lock().expect("lock").is_some()
                    || shared.assigned.load(Ordering::Relaxed) >= expected
            },
            || shared.consulted.load(Ordering::Relaxed) + shared.assigned.load(Ordering::Relaxed),
            Duration::from_secs_f64(args.drain_timeout_s),
        )
        .await
    };
    progress.finish().await;
    usage.stop();
    let _ = stop.send(true);
    for t in customer_tasks.into_iter().chain(agent_tasks) {
        let _ = t.await;
    }
    if let Some(detail) = shared.unavailable.lock().expect("lock").clone() {
        return Err(unavailable_error(&detail));
    }

    let consulted = shared.consulted.load(Ordering::Relaxed);
    let assigned = shared.assigned.load(Ordering::Relaxed);
    report.figure("consulted", consulted, "");
    report.figure("assigned", assigned, "");
    report.figure(
        "offers_accepted",
        shared.accepts.load(Ordering::Relaxed),
        "",
    );
    report.figure("errors", shared.errors.load(Ordering::Relaxed), "");
    let from = shared
        .drain_started
        .get()
        .copied()
        .unwrap_or_else(|| shared.first_consult.get());
    report.rate(
        "assignments_per_s",
        assigned,
        secs(from, shared.last_assignment.get()),
    );
    if args.backlog {
        report.figure(
            "drain_ms",
            (secs(from, shared.last_assignment.get()) * 1000.0).round() as u64,
            "ms",
        );
    }
    usage.report(&mut report);
    report.counts("close_codes", shared.stats.closes());
    report.counts("error_codes", shared.stats.errors());
    report.histogram("assignment_latency", shared.latency.merged());
    if !finished || assigned < expected {
        report.fail(format!("{assigned} of {expected} consults were assigned"));
    }
    if consulted < n as u64 {
        report.fail(format!("{} consults failed", n as u64 - consulted));
    }
    for hint in shared.stats.hints() {
        report.note(hint);
    }
    Ok(report)
}

/// The reply to request `req`: its `ok` body, or the error code and text.
async fn await_reply(
    ws: &mut Ws,
    req: ReqId,
    stats: &Stats,
) -> anyhow::Result<Result<OkBody, (ErrorCode, String)>> {
    tokio::time::timeout(REPLY_TIMEOUT, async {
        loop {
            let Some(text) = client::next_text(ws, stats).await else {
                anyhow::bail!("connection closed while waiting for reply {req}");
            };
            if let Incoming::Frame(frame) = body::classify(&text)? {
                match *frame {
                    ServerFrame::Ok { req: Some(r), body } if r == req => return Ok(Ok(body)),
                    ServerFrame::Error {
                        req: Some(r),
                        code,
                        message,
                    } if r == req => {
                        stats.error_reply(code);
                        return Ok(Err((code, message)));
                    }
                    _ => {}
                }
            }
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("no reply to request {req} within {REPLY_TIMEOUT:?}"))?
}

/// Sends `presence online` and waits for its answer.
async fn go_online(ws: &mut Ws, stats: &Stats) -> anyhow::Result<()> {
    let presence = ClientFrame::Presence {
        req: Some(2),
        status: PresenceStatus::Online,
    };
    client::send(ws, &presence).await?;
    match await_reply(ws, 2, stats).await? {
        Ok(_) => Ok(()),
        Err((ErrorCode::Unavailable, message)) => Err(unavailable_error(&format!(
            "`presence` was answered `unavailable` ({message})"
        ))),
        Err((code, message)) => anyhow::bail!("presence refused: {}: {message}", code.as_str()),
    }
}

/// The sending end and the queue of an agent's writer.
type Outbox = (mpsc::Sender<ClientFrame>, mpsc::Receiver<ClientFrame>);

/// What an agent's connection acts on.
enum AgentFrame {
    Conversation(body::ConversationEvent),
    Error(ErrorCode, String),
}

/// One agent: takes every conversation the server gives it, then closes it
/// when `close` (else keeps it). Frames put into `outbox` by others (the
/// backlog's `presence`) are sent too.
async fn agent_loop(
    ws: Ws,
    me: String,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
    outbox: Outbox,
    close: bool,
) {
    let (sink, mut stream) = ws.split();
    // Writes go through a bounded queue to one writer task so that reading
    // never waits on a write.
    let (tx, mut rx) = outbox;
    let writer = tokio::spawn(async move {
        let mut sink = sink;
        while let Some(frame) = rx.recv().await {
            if client::send(&mut sink, &frame).await.is_err() {
                break;
            }
        }
        sink
    });
    let mut next_req: ReqId = 3;
    let mut taken: std::collections::HashSet<String> = Default::default();
    loop {
        let text = tokio::select! {
            _ = client::until_set(&mut stopped) => break,
            text = client::next_text(&mut stream, &shared.stats) => text,
        };
        let Some(text) = text else { break };
        // An agent acts on `conversation` events and errors only: the rest
        // (its messages, presence) is not decoded at all.
        let frame = if let Some(conv) = body::conversation_event(&text) {
            AgentFrame::Conversation(conv)
        } else if text.starts_with(r#"{"type":"error","#) {
            let Ok(Incoming::Frame(f)) = body::classify(&text) else {
                continue;
            };
            let ServerFrame::Error { code, message, .. } = *f else {
                continue;
            };
            AgentFrame::Error(code, message)
        } else {
            continue;
        };
        match frame {
            AgentFrame::Conversation(conv)
                if conv.agent.as_deref() == Some(me.as_str())
                    || conv.offered_to.as_deref() == Some(me.as_str()) =>
            {
                match conv.state {
                    ConversationState::Active if taken.insert(conv.id.clone()) => {
                        let now = Instant::now();
                        shared.assigned.fetch_add(1, Ordering::Relaxed);
                        shared.last_assignment.observe(now);
                        shared.timing(&conv.id, None, Some(now));
                        if !close {
                            continue;
                        }
                        next_req += 1;
                        let close = ClientFrame::Close {
                            req: Some(next_req),
                            conv: conv.id,
                        };
                        if tx.send(close).await.is_err() {
                            break;
                        }
                    }
                    ConversationState::Queued
                        if conv.offered_to.as_deref() == Some(me.as_str()) =>
                    {
                        shared.accepts.fetch_add(1, Ordering::Relaxed);
                        next_req += 1;
                        let accept = ClientFrame::Accept {
                            req: Some(next_req),
                            conv: conv.id,
                        };
                        if tx.send(accept).await.is_err() {
                            break;
                        }
                    }
                    _ => {}
                }
            }
            AgentFrame::Error(code, message) => {
                shared.stats.error_reply(code);
                if code == ErrorCode::Unavailable {
                    shared.unavailable("accept/close", &message);
                } else {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => {}
        }
    }
    drop(tx);
    if let Ok(sink) = writer.await {
        if let Ok(ws) = sink.reunite(stream) {
            client::close_quietly(ws).await;
        }
    }
}
