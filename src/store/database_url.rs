//! Which database, as a URL whose password never prints.

use std::{fmt, str::FromStr};

/// A database URL whose password never appears in `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_sqlite(&self) -> bool {
        self.0.starts_with("sqlite:")
    }

    /// The file of a SQLite URL: `sqlite://data/pc.db?mode=rwc` is `data/pc.db`.
    pub fn sqlite_path(&self) -> Option<&str> {
        let rest = self.0.strip_prefix("sqlite://").or_else(|| self.0.strip_prefix("sqlite:"))?;
        Some(rest.split('?').next().unwrap_or(rest))
    }
}

impl FromStr for DatabaseUrl {
    type Err = String;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        if url.starts_with("sqlite:") && (url.contains(":memory:") || url.contains("mode=memory")) {
            return Err("in-memory SQLite is not supported: every connection would see a database of its own; use a file (sqlite://FILE?mode=rwc)".into());
        }
        let supported = ["sqlite:", "postgres://", "postgresql://"];
        if supported.iter().any(|prefix| url.starts_with(prefix)) {
            Ok(Self(url.to_owned()))
        } else {
            Err("must start with sqlite:, postgres:// or postgresql://".into())
        }
    }
}

impl fmt::Display for DatabaseUrl {
    /// `postgres://user:secret@host/db?sslpassword=x` shows as
    /// `postgres://user:***@host/db?sslpassword=***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (url, query) = match self.0.split_once('?') {
            Some((url, query)) => (url, Some(query)),
            None => (self.0.as_str(), None),
        };
        match url.split_once("://") {
            Some((scheme, rest)) => {
                let authority_end = rest.find('/').unwrap_or(rest.len());
                let userinfo_end = rest[..authority_end].rfind('@');
                match userinfo_end.and_then(|at| rest[..at].split_once(':').map(|(user, _)| (user, at))) {
                    Some((user, at)) => write!(f, "{scheme}://{user}:***{}", &rest[at..])?,
                    None => f.write_str(url)?,
                }
            }
            None => f.write_str(url)?,
        }
        let Some(query) = query else { return Ok(()) };
        let parameters: Vec<String> = query
            .split('&')
            .map(|parameter| match parameter.split_once('=') {
                Some((name, _)) if name.to_ascii_lowercase().contains("password") => format!("{name}=***"),
                _ => parameter.to_owned(),
            })
            .collect();
        write!(f, "?{}", parameters.join("&"))
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_password_never_prints() {
        let url: DatabaseUrl = "postgres://pc:hunter2@db:5432/pc?sslmode=require".parse().unwrap();
        assert_eq!(url.to_string(), "postgres://pc:***@db:5432/pc?sslmode=require");
        assert!(!format!("{url:?}").contains("hunter2"));
        let no_password: DatabaseUrl = "postgres://postgres@127.0.0.1:5432/test".parse().unwrap();
        assert_eq!(no_password.to_string(), "postgres://postgres@127.0.0.1:5432/test");
        let sqlite: DatabaseUrl = "sqlite://personal-clients.db?mode=rwc".parse().unwrap();
        assert_eq!(sqlite.to_string(), "sqlite://personal-clients.db?mode=rwc");
        let in_query: DatabaseUrl = "postgres://db/pc?user=pc&password=hunter2&sslpassword=x".parse().unwrap();
        assert_eq!(in_query.to_string(), "postgres://db/pc?user=pc&password=***&sslpassword=***");
        assert_eq!(sqlite.sqlite_path(), Some("personal-clients.db"));
    }
}
