//! QR codes as text: UTF-8 half blocks (two module rows per line, one column per module), so
//! that an otpauth URI fits an 80-column terminal. Without colour escapes (OpenSSH shows a
//! login's messages with escapes made visible) the terminal's own colours draw the code, so
//! the caller picks the polarity: which of the terminal's colours the dark modules take.

use qrcode::render::unicode::Dense1x2;
use qrcode::QrCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Polarity {
    /// For light text on a dark background: the light modules and the quiet zone are drawn
    /// as blocks, the dark modules left as background.
    Dark,
    /// For dark text on a light background: the dark modules are drawn as blocks.
    Light,
}

/// The code for `data` as lines of text (the quiet zone included), or `None` if it does not
/// fit in a QR code.
pub fn text(data: &str, polarity: Polarity) -> Option<String> {
    let code = QrCode::new(data.as_bytes()).ok()?;
    let (dark, light) = match polarity {
        Polarity::Dark => (Dense1x2::Light, Dense1x2::Dark),
        Polarity::Light => (Dense1x2::Dark, Dense1x2::Light),
    };
    Some(
        code.render::<Dense1x2>()
            .dark_color(dark)
            .light_color(light)
            .quiet_zone(true)
            .build(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_an_80_column_terminal() {
        let uri = "otpauth://totp/a-rather-long-host-name.example.org:some.user.name?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=a-rather-long-host-name.example.org";
        for polarity in [Polarity::Dark, Polarity::Light] {
            let text = text(uri, polarity).unwrap();
            let widest = text.lines().map(|l| l.chars().count()).max().unwrap();
            assert!(widest <= 78, "{widest} columns");
            assert!(text.lines().count() <= 40);
            assert!(!text.contains('\x1b'));
        }
        // The two polarities draw each other's blanks (but for the last line's lower half,
        // outside the code when its height is odd).
        let dark = text(uri, Polarity::Dark).unwrap();
        let light = text(uri, Polarity::Light).unwrap();
        let body = |t: &str| t.lines().rev().skip(1).collect::<Vec<_>>().join("\n");
        let (dark, light) = (body(&dark), body(&light));
        let flip = |c: char| match c {
            ' ' => '█',
            '█' => ' ',
            '▀' => '▄',
            '▄' => '▀',
            other => other,
        };
        assert_eq!(dark.chars().map(flip).collect::<String>(), light);
    }
}
