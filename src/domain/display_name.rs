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
}
