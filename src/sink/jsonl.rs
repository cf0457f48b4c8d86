//! JSON lines sink: one native event (see `docs/events.md`) per attack, appended to a
//! file under the data directory or written to standard output.

use super::Sink;
use crate::attack::Attack;
use crate::config::{Config, PayloadEncoding};
use crate::event::Event;
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

    fn write(&mut self, attack: &Attack) -> anyhow::Result<()> {
        // Serialize to a buffer first so a failure never leaves half a line.
        let mut line = serde_json::to_vec(&Event::of(attack, self.payload_max, self.encoding))?;
        line.push(b'\n');
        // A line that does not fit what is left of the buffer would go out in two
        // writes, and a reader tailing the file could see half of it: flush first.
        if line.len() > self.out.capacity() - self.out.buffer().len() {
            self.out.flush()?;
        }
        self.out.write_all(&line)?;
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
