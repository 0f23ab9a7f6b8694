//! Opening WebSocket connections to the target: each TCP socket is bound to
//! the next `--source-ips` address in round-robin before it connects (a
//! single source address runs out of ephemeral ports near 28k connections to
//! one server port), then upgraded with tungstenite buffers kept small so the
//! tool itself can hold many connections.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

/// A client WebSocket as every scenario uses it.
pub(crate) type Ws = WebSocketStream<TcpStream>;

/// Bytes tungstenite reads at a time; allocated eagerly per connection. Why
/// 4 KiB: 100k idle connections must fit in the tool's memory (the default
/// 128 KiB would need 12 GiB), and a burst of small frames simply takes
/// several reads.
const READ_BUFFER: usize = 4 * 1024;
/// Bytes buffered before tungstenite writes; a sender flushes after each
/// batch anyway. Why 16 KiB: about a hundred `send` frames per write in a
/// burst, while receivers (which only write pongs and a close) never grow it.
const WRITE_BUFFER: usize = 16 * 1024;
/// Largest frame accepted from the server. Why 16 MiB: the protocol says
/// server frames (a `sync` page of long messages) may exceed the 64 KiB that
/// clients may send, and asks clients to accept at least 16 MiB.
const MAX_INCOMING: usize = 16 << 20;
/// How long a TCP connect plus WebSocket upgrade may take. Why 15 s: under a
/// connection storm the server's accept backlog fills and connects queue for
/// a while; much longer than that means the server is not keeping up and the
/// attempt counts as a failure.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Opens WebSocket connections to one target, spreading them over source IPs.
pub(crate) struct Connector {
    server: SocketAddr,
    ws_url: String,
    sources: Vec<IpAddr>,
    next_source: AtomicUsize,
}

impl Connector {
    /// `sources` must already be checked as loopback (see `target.rs`); empty
    /// means "let the kernel choose".
    pub(crate) fn new(server: SocketAddr, ws_url: String, sources: Vec<IpAddr>) -> Self {
        Connector {
            server,
            ws_url,
            sources,
            next_source: AtomicUsize::new(0),
        }
    }

    /// The source addresses connections are spread over.
    pub(crate) fn sources(&self) -> Vec<IpAddr> {
        self.sources.clone()
    }

    /// The tungstenite settings of every client connection.
    pub(crate) fn config() -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .write_buffer_size(WRITE_BUFFER)
            .max_message_size(Some(MAX_INCOMING))
            .max_frame_size(Some(MAX_INCOMING))
    }

    /// Connects and upgrades one WebSocket, within [`CONNECT_TIMEOUT`].
    pub(crate) async fn connect(&self) -> anyhow::Result<Ws> {
        tokio::time::timeout(CONNECT_TIMEOUT, self.connect_inner())
            .await
            .map_err(|_| anyhow::anyhow!("connect timed out after {CONNECT_TIMEOUT:?}"))?
    }

    async fn connect_inner(&self) -> anyhow::Result<Ws> {
        let socket = if self.server.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .context("creating a socket")?;
        if !self.sources.is_empty() {
            let i = self.next_source.fetch_add(1, Ordering::Relaxed) % self.sources.len();
            let source = SocketAddr::new(self.sources[i], 0);
            socket
                .bind(source)
                .with_context(|| format!("binding to source {source}"))?;
        }
        let stream = socket
            .connect(self.server)
            .await
            .with_context(|| format!("connecting to {}", self.server))?;
        // The tool batches its own writes; Nagle would only add delay to the
        // latency being measured.
        stream.set_nodelay(true)?;
        let (ws, _response) = tokio_tungstenite::client_async_with_config(
            self.ws_url.as_str(),
            stream,
            Some(Self::config()),
        )
        .await
        .context("WebSocket upgrade")?;
        Ok(ws)
    }
}
