//! Reading what an instance prints, safely: whatever it writes — any
//! bytes, any amount — the harness reads to the end (so the instance never
//! blocks on a full pipe), keeps a bounded amount, and turns bytes that
//! are not UTF-8 into U+FFFD instead of stopping.
use std::io::{BufRead, BufReader, Read};

/// How much of an instance's output the harness keeps in memory.
pub const KEEP_BYTES: usize = 8 << 20;

/// Reads `from` to its end, line by line, calling `on_line` with each
/// line (without its newline; lossy UTF-8) as it arrives. Returns the
/// output kept: the first [`KEEP_BYTES`], then a note of what was dropped.
pub fn read_lines(from: impl Read, mut on_line: impl FnMut(&str)) -> String {
    let mut reader = BufReader::with_capacity(64 << 10, from);
    let mut kept = String::new();
    let mut dropped = 0u64;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        // A line is bounded too: at most KEEP_BYTES before it is handed on.
        let n = match (&mut reader)
            .take(KEEP_BYTES as u64)
            .read_until(b'\n', &mut buf)
        {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let line = String::from_utf8_lossy(&buf);
        on_line(line.trim_end_matches(['\n', '\r']));
        if kept.len() + line.len() <= KEEP_BYTES {
            kept.push_str(&line);
        } else {
            dropped += n as u64;
        }
    }
    if dropped > 0 {
        kept.push_str(&format!(
            "\n[isolab: {dropped} more bytes of output were read and dropped; the harness keeps {} MiB]\n",
            KEEP_BYTES >> 20
        ));
    }
    kept
}

/// The most a relay writes into a regular file (a detached instance's
/// log); past it the output is read and dropped.
pub const LOG_LIMIT: u64 = 64 << 20;

/// Copies an instance's output from `from` to this process's `to_fd`
/// (1 or 2) until the instance closes it. Into a terminal or a pipe
/// everything goes; into a regular file (a log) at most [`LOG_LIMIT`]
/// bytes, then one line saying so, and the rest is drained.
pub fn relay(from: impl Into<std::fs::File>, to_fd: i32) {
    use std::io::Write;
    use std::os::fd::FromRawFd;
    let mut from: std::fs::File = from.into();
    // SAFETY: fd 1 or 2 of this process, borrowed for the copy and never
    // closed here (ManuallyDrop).
    let mut to = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(to_fd) });
    let limit = match to.metadata() {
        Ok(m) if m.is_file() => LOG_LIMIT,
        _ => u64::MAX,
    };
    let mut written = 0u64;
    let mut noted = false;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let room = limit.saturating_sub(written).min(n as u64) as usize;
        if room > 0 && to.write_all(&buf[..room]).is_err() {
            // The reader went away: keep draining so the instance never
            // blocks on a full pipe.
            written = limit;
        }
        written += room as u64;
        if room < n && !noted {
            noted = true;
            let _ = writeln!(
                to,
                "
[isolab: the log reached {} MiB; further output is dropped]",
                limit >> 20
            );
        }
    }
    let _ = to.flush();
}

/// Reads `from` to its end and keeps a bounded, lossy-UTF-8 copy.
pub fn read_all(from: impl Read) -> String {
    read_lines(from, |_| {})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_bytes_do_not_stop_the_reader() {
        let input: &[u8] = b"one\n\xff\xfe two\nthree";
        let mut lines = Vec::new();
        let out = read_lines(input, |l| lines.push(l.to_owned()));
        assert_eq!(lines, ["one", "\u{fffd}\u{fffd} two", "three"]);
        assert!(out.ends_with("three"));
    }

    #[test]
    fn a_flood_is_read_to_the_end_and_bounded() {
        let flood = vec![b'x'; KEEP_BYTES * 2 + 10];
        let mut calls = 0;
        let out = read_lines(&flood[..], |_| calls += 1);
        assert!(out.len() < KEEP_BYTES + 200, "{}", out.len());
        assert!(out.contains("more bytes of output were read and dropped"));
        assert_eq!(calls, 3, "a line without a newline is cut at the bound");
    }
}

/// A writer that shows an agent's output as a person reads it: each
/// result line in words, the hold line dropped, every other line as it
/// is ([`isolab_scenarios::protocol::human_line`]). `isolab run` in a
/// terminal and `isolab logs` (without `--raw`) write through it.
pub struct Human<W: std::io::Write> {
    inner: W,
    line: Vec<u8>,
}

impl<W: std::io::Write> Human<W> {
    pub fn new(inner: W) -> Self {
        Human {
            inner,
            line: Vec::new(),
        }
    }

    fn emit(&mut self) -> std::io::Result<()> {
        let body = self.line.strip_suffix(b"\n").unwrap_or(&self.line);
        match isolab_scenarios::protocol::human_line(&String::from_utf8_lossy(body)) {
            Some(h) if h.is_empty() => {}
            Some(h) => writeln!(self.inner, "{h}")?,
            None => self.inner.write_all(&self.line)?,
        }
        self.line.clear();
        Ok(())
    }

    /// Writes an unfinished last line as it is.
    pub fn finish(&mut self) -> std::io::Result<()> {
        if !self.line.is_empty() {
            self.inner.write_all(&self.line)?;
            self.line.clear();
        }
        self.inner.flush()
    }
}

impl<W: std::io::Write> std::io::Write for Human<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for &b in buf {
            self.line.push(b);
            if b == b'\n' {
                self.emit()?;
            }
        }
        Ok(buf.len())
    }
    /// Flushes what is complete; an unfinished line waits for its end.
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// [`relay`], in words when it goes to a terminal or a pipe (a log file
/// keeps the raw lines, which `logs` and the harness read).
pub fn relay_human(from: impl Into<std::fs::File>, to_fd: i32) {
    use std::os::fd::FromRawFd;
    let mut from: std::fs::File = from.into();
    // SAFETY: fd 1 or 2 of this process, borrowed and never closed here.
    let to = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(to_fd) });
    if to.metadata().is_ok_and(|m| m.is_file()) {
        return relay(from, to_fd);
    }
    let mut h = Human::new(&*to);
    let _ = std::io::copy(&mut from, &mut h);
    let _ = h.finish();
}

#[cfg(test)]
mod human_tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn result_lines_are_shown_in_words_even_when_split_across_writes() {
        let mut r = isolab_scenarios::protocol::ResultLine::new("cpu");
        r.metric("cpu.sha256", "bytes_per_s", 512.0 * 1048576.0);
        let line = format!(
            "hello\n{}\n{}\nbye",
            r.to_line(),
            isolab_scenarios::protocol::HOLD_LINE
        );
        let mut out = Vec::new();
        let mut h = Human::new(&mut out);
        let (a, b) = line.as_bytes().split_at(20);
        h.write_all(a).unwrap();
        h.flush().unwrap();
        h.write_all(b).unwrap();
        h.finish().unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "hello\ncpu: ok\n  cpu.sha256                   512.0 MiB/s\nbye"
        );
    }
}
