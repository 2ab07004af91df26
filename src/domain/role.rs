//! IAM role names, and sets of them.

use std::fmt;

use super::{EntryViolation, parse_entries};

/// An IAM role name: 1-128 characters of `[A-Za-z0-9_.:-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Role(String);

impl Role {
    pub const MAX_CHARS: usize = 128;

    pub fn parse(input: &str) -> Result<Self, String> {
        if input.is_empty() || input.len() > Self::MAX_CHARS {
            return Err(format!(
                "{} must be 1-{} characters of A-Z a-z 0-9 _ . : -",
                super::quote(input),
                Self::MAX_CHARS
            ));
        }
        if let Some(bad) = input.chars().find(|c| !(c.is_ascii_alphanumeric() || "_.:-".contains(*c))) {
            return Err(format!("{} contains {bad:?}; only A-Z a-z 0-9 _ . : - are allowed", super::quote(input)));
        }
        Ok(Self(input.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A set of roles in the order first given, without duplicates.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RoleSet(Vec<Role>);

impl FromIterator<Role> for RoleSet {
    fn from_iter<I: IntoIterator<Item = Role>>(roles: I) -> Self {
        let mut set: Vec<Role> = Vec::new();
        for role in roles {
            if !set.contains(&role) {
                set.push(role);
            }
        }
        Self(set)
    }
}

impl RoleSet {
    pub const MAX_ENTRIES: usize = 50;

    /// Parses the scoped roles of a request: at most 50 as sent.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, Vec<EntryViolation>> {
        parse_entries(entries, Self::MAX_ENTRIES, Role::parse).map(Self)
    }

    /// Roles as a token carried them: entries that are not valid role names are ignored, as they
    /// could never be granted to a credential.
    pub fn from_claims<S: AsRef<str>>(entries: &[S]) -> Self {
        entries.iter().filter_map(|entry| Role::parse(entry.as_ref()).ok()).collect()
    }

    pub fn contains(&self, role: &Role) -> bool {
        self.0.contains(role)
    }

    /// The roles of `self` that `other` lacks.
    pub fn missing_from<'a>(&'a self, other: &RoleSet) -> Vec<&'a Role> {
        self.0.iter().filter(|role| !other.contains(role)).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Role> {
        self.0.iter()
    }

    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(|role| role.0.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_duplicates_and_names_bad_entries() {
        let roles = RoleSet::parse(&["reader", "ops:admin", "reader"]).unwrap();
        assert_eq!(roles.to_strings(), ["reader", "ops:admin"]);
        let err = RoleSet::parse(&["ok", "has space", ""]).unwrap_err();
        assert_eq!(err.iter().map(|v| v.index).collect::<Vec<_>>(), [Some(1), Some(2)]);
        assert!(Role::parse(&"a".repeat(129)).is_err());
        assert!(Role::parse(&"a".repeat(128)).is_ok());
    }
}
