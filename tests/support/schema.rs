//! Validation against the published JSON Schemas in `docs/`: `event.schema.json`
//! (one line of `events.jsonl`) and `transcript.schema.json` (one transcript file).
//!
//! Include it from a test crate with `mod support;` (and `pub mod schema;` in
//! `support/mod.rs`) or `#[path = "support/schema.rs"] mod schema;`.

#![allow(dead_code)]

use jsonschema::{Draft, JSONSchema};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Path of a file under `docs/` in this repository.
pub fn docs_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs")
        .join(name)
}

/// Read and parse a schema file from `docs/` (panics with the path on failure).
pub fn load_schema(name: &str) -> Value {
    let path = docs_path(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// Compile a schema as draft-07 with format validation on. Compiling also checks
/// the schema itself against the draft-07 meta-schema.
pub fn compile(schema: &Value) -> Result<JSONSchema, String> {
    JSONSchema::options()
        .with_draft(Draft::Draft7)
        .should_validate_formats(true)
        .should_ignore_unknown_formats(false)
        .compile(schema)
        .map_err(|e| format!("invalid schema: {e} at {}", e.schema_path))
}

fn compiled(cell: &'static OnceLock<JSONSchema>, name: &str) -> &'static JSONSchema {
    cell.get_or_init(|| compile(&load_schema(name)).unwrap_or_else(|e| panic!("docs/{name}: {e}")))
}

/// The compiled `docs/event.schema.json`.
pub fn event_schema() -> &'static JSONSchema {
    static CELL: OnceLock<JSONSchema> = OnceLock::new();
    compiled(&CELL, "event.schema.json")
}

/// The compiled `docs/transcript.schema.json`.
pub fn transcript_schema() -> &'static JSONSchema {
    static CELL: OnceLock<JSONSchema> = OnceLock::new();
    compiled(&CELL, "transcript.schema.json")
}

/// Validate `v` against `schema`; the error lists every violation with its
/// JSON pointer.
pub fn validate_with(schema: &JSONSchema, v: &Value) -> Result<(), String> {
    match schema.validate(v) {
        Ok(()) => Ok(()),
        Err(errors) => {
            let all: Vec<String> = errors
                .map(|e| {
                    let at = e.instance_path.to_string();
                    let at = if at.is_empty() { "/".to_string() } else { at };
                    format!("{at}: {e}")
                })
                .collect();
            Err(all.join("\n"))
        }
    }
}

/// Validate one attack event (as `honeytrap::event::attack_event` builds it, or one
/// parsed line of `events.jsonl`).
pub fn validate_event(v: &Value) -> Result<(), String> {
    validate_with(event_schema(), v)
}

/// Validate one transcript document (as
/// `honeytrap::sink::transcripts::transcript_json` builds it, or a parsed
/// transcript file).
pub fn validate_transcript(v: &Value) -> Result<(), String> {
    validate_with(transcript_schema(), v)
}

/// Validate every line of an `events.jsonl` text; returns the parsed events.
pub fn validate_events_jsonl(text: &str) -> Result<Vec<Value>, String> {
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            let v: Value =
                serde_json::from_str(line).map_err(|e| format!("line {}: not JSON: {e}", i + 1))?;
            validate_event(&v).map_err(|e| format!("line {}: {e}", i + 1))?;
            Ok(v)
        })
        .collect()
}
