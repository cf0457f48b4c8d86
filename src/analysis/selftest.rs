//! `selftest` (analyze, off by default): misbehaves on request, so an operator or a
//! test can see that a failing analyzer never costs an attack. A payload containing
//! `HONEYTRAP-SELFTEST-PANIC` makes it panic, `...-ERROR` return an error,
//! `...-SLOW` run past `analysis.analyzer_budget` (it sleeps until its deadline plus
//! 100 ms), `...-FIND` make a finding.

use super::registry::{self, Registration};
use super::{Analyzer, Input, Output, Stage};
use serde::{Deserialize, Serialize};

pub const NAME: &str = "selftest";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    pub enabled: bool,
}

impl registry::Options for Options {
    fn enabled(&self) -> bool {
        self.enabled
    }
}

pub fn registration() -> Registration {
    Registration {
        name: NAME,
        stage: Stage::Analyze,
        about: "misbehaves on request (HONEYTRAP-SELFTEST-PANIC/-ERROR/-SLOW/-FIND) to check failure handling",
        options: registry::options::<Options>,
        build: |t, _| registry::build_with(t, |_: Options| Ok(SelfTest)),
    }
}

pub struct SelfTest;

fn has(data: &[u8], word: &str) -> bool {
    let w = format!("HONEYTRAP-SELFTEST-{word}");
    data.windows(w.len()).any(|x| x == w.as_bytes())
}

impl Analyzer for SelfTest {
    fn name(&self) -> &'static str {
        NAME
    }

    fn stage(&self) -> Stage {
        Stage::Analyze
    }

    fn run(&self, input: &Input, out: &mut Output) -> anyhow::Result<()> {
        if has(input.data, "PANIC") {
            panic!("selftest: panic on request");
        }
        if has(input.data, "ERROR") {
            anyhow::bail!("selftest: error on request");
        }
        if has(input.data, "SLOW") {
            let until = input.deadline + std::time::Duration::from_millis(100);
            std::thread::sleep(until.saturating_duration_since(std::time::Instant::now()));
        }
        if has(input.data, "FIND") {
            out.finding(NAME, "selftest", "found on request");
        }
        Ok(())
    }
}
