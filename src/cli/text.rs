//! Text from the database made safe for a terminal. Account names, hosts, instance names,
//! worker names and error texts come from sources and from whoever can write the
//! database; a MariaDB user named `ESC ] 0 ; x BEL ESC [ 2 J` would otherwise retitle and
//! clear the operator's terminal when listed. Human-readable output passes such text
//! through [`printable`]; `--json` output stays exact (JSON escapes C0 controls itself).

use std::borrow::Cow;

/// Whether `c` must not reach a terminal as it is: C0 controls (ESC, BEL, CR, LF and TAB
/// included: inside a table cell a line break or a tab breaks the table), DEL, C1 controls
/// (U+009B is a CSI on terminals that honour 8-bit controls), and the Unicode bidi
/// controls, which reorder what is displayed and so can make one name read as another.
fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'                  // arabic letter mark
            | '\u{200e}' | '\u{200f}'   // left-to-right and right-to-left marks
            | '\u{2028}' | '\u{2029}'   // line and paragraph separators
            | '\u{202a}'..='\u{202e}'   // embeddings and overrides
            | '\u{2066}'..='\u{2069}' // isolates
        )
}

/// `s` with every control character (C0, DEL, C1) and bidi control replaced by a visible
/// escape: `\x1b`, `\x07`, `\n`, `\t`, `\u{9b}`, `\u{202e}`. Borrowed, without a copy,
/// when there is nothing to replace, as for almost every name. A backslash is left as it
/// is, so that ordinary names (MySQL host patterns such as `10.0.0.\_%`) print unchanged;
/// the exact text is always in `--json`.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_ascii_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if unsafe_char(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_escapes_every_terminal_control_and_leaves_ordinary_text_borrowed() {
        let attack = "sp_\u{1b}]0;pwned\u{7}\u{1b}[2J";
        assert_eq!(printable(attack), "sp_\\x1b]0;pwned\\x07\\x1b[2J");
        assert_eq!(printable("a\tb\r\nc\u{0}\u{7f}"), "a\\tb\\r\\nc\\x00\\x7f");
        // C1: CSI and NEL, which some terminals act on.
        assert_eq!(printable("x\u{9b}2J\u{85}"), "x\\u{9b}2J\\u{85}");
        // A right-to-left override, which would show `admin<RLO>txt.exe` as `adminexe.txt`.
        assert_eq!(printable("admin\u{202e}txt.exe"), "admin\\u{202e}txt.exe");
        for c in ('\u{202a}'..='\u{202e}').chain('\u{2066}'..='\u{2069}') {
            assert_eq!(printable(&c.to_string()), format!("\\u{{{:x}}}", c as u32));
        }
        for ordinary in [
            "",
            "app@10.0.0.\\_%",
            "երևան_kayıtlar_straße",
            "emoji 🦀 and CJK 名前",
        ] {
            assert!(
                matches!(printable(ordinary), Cow::Borrowed(b) if b == ordinary),
                "{ordinary:?} is copied or changed"
            );
        }
        for c in (0..=0x10ffff).filter_map(char::from_u32) {
            let shown = printable(&c.to_string()).into_owned();
            assert!(
                !shown.chars().any(unsafe_char),
                "{c:?} still reaches the terminal as {shown:?}"
            );
        }
    }

    #[test]
    fn printable_keeps_a_column_width_when_formatted_with_padding() {
        assert_eq!(format!("[{:<6}]", printable("ab")), "[ab    ]");
        assert_eq!(format!("[{:<6}]", printable("a\u{7}")), "[a\\x07 ]");
    }
}
