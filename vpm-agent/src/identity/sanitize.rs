//! Turning untrusted bytes (argv, cgroup names) into a display-safe VM name.
//!
//! The rules, in order:
//! - Empty input, or input that is only ASCII whitespace, is *absent* (`None`):
//!   the caller falls back to another source or to `pid-<tgid>`.
//! - Valid UTF-8 is kept; each byte that is not part of valid UTF-8 becomes the
//!   visible text `\xNN` (lowercase hex), so two names that differ only in
//!   invalid bytes stay distinct (a lossy U+FFFD would merge them).
//! - Control characters — C0 (U+0000–U+001F, so `\n`, `\r`, `\t`, ESC), DEL
//!   (U+007F) and C1 (U+0080–U+009F) — become `\xNN`.
//! - Characters that reorder or hide text on a terminal (bidi embeddings,
//!   overrides and isolates, zero-width characters, the line and paragraph
//!   separators U+2028/U+2029, the BOM) become `\u{XXXX}`.
//! - A backslash becomes `\\`, so the escapes above are unambiguous: the text
//!   `\x1b` in a name shows as `\\x1b`, the ESC character as `\x1b`.
//! - Commas, quotes and other printable characters are kept: they are legal
//!   in libvirt domain names, and every writer quotes for its own format (the
//!   CSV writer quotes fields per RFC 4180).
//! - A name that starts with `=`, `+`, `-` or `@` gets a leading `'`, so a
//!   spreadsheet opening vpm's CSV shows it as text instead of evaluating it
//!   as a formula (CSV injection: a guest's owner may choose its name).
//! - The result is at most [`MAX_NAME_CHARS`] `char`s. A longer name is cut
//!   between escapes (never inside one) and ends in `…` (U+2026), which
//!   counts toward the limit.

/// Longest sanitized name, in `char`s, including a trailing `…` when cut.
pub const MAX_NAME_CHARS: usize = 64;

/// Maps raw bytes to a name that is safe to print on a terminal or put in a
/// CSV field; `None` when the input is empty or only ASCII whitespace.
///
/// See the [module docs](self) for the exact rules.
pub fn sanitize_name(raw: &[u8]) -> Option<String> {
    if raw.trim_ascii().is_empty() {
        return None;
    }
    let mut out = Out::default();
    if matches!(raw.first(), Some(b'=' | b'+' | b'-' | b'@')) {
        out.push("'");
    }
    'chunks: for chunk in raw.utf8_chunks() {
        for c in chunk.valid().chars() {
            if !out.push(&escape_char(c)) {
                break 'chunks;
            }
        }
        for &b in chunk.invalid() {
            if !out.push(&format!("\\x{b:02x}")) {
                break 'chunks;
            }
        }
    }
    Some(out.finish())
}

/// One character as it appears in a sanitized name.
fn escape_char(c: char) -> String {
    match c {
        '\\' => "\\\\".to_owned(),
        c if c.is_control() => format!("\\x{:02x}", u32::from(c)),
        c if hides_text(c) => format!("\\u{{{:04x}}}", u32::from(c)),
        c => c.to_string(),
    }
}

/// Format and separator characters that can reorder, hide or break lines of
/// text on a terminal ("Trojan Source", CVE-2021-42574).
fn hides_text(c: char) -> bool {
    matches!(
        c,
        '\u{061c}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{2069}'
            | '\u{feff}'
    )
}

/// The output under construction, with the cut point for truncation.
#[derive(Default)]
struct Out {
    text: String,
    chars: usize,
    /// Byte length of `text` at the last piece boundary where `chars` was
    /// still below the limit, i.e. where `…` still fits.
    cut: usize,
    truncated: bool,
}

impl Out {
    /// Appends one escaped piece; `false` once the limit is reached.
    fn push(&mut self, piece: &str) -> bool {
        let n = piece.chars().count();
        if self.chars + n > MAX_NAME_CHARS {
            self.truncated = true;
            return false;
        }
        self.text.push_str(piece);
        self.chars += n;
        if self.chars < MAX_NAME_CHARS {
            self.cut = self.text.len();
        }
        true
    }

    fn finish(mut self) -> String {
        if self.truncated {
            self.text.truncate(self.cut);
            self.text.push('…');
        }
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_names_pass_through() {
        assert_eq!(sanitize_name(b"web01").as_deref(), Some("web01"));
        assert_eq!(
            sanitize_name("gäst-ü".as_bytes()).as_deref(),
            Some("gäst-ü")
        );
        assert_eq!(sanitize_name(b"a,b \"c\"").as_deref(), Some("a,b \"c\""));
    }

    #[test]
    fn a_name_a_spreadsheet_would_evaluate_is_shown_as_text() {
        for raw in ["=HYPERLINK(\"http://x\")", "+1+1", "-2+3", "@SUM(1)"] {
            let name = sanitize_name(raw.as_bytes()).expect("named");
            assert_eq!(name, format!("'{raw}"));
        }
        assert_eq!(sanitize_name(b"web-1=a").as_deref(), Some("web-1=a"));
    }

    #[test]
    fn empty_and_blank_are_absent() {
        assert_eq!(sanitize_name(b""), None);
        assert_eq!(sanitize_name(b"  \t\n"), None);
    }

    #[test]
    fn controls_are_escaped() {
        assert_eq!(
            sanitize_name(b"a\x1b[2Jb\nc\rd\x7f").as_deref(),
            Some("a\\x1b[2Jb\\x0ac\\x0dd\\x7f")
        );
        // C1 control U+009B (CSI) as valid UTF-8.
        assert_eq!(
            sanitize_name("x\u{9b}31m".as_bytes()).as_deref(),
            Some("x\\x9b31m")
        );
        assert_eq!(sanitize_name(b"\0evil").as_deref(), Some("\\x00evil"));
    }

    #[test]
    fn invalid_utf8_bytes_are_escaped_and_stay_distinct() {
        assert_eq!(
            sanitize_name(b"vm\xff\xfe").as_deref(),
            Some("vm\\xff\\xfe")
        );
        assert_ne!(sanitize_name(b"vm\xff"), sanitize_name(b"vm\xfe"));
    }

    #[test]
    fn backslash_and_bidi_are_escaped() {
        assert_eq!(sanitize_name(b"a\\x1b").as_deref(), Some("a\\\\x1b"));
        assert_eq!(
            sanitize_name("ab\u{202e}cd".as_bytes()).as_deref(),
            Some("ab\\u{202e}cd")
        );
        assert_eq!(
            sanitize_name("l\u{2028}2".as_bytes()).as_deref(),
            Some("l\\u{2028}2")
        );
    }

    #[test]
    fn long_names_are_cut_with_an_ellipsis() {
        let exact = "x".repeat(MAX_NAME_CHARS);
        assert_eq!(
            sanitize_name(exact.as_bytes()).as_deref(),
            Some(exact.as_str())
        );
        let long = "y".repeat(200);
        let got = sanitize_name(long.as_bytes()).unwrap();
        assert_eq!(got.chars().count(), MAX_NAME_CHARS);
        assert!(got.ends_with('…'));
        // Never cut inside an escape.
        let escapes = "\x1b".repeat(40);
        let got = sanitize_name(escapes.as_bytes()).unwrap();
        assert!(got.chars().count() <= MAX_NAME_CHARS);
        assert!(
            got.trim_end_matches('…').split("\\x1b").all(str::is_empty),
            "{got}"
        );
    }

    proptest! {
        #[test]
        fn output_is_always_display_safe(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Some(name) = sanitize_name(&raw) {
                prop_assert!(!name.is_empty());
                prop_assert!(name.chars().count() <= MAX_NAME_CHARS);
                prop_assert!(!name.chars().any(|c| c.is_control() || hides_text(c)), "{name:?}");
                prop_assert!(!name.contains(['\n', '\r', '\x1b']));
            } else {
                prop_assert!(raw.trim_ascii().is_empty());
            }
        }

        #[test]
        fn arbitrary_strings_are_display_safe(s in "\\PC*|[\\x00-\\x{ff}\u{2028}-\u{202e}]*") {
            if let Some(name) = sanitize_name(s.as_bytes()) {
                prop_assert!(!name.chars().any(|c| c.is_control() || hides_text(c)), "{name:?}");
                prop_assert!(name.chars().count() <= MAX_NAME_CHARS);
            }
        }
    }
}
