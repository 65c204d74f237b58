//! Container output for the LXC driver.
//!
//! LXC itself only offers the console log, where stdout and stderr are one stream. When
//! the host has a static shell (busybox-static), the driver bind-mounts it into the
//! container and starts PID 1 as `SHIM -c 'exec "$@" >>/.diplo/log/stdout
//! 2>>/.diplo/log/stderr' diplo-init ARGV...`: the shell replaces itself with the
//! application, which stays PID 1 with its stdout and stderr appended to two files of the
//! container directory (bind-mounted at `/.diplo/log`). Without such a shell everything
//! comes from the console log, as stdout.
//!
//! Files have no times, so the driver keeps *checkpoints*: `NANOS STDOUT_LEN STDERR_LEN`
//! lines appended to `diplo-log-times` whenever the lengths changed — every
//! [`CHECKPOINT_INTERVAL`] while a container runs (a task started with it) and at every
//! read. A line gets the time of the first checkpoint covering its end: at most one
//! interval late while the agent watches, the time of the read otherwise. The relative
//! order of stdout and stderr lines within one interval is unknown, which is why `tail`
//! counts lines per stream.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use diplo_api::container::{LogChunk, OutputStream};

/// How often a running container's log lengths are recorded.
pub(super) const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);

/// Directory (in the container directory) holding the raw output files.
pub(super) const LOG_DIR: &str = "diplo-log";
/// Where [`LOG_DIR`] appears inside the container.
pub(super) const CONTAINER_LOG_DIR: &str = "/.diplo/log";
/// Where the shim shell appears inside the container.
pub(super) const CONTAINER_SHIM: &str = "/.diplo/sh";
/// The checkpoint file (in the container directory, out of the container's reach).
const TIMES_FILE: &str = "diplo-log-times";

/// The shim's script: `$@` is the application's argv.
pub(super) fn shim_script() -> String {
    format!("exec \"$@\" >>{CONTAINER_LOG_DIR}/stdout 2>>{CONTAINER_LOG_DIR}/stderr")
}

/// The output files of one container.
#[derive(Debug, Clone)]
pub(super) struct LogFiles {
    /// stdout and stderr files; in console mode, the console log and nothing.
    streams: [Option<PathBuf>; 2],
    times: PathBuf,
    /// The console turns `\n` into `\r\n`; undo it when reading the console log.
    console: bool,
}

/// One stored checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Checkpoint {
    nanos: i64,
    lengths: [u64; 2],
}

/// A line (with its newline, if it has one) of one stream and its time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Line {
    pub stream: OutputStream,
    pub nanos: i64,
    pub data: Vec<u8>,
}

impl LogFiles {
    /// Separate stdout/stderr files under `container_dir/diplo-log`.
    pub fn files(container_dir: &Path) -> Self {
        let dir = container_dir.join(LOG_DIR);
        LogFiles { streams: [Some(dir.join("stdout")), Some(dir.join("stderr"))], times: container_dir.join(TIMES_FILE), console: false }
    }

    /// Everything from the console log, as stdout.
    pub fn console(container_dir: &Path, console_log: &Path) -> Self {
        LogFiles { streams: [Some(console_log.to_path_buf()), None], times: container_dir.join(TIMES_FILE), console: true }
    }

    /// Creates the output files (owned by `owner`, the uid/gid PID 1 runs as).
    pub fn prepare(&self, owner: Option<(u32, u32)>) -> io::Result<()> {
        if self.console {
            return Ok(());
        }
        for path in self.streams.iter().flatten() {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
                if let Some((uid, gid)) = owner {
                    std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
                }
            }
            std::fs::OpenOptions::new().create(true).append(true).open(path)?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
            }
        }
        Ok(())
    }

    fn lengths(&self) -> [u64; 2] {
        let length = |path: &Option<PathBuf>| path.as_ref().and_then(|p| std::fs::metadata(p).ok()).map_or(0, |m| m.len());
        [length(&self.streams[0]), length(&self.streams[1])]
    }

    fn checkpoints(&self) -> Vec<Checkpoint> {
        let Ok(text) = std::fs::read_to_string(&self.times) else { return Vec::new() };
        text.lines()
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                let nanos = fields.next()?.parse().ok()?;
                let out = fields.next()?.parse().ok()?;
                let err = fields.next()?.parse().ok()?;
                Some(Checkpoint { nanos, lengths: [out, err] })
            })
            .collect()
    }

    /// Records the current lengths at `now` if they changed since the last checkpoint.
    pub fn checkpoint(&self, now: i64) -> io::Result<()> {
        let lengths = self.lengths();
        let last = self.checkpoints().last().map(|c| c.lengths).unwrap_or([0, 0]);
        if lengths == last {
            return Ok(());
        }
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&self.times)?;
        writeln!(file, "{now} {} {}", lengths[0], lengths[1])
    }

    /// Bytes of stream `index` from `offset` to its end, with the offset of the end.
    fn read(&self, index: usize, offset: u64) -> (Vec<u8>, u64) {
        let Some(path) = &self.streams[index] else { return (Vec::new(), offset) };
        let Ok(mut file) = std::fs::File::open(path) else { return (Vec::new(), offset) };
        // A file that shrank (replaced by hand) is read from its start.
        let length = file.metadata().map_or(0, |m| m.len());
        let offset = if length < offset { 0 } else { offset };
        if file.seek(SeekFrom::Start(offset)).is_err() {
            return (Vec::new(), offset);
        }
        let mut data = Vec::new();
        let _ = file.read_to_end(&mut data);
        let end = offset + data.len() as u64;
        (data, end)
    }

    /// The lines of both streams from `offsets` on, each with its time (`now` for output
    /// no checkpoint covers), and the new offsets. With `complete_only`, a trailing line
    /// without newline is left for the next read.
    pub fn lines_since(&self, offsets: [u64; 2], now: i64, complete_only: bool) -> (Vec<Line>, [u64; 2]) {
        let checkpoints = self.checkpoints();
        let mut lines = Vec::new();
        let mut next = offsets;
        for index in 0..2 {
            let (data, _) = self.read(index, offsets[index]);
            let stream = if index == 0 { OutputStream::Stdout } else { OutputStream::Stderr };
            let mut start = 0;
            let mut position = offsets[index];
            while start < data.len() {
                let end = match data[start..].iter().position(|b| *b == b'\n') {
                    Some(at) => start + at + 1,
                    None if complete_only => break,
                    None => data.len(),
                };
                let line_end = position + (end - start) as u64;
                let nanos = checkpoints.iter().find(|c| c.lengths[index] >= line_end).map_or(now, |c| c.nanos);
                let mut bytes = data[start..end].to_vec();
                if self.console {
                    bytes = crlf_to_lf(&bytes);
                }
                lines.push(Line { stream, nanos, data: bytes });
                position = line_end;
                start = end;
            }
            next[index] = position;
        }
        // Time order; within one time stdout first, each stream in its own order.
        lines.sort_by_key(|line| (line.nanos, line.stream == OutputStream::Stderr));
        (lines, next)
    }
}

fn crlf_to_lf(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i] == b'\r' && data.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(data[i]);
        i += 1;
    }
    out
}

/// Keeps only the last `tail` lines of each stream.
pub(super) fn tail(lines: Vec<Line>, tail: u32) -> Vec<Line> {
    let tail = tail as usize;
    let counts = [OutputStream::Stdout, OutputStream::Stderr].map(|s| lines.iter().filter(|l| l.stream == s).count());
    let mut seen = [0usize; 2];
    lines
        .into_iter()
        .filter(|line| {
            let index = usize::from(line.stream == OutputStream::Stderr);
            seen[index] += 1;
            seen[index] + tail > counts[index]
        })
        .collect()
}

/// RFC 3339 with nanoseconds, as Docker prints log times.
pub(super) fn format_time(nanos: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(nanos).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// Nanoseconds since the epoch, now.
pub(super) fn now_nanos() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
}

/// Consecutive lines of one stream become one chunk; with `timestamps`, every line is
/// prefixed with its time and a blank.
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
            Some(last) if last.stream == line.stream => last.data.extend_from_slice(&data),
            _ => chunks.push(LogChunk { stream: line.stream, data }),
        }
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(path: &Path, data: &[u8]) {
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("open");
        file.write_all(data).expect("write");
    }

    #[test]
    fn lines_get_the_time_of_their_checkpoint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = LogFiles::files(dir.path());
        files.prepare(None).expect("prepare");
        let out = dir.path().join(LOG_DIR).join("stdout");
        let err = dir.path().join(LOG_DIR).join("stderr");
        append(&out, b"one\n");
        files.checkpoint(100).expect("checkpoint");
        files.checkpoint(150).expect("unchanged: no checkpoint");
        append(&err, b"oops\n");
        append(&out, b"two\nthr");
        files.checkpoint(200).expect("checkpoint");
        append(&out, b"ee\n");

        let (lines, offsets) = files.lines_since([0, 0], 300, false);
        let shown: Vec<(OutputStream, i64, &[u8])> = lines.iter().map(|l| (l.stream, l.nanos, l.data.as_slice())).collect();
        assert_eq!(
            shown,
            vec![
                (OutputStream::Stdout, 100, b"one\n".as_slice()),
                (OutputStream::Stdout, 200, b"two\n".as_slice()),
                (OutputStream::Stderr, 200, b"oops\n".as_slice()),
                (OutputStream::Stdout, 300, b"three\n".as_slice()),
            ]
        );
        assert_eq!(offsets, [14, 5]);

        append(&out, b"partial");
        let (lines, next) = files.lines_since(offsets, 400, true);
        assert!(lines.is_empty());
        assert_eq!(next, offsets);
        let (lines, _) = files.lines_since(offsets, 400, false);
        assert_eq!(lines, vec![Line { stream: OutputStream::Stdout, nanos: 400, data: b"partial".to_vec() }]);
    }

    #[test]
    fn tail_counts_per_stream_and_chunks_group() {
        let line = |stream, text: &str| Line { stream, nanos: 1_700_000_000_000_000_000, data: text.as_bytes().to_vec() };
        let lines = vec![
            line(OutputStream::Stdout, "a\n"),
            line(OutputStream::Stdout, "b\n"),
            line(OutputStream::Stderr, "e\n"),
            line(OutputStream::Stdout, "c\n"),
        ];
        let kept = tail(lines.clone(), 1);
        assert_eq!(kept, vec![line(OutputStream::Stderr, "e\n"), line(OutputStream::Stdout, "c\n")]);
        let grouped = chunks(lines, false);
        assert_eq!(grouped.len(), 3);
        assert_eq!(grouped[0].data, b"a\nb\n");
        let stamped = chunks(vec![line(OutputStream::Stdout, "x\n")], true);
        assert_eq!(String::from_utf8_lossy(&stamped[0].data), "2023-11-14T22:13:20.000000000Z x\n");
    }

    #[test]
    fn console_mode_reads_the_console_as_stdout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let console = dir.path().join("console.log");
        append(&console, b"hi\r\nthere\r");
        let files = LogFiles::console(dir.path(), &console);
        let (lines, offsets) = files.lines_since([0, 0], 5, true);
        assert_eq!(lines, vec![Line { stream: OutputStream::Stdout, nanos: 5, data: b"hi\n".to_vec() }]);
        append(&console, b"\n");
        let (lines, _) = files.lines_since(offsets, 6, true);
        assert_eq!(lines, vec![Line { stream: OutputStream::Stdout, nanos: 6, data: b"there\n".to_vec() }]);
    }
}
