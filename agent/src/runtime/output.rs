//! Bounded reads of container output, shared by the drivers:
//! * [`tail_lines`] reads the last lines of a log file from its end, backwards in
//!   blocks, never more than a byte budget, in time linear in what it reads;
//! * [`OutputCollector`] gathers an exec's output up to
//!   [`MAX_OUTPUT_BYTES`](diplo_api::container::MAX_OUTPUT_BYTES) and notes what it left out;
//! * [`TailCollector`] keeps the newest output of a log read up to the same budget.

use std::collections::VecDeque;
use std::io::{self, Read, Seek, SeekFrom};

use diplo_api::container::{ExecOutput, LogChunk, MAX_OUTPUT_BYTES, OutputStream, log_truncated_note, output_truncated_note};

/// Size of the blocks [`tail_lines`] reads.
pub const TAIL_BLOCK: usize = 64 * 1024;
/// The most bytes of a log file a tail reads back (records carry a time stamp and a
/// stream name besides the output, hence twice the output budget).
pub const MAX_TAIL_READ: usize = 2 * MAX_OUTPUT_BYTES;

/// The end of a file as [`tail_lines`] read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tail {
    /// The bytes of the last lines, up to the end given.
    pub data: Vec<u8>,
    /// The file offset `data` starts at.
    pub start: u64,
    /// Earlier lines wanted were left out because of the byte budget.
    pub truncated: bool,
}

/// The last `lines` lines of the first `end` bytes of `file`: a line ends with `\n`;
/// a last piece without one counts as a line. Reads backwards in blocks of `block`
/// bytes, and at most `max_bytes` of them: when the lines wanted take more, only the
/// lines that start within the last `max_bytes` are returned (`truncated`); when not
/// even one line starts there, the last `max_bytes` bytes are.
pub fn tail_lines<R: Read + Seek>(file: &mut R, end: u64, lines: usize, max_bytes: usize, block: usize) -> io::Result<Tail> {
    let block = block.max(1) as u64;
    if lines == 0 || end == 0 || max_bytes == 0 {
        return Ok(Tail { data: Vec::new(), start: end, truncated: false });
    }
    // One byte before the budget too: the newline there tells whether the oldest line
    // within the budget is whole.
    let floor = end.saturating_sub(max_bytes as u64).saturating_sub(1);
    // Blocks read, newest first; `position` is where the oldest one starts.
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    let mut position = end;
    // The newline ending the last line does not separate it from a next one.
    let mut newlines_wanted = lines;
    let mut start = None;
    'read: while position > floor {
        let from = position.saturating_sub(block).max(floor);
        let mut data = vec![0u8; usize::try_from(position - from).unwrap_or(usize::MAX)];
        file.seek(SeekFrom::Start(from))?;
        file.read_exact(&mut data)?;
        let mut scan = data.len();
        while let Some(at) = data[..scan].iter().rposition(|b| *b == b'\n') {
            scan = at;
            let offset = from + at as u64;
            if offset == end - 1 {
                continue;
            }
            newlines_wanted -= 1;
            if newlines_wanted == 0 {
                start = Some(offset + 1);
                blocks.push(data);
                position = from;
                break 'read;
            }
        }
        blocks.push(data);
        position = from;
    }
    let (start, truncated) = match start {
        Some(start) => (start, false),
        // The whole file holds fewer lines than wanted, and fits the budget.
        None if end <= max_bytes as u64 => (0, false),
        // Out of budget: begin with the first line that starts within it, or else
        // with the last `max_bytes` bytes of the one line that fills it.
        None => {
            let mut block_start = position;
            let mut first_break = None;
            for block in blocks.iter().rev() {
                if let Some(at) = block.iter().position(|b| *b == b'\n') {
                    first_break = Some(block_start + at as u64 + 1);
                    break;
                }
                block_start += block.len() as u64;
            }
            (first_break.filter(|at| *at < end).unwrap_or(end - max_bytes as u64), true)
        }
    };
    let mut data = Vec::with_capacity(usize::try_from(end - start).unwrap_or(0));
    let mut block_start = position;
    for block in blocks.iter().rev() {
        let skip = usize::try_from(start.saturating_sub(block_start)).unwrap_or(usize::MAX).min(block.len());
        data.extend_from_slice(&block[skip..]);
        block_start += block.len() as u64;
    }
    Ok(Tail { data, start, truncated })
}

/// Reads the bytes of `path` from `offset` on, at most `max` of them; starts over from
/// 0 when the file is shorter than `offset` (replaced). Returns them with the offset
/// they start at; a missing file reads as empty.
pub fn read_span(path: &std::path::Path, offset: u64, max: usize) -> io::Result<(Vec<u8>, u64)> {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), offset)),
        Err(e) => return Err(e),
    };
    let length = file.metadata()?.len();
    let offset = if length < offset { 0 } else { offset };
    file.seek(SeekFrom::Start(offset))?;
    let mut data = Vec::new();
    file.take(max as u64).read_to_end(&mut data)?;
    Ok((data, offset))
}

/// An exec's output, kept up to a byte budget (stdout and stderr together); what
/// comes after is counted and dropped, and the note saying so ends the stream that
/// overflowed.
#[derive(Debug)]
pub struct OutputCollector {
    output: ExecOutput,
    budget: usize,
    overflowed: Option<OutputStream>,
}

impl Default for OutputCollector {
    fn default() -> Self {
        OutputCollector::new(MAX_OUTPUT_BYTES)
    }
}

impl OutputCollector {
    /// A collector keeping at most `budget` bytes.
    pub fn new(budget: usize) -> Self {
        OutputCollector { output: ExecOutput::default(), budget, overflowed: None }
    }

    /// Adds what a stream wrote.
    pub fn push(&mut self, stream: OutputStream, data: &[u8]) {
        let room = self.budget.saturating_sub(self.output.stdout.len() + self.output.stderr.len());
        let kept = &data[..data.len().min(room)];
        match stream {
            OutputStream::Stdout => self.output.stdout.extend_from_slice(kept),
            OutputStream::Stderr => self.output.stderr.extend_from_slice(kept),
        }
        if kept.len() < data.len() && self.overflowed.is_none() {
            self.overflowed = Some(stream);
        }
    }

    /// Whether output was left out.
    pub fn truncated(&self) -> bool {
        self.overflowed.is_some()
    }

    /// The output with its exit code, ending with the note when output was left out.
    pub fn finish(mut self, exit_code: i64) -> ExecOutput {
        match self.overflowed {
            Some(OutputStream::Stdout) => self.output.stdout.extend_from_slice(output_truncated_note().as_bytes()),
            Some(OutputStream::Stderr) => self.output.stderr.extend_from_slice(output_truncated_note().as_bytes()),
            None => {}
        }
        self.output.exit_code = exit_code;
        self.output
    }
}

/// The mark of runc's refusal to start an exec's program (Docker and containerd pass
/// its message on: Docker as the exec's stdout with exit code 126, containerd as the
/// error of the start call).
const START_FAILURE_MARK: &str = "OCI runtime exec failed";

/// Whether `message` is a runtime's report that an exec's program could not be started.
pub fn is_start_failure(message: &str) -> bool {
    message.trim_start().starts_with(START_FAILURE_MARK)
}

/// What an exec whose program could not be started reports on every runtime, as a
/// shell does: exit code 127 when the program is not there, 126 when it is there but
/// cannot be run, the runtime's reason on stderr.
pub fn start_failure(reason: &str) -> ExecOutput {
    let reason = reason.trim();
    let missing = ["executable file not found", "no such file or directory"].iter().any(|m| reason.to_ascii_lowercase().contains(m));
    let mut collected = OutputCollector::default();
    collected.push(OutputStream::Stderr, format!("{reason}\n").as_bytes());
    collected.finish(if missing { 127 } else { 126 })
}

/// Docker's report of an exec that never started (exit code 126, runc's message on
/// stdout) in the shape every runtime uses ([`start_failure`]); any other output as is.
pub fn normalise_start_failure(output: ExecOutput) -> ExecOutput {
    let stdout = String::from_utf8_lossy(&output.stdout);
    if output.exit_code == 126 && output.stderr.is_empty() && is_start_failure(&stdout) { start_failure(&stdout) } else { output }
}

/// Runs `command` (its stdin closed, stdout and stderr piped) to its end, keeping its
/// output in an [`OutputCollector`]: what is beyond the budget is read and dropped, so
/// that the process never blocks on a full pipe.
pub async fn collect_process(mut command: tokio::process::Command) -> io::Result<(std::process::ExitStatus, OutputCollector)> {
    use tokio::io::AsyncReadExt;
    command.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).kill_on_drop(true);
    let mut child = command.spawn()?;
    let mut collected = OutputCollector::default();
    let (mut stdout, mut stderr) = (child.stdout.take(), child.stderr.take());
    let (mut out_buffer, mut err_buffer) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    while stdout.is_some() || stderr.is_some() {
        tokio::select! {
            read = async { match stdout.as_mut() { Some(pipe) => pipe.read(&mut out_buffer).await, None => std::future::pending().await } } => match read? {
                0 => stdout = None,
                count => collected.push(OutputStream::Stdout, &out_buffer[..count]),
            },
            read = async { match stderr.as_mut() { Some(pipe) => pipe.read(&mut err_buffer).await, None => std::future::pending().await } } => match read? {
                0 => stderr = None,
                count => collected.push(OutputStream::Stderr, &err_buffer[..count]),
            },
        }
    }
    Ok((child.wait().await?, collected))
}

/// What [`run_piped`] read from a process.
#[derive(Debug)]
pub struct PipedOutput {
    /// How it ended (killed when its stdout outgrew the limit).
    pub status: std::process::ExitStatus,
    /// Its stdout, up to the limit.
    pub stdout: Vec<u8>,
    /// Its stderr, up to [`MAX_OUTPUT_BYTES`].
    pub stderr: Vec<u8>,
    /// Whether stdout went beyond the limit (the process was then killed).
    pub overflow: bool,
}

/// Runs `command` with `stdin` written to its standard input (then closed; none: no
/// input), reading its stdout up to `limit` bytes: beyond that it is killed and
/// [`PipedOutput::overflow`] says so. Raw bytes, no note: for archives.
pub async fn run_piped(mut command: tokio::process::Command, stdin: Option<Vec<u8>>, limit: usize) -> io::Result<PipedOutput> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let input = if stdin.is_some() { std::process::Stdio::piped() } else { std::process::Stdio::null() };
    command.stdin(input).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).kill_on_drop(true);
    let mut child = command.spawn()?;
    let writer = match (stdin, child.stdin.take()) {
        (Some(data), Some(mut pipe)) => Some(tokio::spawn(async move {
            // A process that exits early closes its end: the rest is not needed.
            let _ = pipe.write_all(&data).await;
            let _ = pipe.shutdown().await;
        })),
        _ => None,
    };
    let (mut stdout, mut stderr) = (child.stdout.take(), child.stderr.take());
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let (mut out_buffer, mut err_buffer) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    let mut overflow = false;
    while stdout.is_some() || stderr.is_some() {
        tokio::select! {
            read = async { match stdout.as_mut() { Some(pipe) => pipe.read(&mut out_buffer).await, None => std::future::pending().await } } => match read? {
                0 => stdout = None,
                count if out.len() + count > limit => {
                    overflow = true;
                    let _ = child.start_kill();
                    break;
                }
                count => out.extend_from_slice(&out_buffer[..count]),
            },
            read = async { match stderr.as_mut() { Some(pipe) => pipe.read(&mut err_buffer).await, None => std::future::pending().await } } => match read? {
                0 => stderr = None,
                count => {
                    let room = MAX_OUTPUT_BYTES.saturating_sub(err.len());
                    err.extend_from_slice(&err_buffer[..count.min(room)]);
                }
            },
        }
    }
    let status = child.wait().await?;
    if let Some(writer) = writer {
        writer.abort();
    }
    Ok(PipedOutput { status, stdout: out, stderr: err, overflow })
}

/// The newest output of a log read, kept up to a byte budget: older chunks are
/// dropped as newer ones come; when any were, stdout starts with the log's note.
#[derive(Debug)]
pub struct TailCollector {
    chunks: VecDeque<LogChunk>,
    bytes: usize,
    budget: usize,
    dropped: bool,
}

impl Default for TailCollector {
    fn default() -> Self {
        TailCollector::new(MAX_OUTPUT_BYTES)
    }
}

impl TailCollector {
    /// A collector keeping at most `budget` bytes.
    pub fn new(budget: usize) -> Self {
        TailCollector { chunks: VecDeque::new(), bytes: 0, budget, dropped: false }
    }

    /// Adds a chunk, dropping the oldest output beyond the budget.
    pub fn push(&mut self, mut chunk: LogChunk) {
        if chunk.data.len() > self.budget {
            chunk.data.drain(..chunk.data.len() - self.budget);
            self.dropped = true;
        }
        self.bytes += chunk.data.len();
        self.chunks.push_back(chunk);
        while self.bytes > self.budget {
            let Some(front) = self.chunks.front_mut() else { break };
            let excess = self.bytes - self.budget;
            self.dropped = true;
            if front.data.len() <= excess {
                self.bytes -= front.data.len();
                self.chunks.pop_front();
            } else {
                front.data.drain(..excess);
                self.bytes -= excess;
            }
        }
    }

    /// The output kept (exit code 0), stdout first with the note when some was dropped.
    pub fn finish(self) -> ExecOutput {
        let mut output = ExecOutput::default();
        if self.dropped {
            output.stdout.extend_from_slice(log_truncated_note().as_bytes());
        }
        for chunk in self.chunks {
            match chunk.stream {
                OutputStream::Stdout => output.stdout.extend(chunk.data),
                OutputStream::Stderr => output.stderr.extend(chunk.data),
            }
        }
        output
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn programs_that_cannot_start_exit_127_or_126_with_the_reason_on_stderr() {
        let missing = "OCI runtime exec failed: exec failed: unable to start container process: exec: \"nope\": executable file not found in $PATH: unknown";
        let denied = "OCI runtime exec failed: exec failed: unable to start container process: exec: \"/etc\": permission denied: unknown";
        let absent_path = "OCI runtime exec failed: exec failed: unable to start container process: exec: \"/x/y\": stat /x/y: no such file or directory: unknown";
        // (exit code, stdout, stderr) as a runtime reports it → what every runtime answers.
        let cases: [(i64, &str, &str, i64, &str, &str); 5] = [
            (126, &format!("{missing}\r\n"), "", 127, "", &format!("{missing}\n")),
            (126, denied, "", 126, "", &format!("{denied}\n")),
            (126, absent_path, "", 127, "", &format!("{absent_path}\n")),
            // A program that ran and exited 126 itself keeps its output.
            (126, "OCI-like output of the program", "", 126, "OCI-like output of the program", ""),
            (126, missing, "and something on stderr", 126, missing, "and something on stderr"),
        ];
        for (code, stdout, stderr, want_code, want_stdout, want_stderr) in cases {
            let out = normalise_start_failure(ExecOutput {
                exit_code: code,
                stdout: stdout.as_bytes().to_vec(),
                stderr: stderr.as_bytes().to_vec(),
            });
            assert_eq!(
                (out.exit_code, String::from_utf8_lossy(&out.stdout).as_ref(), String::from_utf8_lossy(&out.stderr).as_ref()),
                (want_code, want_stdout, want_stderr),
                "{stdout:?}"
            );
        }
        assert!(is_start_failure(missing) && !is_start_failure("exec failed"));
    }

    /// The last `lines` lines of `text`, the obvious way.
    fn naive_tail(text: &[u8], lines: usize) -> Vec<u8> {
        let all: Vec<&[u8]> = text.split_inclusive(|b| *b == b'\n').collect();
        all[all.len().saturating_sub(lines)..].concat()
    }

    fn tail_of(text: &[u8], lines: usize, max_bytes: usize, block: usize) -> Tail {
        tail_lines(&mut io::Cursor::new(text), text.len() as u64, lines, max_bytes, block).expect("in memory")
    }

    #[test]
    fn tails_read_from_the_end() {
        let long = format!("{}\n", "x".repeat(50));
        let (two_long, long_and_tail) = (format!("first\n{long}{long}"), format!("first\n{long}tail"));
        // (text, lines, block, expected)
        let table: Vec<(&str, usize, usize, String)> = vec![
            ("", 3, 4, String::new()),
            ("a\nb\nc\n", 0, 4, String::new()),
            ("a\nb\nc\n", 2, 4, "b\nc\n".into()),
            ("a\nb\nc", 2, 4, "b\nc".into()),
            ("a\nb\nc", 5, 4, "a\nb\nc".into()),
            ("no newline at all", 1, 4, "no newline at all".into()),
            ("\n\n\n", 2, 1, "\n\n".into()),
            ("one\n", 1, 1, "one\n".into()),
            // Lines longer than the block.
            (&two_long, 2, 7, format!("{long}{long}")),
            (&long_and_tail, 1, 7, "tail".into()),
            // The break falls exactly on a block boundary (blocks of 4 from the end).
            ("abc\ndef\nghi\n", 1, 4, "ghi\n".into()),
            ("abc\ndef\nghi\n", 2, 4, "def\nghi\n".into()),
            ("abc\ndefg\n", 1, 5, "defg\n".into()),
            ("abc\ndefg\n", 2, 5, "abc\ndefg\n".into()),
        ];
        for (text, lines, block, expected) in table {
            let tail = tail_of(text.as_bytes(), lines, usize::MAX, block);
            assert_eq!(String::from_utf8_lossy(&tail.data), expected, "{text:?} lines={lines} block={block}");
            assert_eq!(tail.start, (text.len() - expected.len()) as u64);
            assert!(!tail.truncated);
        }
    }

    #[test]
    fn tails_stay_within_their_byte_budget() {
        let text = b"aaaa\nbbbb\ncccc\ndddd\n";
        // Room for a bit more than two lines: the cut third is left out.
        let tail = tail_of(text, 4, 12, 3);
        assert_eq!((tail.data.as_slice(), tail.start, tail.truncated), (&b"cccc\ndddd\n"[..], 10, true));
        // One line longer than the budget: its last bytes.
        let tail = tail_of(b"0123456789\n", 1, 4, 2);
        assert_eq!((tail.data.as_slice(), tail.truncated), (&b"789\n"[..], true));
        let tail = tail_of(b"01234\n6789", 3, 3, 2);
        assert_eq!((tail.data.as_slice(), tail.truncated), (&b"789"[..], true));
        // A file one byte longer than the budget, with fewer lines than wanted.
        let tail = tail_of(b"\n\nabc", 5, 4, 1);
        assert_eq!((tail.data.as_slice(), tail.truncated), (&b"\nabc"[..], true));
    }

    #[test]
    fn a_tail_reads_only_about_what_it_returns() {
        /// Counts what is read.
        struct Counting<'a>(io::Cursor<&'a [u8]>, usize);
        impl Read for Counting<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = self.0.read(buf)?;
                self.1 += n;
                Ok(n)
            }
        }
        impl Seek for Counting<'_> {
            fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
                self.0.seek(pos)
            }
        }
        let text: Vec<u8> = (0..200_000).flat_map(|i| format!("line {i}\n").into_bytes()).collect();
        let mut file = Counting(io::Cursor::new(&text), 0);
        let tail = tail_lines(&mut file, text.len() as u64, 10, usize::MAX, 4096).expect("read");
        assert_eq!(tail.data, naive_tail(&text, 10));
        assert!(file.1 <= 4096, "read {} bytes", file.1);
    }

    #[test]
    fn collectors_keep_their_budget_and_say_so() {
        let mut exec = OutputCollector::new(8);
        exec.push(OutputStream::Stdout, b"12345");
        exec.push(OutputStream::Stderr, b"abc");
        assert!(!exec.truncated());
        exec.push(OutputStream::Stderr, b"def");
        exec.push(OutputStream::Stdout, b"ignored");
        let output = exec.finish(3);
        assert_eq!(output.exit_code, 3);
        assert_eq!(output.stdout, b"12345");
        assert_eq!(output.stderr, format!("abc{}", output_truncated_note()).into_bytes());

        let mut logs = TailCollector::new(6);
        for (stream, data) in [(OutputStream::Stdout, "old\n"), (OutputStream::Stderr, "e\n"), (OutputStream::Stdout, "new\n")] {
            logs.push(LogChunk { stream, data: data.as_bytes().to_vec() });
        }
        let output = logs.finish();
        assert_eq!(output.stdout, format!("{}new\n", log_truncated_note()).into_bytes());
        assert_eq!(output.stderr, b"e\n");
        let mut whole = TailCollector::new(100);
        whole.push(LogChunk { stream: OutputStream::Stdout, data: b"all\n".to_vec() });
        assert_eq!(whole.finish().stdout, b"all\n");
    }

    proptest! {
        #[test]
        fn a_tail_equals_the_naive_tail(
            text in proptest::collection::vec(prop_oneof![3 => Just(b'\n'), 10 => any::<u8>()], 0..400),
            lines in 0usize..40,
            block in 1usize..70,
        ) {
            let tail = tail_of(&text, lines, usize::MAX, block);
            let expected = naive_tail(&text, lines);
            prop_assert_eq!(&tail.data, &expected);
            prop_assert_eq!(tail.start, (text.len() - expected.len()) as u64);
        }

        #[test]
        fn a_budgeted_tail_is_a_suffix_within_the_budget(
            text in proptest::collection::vec(prop_oneof![1 => Just(b'\n'), 6 => any::<u8>()], 0..300),
            lines in 1usize..30,
            max_bytes in 1usize..120,
            block in 1usize..50,
        ) {
            let tail = tail_of(&text, lines, max_bytes, block);
            let expected = naive_tail(&text, lines);
            prop_assert!(tail.data.len() <= max_bytes);
            prop_assert!(text.ends_with(&tail.data));
            if expected.len() <= max_bytes {
                prop_assert_eq!(&tail.data, &expected);
            } else {
                prop_assert!(tail.truncated);
                prop_assert!(expected.ends_with(&tail.data));
            }
        }
    }
}
