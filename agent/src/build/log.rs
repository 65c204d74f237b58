//! A build's output on its way to the control plane: every line redacted, the total
//! bounded (past the bound one note, then nothing, while the build goes on), and the
//! last lines kept for the failure message.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use diplo_api::container::{LogChunk, OutputStream};
use tokio::sync::mpsc;

use super::redact::redact;

/// Default bound of a build's streamed output.
pub const DEFAULT_OUTPUT_LIMIT: usize = 8 * 1024 * 1024;
/// Lines kept for the report of a failed build.
const TAIL_LINES: usize = 20;

/// Where a build writes its output. Cheap to clone; a reader that went away only
/// means the output is dropped.
#[derive(Clone)]
pub struct BuildLog {
    inner: Arc<Inner>,
}

struct Inner {
    tx: mpsc::Sender<LogChunk>,
    secrets: Vec<String>,
    limit: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    sent: usize,
    truncated: bool,
    tail: VecDeque<String>,
}

impl BuildLog {
    /// A log sending to `tx`, removing `secrets` (and URL credentials), at most `limit`
    /// bytes.
    pub fn new(tx: mpsc::Sender<LogChunk>, secrets: Vec<String>, limit: usize) -> Self {
        BuildLog { inner: Arc::new(Inner { tx, secrets, limit, state: Mutex::new(State::default()) }) }
    }

    /// Redacts `text` with this log's secrets (for messages that go elsewhere).
    pub fn redact(&self, text: &str) -> String {
        redact(text, &self.inner.secrets)
    }

    /// Writes `text` (one or more lines; a line break is added when missing).
    pub async fn write(&self, stream: OutputStream, text: &str) {
        let mut text = self.redact(text);
        if !text.ends_with('\n') {
            text.push('\n');
        }
        let chunk = {
            let Ok(mut state) = self.inner.state.lock() else { return };
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                if state.tail.len() == TAIL_LINES {
                    state.tail.pop_front();
                }
                state.tail.push_back(line.to_owned());
            }
            if state.truncated {
                return;
            }
            if state.sent + text.len() > self.inner.limit {
                state.truncated = true;
                format!("[build output truncated at {} bytes; the build goes on]\n", self.inner.limit).into_bytes()
            } else {
                state.sent += text.len();
                text.into_bytes()
            }
        };
        // A reader that went away drops the output; the build itself goes on.
        let _ = self.inner.tx.send(LogChunk { stream, data: chunk }).await;
    }

    /// A line from Diplo itself (stderr).
    pub async fn note(&self, text: &str) {
        self.write(OutputStream::Stderr, text).await;
    }

    /// The last lines written (redacted), joined.
    pub fn tail(&self) -> String {
        self.inner.state.lock().map(|s| s.tail.iter().cloned().collect::<Vec<_>>().join("\n")).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_is_redacted_and_bounded() {
        let (tx, mut rx) = mpsc::channel(64);
        let log = BuildLog::new(tx, vec!["hunter22".into()], 40);
        log.write(OutputStream::Stdout, "pushing with hunter22 to https://u:p@h/x").await;
        log.write(OutputStream::Stdout, "0123456789012345678901234567890123456789").await;
        log.write(OutputStream::Stdout, "dropped").await;
        drop(log);
        let mut text = String::new();
        while let Some(chunk) = rx.recv().await {
            text.push_str(&String::from_utf8_lossy(&chunk.data));
        }
        assert_eq!(text, "pushing with *** to https://***@h/x\n[build output truncated at 40 bytes; the build goes on]\n");
    }

    #[tokio::test]
    async fn a_closed_reader_does_not_stop_the_build_and_the_tail_is_kept() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let log = BuildLog::new(tx, vec![], 1024);
        for n in 0..30 {
            log.write(OutputStream::Stderr, &format!("line {n}")).await;
        }
        let tail = log.tail();
        assert!(tail.starts_with("line 10\n") && tail.ends_with("line 29"), "{tail}");
    }
}
