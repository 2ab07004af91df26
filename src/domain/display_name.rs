//! Display names of personal clients, and the characters they may hold.

/// The owner's name for a credential: 1-200 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    pub const MAX_CHARS: usize = 200;

    pub fn parse(input: &str) -> Result<Self, String> {
        if input.trim().is_empty() {
            return Err("is required: 1-200 characters, not only spaces".into());
        }
        let chars = input.chars().count();
        if chars > Self::MAX_CHARS {
            return Err(format!("is {chars} characters long; at most {} are allowed", Self::MAX_CHARS));
        }
        if let Some(position) = input.chars().position(char::is_control) {
            return Err(format!(
                "has a control character at position {position}; only printable characters are allowed"
            ));
        }
        if let Some((position, c)) = input.chars().enumerate().find(|(_, c)| is_invisible(*c)) {
            return Err(format!(
                "has an invisible or direction-changing character (U+{:04X}) at position {position}; only visible characters and spaces are allowed",
                u32::from(c)
            ));
        }
        if !input.chars().any(is_visible) {
            return Err("shows nothing: it needs at least one visible character".into());
        }
        Ok(Self(input.to_owned()))
    }

    pub fn into_string(self) -> String {
        self.0
    }

    /// A name as stored: it was valid when written, and is not checked again.
    pub fn from_stored(name: String) -> Self {
        Self(name)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Characters that show nothing or reorder what follows: zero-width spaces, bidirectional marks,
/// embeddings, overrides and isolates, line and paragraph separators, fillers and the byte order
/// mark. In a name they only serve to make one credential look like another. The joiners and
/// variation selectors that scripts and emoji need (U+200C, U+200D, U+FE00-U+FE0F, emoji tags)
/// stay allowed.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180E}'
            | '\u{200B}'
            | '\u{200E}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFFB}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{E0000}'..='\u{E001F}'
            | '\u{E0080}'..='\u{E00FF}'
            | '\u{E01F0}'..='\u{E0FFF}'
    )
}

/// Whether a character shows something by itself: not a space, and not a joiner, variation
/// selector, tag, combining mark or blank that only changes or pads its neighbours.
fn is_visible(c: char) -> bool {
    !c.is_whitespace()
        && !is_invisible(c)
        && !matches!(
            c,
            '\u{0300}'..='\u{036F}'
                | '\u{180B}'..='\u{180F}'
                | '\u{1AB0}'..='\u{1AFF}'
                | '\u{1DC0}'..='\u{1DFF}'
                | '\u{200C}'..='\u{200D}'
                | '\u{20D0}'..='\u{20FF}'
                | '\u{2800}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FE20}'..='\u{FE2F}'
                | '\u{E0020}'..='\u{E007F}'
                | '\u{E0100}'..='\u{E01EF}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_unicode_up_to_the_limit_in_characters() {
        assert!(DisplayName::parse(&"é".repeat(200)).is_ok());
        assert!(DisplayName::parse(&"é".repeat(201)).is_err());
    }

    #[test]
    fn rejects_blank_and_control_characters() {
        assert!(DisplayName::parse("").is_err());
        assert!(DisplayName::parse("   ").is_err());
        let err = DisplayName::parse("ci\nbot").unwrap_err();
        assert!(err.contains("position 2"), "{err}");
    }

    #[test]
    fn rejects_names_that_show_nothing() {
        for name in ["\u{200D}", "\u{200C}\u{200D}", "\u{FE0F}", "\u{E0020}", "\u{180B}", " \u{0301}", "\u{2800}"] {
            let err = DisplayName::parse(name).unwrap_err();
            assert!(err.contains("shows nothing") || err.contains("invisible"), "{name:?}: {err}");
        }
    }

    #[test]
    fn rejects_invisible_and_direction_changing_characters() {
        for name in ["a\u{200B}b", "\u{FEFF}bot", "evil\u{202E}gpj.exe", "line\u{2028}break", "x\u{2066}y"] {
            let err = DisplayName::parse(name).unwrap_err();
            assert!(err.contains("invisible or direction-changing"), "{name:?}: {err}");
        }
        for name in
            ["café déploiement 日本 🚀", "❤\u{FE0F} family 👨\u{200D}👩\u{200D}👧", "می\u{200C}خواهم", "葛\u{E0100}"]
        {
            assert!(DisplayName::parse(name).is_ok(), "{name:?}: visible text of any script is fine");
        }
    }
}
