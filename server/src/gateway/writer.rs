//! [`Writer`]: writes a connection's queued text frames to its socket.
//!
//! Frames are taken from the [`Outbox`] in batches, encoded into one buffer
//! (a server's frames are unmasked: a 2-, 4- or 10-byte header and the
//! payload) and written straight to the upgraded socket with as few system
//! calls as the socket allows. tungstenite still reads the socket and writes
//! its own control frames (pongs, the close); they are flushed before a batch
//! starts, and a batch is always written whole before tungstenite writes
//! again, so frames never interleave.
//!
//! Why not tungstenite's `feed` and `flush`: its write buffer keeps the
//! capacity of the largest burst it ever held, for the whole connection
//! (up to the 64 KiB write threshold and beyond), so every connection that
//! once received a burst kept that memory while idle. This buffer exists only
//! while a batch is being written.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures_util::Sink;
use tokio::io::AsyncWrite;
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::outbox::Outbox;
use super::session::Ws;

/// Frames written per batch at most. Why 512: large enough that a burst goes
/// out in a handful of writes, small enough that a connection under a flood
/// still returns to reading its own socket regularly.
pub const MAX_BATCH: usize = 512;
/// Bytes encoded per batch at most. Why 64 KiB: what tungstenite's write
/// threshold was, so a burst makes the same system calls as before; larger
/// batches would be split by the socket's send buffer anyway.
const MAX_BATCH_BYTES: usize = 64 * 1024;

thread_local! {
    /// The batch buffer of the connection this thread writes for next. A
    /// batch is nearly always written whole within one poll, so one buffer
    /// per thread serves every connection: no allocation per batch (each
    /// one past 1 KiB made glibc consolidate its free lists, 5 % of a node's
    /// CPU in a dispatch drain), and still none held by an idle connection.
    /// A batch the socket does not take at once keeps its buffer until it
    /// is out; the thread then starts a new one.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The largest buffer a thread keeps. Why twice the batch bound: a batch
/// ends past the bound by at most one frame; a huge frame's buffer is freed.
const KEEP_SCRATCH: usize = 2 * MAX_BATCH_BYTES;

/// See the module documentation.
#[derive(Default)]
pub struct Writer {
    /// The batch being written (empty between batches, with no allocation).
    buf: Vec<u8>,
    /// Bytes of `buf` the socket took so far.
    written: usize,
    /// Frames in `buf`.
    frames: usize,
}

impl Writer {
    /// Whether a batch is partly written (the socket took only some of it).
    pub fn is_writing(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Writes one batch: the one in progress, or else a new one taken from
    /// `outbox`. `Ready(Ok(n))` once its `n` frames are all written (0:
    /// nothing was queued), `Pending` while the socket does not take them.
    pub fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        ws: &mut Ws,
        outbox: &Outbox,
    ) -> Poll<Result<usize, WsError>> {
        if self.buf.is_empty() {
            // Sized for the batch at once (the frame that crosses the byte
            // bound may grow it once): grown frame by frame, a burst's
            // buffer was reallocated a dozen times.
            let (frames, bytes) = outbox.queued();
            if frames == 0 {
                return Poll::Ready(Ok(0));
            }
            let frames = frames.min(MAX_BATCH);
            self.buf = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
            self.buf.reserve(bytes.min(MAX_BATCH_BYTES) + frames * 10);
            while self.frames < MAX_BATCH && self.buf.len() < MAX_BATCH_BYTES {
                let Some(frame) = outbox.pop() else {
                    break;
                };
                encode_text(&mut self.buf, frame.as_bytes());
                self.frames += 1;
            }
        }
        self.poll_finish(cx, ws)
    }

    /// Writes the rest of the batch in progress: `Ready(Ok(n))` with its
    /// frame count once it is out (0 when there was none).
    pub fn poll_finish(
        &mut self,
        cx: &mut Context<'_>,
        ws: &mut Ws,
    ) -> Poll<Result<usize, WsError>> {
        if self.written == 0 && !self.buf.is_empty() {
            // tungstenite's own frames (a pong it owes) go out first, whole.
            ready!(Sink::<WsMessage>::poll_flush(Pin::new(&mut *ws), cx))?;
        }
        let io = ws.get_mut();
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut *io).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(WsError::Io(io::ErrorKind::WriteZero.into())));
            }
            self.written += n;
        }
        if self.frames > 0 {
            ready!(Pin::new(&mut *io).poll_flush(cx))?;
        }
        // Given back: an idle connection holds no write buffer. The thread
        // keeps it for the next connection it writes for.
        let mut buf = std::mem::take(&mut self.buf);
        if buf.capacity() > 0 && buf.capacity() <= KEEP_SCRATCH {
            buf.clear();
            SCRATCH.with(|s| *s.borrow_mut() = buf);
        }
        self.written = 0;
        Poll::Ready(Ok(std::mem::take(&mut self.frames)))
    }
}

/// Appends a final, unmasked text frame carrying `payload` (RFC 6455 §5.2).
fn encode_text(buf: &mut Vec<u8>, payload: &[u8]) {
    const FIN_TEXT: u8 = 0x80 | 0x1;
    let len = payload.len();
    buf.reserve(len + 10);
    buf.push(FIN_TEXT);
    if len < 126 {
        buf.push(len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        buf.push(126);
        buf.extend_from_slice(&len.to_be_bytes());
    } else {
        buf.push(127);
        buf.extend_from_slice(&(len as u64).to_be_bytes());
    }
    buf.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

    #[test]
    fn frames_parse_back_at_every_length_boundary() {
        for len in [0usize, 1, 125, 126, 127, 65_535, 65_536, 200_000] {
            let payload: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let mut buf = Vec::new();
            encode_text(&mut buf, &payload);
            encode_text(&mut buf, b"next");
            let mut cursor = Cursor::new(&buf[..]);
            let (header, parsed_len) = FrameHeader::parse(&mut cursor)
                .expect("a valid header")
                .expect("a complete header");
            assert!(header.is_final, "len {len}");
            assert_eq!(header.opcode, OpCode::Data(Data::Text), "len {len}");
            assert!(header.mask.is_none(), "a server's frames are unmasked");
            assert_eq!(parsed_len, len as u64);
            let start = cursor.position() as usize;
            assert_eq!(&buf[start..start + len], &payload[..]);
            // The next frame starts right after.
            let mut rest = Cursor::new(&buf[start + len..]);
            let (_, next_len) = FrameHeader::parse(&mut rest).unwrap().unwrap();
            assert_eq!(next_len, 4);
        }
    }
}
