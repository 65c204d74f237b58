//! Keeping secrets out of build logs and error messages: credentials in URLs
//! (`https://user:pw@host` → `https://***@host`) and known passwords, wherever they
//! appear in a line.

/// Passwords shorter than this are not searched for in output (a one-letter
/// password would blank every occurrence of that letter); they still never reach a
/// log through a URL, and Diplo never prints them itself.
pub const MIN_SECRET_LEN: usize = 4;

/// Removes what must never reach a log: the user information of every URL in `text`
/// and every one of `secrets` (at least [`MIN_SECRET_LEN`] bytes long).
pub fn redact(text: &str, secrets: &[String]) -> String {
    let mut out = redact_url_credentials(text);
    for secret in secrets.iter().filter(|s| s.len() >= MIN_SECRET_LEN) {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), "***");
        }
    }
    out
}

/// `scheme://user:password@host/…` → `scheme://***@host/…`, for every URL in `text`.
pub fn redact_url_credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        // The authority ends at the first '/', '?', '#', whitespace or quote.
        let end =
            tail.find(|c: char| matches!(c, '/' | '?' | '#' | '"' | '\'' | '`' | '<' | '>') || c.is_whitespace()).unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(user_end) => {
                out.push_str("***");
                out.push_str(&authority[user_end..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_credentials_and_passwords_are_blanked() {
        let cases = [
            (
                "fatal: unable to access 'https://user:pw@git.example/app.git/'",
                "fatal: unable to access 'https://***@git.example/app.git/'",
            ),
            ("https://token@host", "https://***@host"),
            ("a https://u:p@h/x and ssh://git@h2:22/y", "a https://***@h/x and ssh://***@h2:22/y"),
            ("no url here: user@host", "no url here: user@host"),
            ("https://host/path@not-userinfo", "https://host/path@not-userinfo"),
            ("", ""),
            ("trailing ://", "trailing ://"),
        ];
        for (input, expected) in cases {
            assert_eq!(redact(input, &[]), expected, "{input}");
        }
        let secrets = vec!["s3cr3t-pass".to_owned(), "ab".to_owned()];
        assert_eq!(redact("login with s3cr3t-pass (ab) twice s3cr3t-pass", &secrets), "login with *** (ab) twice ***");
    }
}
