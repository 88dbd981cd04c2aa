//! Text from outside (the daemon, PAM items, the stack line) made safe to show or log.

/// Drops control characters (terminal escapes, newlines, NULs) and bounds the length.
pub fn printable(text: &str) -> String {
    const MAX_CHARS: usize = 200;
    text.chars()
        .filter(|c| !c.is_control())
        .take(MAX_CHARS)
        .collect()
}

/// At most `max` bytes of `bytes` as UTF-8 (invalid sequences replaced), cut on a character
/// boundary.
pub fn bounded_lossy(bytes: &[u8], max: usize) -> String {
    let mut text = String::from_utf8_lossy(bytes).into_owned();
    truncate_on_char(&mut text, max);
    text
}

/// Shortens `text` to at most `max` bytes without splitting a character.
pub fn truncate_on_char(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_control_characters() {
        assert_eq!(printable("ok\x1b[31mred\r\n\0\u{85}!"), "ok[31mred!");
        assert_eq!(printable(&"x".repeat(1000)).len(), 200);
    }

    #[test]
    fn bounds_bytes_on_char_boundaries() {
        assert_eq!(bounded_lossy(b"short", 256), "short");
        assert_eq!(bounded_lossy(b"a\xffb", 256), "a\u{fffd}b");
        // "é" is two bytes: cutting at 3 must not split the second one.
        assert_eq!(bounded_lossy("aéé".as_bytes(), 4), "aé");
        assert_eq!(bounded_lossy(&[b'x'; 300], 256).len(), 256);
        // Replacement characters (3 bytes each) count against the bound too.
        assert!(bounded_lossy(&[0xff; 200], 256).len() <= 256);
    }
}
