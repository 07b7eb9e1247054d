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

/// Where the URL whose `://` is at `sep` begins, if a URL begins there: a non-empty
/// scheme at the start of the text or after a space or opening punctuation. (A `://`
/// inside a password follows the user name and a colon, so it starts no URL.)
fn url_start(s: &str, sep: usize) -> Option<usize> {
    let start = s[..sep]
        .char_indices()
        .rev()
        .take_while(|(_, c)| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        .last()?
        .0;
    let before = s[..start].chars().next_back();
    before
        .is_none_or(|c| {
            c.is_whitespace() || matches!(c, '(' | '<' | '"' | '\'' | '=' | ',' | ';' | '[')
        })
        .then_some(start)
}

/// Replaces every occurrence of each secret in `text` with `***`, and any URL password.
/// A URL is taken to run to the next URL or the end of the text, not to the next space:
/// a password may hold spaces, and hiding too much of a message is the safe mistake.
pub fn text(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_string();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        out = out.replace(secret, "***");
    }
    let starts: Vec<usize> = out
        .match_indices("://")
        .filter_map(|(sep, _)| url_start(&out, sep))
        .collect();
    let mut shown = String::with_capacity(out.len());
    shown.push_str(&out[..starts.first().copied().unwrap_or(out.len())]);
    for (i, &start) in starts.iter().enumerate() {
        let end = starts.get(i + 1).copied().unwrap_or(out.len());
        shown.push_str(&url(&out[start..end]));
    }
    shown
}

/// Longest error text a record keeps, in characters.
pub const MAX_ERROR_CHARS: usize = 2_000;

/// Cuts `text` to [`MAX_ERROR_CHARS`], marking the cut. A source's error may carry text
/// the instance chose (a server's message), of any length; the record, the console and
/// the CLI show it, so it is bounded like every other input.
pub fn shorten(text: String) -> String {
    match text.char_indices().nth(MAX_ERROR_CHARS) {
        None => text,
        Some((at, _)) => format!("{} [... cut at {MAX_ERROR_CHARS} characters]", &text[..at]),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn long_error_texts_are_cut_on_a_character_boundary() {
        let short = "connection refused".to_string();
        assert_eq!(super::shorten(short.clone()), short);
        let long = "é".repeat(super::MAX_ERROR_CHARS + 10);
        let cut = super::shorten(long);
        assert!(cut.starts_with(&"é".repeat(super::MAX_ERROR_CHARS)));
        assert!(cut.ends_with("[... cut at 2000 characters]"), "{cut}");
    }

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
    fn a_password_with_spaces_in_a_message_is_hidden_whole() {
        assert_eq!(
            super::text(
                "cannot connect to postgres://u:a b/c@db:5432/x, then mysql://r:s@h/y failed",
                &[]
            ),
            "cannot connect to postgres://u:***@db:5432/x, then mysql://r:***@h/y failed"
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
