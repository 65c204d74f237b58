//! Container output for the LXC driver.
//!
//! LXC itself only offers the console log, where stdout and stderr are one stream and
//! nothing is timed. When the host has a static shell (busybox-static), the driver
//! bind-mounts it into the container and starts PID 1 as
//! `SHIM -c 'exec "$@" 1<>/.diplo/log/stdout 2<>/.diplo/log/stderr' diplo-init ARGV...`:
//! the shell replaces itself with the application, which stays PID 1 with its stdout and
//! stderr on two FIFOs of the container directory (bind-mounted at `/.diplo/log`).
//!
//! The agent's [`pump`] reads both FIFOs and appends one record per line to
//! `diplo-log.records` (outside the container's reach): `NANOS o|e F|P BYTES`, `F` for a
//! full line (its newline dropped), `P` for a piece without one (a line longer than
//! [`MAX_LINE`], or the last bytes before the container ended). Times are arrival times.
//! The order of stdout against stderr is the order the pump sees them in, which, as with
//! any runtime copying the two streams separately, is exact only when they are not written
//! within microseconds of each other.
//!
//! The FIFOs are opened read-write on both sides: the container never blocks opening them
//! and never gets `SIGPIPE`, so it survives an agent restart; while no agent reads, output
//! waits in the pipe (64 KiB, then the writer blocks) and is timed when read.
//!
//! Without a static shell, the console log is read instead: everything as stdout, timed
//! by the file's modification time.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use diplo_api::container::{LogChunk, OutputStream};
use tokio::io::AsyncReadExt;

use crate::runtime::output;

/// Directory (in the container directory) holding the FIFOs.
pub(super) const LOG_DIR: &str = "diplo-log";
/// Where [`LOG_DIR`] appears inside the container.
pub(super) const CONTAINER_LOG_DIR: &str = "/.diplo/log";
/// Where the shim shell appears inside the container.
pub(super) const CONTAINER_SHIM: &str = "/.diplo/sh";
/// The record file (in the container directory).
const RECORDS: &str = "diplo-log.records";
/// Longer lines are recorded in pieces (Docker splits at 16 KiB too).
pub(super) const MAX_LINE: usize = 16 * 1024;
/// The most bytes one read of a followed log takes in (the rest waits for the next).
pub(super) const READ_STEP: usize = 1024 * 1024;
/// The most bytes of output one log chunk carries.
const MAX_CHUNK: usize = 64 * 1024;
/// How often the pump checks whether the container still runs.
const LIVENESS_POLL: Duration = Duration::from_millis(200);

/// The shim's script: `$@` is the application's argv.
pub(super) fn shim_script() -> String {
    format!("exec \"$@\" 1<>{CONTAINER_LOG_DIR}/stdout 2<>{CONTAINER_LOG_DIR}/stderr")
}

/// Where a container's output is.
#[derive(Debug, Clone)]
pub(super) enum LogFiles {
    /// FIFOs read by the pump into a record file.
    Records {
        /// stdout and stderr FIFOs.
        fifos: [PathBuf; 2],
        /// The record file.
        records: PathBuf,
    },
    /// The console log.
    Console(PathBuf),
}

/// A line (with its newline, if it has one) of one stream and its time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Line {
    pub stream: OutputStream,
    pub nanos: i64,
    pub data: Vec<u8>,
}

impl LogFiles {
    /// FIFOs under `container_dir/diplo-log`, records next to it.
    pub fn records(container_dir: &Path) -> Self {
        let dir = container_dir.join(LOG_DIR);
        LogFiles::Records { fifos: [dir.join("stdout"), dir.join("stderr")], records: container_dir.join(RECORDS) }
    }

    /// The console log.
    pub fn console(console_log: &Path) -> Self {
        LogFiles::Console(console_log.to_path_buf())
    }

    /// Creates the FIFOs (owned by `owner`, the uid/gid PID 1 runs as) and the record file.
    pub async fn prepare(&self, owner: Option<(u32, u32)>) -> io::Result<()> {
        let LogFiles::Records { fifos, records } = self else { return Ok(()) };
        let dir = fifos[0].parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let output = tokio::process::Command::new("mkfifo")
            .arg("-m")
            .arg("0600")
            .args(fifos.iter())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await?;
        if !output.status.success() {
            return Err(io::Error::other(format!("mkfifo: {}", String::from_utf8_lossy(&output.stderr).trim())));
        }
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
            for fifo in fifos {
                std::os::unix::fs::chown(fifo, Some(uid), Some(gid))?;
            }
        }
        std::fs::OpenOptions::new().create(true).append(true).open(records)?;
        Ok(())
    }

    /// The lines from byte `offset` of the underlying file on (at most [`READ_STEP`]
    /// bytes of it), the offset after the last complete line, and whether the step was
    /// full (more may be waiting). With `complete_only` false, a trailing piece without
    /// newline is taken too (console mode; records are always complete lines).
    pub fn lines_since(&self, offset: u64, complete_only: bool) -> (Vec<Line>, u64, bool) {
        let (data, start) = read_from(self.path(), offset);
        let full = data.len() == READ_STEP;
        // A step that holds no line end at all is one long console line: taken as a piece.
        let complete_only = complete_only && (!full || data.contains(&b'\n'));
        let (lines, used) = self.parse(&data, complete_only);
        (lines, start + used as u64, full)
    }

    /// The last `lines` lines, read from the end of the underlying file (at most
    /// [`output::MAX_TAIL_READ`] bytes of it), and the offset after the last complete
    /// one (where following goes on). `complete_only` as for [`LogFiles::lines_since`].
    pub fn tail(&self, lines: u32, complete_only: bool) -> (Vec<Line>, u64) {
        let Ok(mut file) = std::fs::File::open(self.path()) else { return (Vec::new(), 0) };
        let end = file.metadata().map_or(0, |m| m.len());
        let Ok(tail) = output::tail_lines(&mut file, end, lines as usize, output::MAX_TAIL_READ, output::TAIL_BLOCK) else {
            return (Vec::new(), end);
        };
        let (found, used) = self.parse(&tail.data, complete_only);
        (found, tail.start + used as u64)
    }

    fn path(&self) -> &Path {
        match self {
            LogFiles::Records { records, .. } => records,
            LogFiles::Console(path) => path,
        }
    }

    /// The lines of `data`, and how many bytes they took.
    fn parse(&self, data: &[u8], complete_only: bool) -> (Vec<Line>, usize) {
        match self {
            LogFiles::Records { .. } => {
                let end = data.iter().rposition(|b| *b == b'\n').map_or(0, |at| at + 1);
                let lines = data[..end].split(|b| *b == b'\n').filter(|r| !r.is_empty()).filter_map(parse_record).collect();
                (lines, end)
            }
            LogFiles::Console(path) => {
                let nanos = std::fs::metadata(path).and_then(|m| m.modified()).map_or_else(|_| now_nanos(), system_nanos);
                let mut lines = Vec::new();
                let mut position = 0;
                while position < data.len() {
                    let end = match data[position..].iter().position(|b| *b == b'\n') {
                        Some(at) => position + at + 1,
                        None if complete_only => break,
                        None => data.len(),
                    };
                    lines.push(Line { stream: OutputStream::Stdout, nanos, data: crlf_to_lf(&data[position..end]) });
                    position = end;
                }
                (lines, position)
            }
        }
    }
}

/// Bytes of `path` from `offset` (from 0 if the file is shorter: replaced), at most
/// [`READ_STEP`] of them, with the offset they start at.
fn read_from(path: &Path, offset: u64) -> (Vec<u8>, u64) {
    output::read_span(path, offset, READ_STEP).unwrap_or((Vec::new(), offset))
}

/// One record line (without its newline): `NANOS o|e F|P BYTES`.
fn parse_record(record: &[u8]) -> Option<Line> {
    let mut fields = record.splitn(4, |b| *b == b' ');
    let nanos = std::str::from_utf8(fields.next()?).ok()?.parse().ok()?;
    let stream = match fields.next()? {
        b"o" => OutputStream::Stdout,
        b"e" => OutputStream::Stderr,
        _ => return None,
    };
    let full = match fields.next()? {
        b"F" => true,
        b"P" => false,
        _ => return None,
    };
    let mut data = fields.next().unwrap_or_default().to_vec();
    if full {
        data.push(b'\n');
    }
    Some(Line { stream, nanos, data })
}

fn format_record(nanos: i64, stream: usize, full: bool, data: &[u8]) -> Vec<u8> {
    let mut record = format!("{nanos} {} {} ", if stream == 0 { 'o' } else { 'e' }, if full { 'F' } else { 'P' }).into_bytes();
    record.extend_from_slice(data);
    record.push(b'\n');
    record
}

fn crlf_to_lf(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    for (i, byte) in data.iter().enumerate() {
        if *byte == b'\r' && data.get(i + 1) == Some(&b'\n') {
            continue;
        }
        out.push(*byte);
    }
    out
}

/// Splits what a stream delivered into records: full lines, and pieces of at most
/// [`MAX_LINE`] bytes; what remains waits in `pending` for more.
fn take_records(pending: &mut Vec<u8>, stream: usize, nanos: i64, flush: bool) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        if let Some(at) = pending.iter().take(MAX_LINE + 1).position(|b| *b == b'\n') {
            out.extend(format_record(nanos, stream, true, &pending[..at]));
            pending.drain(..=at);
        } else if pending.len() >= MAX_LINE || (flush && !pending.is_empty()) {
            let take = pending.len().min(MAX_LINE);
            out.extend(format_record(nanos, stream, false, &pending[..take]));
            pending.drain(..take);
        } else {
            return out;
        }
    }
}

/// The pid of a container's init once known (0 until then).
pub(super) type PidSlot = Arc<AtomicU32>;

/// Copies the FIFOs into the record file until the container's init (its pid put into
/// `pid` once known) is gone and the FIFOs are drained. Meant to run from before
/// `lxc-start` so that even the first output is timed and ordered.
pub(super) async fn pump(fifos: [PathBuf; 2], records: PathBuf, pid: PidSlot) -> io::Result<()> {
    let open = |path: &Path| {
        // The directory is the container's to write in: never follow what it put there, and
        // check what was opened (not the name, which the container can swap in between).
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        // Refuses anything but a FIFO (a regular file, a device, ...).
        tokio::net::unix::pipe::Receiver::from_file(file)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{} is not a FIFO: {e}", path.display())))
    };
    let mut out = open(&fifos[0])?;
    let mut err = open(&fifos[1])?;
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&records)?;
    let mut pending = [Vec::new(), Vec::new()];
    let (mut out_buffer, mut err_buffer) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    let mut tick = tokio::time::interval(LIVENESS_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (stream, read) = tokio::select! {
            read = out.read(&mut out_buffer) => (0, Some(read)),
            read = err.read(&mut err_buffer) => (1, Some(read)),
            _ = tick.tick() => (0, None),
        };
        let Some(read) = read else {
            let known = pid.load(Ordering::Relaxed);
            if known == 0 || Path::new(&format!("/proc/{known}")).exists() {
                continue;
            }
            // Ended: take what is left in the pipes, then stop.
            for (stream, receiver, buffer) in [(0, &out, &mut out_buffer), (1, &err, &mut err_buffer)] {
                while let Ok(count) = receiver.try_read(buffer) {
                    if count == 0 {
                        break;
                    }
                    pending[stream].extend_from_slice(&buffer[..count]);
                }
            }
            let nanos = now_nanos();
            let mut rest = take_records(&mut pending[0], 0, nanos, true);
            rest.extend(take_records(&mut pending[1], 1, nanos, true));
            file.write_all(&rest)?;
            return Ok(());
        };
        let count = read?;
        if count == 0 {
            continue;
        }
        let data = if stream == 0 { &out_buffer[..count] } else { &err_buffer[..count] };
        pending[stream].extend_from_slice(data);
        let records = take_records(&mut pending[stream], stream, now_nanos(), false);
        if !records.is_empty() {
            file.write_all(&records)?;
        }
    }
}

/// RFC 3339 with nanoseconds, as Docker prints log times.
pub(super) fn format_time(nanos: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(nanos).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// Nanoseconds since the epoch, now.
pub(super) fn now_nanos() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
}

fn system_nanos(time: std::time::SystemTime) -> i64 {
    time.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Consecutive lines of one stream become one chunk of at most [`MAX_CHUNK`] bytes
/// (unless one line is longer); with `timestamps`, every line is prefixed with its time
/// and a blank.
pub(super) fn chunks(lines: Vec<Line>, timestamps: bool) -> Vec<LogChunk> {
    let mut chunks: Vec<LogChunk> = Vec::new();
    for line in lines {
        let mut data = Vec::with_capacity(line.data.len() + 32);
        if timestamps {
            data.extend_from_slice(format_time(line.nanos).as_bytes());
            data.push(b' ');
        }
        data.extend_from_slice(&line.data);
        match chunks.last_mut() {
            Some(last) if last.stream == line.stream && last.data.len() + data.len() <= MAX_CHUNK => last.data.extend_from_slice(&data),
            _ => chunks.push(LogChunk { stream: line.stream, data }),
        }
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let mut pending = b"one\ntwo\nthr".to_vec();
        let records = take_records(&mut pending, 0, 5, false);
        assert_eq!(records, b"5 o F one\n5 o F two\n");
        assert_eq!(pending, b"thr");
        let records = take_records(&mut pending, 1, 6, true);
        assert_eq!(records, b"6 e P thr\n");
        assert!(pending.is_empty());
        let mut long = vec![b'x'; MAX_LINE + 10];
        let records = take_records(&mut long, 0, 7, false);
        assert_eq!(records.len(), "7 o P ".len() + MAX_LINE + 1);
        assert_eq!(long.len(), 10);

        assert_eq!(parse_record(b"5 o F one"), Some(Line { stream: OutputStream::Stdout, nanos: 5, data: b"one\n".to_vec() }));
        assert_eq!(parse_record(b"6 e P a b"), Some(Line { stream: OutputStream::Stderr, nanos: 6, data: b"a b".to_vec() }));
        assert_eq!(parse_record(b"6 e F "), Some(Line { stream: OutputStream::Stderr, nanos: 6, data: b"\n".to_vec() }));
        assert_eq!(parse_record(b"x o F y"), None);
    }

    #[test]
    fn record_files_are_read_by_complete_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = LogFiles::records(dir.path());
        let LogFiles::Records { records, .. } = &files else { unreachable!() };
        std::fs::write(records, b"1 e F err\n2 o F out\n3 o F hal").expect("write");
        let (lines, offset, _) = files.lines_since(0, true);
        assert_eq!(lines.len(), 2);
        assert_eq!((lines[0].stream, lines[1].stream), (OutputStream::Stderr, OutputStream::Stdout));
        assert_eq!(offset, 20);
        let (lines, same, _) = files.lines_since(offset, true);
        assert!(lines.is_empty());
        assert_eq!(same, offset);
    }

    #[test]
    fn tails_and_chunks() {
        let line = |stream, text: &str| Line { stream, nanos: 1_700_000_000_000_000_000, data: text.as_bytes().to_vec() };
        let lines = vec![
            line(OutputStream::Stdout, "a\n"),
            line(OutputStream::Stdout, "b\n"),
            line(OutputStream::Stderr, "e\n"),
            line(OutputStream::Stdout, "c\n"),
        ];
        let grouped = chunks(lines, false);
        assert_eq!(grouped.len(), 3);
        assert_eq!(grouped[0].data, b"a\nb\n");
        let stamped = chunks(vec![line(OutputStream::Stdout, "x\n")], true);
        assert_eq!(String::from_utf8_lossy(&stamped[0].data), "2023-11-14T22:13:20.000000000Z x\n");
        // Many lines of one stream: chunks stay small.
        let many = chunks(vec![line(OutputStream::Stdout, &"y".repeat(1000)); 1000], false);
        assert!(many.len() > 10 && many.iter().all(|c| c.data.len() <= MAX_CHUNK), "{}", many.len());
        assert_eq!(many.iter().map(|c| c.data.len()).sum::<usize>(), 1_000_000);
    }

    #[test]
    fn tails_are_read_from_the_end_of_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = LogFiles::records(dir.path());
        let LogFiles::Records { records, .. } = &files else { unreachable!() };
        let mut text = Vec::new();
        for i in 0..50_000 {
            text.extend(format_record(i, (i % 2) as usize, true, format!("line {i}").as_bytes()));
        }
        text.extend_from_slice(b"50000 o F half-writ");
        std::fs::write(records, &text).expect("write");
        let (lines, offset) = files.tail(3, true);
        let shown: Vec<&[u8]> = lines.iter().map(|l| l.data.as_slice()).collect();
        assert_eq!(shown, [&b"line 49998\n"[..], b"line 49999\n"]);
        assert_eq!(offset, (text.len() - b"50000 o F half-writ".len()) as u64);
        assert_eq!(files.tail(0, true), (Vec::new(), text.len() as u64));

        let console = dir.path().join("console.log");
        std::fs::write(&console, b"a\r\nb\nc\npartial").expect("write");
        let files = LogFiles::console(&console);
        let (lines, offset) = files.tail(2, false);
        assert_eq!(lines.iter().map(|l| l.data.as_slice()).collect::<Vec<_>>(), [&b"c\n"[..], b"partial"]);
        assert_eq!(offset, 14);
        let (lines, offset) = files.tail(2, true);
        assert_eq!(lines.iter().map(|l| l.data.as_slice()).collect::<Vec<_>>(), [&b"c\n"[..]]);
        assert_eq!(offset, 7);
        assert_eq!(LogFiles::console(&dir.path().join("missing")).tail(5, true), (Vec::new(), 0));
    }

    #[test]
    fn followed_reads_take_a_bounded_step() {
        let dir = tempfile::tempdir().expect("tempdir");
        let console = dir.path().join("console.log");
        // One line longer than a step: taken in pieces, never stuck.
        std::fs::write(&console, vec![b'z'; READ_STEP + 10]).expect("write");
        let files = LogFiles::console(&console);
        let (lines, offset, full) = files.lines_since(0, true);
        assert_eq!((lines.len(), offset, full), (1, READ_STEP as u64, true));
        let (lines, offset, full) = files.lines_since(offset, true);
        assert_eq!((lines.len(), offset, full), (0, READ_STEP as u64, false));
    }

    #[test]
    fn console_mode_reads_the_console_as_stdout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let console = dir.path().join("console.log");
        std::fs::write(&console, b"hi\r\nthere").expect("write");
        let files = LogFiles::console(&console);
        let (lines, offset, _) = files.lines_since(0, true);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].data, b"hi\n");
        let (lines, _, _) = files.lines_since(offset, false);
        assert_eq!(lines[0].data, b"there");
    }

    #[tokio::test]
    async fn the_pump_records_both_fifos_until_the_process_ends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = LogFiles::records(dir.path());
        files.prepare(None).await.expect("prepare");
        let LogFiles::Records { fifos, records } = files.clone() else { unreachable!() };
        let pid: PidSlot = Arc::new(AtomicU32::new(0));
        let pump = tokio::spawn(pump(fifos.clone(), records, Arc::clone(&pid)));
        // A writer like the shim: both FIFOs opened read-write.
        let script = format!(
            "exec 1<>{} 2<>{}; echo err-first >&2; sleep 0.2; echo out-1; printf 'no-newline'",
            fifos[0].display(),
            fifos[1].display()
        );
        let mut child = tokio::process::Command::new("sh").arg("-c").arg(script).spawn().expect("sh");
        pid.store(child.id().expect("pid"), Ordering::Relaxed);
        child.wait().await.expect("wait");
        tokio::time::timeout(Duration::from_secs(5), pump).await.expect("pump ends").expect("join").expect("pump");
        let (lines, _, _) = files.lines_since(0, true);
        let shown: Vec<(OutputStream, &[u8])> = lines.iter().map(|l| (l.stream, l.data.as_slice())).collect();
        assert_eq!(
            shown,
            vec![
                (OutputStream::Stderr, b"err-first\n".as_slice()),
                (OutputStream::Stdout, b"out-1\n".as_slice()),
                (OutputStream::Stdout, b"no-newline".as_slice()),
            ]
        );
        assert!(lines[0].nanos + 150_000_000 <= lines[1].nanos, "times: {lines:?}");
    }

    #[tokio::test]
    async fn the_pump_opens_only_the_fifos_themselves() {
        // The container can replace its FIFOs by a link (to a host FIFO or file) or a file.
        for swap in ["link-to-fifo", "link-to-file", "regular-file"] {
            let dir = tempfile::tempdir().expect("tempdir");
            let files = LogFiles::records(dir.path());
            files.prepare(None).await.expect("prepare");
            let LogFiles::Records { fifos, records } = files.clone() else { unreachable!() };
            let elsewhere = tempfile::tempdir().expect("tempdir");
            let host_file = elsewhere.path().join("host-file");
            std::fs::write(&host_file, "host\n").expect("host file");
            let host_fifo = elsewhere.path().join("host-fifo");
            let made = std::process::Command::new("mkfifo").arg(&host_fifo).status().expect("mkfifo");
            assert!(made.success());
            std::fs::remove_file(&fifos[0]).expect("remove fifo");
            match swap {
                "link-to-fifo" => std::os::unix::fs::symlink(&host_fifo, &fifos[0]).expect("link"),
                "link-to-file" => std::os::unix::fs::symlink(&host_file, &fifos[0]).expect("link"),
                _ => std::fs::write(&fifos[0], "x").expect("file"),
            }
            let pid: PidSlot = Arc::new(AtomicU32::new(0));
            let outcome =
                tokio::time::timeout(Duration::from_secs(5), pump(fifos.clone(), records, pid)).await.expect("the pump does not block");
            assert!(outcome.is_err(), "{swap}: the pump must refuse {}", fifos[0].display());
            assert_eq!(std::fs::read_to_string(&host_file).expect("host file"), "host\n", "{swap}");
        }
    }
}
