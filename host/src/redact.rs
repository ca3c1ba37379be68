//! Credentials kept out of messages: URLs as they may be shown in a log line, an event, a
//! condition or an error. Used wherever a URL from a spec or a Secret is quoted.

/// The URL with its password replaced by `***`, fit for a log line or an error.
pub fn redact(url: &url::Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        // NB: set_password fails only for URLs that cannot have credentials, which have none.
        let _ = shown.set_password(Some("***"));
    }
    shown.to_string()
}

/// A URL that did not parse, fit for a message: its scheme and what follows the last `@`
/// (whatever came before may be a password), at most 64 characters of it. A value without a
/// scheme is not shown at all: it may be a bare password put where a URL belongs.
pub fn redact_unparsed(url: &str) -> String {
    let Some(scheme_end) = url.find("://").filter(|&end| end <= 16) else {
        return "(a value that is not a URL, not shown)".into();
    };
    let rest = &url[scheme_end + 3..];
    let shown = match rest.rfind('@') {
        Some(at) => format!("***{}", &rest[at..]),
        None => rest.to_string(),
    };
    let shown = if shown.chars().count() > 64 { format!("{}…", shown.chars().take(64).collect::<String>()) } else { shown };
    format!("{}://{shown}", &url[..scheme_end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_passwords_only() {
        let url = url::Url::parse("redis://user:s3cret@redis:6379/2").expect("valid");
        assert_eq!(redact(&url), "redis://user:***@redis:6379/2");
        let url = url::Url::parse("redis://:s3cret@redis/0").expect("valid");
        assert_eq!(redact(&url), "redis://:***@redis/0");
        let url = url::Url::parse("amqp://guest@rabbitmq//").expect("valid");
        assert_eq!(redact(&url), "amqp://guest@rabbitmq//");
        assert_eq!(redact_unparsed("redis://u:p@ss@host:x/0"), "redis://***@host:x/0");
        assert_eq!(redact_unparsed("hunter2"), "(a value that is not a URL, not shown)", "a bare password is never echoed");
        assert_eq!(redact_unparsed("this is not a url"), "(a value that is not a URL, not shown)");
        let long = format!("redis://{}:6379", "h".repeat(10_000));
        assert!(redact_unparsed(&long).chars().count() < 90, "a long host is cut");
    }
}
