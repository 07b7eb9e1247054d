//! Keeps secrets out of anything a person or a log can read.

/// Hides the password in a URL-like string (`scheme://user:secret@host` -> `scheme://user:***@host`).
/// The credentials end at the *last* `@` before the path: a password may itself hold
/// `@` (or `:`, `/`), and cutting at the first one would print the rest of it.
pub fn url(s: &str) -> String {
    let Some(scheme_end) = s.find("://") else {
        return s.to_string();
    };
    let rest = &s[scheme_end + 3..];
    let Some(at) = rest.rfind('@') else {
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

    #[test]
    fn a_password_with_at_signs_and_colons_is_hidden_whole() {
        assert_eq!(
            super::url("postgres://bob:p@ss:w@rd@db:5432/x"),
            "postgres://bob:***@db:5432/x"
        );
    }

    /// Property: for passwords of arbitrary characters, no redacted URL contains the
    /// password (when it is long enough not to appear by accident elsewhere).
    #[test]
    fn no_password_of_arbitrary_characters_survives_redaction() {
        use rand::{Rng, SeedableRng};
        let seed: u64 = rand::rng().random();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for _ in 0..20_000 {
            let len = rng.random_range(8..40);
            let password: String = (0..len)
                .map(|_| {
                    if rng.random_bool(0.3) {
                        ['@', ':', '/', '?', '#', '%'][rng.random_range(0..6)]
                    } else {
                        rng.random::<char>()
                    }
                })
                .collect();
            let url = format!("postgres://user:{password}@db.internal:5432/syncpool");
            let shown = super::url(&url);
            assert!(
                !shown.contains(&password),
                "seed {seed}: {url:?} redacted to {shown:?}"
            );
            assert!(
                shown.starts_with("postgres://user:***@"),
                "seed {seed}: {shown:?}"
            );
            let text = super::text(&format!("cannot connect to {url}"), &[]);
            assert!(!text.contains(&password), "seed {seed}: {text:?}");
        }
    }
}
