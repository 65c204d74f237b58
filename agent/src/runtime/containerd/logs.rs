//! Container output. The runc shim writes the task's stdout and stderr into two FIFOs;
//! a copier task in the agent stamps each line and appends it to one log file in the
//! CRI format (`<RFC 3339 time> <stdout|stderr> <F|P> <bytes>`: `F` a full line whose
//! newline was dropped, `P` a part of a longer or unterminated line), so that logs keep
//! the order of both streams and can carry timestamps. Reading tails records backwards
//! from the end of the file; following polls the file, a bounded step at a time.
//!
//! The shim keeps a reader of its own on each FIFO, so the container never gets EPIPE
//! when the agent is away; it blocks once the FIFO buffer is full, until a new agent
//! reattaches a copier.

use std::path::{Path, PathBuf};

use diplo_api::container::{LogChunk, OutputStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;

use crate::runtime::output;

/// The most bytes one read of a followed log takes in (the rest waits for the next).
pub const READ_STEP: usize = 1024 * 1024;
/// A line longer than this is written in parts.
const MAX_RECORD: usize = 16 * 1024;

/// One record of the log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// RFC 3339 time the copier read it.
    pub time: String,
    /// stdout or stderr.
    pub stream: OutputStream,
    /// The bytes, with their newline for full lines.
    pub data: Vec<u8>,
}

impl Record {
    /// As a log chunk, optionally prefixed with its time like Docker does.
    pub fn into_chunk(self, timestamps: bool) -> LogChunk {
        let data = if timestamps {
            let mut data = Vec::with_capacity(self.time.len() + 1 + self.data.len());
            data.extend_from_slice(self.time.as_bytes());
            data.push(b' ');
            data.extend_from_slice(&self.data);
            data
        } else {
            self.data
        };
        LogChunk { stream: self.stream, data }
    }
}

/// Parses one line of the log file (without its newline).
pub fn parse_record(line: &[u8]) -> Option<Record> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = String::from_utf8(parts.next()?.to_vec()).ok()?;
    let stream = match parts.next()? {
        b"stdout" => OutputStream::Stdout,
        b"stderr" => OutputStream::Stderr,
        _ => return None,
    };
    let full = match parts.next()? {
        b"F" => true,
        b"P" => false,
        _ => return None,
    };
    let mut data = parts.next().unwrap_or_default().to_vec();
    if full {
        data.push(b'\n');
    }
    Some(Record { time, stream, data })
}

/// Parses the complete lines of `data`; returns the records and how many bytes they used
/// (a trailing line without newline is left for later).
pub fn parse_records(data: &[u8]) -> (Vec<Record>, usize) {
    let mut records = Vec::new();
    let mut used = 0;
    while let Some(end) = data[used..].iter().position(|b| *b == b'\n') {
        if let Some(record) = parse_record(&data[used..used + end]) {
            records.push(record);
        }
        used += end + 1;
    }
    (records, used)
}

fn encode(stream: OutputStream, full: bool, content: &[u8], out: &mut Vec<u8>) {
    let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let name = match stream {
        OutputStream::Stdout => "stdout",
        OutputStream::Stderr => "stderr",
    };
    out.extend_from_slice(format!("{time} {name} {} ", if full { "F" } else { "P" }).as_bytes());
    out.extend_from_slice(content);
    out.push(b'\n');
}

/// Moves the complete lines of `pending` into records in `out`; long or (at `eof`)
/// unterminated rest goes out as a part.
fn drain_lines(stream: OutputStream, pending: &mut Vec<u8>, eof: bool, out: &mut Vec<u8>) {
    let mut start = 0;
    while let Some(end) = pending[start..].iter().position(|b| *b == b'\n') {
        encode(stream, true, &pending[start..start + end], out);
        start += end + 1;
    }
    while pending.len() - start >= MAX_RECORD {
        encode(stream, false, &pending[start..start + MAX_RECORD], out);
        start += MAX_RECORD;
    }
    if eof && start < pending.len() {
        encode(stream, false, &pending[start..], out);
        start = pending.len();
    }
    pending.drain(..start);
}

/// Opens the read ends of a task's FIFOs (the shim must hold their write ends).
pub fn open_fifos(stdout: &Path, stderr: &Path) -> std::io::Result<(pipe::Receiver, pipe::Receiver)> {
    Ok((pipe::OpenOptions::new().open_receiver(stdout)?, pipe::OpenOptions::new().open_receiver(stderr)?))
}

/// Copies both FIFOs into the log file at `path` until both reach end of file (the
/// container's output closed). Each FIFO has a reader task of its own that stamps its
/// lines as soon as they arrive and hands them to one writer, so that the file keeps
/// the order in which the two streams were written as well as two pipes allow.
pub async fn copy(stdout: pipe::Receiver, stderr: pipe::Receiver, path: PathBuf) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    for (pipe, stream) in [(stdout, OutputStream::Stdout), (stderr, OutputStream::Stderr)] {
        tokio::spawn(read_stream(pipe, stream, tx.clone()));
    }
    drop(tx);
    let mut file = match tokio::fs::OpenOptions::new().create(true).append(true).open(&path).await {
        Ok(file) => Some(file),
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot open the container log; output is dropped");
            None
        }
    };
    while let Some(records) = rx.recv().await {
        if let Some(file) = file.as_mut()
            && let Err(error) = file.write_all(&records).await
        {
            tracing::warn!(path = %path.display(), %error, "cannot write the container log");
        }
    }
    if let Some(mut file) = file {
        let _ = file.flush().await;
    }
}

async fn read_stream(mut pipe: pipe::Receiver, stream: OutputStream, records: tokio::sync::mpsc::UnboundedSender<Vec<u8>>) {
    let mut pending = Vec::new();
    let mut buffer = vec![0u8; 32 * 1024];
    loop {
        let mut out = Vec::new();
        let eof = match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => true,
            Ok(n) => {
                pending.extend_from_slice(&buffer[..n]);
                false
            }
        };
        drain_lines(stream, &mut pending, eof, &mut out);
        if (!out.is_empty() && records.send(out).is_err()) || eof {
            return;
        }
    }
}

/// The last `lines` records of the log at `path`, read from its end (at most
/// [`output::MAX_TAIL_READ`] bytes of it), and the offset after the last complete record
/// (where following goes on); a missing file is empty.
pub async fn tail(path: &Path, lines: u32) -> std::io::Result<(Vec<Record>, u64)> {
    let path = path.to_owned();
    let read = tokio::task::spawn_blocking(move || {
        let mut file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        output::tail_lines(&mut file, len, lines as usize, output::MAX_TAIL_READ, output::TAIL_BLOCK).map(Some)
    })
    .await
    .map_err(std::io::Error::other)??;
    let Some(tail) = read else { return Ok((Vec::new(), 0)) };
    // A record being written as this read is not complete yet: following reads it whole.
    let (records, used) = parse_records(&tail.data);
    Ok((records, tail.start + used as u64))
}

/// The bytes appended to `path` since `offset` (starting over if it shrank), at most
/// [`READ_STEP`] of them, and the offset after them.
pub async fn read_from(path: &Path, offset: u64) -> std::io::Result<(Vec<u8>, u64)> {
    let path = path.to_owned();
    let (data, start) =
        tokio::task::spawn_blocking(move || output::read_span(&path, offset, READ_STEP)).await.map_err(std::io::Error::other)??;
    let end = start + data.len() as u64;
    Ok((data, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let mut out = Vec::new();
        let mut pending = b"one\ntwo\npart".to_vec();
        drain_lines(OutputStream::Stdout, &mut pending, false, &mut out);
        assert_eq!(pending, b"part");
        drain_lines(OutputStream::Stderr, &mut pending, true, &mut out);
        assert!(pending.is_empty());
        let (records, used) = parse_records(&out);
        assert_eq!(used, out.len());
        let data: Vec<(OutputStream, &[u8])> = records.iter().map(|r| (r.stream, r.data.as_slice())).collect();
        assert_eq!(data, [(OutputStream::Stdout, &b"one\n"[..]), (OutputStream::Stdout, b"two\n"), (OutputStream::Stderr, b"part")]);
        assert!(records[0].time.starts_with("20") && records[0].time.ends_with('Z'));
        let chunk = records[0].clone().into_chunk(true);
        assert_eq!(chunk.data, format!("{} one\n", records[0].time).into_bytes());
        let mut long = vec![b'x'; MAX_RECORD + 5];
        let mut out = Vec::new();
        drain_lines(OutputStream::Stdout, &mut long, false, &mut out);
        assert_eq!(long.len(), 5);
        assert_eq!(parse_records(&out).0[0].data.len(), MAX_RECORD);
        assert_eq!(parse_record(b"t stdout F a b c").map(|r| r.data), Some(b"a b c\n".to_vec()));
        assert_eq!(parse_record(b"garbage"), None);
    }

    #[tokio::test]
    async fn tails_big_logs_and_follows_appends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut text = Vec::new();
        for i in 0..20_000 {
            encode(if i % 2 == 0 { OutputStream::Stdout } else { OutputStream::Stderr }, true, format!("line {i}").as_bytes(), &mut text);
        }
        std::fs::write(&path, &text).unwrap();
        let (records, end) = tail(&path, 3).await.unwrap();
        let data: Vec<&[u8]> = records.iter().map(|r| r.data.as_slice()).collect();
        assert_eq!(data, [&b"line 19997\n"[..], b"line 19998\n", b"line 19999\n"]);
        assert_eq!(end, text.len() as u64);
        assert_eq!(tail(&path, 30_000).await.unwrap().0.len(), 20_000);
        assert!(tail(&path, 0).await.unwrap().0.is_empty());
        std::fs::OpenOptions::new().append(true).open(&path).and_then(|mut f| std::io::Write::write_all(&mut f, b"more")).unwrap();
        let (data, next) = read_from(&path, end).await.unwrap();
        assert_eq!(data, b"more");
        assert_eq!(next, end + 4);
        assert_eq!(tail(&dir.path().join("missing"), 1).await.unwrap(), (Vec::new(), 0));
        // A record cut by a concurrent write is left for following to read whole.
        std::fs::write(&path, b"t stdout F whole\nt stdout F ha").unwrap();
        let (records, end) = tail(&path, 5).await.unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(end, 17);
    }
}
