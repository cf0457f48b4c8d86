//! Helpers shared by the decoders (`base64`, `utf16`, `percent`, `http_body`,
//! `vnc`): checked options and the output bound every decoder respects.

use super::registry::{self, Options};

/// Largest decoded output allowed for an input of `input_len` bytes: `factor` times
/// the input, and never more than `limits.read_limit`.
pub fn output_cap(input_len: usize, factor: usize, read_limit: u64) -> usize {
    let limit = usize::try_from(read_limit).unwrap_or(usize::MAX);
    input_len.saturating_mul(factor).min(limit)
}

/// [`super::registry::Registration::options`] for an options type with a range
/// check: parse (unknown keys refused), check, return with defaults filled in.
pub fn checked<O: Options>(
    table: &toml::Table,
    check: fn(&O) -> Result<(), (String, String)>,
) -> Result<toml::Table, (String, String)> {
    let o: O = registry::parse(table)?;
    check(&o)?;
    registry::options::<O>(table)
}

/// Err unless `lo <= value <= hi`, naming the key.
pub fn in_range(key: &str, value: u64, lo: u64, hi: u64) -> Result<(), (String, String)> {
    if value < lo || value > hi {
        return Err((key.to_string(), format!("must be between {lo} and {hi}")));
    }
    Ok(())
}

/// First position of `needle` in `hay` at or after `from`, ASCII case-insensitive.
pub fn find_ci(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || from >= hay.len() || hay.len() - from < needle.len() {
        return None;
    }
    hay[from..]
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
        .map(|p| p + from)
}

/// First position of `needle` in `hay` at or after `from`.
pub fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || from >= hay.len() || hay.len() - from < needle.len() {
        return None;
    }
    hay[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// Run a decoder on `data` as a payload, for the decoders' unit tests.
#[cfg(test)]
pub fn run_on(a: &dyn super::Analyzer, data: &[u8]) -> super::Output {
    let attack = crate::attack::Captured::test_session_private(data).seal();
    let input = super::Input {
        data,
        kind: super::InputKind::Payload,
        attack: &attack,
        depth: 0,
        deadline: std::time::Instant::now() + std::time::Duration::from_secs(5),
        download: None,
        downloads_left: 0,
    };
    let mut out = super::Output::default();
    a.run(&input, &mut out).expect("decoder run");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_checked_and_filled() {
        let t: toml::Table = toml::from_str("min_length = 3").unwrap();
        let err = (super::super::base64::registration().options)(&t).unwrap_err();
        assert_eq!(err.0, "min_length");
        let filled =
            (super::super::http_body::registration().options)(&toml::Table::new()).unwrap();
        assert_eq!(filled["max_ratio"].as_integer(), Some(32));
        assert_eq!(filled["enabled"].as_bool(), Some(true));
    }

    #[test]
    fn cap_and_find() {
        assert_eq!(output_cap(10, 4, 1000), 40);
        assert_eq!(output_cap(10, 4, 25), 25);
        assert_eq!(output_cap(usize::MAX, 4, 7), 7);
        assert_eq!(find_ci(b"xx Negotiate y", b"negotiate ", 0), Some(3));
        assert_eq!(find_ci(b"abc", b"abcd", 0), None);
        assert_eq!(find(b"abcabc", b"bc", 2), Some(4));
        assert!(in_range("k", 5, 1, 4).is_err());
    }
}
