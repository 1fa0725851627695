//! Text from files and peers made safe for a terminal.
//!
//! Owns one rule: a control character (C0, DEL, C1) read from a user's file or a server's
//! reply is shown as an escape (`\u{1b}`), never written raw, so a config line or a reply
//! cannot move the cursor, recolour the terminal or hide the text around it. Tabs stay tabs.
//! Pure: it transforms strings and must not decide where they are printed.

use std::borrow::Cow;

fn is_unsafe(c: char) -> bool {
    c != '\t' && c.is_control()
}

/// `text` with every control character but the tab written as `\u{..}`.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_unsafe(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A path as [`escape`] shows text.
pub fn path(path: &std::path::Path) -> String {
    escape(&path.to_string_lossy()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(escape("plain\ttext é"), "plain\ttext é");
        assert!(matches!(escape("plain"), Cow::Borrowed(_)));
        assert_eq!(escape("a\u{1b}[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(
            escape("line\r\nnext\u{7f}\u{9b}"),
            "line\\u{d}\\u{a}next\\u{7f}\\u{9b}"
        );
    }
}
