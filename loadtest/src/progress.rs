//! The live progress line on stderr: redrawn in place with `\r` at most four
//! times a second on a terminal; on a pipe or file (CI, scripts), a plain
//! line every two seconds so logs stay readable.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Redraw period on a terminal. Why 250 ms: "at most 4 times a second" is
/// readable and costs nothing next to the load.
const TTY_PERIOD: Duration = Duration::from_millis(250);
/// Line period when stderr is not a terminal. Why 2 s: a log of a minute's
/// run stays a few dozen lines.
const PIPE_PERIOD: Duration = Duration::from_secs(2);

/// A running progress line; [`Progress::finish`] stops it and ends the line.
pub(crate) struct Progress {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Progress {
    /// Starts drawing `render()` periodically.
    pub(crate) fn start(render: impl Fn() -> String + Send + 'static) -> Progress {
        let (stop, mut stopped) = watch::channel(false);
        let tty = std::io::stderr().is_terminal();
        let period = if tty { TTY_PERIOD } else { PIPE_PERIOD };
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = crate::client::until_set(&mut stopped) => break,
                    _ = tick.tick() => draw(&render(), tty),
                }
            }
            // The final state, then end the line.
            draw(&render(), tty);
            if tty {
                eprintln!();
            }
        });
        Progress { stop, task }
    }

    /// Draws the last state and ends the line.
    pub(crate) async fn finish(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

fn draw(line: &str, tty: bool) {
    let mut err = std::io::stderr().lock();
    if tty {
        // \x1b[K clears the rest of a longer previous line.
        let _ = write!(err, "\r{line}\x1b[K");
    } else {
        let _ = writeln!(err, "{line}");
    }
    let _ = err.flush();
}
