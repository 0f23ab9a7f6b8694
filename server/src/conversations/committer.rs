//! Group commit of sends: messages that arrive while a transaction is being
//! committed are stored together in the next one, so one fsync (SQLite) or one
//! commit round trip (PostgreSQL) serves many sends.
//!
//! Each committer worker owns a bounded queue. A worker takes everything queued
//! (up to [`MAX_BATCH`]) and stores it in one transaction; nothing waits to
//! fill a batch, so an idle server commits each send at once and a busy one
//! batches by itself. Within a transaction every send still increments its
//! conversation's `last_seq` and inserts its row, so `seq` stays gapless; a
//! rolled-back batch gives its numbers back.
//!
//! A repeated `client_msg_id` inside one batch is answered with the first
//! copy. Any database error in a batch (for instance a duplicate that another
//! node committed a moment earlier) rolls the batch back and its sends are
//! retried one transaction each, where each gets its own precise answer.
//!
//! SQLite has one writer, so it gets one worker. PostgreSQL gets several, each
//! serving the conversations that hash to it, so batches run in parallel while
//! a conversation's sends stay on one worker.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use sqlx::{AnyConnection, Row};
use switchboard_protocol::{Message, ServerFrame, UserRef};
use tokio::sync::{mpsc, oneshot};

use super::messages::{
    find_by_client_id, insert_messages, message_from_row, why_not_writable, SendInput, COLUMNS,
};
use crate::bus::{Exclude, Target};
use crate::error::{is_unique_violation, AppError, AppResult};
use crate::fanout::Fanout;
use crate::metrics::Metrics;
use crate::store::{Backend, Placeholders, Store};
use crate::util::{new_id, now_ms};

/// Sends stored in one transaction at most. Why 1024: a batch's cost is
/// mostly per batch (seven statements, one commit), so at saturation larger
/// batches serve more sends; side by side, `chat_sqlite` went 14.5-15.5k
/// (256) -> 17.9-19.5k (512) -> 27.8-29.0k acked/s (1024) and `chat_pg`
/// 24.7k -> 31.0-31.4k. Below saturation a batch holds only what queued
/// during the previous commit (about 15 sends at 10,000/s), so this bound
/// costs nothing there; at saturation a batch commits within tens of
/// milliseconds. 1024 sends bind 11,264 parameters, well under SQLite's
/// 32,766.
const MAX_BATCH: usize = 1024;
/// Sends waiting per worker. Why 4096: absorbs bursts from thousands of
/// connections; a full queue makes senders wait (back-pressure), never drops.
const QUEUE: usize = 4096;
/// Parallel workers on PostgreSQL. Why 4: the write pool has 16 connections and
/// two cores; more parallel batches only contend for the same rows and CPU.
const POSTGRES_WORKERS: usize = 4;

/// What storing a send produced.
#[derive(Debug)]
pub enum Stored {
    /// A new message.
    New(Message),
    /// The original of a repeated `client_msg_id`.
    Existing(Message),
}

struct Job {
    sender: UserRef,
    input: SendInput,
    body: String,
    /// The connection that sent it: it gets the ack instead of the event.
    origin: Option<Arc<str>>,
    done: oneshot::Sender<AppResult<Stored>>,
}

/// The answer to a submitted send, ready once its transaction committed.
pub type Pending = oneshot::Receiver<AppResult<Stored>>;

/// Hands sends to the committer workers.
pub struct Committer {
    workers: Vec<mpsc::Sender<Job>>,
}

/// What a worker needs besides the store.
struct Worker {
    store: Store,
    /// Where committed batches go: delivered by the worker itself, or handed
    /// to a task on the server's runtime.
    delivery: Delivery,
}

/// Delivers committed batches and answers their senders.
#[derive(Clone)]
struct Deliverer {
    fanout: Arc<Fanout>,
    metrics: Arc<Metrics>,
}

enum Delivery {
    /// In the worker's own task (PostgreSQL: the workers run on the
    /// server's runtime).
    Inline(Deliverer),
    /// To a task on the server's runtime (SQLite: the worker has a thread of
    /// its own).
    Handed(mpsc::Sender<Committed>),
}

/// A committed batch with each send's answer.
struct Committed {
    jobs: Vec<Job>,
    results: Vec<AppResult<Stored>>,
}

/// Committed batches waiting for the delivery task. Why 2: the writer can
/// store the next batch while the last one is delivered, and never runs
/// further ahead of the delivery than that.
const DELIVERY_QUEUE: usize = 2;

impl Committer {
    /// Starts the workers. They stop when the committer is dropped.
    pub fn start(store: Store, fanout: Arc<Fanout>, metrics: Arc<Metrics>) -> Committer {
        let n = match store.backend() {
            Backend::Sqlite => 1,
            Backend::Postgres => POSTGRES_WORKERS,
        };
        let deliverer = Deliverer { fanout, metrics };
        let workers = (0..n)
            .map(|_| {
                let (tx, rx) = mpsc::channel(QUEUE);
                let delivery = match store.backend() {
                    Backend::Sqlite => {
                        let (handed, committed) = mpsc::channel(DELIVERY_QUEUE);
                        tokio::spawn(deliverer.clone().run(committed));
                        Delivery::Handed(handed)
                    }
                    Backend::Postgres => Delivery::Inline(deliverer.clone()),
                };
                let worker = Worker {
                    store: store.clone(),
                    delivery,
                };
                // A worker that hands its batches over has a thread of its own.
                match worker.delivery {
                    Delivery::Handed(_) => run_on_own_thread(worker, rx),
                    Delivery::Inline(_) => drop(tokio::spawn(worker.run(rx))),
                }
                tx
            })
            .collect();
        Committer { workers }
    }

    /// Stores one validated send and waits for its answer; the message is
    /// delivered to the conversation's members by the committer.
    pub async fn commit(
        &self,
        sender: &UserRef,
        input: SendInput,
        body: String,
    ) -> AppResult<Stored> {
        let pending = self.submit(sender, input, body, None).await?;
        pending
            .await
            .map_err(|_| AppError::internal("committer dropped a send"))?
    }

    /// Queues one validated send and returns at once with its pending answer.
    /// Sends submitted one after another by one caller are stored (and get
    /// their `seq`) in that order.
    pub async fn submit(
        &self,
        sender: &UserRef,
        input: SendInput,
        body: String,
        origin: Option<Arc<str>>,
    ) -> AppResult<Pending> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        input.conv.hash(&mut hasher);
        let worker = &self.workers[hasher.finish() as usize % self.workers.len()];
        let (done, result) = oneshot::channel();
        let job = Job {
            sender: sender.clone(),
            input,
            body,
            origin,
            done,
        };
        worker
            .send(job)
            .await
            .map_err(|_| AppError::unavailable("the server is shutting down"))?;
        Ok(result)
    }
}

/// Runs the SQLite worker on a thread of its own, with a single-threaded
/// runtime. Why: a batch is seven hand-offs to the SQLite connection's
/// thread and back (begin, four statements, commit), and on the server's
/// runtime each answer woke the worker at the back of a run queue shared with
/// every connection's task; under load that wait, not SQLite, was most of a
/// batch's time while the single writer sat idle. On its own thread the
/// worker runs as soon as an answer arrives. What it commits is delivered by
/// a task on the server's runtime, where waking the receiving connections'
/// tasks is cheapest, while the worker stores the next batch. The thread ends
/// when the committer is dropped and its queue closes.
fn run_on_own_thread(worker: Worker, rx: mpsc::Receiver<Job>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let spawned = runtime.and_then(|runtime| {
        std::thread::Builder::new()
            .name("sb-committer".into())
            .spawn(move || runtime.block_on(worker.run(rx)))
    });
    if let Err(e) = spawned {
        // Without a thread or runtime of its own the process is out of
        // resources; failing loudly beats a server that accepts sends it
        // can never store.
        panic!("cannot start the message committer's thread: {e}");
    }
}

impl Worker {
    async fn run(self, mut rx: mpsc::Receiver<Job>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
            let jobs = std::mem::take(&mut batch);
            let results = match commit_batch(&self.store, &jobs).await {
                Ok(outcomes) => self.resolve(&jobs, outcomes).await,
                Err(e) => {
                    if !is_unique_violation(&e) {
                        tracing::warn!(error = %e, sends = jobs.len(), "batch failed; retrying each send alone");
                    }
                    let mut results = Vec::with_capacity(jobs.len());
                    for job in &jobs {
                        results.push(commit_one(&self.store, job).await);
                    }
                    results
                }
            };
            let committed = Committed { jobs, results };
            match &self.delivery {
                Delivery::Inline(deliverer) => deliverer.finish(committed),
                Delivery::Handed(task) => {
                    if task.send(committed).await.is_err() {
                        // The server's runtime is gone: nobody to answer.
                        return;
                    }
                }
            }
            batch = Vec::with_capacity(MAX_BATCH);
        }
    }

    /// Turns a committed batch's outcomes into each send's answer.
    async fn resolve(&self, jobs: &[Job], outcomes: Vec<Outcome>) -> Vec<AppResult<Stored>> {
        let stored: Vec<Option<Message>> = outcomes
            .iter()
            .map(|o| match o {
                Outcome::Stored(m) | Outcome::Existing(m) => Some(m.clone()),
                _ => None,
            })
            .collect();
        let mut results = Vec::with_capacity(jobs.len());
        for (job, outcome) in jobs.iter().zip(outcomes) {
            results.push(match outcome {
                Outcome::Stored(msg) => Ok(Stored::New(msg)),
                Outcome::Existing(msg) => Ok(Stored::Existing(msg)),
                Outcome::SameAs(i) => match &stored[i] {
                    Some(msg) => Ok(Stored::Existing(msg.clone())),
                    None => {
                        Err(why_not_writable(&self.store, &job.sender.id, &job.input.conv).await)
                    }
                },
                Outcome::NotWritable => {
                    Err(why_not_writable(&self.store, &job.sender.id, &job.input.conv).await)
                }
            });
        }
        results
    }
}

impl Deliverer {
    /// Delivers and answers the batches a worker hands over, in order.
    async fn run(self, mut committed: mpsc::Receiver<Committed>) {
        while let Some(batch) = committed.recv().await {
            self.finish(batch);
        }
    }

    /// Delivers a committed batch, then answers each of its senders.
    fn finish(&self, Committed { jobs, results }: Committed) {
        self.deliver(&jobs, &results);
        for (job, result) in jobs.into_iter().zip(results) {
            let _ = job.done.send(result);
        }
    }

    /// Sends every new message of a committed batch to its members, in `seq`
    /// order, before any sender hears its ack: one tight loop, so each
    /// receiving connection finds the whole batch queued and writes it at once.
    fn deliver(&self, jobs: &[Job], results: &[AppResult<Stored>]) {
        let mut stored = 0;
        for (job, result) in jobs.iter().zip(results) {
            if let Ok(Stored::New(msg)) = result {
                stored += 1;
                let exclude = match &job.origin {
                    Some(conn) => Exclude::Conn(conn.to_string()),
                    None => Exclude::Nobody,
                };
                self.fanout.deliver_frame(
                    Target::Conv(msg.conv.clone()),
                    exclude,
                    &ServerFrame::Message { msg: msg.clone() },
                );
            }
        }
        self.metrics.messages_stored.inc_by(stored);
    }
}

enum Outcome {
    Stored(Message),
    /// A resend of a message committed earlier: the original.
    Existing(Message),
    /// A repeat of the send at this index of the same batch.
    SameAs(usize),
    /// Not a member, no such conversation, or closed.
    NotWritable,
}

/// Stores every send of a batch in one transaction with a fixed number of
/// statements, whatever the batch size: every statement costs a hand-off to
/// the database driver's thread (SQLite) or a round trip (PostgreSQL), and per
/// message those dominated the cost of a send.
///
/// 1. find resends of messages already stored;
/// 2. find which (conversation, sender) pairs may write;
/// 3. reserve each conversation's `seq` range with one `UPDATE … RETURNING`;
/// 4. insert every message with one `INSERT`.
///
/// Any error (a duplicate another node committed meanwhile, a deadlock)
/// rolls the whole batch back and the caller retries each send alone.
async fn commit_batch(store: &Store, jobs: &[Job]) -> Result<Vec<Outcome>, sqlx::Error> {
    let now = now_ms();
    let mut outcomes: Vec<Option<Outcome>> = (0..jobs.len()).map(|_| None).collect();
    let key = |j: &Job| {
        (
            j.input.conv.clone(),
            j.sender.id.clone(),
            j.input.client_msg_id.clone(),
        )
    };
    let mut firsts: Vec<usize> = Vec::with_capacity(jobs.len());
    let mut seen: HashMap<(String, String, String), usize> = HashMap::new();
    for (i, job) in jobs.iter().enumerate() {
        match seen.get(&key(job)) {
            Some(&first) => outcomes[i] = Some(Outcome::SameAs(first)),
            None => {
                seen.insert(key(job), i);
                firsts.push(i);
            }
        }
    }

    let mut tx = store.write().begin().await?;
    let backend = store.backend();
    crate::store::plan_with(&mut tx, backend, crate::store::Plans::Custom).await?;

    // 1. Resends of messages already stored.
    let sql = format!(
        "SELECT {COLUMNS} FROM messages WHERE client_msg_id IS NOT NULL \
         AND (conv_id, sender_id, client_msg_id) IN (VALUES {})",
        Placeholders::new(backend).rows(firsts.len(), 3)
    );
    let mut q = sqlx::query(&sql);
    for &i in &firsts {
        let j = &jobs[i];
        q = q
            .bind(&j.input.conv)
            .bind(&j.sender.id)
            .bind(&j.input.client_msg_id);
    }
    for row in q.fetch_all(&mut *tx).await? {
        let msg = message_from_row(&row).map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
        let k = (
            msg.conv.clone(),
            msg.sender.id.clone(),
            msg.client_msg_id.clone().unwrap_or_default(),
        );
        if let Some(&i) = seen.get(&k) {
            outcomes[i] = Some(Outcome::Existing(msg));
        }
    }
    let fresh: Vec<usize> = firsts
        .into_iter()
        .filter(|&i| outcomes[i].is_none())
        .collect();

    // 2. Which senders may write to which conversations.
    let mut pairs: Vec<(&str, &str)> = fresh
        .iter()
        .map(|&i| (jobs[i].input.conv.as_str(), jobs[i].sender.id.as_str()))
        .collect();
    pairs.sort_unstable();
    pairs.dedup();
    let mut writable: HashSet<(String, String)> = HashSet::new();
    if !pairs.is_empty() {
        let sql = format!(
            "SELECT m.conv_id, m.user_id FROM conversation_members m \
             JOIN conversations c ON c.id = m.conv_id \
             WHERE c.state <> 'closed' AND (m.conv_id, m.user_id) IN (VALUES {})",
            Placeholders::new(backend).rows(pairs.len(), 2)
        );
        let mut q = sqlx::query(&sql);
        for (conv, user) in &pairs {
            q = q.bind(*conv).bind(*user);
        }
        for row in q.fetch_all(&mut *tx).await? {
            writable.insert((row.try_get("conv_id")?, row.try_get("user_id")?));
        }
    }
    let mut to_store: Vec<usize> = Vec::with_capacity(fresh.len());
    for i in fresh {
        let j = &jobs[i];
        if writable.contains(&(j.input.conv.clone(), j.sender.id.clone())) {
            to_store.push(i);
        } else {
            outcomes[i] = Some(Outcome::NotWritable);
        }
    }

    if !to_store.is_empty() {
        // 3. Reserve `count` seqs per conversation in one statement.
        let mut counts: Vec<(&str, i64)> = Vec::new();
        let mut slot: HashMap<&str, usize> = HashMap::new();
        for &i in &to_store {
            let conv = jobs[i].input.conv.as_str();
            match slot.get(conv) {
                Some(&k) => counts[k].1 += 1,
                None => {
                    slot.insert(conv, counts.len());
                    counts.push((conv, 1));
                }
            }
        }
        let mut p = Placeholders::new(backend);
        let cases: Vec<String> = counts
            .iter()
            .map(|_| format!("WHEN {} THEN CAST({} AS BIGINT)", p.one(), p.one()))
            .collect();
        let updated_at = p.one();
        let ids: Vec<String> = counts.iter().map(|_| p.one()).collect();
        let sql = format!(
            "UPDATE conversations SET last_seq = last_seq + CASE id {} END, updated_at = {updated_at} \
             WHERE id IN ({}) RETURNING id, last_seq",
            cases.join(" "),
            ids.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for (conv, n) in &counts {
            q = q.bind(*conv).bind(*n);
        }
        q = q.bind(now);
        for (conv, _) in &counts {
            q = q.bind(*conv);
        }
        let mut next_seq: HashMap<String, i64> = HashMap::new();
        for row in q.fetch_all(&mut *tx).await? {
            let id: String = row.try_get("id")?;
            let last: i64 = row.try_get("last_seq")?;
            let n = slot.get(id.as_str()).map(|&k| counts[k].1).unwrap_or(0);
            next_seq.insert(id, last - n + 1);
        }

        // 4. Every message in one INSERT, seqs in batch order per conversation.
        let mut messages = Vec::with_capacity(to_store.len());
        for &i in &to_store {
            let j = &jobs[i];
            let seq = next_seq
                .get_mut(&j.input.conv)
                .ok_or_else(|| sqlx::Error::Protocol("conversation vanished mid-batch".into()))?;
            messages.push((i, new_message(j, *seq, now)));
            *seq += 1;
        }
        insert_messages(&mut tx, backend, messages.iter().map(|(_, m)| m)).await?;
        for (_, m) in &messages {
            if let Some(upload) = &m.attachment {
                link_upload(&mut tx, upload, &m.conv).await?;
            }
        }
        let staff_convs: Vec<&str> = messages
            .iter()
            .filter(|(_, m)| m.sender.role.is_staff())
            .map(|(_, m)| m.conv.as_str())
            .collect();
        mark_first_response(&mut tx, backend, staff_convs, now).await?;
        for (i, m) in messages {
            outcomes[i] = Some(Outcome::Stored(m));
        }
    }
    tx.commit().await?;
    Ok(outcomes
        .into_iter()
        .map(|o| o.unwrap_or(Outcome::NotWritable))
        .collect())
}

fn new_message(job: &Job, seq: i64, now: i64) -> Message {
    Message {
        id: new_id("m_"),
        conv: job.input.conv.clone(),
        seq,
        sender: job.sender.clone(),
        kind: job.input.kind,
        body: job.body.clone(),
        attachment: job.input.attachment.clone(),
        client_msg_id: Some(job.input.client_msg_id.clone()),
        ts: now,
        recalled: false,
    }
}

async fn link_upload(
    conn: &mut AnyConnection,
    upload: &str,
    conv: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO upload_conversations (upload_id, conv_id) VALUES ($1, $2) \
         ON CONFLICT (upload_id, conv_id) DO NOTHING",
    )
    .bind(upload)
    .bind(conv)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Stores one send in its own transaction: the precise path after a batch failed.
async fn commit_one(store: &Store, job: &Job) -> AppResult<Stored> {
    let mut tx = store.write().begin().await?;
    match insert_message(&mut tx, job, now_ms()).await {
        Ok(Some(msg)) => {
            tx.commit().await?;
            Ok(Stored::New(msg))
        }
        Ok(None) => {
            tx.rollback().await?;
            Err(why_not_writable(store, &job.sender.id, &job.input.conv).await)
        }
        Err(e) if is_unique_violation(&e) => {
            // Another node stored the same client_msg_id first: answer with it.
            tx.rollback().await?;
            find_by_client_id(
                store,
                &job.input.conv,
                &job.sender.id,
                &job.input.client_msg_id,
            )
            .await?
            .map(Stored::Existing)
            .ok_or_else(|| AppError::internal("unique violation without a row"))
        }
        Err(e) => Err(e.into()),
    }
}

/// The statements of one send inside a transaction. `None` when the
/// conversation does not take the sender's message.
async fn insert_message(
    conn: &mut AnyConnection,
    job: &Job,
    now: i64,
) -> Result<Option<Message>, sqlx::Error> {
    // The write comes first so that SQLite takes its write lock at once and
    // PostgreSQL locks the conversation row: concurrent senders queue here.
    let seq_row = sqlx::query(
        "UPDATE conversations SET last_seq = last_seq + 1, updated_at = $3 \
         WHERE id = $1 AND state <> 'closed' AND EXISTS \
         (SELECT 1 FROM conversation_members WHERE conv_id = $1 AND user_id = $2) \
         RETURNING last_seq",
    )
    .bind(&job.input.conv)
    .bind(&job.sender.id)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(seq_row) = seq_row else {
        return Ok(None);
    };
    let msg = new_message(job, seq_row.try_get("last_seq")?, now);
    insert_messages(conn, Backend::of(conn), std::iter::once(&msg)).await?;
    if let Some(upload) = &msg.attachment {
        link_upload(conn, upload, &msg.conv).await?;
    }
    if msg.sender.role.is_staff() {
        sqlx::query(
            "UPDATE conversations SET first_response_at = $2 WHERE id = $1 \
             AND kind = 'service' AND state = 'active' AND first_response_at IS NULL",
        )
        .bind(&msg.conv)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    Ok(Some(msg))
}

/// Records the first staff reply of service conversations (the reports'
/// first-response time): one statement for a whole batch.
async fn mark_first_response(
    conn: &mut AnyConnection,
    backend: Backend,
    mut convs: Vec<&str>,
    now: i64,
) -> Result<(), sqlx::Error> {
    if convs.is_empty() {
        return Ok(());
    }
    convs.sort_unstable();
    convs.dedup();
    let mut p = Placeholders::new(backend);
    let at = p.one();
    let ids: Vec<String> = convs.iter().map(|_| p.one()).collect();
    let sql = format!(
        "UPDATE conversations SET first_response_at = {at} WHERE id IN ({}) \
         AND kind = 'service' AND state = 'active' AND first_response_at IS NULL",
        ids.join(", ")
    );
    let mut q = sqlx::query(&sql).bind(now);
    for c in convs {
        q = q.bind(c);
    }
    q.execute(&mut *conn).await?;
    Ok(())
}
