//! Keeps secrets out of anything a person or a log can read.

/// Hides the password in a URL-like string (`scheme://user:secret@host` -> `scheme://user:***@host`).
pub fn url(s: &str) -> String {
    let Some(scheme_end) = s.find("://") else {
        return s.to_string();
    };
    let rest = &s[scheme_end + 3..];
    let Some(at) = rest.find('@') else {
        return s.to_string();
    };
    let creds = &rest[..at];
    match creds.find(':') {
        Some(colon) => format!(
            "{}://{}:***{}",
            &s[..scheme_end],
            &creds[..colon],
            &rest[at..]
        ),
        None => s.to_string(),
    }
}

/// Replaces every occurrence of each secret in `text` with `***`, and any URL password.
pub fn text(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_string();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        out = out.replace(secret, "***");
    }
    out.split(' ')
        .map(|w| {
            if w.contains("://") {
                url(w)
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn url_passwords_are_hidden() {
        assert_eq!(
            super::url("postgres://bob:hunter2@db:5432/x"),
            "postgres://bob:***@db:5432/x"
        );
        assert_eq!(super::url("sqlite://syncpool.db"), "sqlite://syncpool.db");
    }
    #[test]
    fn listed_secrets_are_hidden_in_text() {
        assert_eq!(
            super::text("login failed for s3cret", &["s3cret"]),
            "login failed for ***"
        );
    }
}
