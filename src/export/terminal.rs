//! Text from an export shown on a terminal: entry names, labels and e-mail
//! addresses are attacker-chosen, so a control character must neither move the cursor, clear a
//! line, hide a marker such as `[INVALID]`, nor reorder what is shown (bidirectional overrides).
//!
//! [`escape`] replaces, visibly and reversibly:
//! - C0 controls (U+0000–U+001F), DEL (U+007F) and C1 controls (U+0080–U+009F) by `\xHH`
//!   (`\t`, `\n`, `\r` by those two-character forms);
//! - bidirectional formatting characters (U+061C, U+200E, U+200F, U+202A–U+202E, U+2066–U+2069)
//!   and the line/paragraph separators (U+2028, U+2029) by `\u{HHHH}`;
//! - the backslash itself by `\\`, so that an escape cannot be forged by a name.
//!
//! JSON output is not escaped this way: JSON strings are exact (serde escapes controls).

use std::borrow::Cow;

fn needs_escape(c: char) -> bool {
    matches!(c,
        '\\'
        | '\u{0}'..='\u{1f}'
        | '\u{7f}'..='\u{9f}'
        | '\u{61c}'
        | '\u{200e}' | '\u{200f}'
        | '\u{2028}'..='\u{202e}'
        | '\u{2066}'..='\u{2069}')
}

/// `s` with every dangerous character escaped (borrowed when there is none).
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) <= 0x9f && needs_escape(c) => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if needs_escape(c) => out.push_str(&format!("\\u{{{:04x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn controls_bidi_and_backslash_are_escaped_visibly() {
        assert_eq!(escape("report.pdf"), "report.pdf");
        assert!(matches!(escape("plain"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(escape("a\x1b[2Kb"), "a\\x1b[2Kb");
        assert_eq!(escape("x\ny\rz\t"), "x\\ny\\rz\\t");
        assert_eq!(escape("del\x7f c1\u{9b}"), "del\\x7f c1\\x9b");
        assert_eq!(escape("evil\u{202e}fdp.exe"), "evil\\u{202e}fdp.exe");
        assert_eq!(escape("\u{2066}a\u{2069}"), "\\u{2066}a\\u{2069}");
        assert_eq!(escape("a\\x1b"), "a\\\\x1b");
        // Ordinary non-ASCII text is kept.
        assert_eq!(escape("été 日本"), "été 日本");
        for c in (0u32..0x20)
            .chain(0x7f..0xa0)
            .chain(0x202a..0x202f)
            .chain(0x2066..0x206a)
        {
            let c = char::from_u32(c).unwrap();
            let shown = escape(&c.to_string()).into_owned();
            assert!(
                shown
                    .chars()
                    .all(|c| !c.is_control() && !super::needs_escape(c) || c == '\\'),
                "{shown:?}"
            );
        }
    }
}
