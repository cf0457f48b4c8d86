//! JSON lines sink: one native event (see `docs/events.md`) per attack, appended to a
//! file under the data directory or written to standard output.

use super::Sink;
use crate::attack::Attack;
use crate::config::{Config, PayloadEncoding};
use crate::event::Rendered;
use std::io::{BufWriter, Write};
use std::path::Path;

pub struct JsonlSink {
    out: BufWriter<Box<dyn Write + Send>>,
    /// The file, or None for standard output.
    path: Option<std::path::PathBuf>,
    payload_max: u64,
    encoding: PayloadEncoding,
}

impl JsonlSink {
    /// Open (append to) the configured file, creating its directory.
    pub fn open(config: &Config) -> anyhow::Result<JsonlSink> {
        let c = &config.output.jsonl;
        let path = (c.path != Path::new("-")).then(|| config.data_path(&c.path));
        let out = open_output(path.as_deref())?;
        Ok(JsonlSink {
            out: BufWriter::with_capacity(64 * 1024, out),
            path,
            payload_max: c.payload_max,
            encoding: c.payload_encoding,
        })
    }
}

/// Open (append to) `path`, creating its directory; None is standard output.
fn open_output(path: Option<&Path>) -> anyhow::Result<Box<dyn Write + Send>> {
    let Some(path) = path else {
        return Ok(Box::new(std::io::stdout()));
    };
    let file = super::open_append(path)?;
    Ok(Box::new(file))
}

impl Sink for JsonlSink {
    fn name(&self) -> &'static str {
        "jsonl"
    }

    fn event_settings(&self) -> Option<(u64, PayloadEncoding)> {
        Some((self.payload_max, self.encoding))
    }

    fn write(&mut self, attack: &Attack, events: &Rendered) -> anyhow::Result<()> {
        // Rendered before anything is written, so a failure never leaves half a line.
        let json = events.json(attack, self.payload_max, self.encoding)?;
        let len = json.len() + 1;
        // A line that does not fit what is left of the buffer would go out in two
        // writes, and a reader tailing the file could see half of it: flush first.
        if len > self.out.capacity() - self.out.buffer().len() {
            self.out.flush()?;
        }
        if len > self.out.capacity() {
            // Longer than the buffer: one write of the whole line.
            let mut line = Vec::with_capacity(len);
            line.extend_from_slice(&json);
            line.push(b'\n');
            self.out.write_all(&line)?;
        } else {
            self.out.write_all(&json)?;
            self.out.write_all(b"\n")?;
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        self.out.flush()?;
        Ok(())
    }

    fn reopen(&mut self) -> anyhow::Result<()> {
        if self.path.is_some() {
            self.out.flush()?;
            self.out = BufWriter::with_capacity(64 * 1024, open_output(self.path.as_deref())?);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::Captured;
    use crate::event::Event;

    fn attack(payload: &[u8]) -> Attack {
        Captured::test_session(payload).seal()
    }

    fn sink(dir: &Path) -> JsonlSink {
        let mut config = Config::default();
        config.sensor.data_dir = dir.to_path_buf();
        JsonlSink::open(&config).unwrap()
    }

    #[test]
    fn lines_are_the_shared_rendering_and_the_same_as_rendering_directly() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = sink(dir.path());
        let small = attack(b"one");
        let big = attack(&vec![b'y'; 200 << 10]);
        s.write(&small, &Rendered::default()).unwrap();
        let events = Rendered::default();
        s.write(&big, &events).unwrap();
        s.flush().unwrap();
        let want = |a: &Attack| {
            let mut l = serde_json::to_vec(&Event::of(a, 4096, PayloadEncoding::Base64)).unwrap();
            l.push(b'\n');
            l
        };
        let text = std::fs::read(dir.path().join("events.jsonl")).unwrap();
        assert_eq!(text, [want(&small), want(&big)].concat());
        // The line came from the shared rendering, not a rendering of its own: a
        // second sink with the same settings gets the very same bytes.
        assert_eq!(events.renders(), 1);
        let mut other = sink(dir.path());
        other.write(&big, &events).unwrap();
        let _ = events.json(&big, 4096, PayloadEncoding::Base64).unwrap();
        assert_eq!(events.renders(), 1, "not rendered again");
    }

    #[test]
    fn a_line_longer_than_the_buffer_is_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = sink(dir.path());
        let mut config = Config::default();
        config.output.jsonl.payload_max = 1 << 20;
        config.sensor.data_dir = dir.path().to_path_buf();
        let mut s2 = JsonlSink::open(&config).unwrap();
        s.write(&attack(b"before"), &Rendered::default()).unwrap();
        let a = attack(&vec![b'z'; 100 << 10]);
        s2.write(&a, &Rendered::default()).unwrap();
        s2.flush().unwrap();
        s.flush().unwrap();
        let text = std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        for l in lines {
            serde_json::from_str::<serde_json::Value>(l).unwrap();
        }
    }
}
