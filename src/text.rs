//! Text that came from elsewhere (a node, a registry) made safe to put into logs,
//! events and messages: bounded in length, control characters escaped.

/// The most characters kept of an id, name or fingerprint field a node sends.
pub const NODE_TEXT_MAX: usize = 256;

/// The most characters kept of a message a node sends (an error from its runtime).
pub const NODE_MESSAGE_MAX: usize = 1024;

/// `text` with control characters and bidirectional overrides escaped (`\n`, `\u{1b}`),
/// cut to at most `max_chars` characters (on a character boundary, escapes never cut
/// in half) followed by `…` when something was cut.
pub fn bounded(text: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_chars.saturating_mul(4)));
    let mut kept = 0usize;
    for c in text.chars() {
        let escaped: Option<String> = match c {
            '\n' => Some("\\n".into()),
            '\r' => Some("\\r".into()),
            '\t' => Some("\\t".into()),
            c if c.is_control() || is_bidi_control(c) => Some(c.escape_unicode().to_string()),
            _ => None,
        };
        let width = escaped.as_ref().map_or(1, |e| e.chars().count());
        if kept + width > max_chars {
            out.push('…');
            return out;
        }
        match escaped {
            Some(e) => out.push_str(&e),
            None => out.push(c),
        }
        kept += width;
    }
    out
}

/// [`bounded`] with [`NODE_TEXT_MAX`]: for ids, names and fingerprint fields.
pub fn node_text(text: &str) -> String {
    bounded(text, NODE_TEXT_MAX)
}

/// [`bounded`] in place, allocating only when something changes.
pub fn bound_in_place(text: &mut String, max_chars: usize) {
    let clean = text.chars().count() <= max_chars && !text.chars().any(|c| c.is_control() || is_bidi_control(c));
    if !clean {
        *text = bounded(text, max_chars);
    }
}

/// Characters that reorder the text displayed after them (and can hide what it says).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_cut_on_character_boundaries_with_controls_escaped() {
        let cases: &[(&str, usize, &str)] = &[
            ("node-1", 256, "node-1"),
            ("abcdef", 3, "abc…"),
            ("ééééé", 2, "éé…"),
            ("🦀🦀🦀", 1, "🦀…"),
            ("a\nb", 10, "a\\nb"),
            ("x\u{1b}[31mred", 100, "x\\u{1b}[31mred"),
            ("evil\u{202e}txt.exe", 100, "evil\\u{202e}txt.exe"),
            // An escape is kept whole or not at all.
            ("ab\u{1b}", 4, "ab…"),
            ("", 5, ""),
        ];
        for (input, max, expected) in cases {
            assert_eq!(bounded(input, *max), *expected, "{input:?} cut to {max}");
        }
    }

    #[test]
    fn huge_and_hostile_input_stays_bounded() {
        let hostile: String = "\u{0}\n\u{202e}é🦀x".repeat(100_000);
        let out = node_text(&hostile);
        assert!(out.chars().count() <= NODE_TEXT_MAX + 1, "{} chars", out.chars().count());
        assert!(!out.chars().any(|c| c.is_control() || is_bidi_control(c)), "{out:?}");
        let mut in_place = hostile.clone();
        bound_in_place(&mut in_place, NODE_MESSAGE_MAX);
        assert!(in_place.chars().count() <= NODE_MESSAGE_MAX + 1);
        let mut clean = "fine".to_owned();
        bound_in_place(&mut clean, 2);
        assert_eq!(clean, "fi…");
    }
}
