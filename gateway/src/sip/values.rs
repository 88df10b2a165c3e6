//! Checks for values that become part of a SIP message: numbers and caller IDs (the user
//! part of a URI), extension header names and values. Plugins, configuration files and
//! tokens supply them; a CR or LF in any of them would let the supplier write its own
//! headers into our INVITE (header injection), so each is held to the RFC 3261 grammar
//! (§25.1) before it is used, and refused with the reason otherwise.

/// Longest user part accepted: E.164 numbers are 15 digits; extensions and SIP user names
/// are short. Far below what a datagram holds, so a plugin cannot bloat the INVITE.
pub const MAX_USER: usize = 64;

/// Longest extension header value accepted.
pub const MAX_HEADER_VALUE: usize = 256;

/// Why a value was refused; the text names the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// Empty where a value is required.
    #[error("{what} is empty")]
    Empty {
        /// What the value is.
        what: &'static str,
    },
    /// Longer than allowed.
    #[error("{what} is longer than {max} characters")]
    TooLong {
        /// What the value is.
        what: &'static str,
        /// The limit.
        max: usize,
    },
    /// Holds a character the grammar does not allow there.
    #[error("{what} contains {found:?}, which SIP does not allow there")]
    BadCharacter {
        /// What the value is.
        what: &'static str,
        /// The first offending character.
        found: char,
    },
    /// An extension header that is not `X-` followed by a token.
    #[error("header name {name:?} is not `X-` followed by letters, digits and dashes")]
    HeaderName {
        /// The name as given.
        name: String,
    },
}

/// RFC 3261 §25.1 `user`: unreserved, escaped (`%XX`) and user-unreserved characters.
pub fn check_user(what: &'static str, value: &str) -> Result<(), ValueError> {
    if value.is_empty() {
        return Err(ValueError::Empty { what });
    }
    if value.len() > MAX_USER {
        return Err(ValueError::TooLong {
            what,
            max: MAX_USER,
        });
    }
    let bytes = value.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let ok = b.is_ascii_alphanumeric()
            // mark
            || b"-_.!~*'()".contains(&b)
            // user-unreserved
            || b"&=+$,;?/".contains(&b);
        if b == b'%' {
            let escaped = bytes
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
            if !escaped {
                return Err(ValueError::BadCharacter { what, found: '%' });
            }
            i += 3;
            continue;
        }
        if !ok {
            let found = value[i..].chars().next().unwrap_or('?');
            return Err(ValueError::BadCharacter { what, found });
        }
        i += 1;
    }
    Ok(())
}

/// An extension header a plugin may add: the name `X-` and a token (§25.1 `token`, kept to
/// letters, digits and dashes), the value UTF-8 text without control characters (§25.1
/// `TEXT-UTF8`; a tab is allowed).
pub fn check_extension_header(name: &str, value: &str) -> Result<(), ValueError> {
    let token = name.len() > 2
        && name.len() <= 64
        && name[..2].eq_ignore_ascii_case("x-")
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !token {
        return Err(ValueError::HeaderName {
            name: name.chars().take(64).collect(),
        });
    }
    if value.len() > MAX_HEADER_VALUE {
        return Err(ValueError::TooLong {
            what: "a header value",
            max: MAX_HEADER_VALUE,
        });
    }
    if let Some(found) = value.chars().find(|c| c.is_control() && *c != '\t') {
        return Err(ValueError::BadCharacter {
            what: "a header value",
            found,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_sip_user_names_pass() {
        for ok in [
            "+15551234",
            "100",
            "alice.smith",
            "sales-desk",
            "a%20b",
            "1234;phone-context=+1",
        ] {
            assert_eq!(check_user("a number", ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn line_breaks_and_uri_delimiters_are_refused_with_the_character() {
        let injected = "+15551234\r\nX-Injected-Caller: yes";
        assert_eq!(
            check_user("the caller ID", injected),
            Err(ValueError::BadCharacter {
                what: "the caller ID",
                found: '\r'
            })
        );
        for bad in ["a b", "a@b", "a<b", "a>b", "a:b", "a\"b", "%zz", "%4", "é"] {
            assert!(check_user("a number", bad).is_err(), "{bad}");
        }
        assert!(check_user("a number", "").is_err());
        assert!(check_user("a number", &"1".repeat(MAX_USER + 1)).is_err());
        let message = check_user("the caller ID", injected)
            .unwrap_err()
            .to_string();
        assert_eq!(
            message,
            "the caller ID contains '\\r', which SIP does not allow there"
        );
    }

    #[test]
    fn extension_headers_are_x_tokens_with_clean_values() {
        assert_eq!(check_extension_header("X-Account", "gold tier\tÄ"), Ok(()));
        assert!(check_extension_header("X-Account", "a\r\nX-Evil: 1").is_err());
        assert!(check_extension_header("X-Account", "a\0b").is_err());
        assert!(check_extension_header("P-Asserted-Identity", "x").is_err());
        assert!(check_extension_header("X-", "x").is_err());
        assert!(check_extension_header("X-A:B", "x").is_err());
        assert!(check_extension_header("X-A", &"v".repeat(MAX_HEADER_VALUE + 1)).is_err());
    }
}
