//! The bare fan-out server that `--baseline` measures: tokio-tungstenite with
//! nothing else (no auth, no storage, no JSON). Every text frame a client
//! sends is broadcast to every other connected client.
//!
//! It is built like Switchboard's gateway so that the comparison isolates
//! the cost of Switchboard's own work: TCP_NODELAY, the same tungstenite buffer sizes,
//! each connection has a bounded outbound queue and one task that writes all
//! queued frames and flushes once (write coalescing), a frame is allocated
//! once and the same `Utf8Bytes` is cloned to each recipient, and a full
//! queue closes the connection with 4008.
//!
//! It runs as a child process of the tool (`switchboard-loadtest
//! baseline-server`, started by [`spawn`]) so that, like Switchboard, it has
//! its own process and runtime: its memory can be read from `/proc` and its
//! CPU is not mixed with the load generator's.
//!
//! Protocol: connect to any path, no auth; the server sends [`GREETING`]
//! once the connection is registered (so a client knows broadcasts reach
//! it); then every text frame is broadcast.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

/// First frame to every registered connection.
pub(crate) const GREETING: &str = "ready";
/// Per-connection outbound queue, in frames. Why 1024: Switchboard's default
/// `limits.outbound_queue`, so both servers drop slow consumers alike.
const OUTBOUND_QUEUE: usize = 1024;
/// Frames written per flush at most. Why 512: Switchboard's `MAX_BATCH`.
const MAX_BATCH: usize = 512;
/// tungstenite read buffer. Why 4 KiB: Switchboard's gateway setting.
const READ_BUFFER: usize = 4 * 1024;
/// tungstenite write buffer. Why 64 KiB: Switchboard's gateway setting.
const WRITE_BUFFER: usize = 64 * 1024;
/// Largest client frame. Why 64 KiB: Switchboard's default frame limit.
const MAX_FRAME: usize = 64 * 1024;
/// How long the child may take to report its address. Why 10 s: it only
/// binds a socket; longer means it failed to start.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a close frame may take. Why 1 s: a slow consumer may never read.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// The 4008 close code (slow consumer), as in Switchboard.
const SLOW_CONSUMER: u16 = switchboard_protocol::close::SLOW_CONSUMER;

/// One registered connection, as the broadcaster sees it.
struct Peer {
    outbox: mpsc::Sender<Utf8Bytes>,
    kill: Arc<Notify>,
}

/// Every connected client.
#[derive(Default)]
struct Hub {
    peers: RwLock<HashMap<u64, Peer>>,
    next_id: AtomicU64,
}

impl Hub {
    /// Queues `frame` on every connection but `from`; a full queue closes
    /// that connection as a slow consumer.
    fn broadcast(&self, from: u64, frame: &Utf8Bytes) {
        let peers = self.peers.read().expect("hub lock");
        for (id, peer) in peers.iter() {
            if *id == from {
                continue;
            }
            if let Err(mpsc::error::TrySendError::Full(_)) = peer.outbox.try_send(frame.clone()) {
                peer.kill.notify_one();
            }
        }
    }
}

/// Runs the baseline server on `listen` until stdin closes (the parent tool
/// exited or was killed), printing `listening on <addr>` first.
pub(crate) async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    if !listen.ip().is_loopback() {
        anyhow::bail!("the baseline server listens on loopback addresses only (got {listen})");
    }
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    println!("listening on {}", listener.local_addr()?);
    let hub = Arc::new(Hub::default());
    let accept = async {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(connection(hub.clone(), stream));
                }
                // Out of file descriptors and the like: keep serving the
                // connections that exist, retry shortly.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    };
    let parent_gone = async {
        let mut stdin = tokio::io::stdin();
        let mut scratch = [0u8; 64];
        while !matches!(stdin.read(&mut scratch).await, Ok(0) | Err(_)) {}
    };
    tokio::select! {
        _ = accept => {}
        _ = parent_gone => {}
    }
    Ok(())
}

fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(Some(MAX_FRAME))
        .max_frame_size(Some(MAX_FRAME))
}

async fn connection(hub: Arc<Hub>, stream: TcpStream) {
    // As Switchboard does: frames are coalesced here, not by Nagle.
    let _ = stream.set_nodelay(true);
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config())).await
    else {
        return;
    };
    let id = hub.next_id.fetch_add(1, Ordering::Relaxed);
    let (outbox, mut rx) = mpsc::channel(OUTBOUND_QUEUE);
    let kill = Arc::new(Notify::new());
    hub.peers.write().expect("hub lock").insert(
        id,
        Peer {
            outbox: outbox.clone(),
            kill: kill.clone(),
        },
    );
    // The greeting goes through the queue like everything else.
    let _ = outbox.try_send(Utf8Bytes::from_static(GREETING));
    drop(outbox);
    loop {
        tokio::select! {
            biased;
            _ = kill.notified() => {
                let frame = CloseFrame { code: CloseCode::from(SLOW_CONSUMER), reason: "slow consumer".into() };
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.send(WsMessage::Close(Some(frame)))).await;
                break;
            }
            Some(first) = rx.recv() => {
                if write_batch(&mut ws, first, &mut rx).await.is_err() {
                    break;
                }
            }
            inbound = ws.next() => match inbound {
                Some(Ok(WsMessage::Text(t))) => hub.broadcast(id, &t),
                Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
    hub.peers.write().expect("hub lock").remove(&id);
}

/// Feeds every queued frame (up to [`MAX_BATCH`]) and flushes once, as
/// Switchboard's `write_batch` does.
async fn write_batch(
    ws: &mut WebSocketStream<TcpStream>,
    first: Utf8Bytes,
    rx: &mut mpsc::Receiver<Utf8Bytes>,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    ws.feed(WsMessage::Text(first)).await?;
    let mut n = 1;
    while n < MAX_BATCH {
        match rx.try_recv() {
            Ok(frame) => {
                ws.feed(WsMessage::Text(frame)).await?;
                n += 1;
            }
            Err(_) => break,
        }
    }
    ws.flush().await
}

/// A baseline server running as a child process; killed when dropped.
pub(crate) struct BaselineProcess {
    child: tokio::process::Child,
    addr: SocketAddr,
}

impl BaselineProcess {
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Stops the child and waits for it.
    pub(crate) async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Starts `switchboard-loadtest baseline-server` on 127.0.0.1, port chosen
/// by the kernel, and waits for its address.
pub(crate) async fn spawn() -> anyhow::Result<BaselineProcess> {
    let exe = std::env::current_exe().context("locating the tool's own executable")?;
    let mut child = tokio::process::Command::new(exe)
        .args(["baseline-server", "--listen", "127.0.0.1:0"])
        // The child exits when this pipe closes, even if we are killed.
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting the baseline server")?;
    let stdout = child.stdout.take().context("baseline stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(START_TIMEOUT, lines.next_line())
        .await
        .context("the baseline server did not start in time")??
        .context("the baseline server exited before listening")?;
    let addr: SocketAddr = line
        .strip_prefix("listening on ")
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("unexpected line from the baseline server: {line}"))?;
    Ok(BaselineProcess { child, addr })
}
