//! What a received message's head becomes before `rsip` parses it: continuation lines
//! unfolded (§7.3.1), compact header names expanded (§7.3.3), and the spellings the grammar
//! allows but rsip 0.4 does not take smoothed over, so that valid SIP from any peer parses.

const COMPACT_FORMS: [(&str, &str); 10] = [
    ("i", "Call-ID"),
    ("m", "Contact"),
    ("e", "Content-Encoding"),
    ("l", "Content-Length"),
    ("c", "Content-Type"),
    ("f", "From"),
    ("s", "Subject"),
    ("k", "Supported"),
    ("t", "To"),
    ("v", "Via"),
];

/// Unfolds continuation lines, expands compact header names, and writes every header as
/// `Name: value`: the grammar allows whitespace around the colon (§7.3.1 HCOLON) and around
/// the separators of parameters and Via's protocol (§25.1 SLASH, SEMI, EQUAL, COMMA), which
/// the parser underneath does not take.
pub(super) fn canonical_head(head: &str) -> String {
    let mut lines: Vec<String> = Vec::new();
    for (i, line) in head.split("\r\n").enumerate() {
        match lines.last_mut() {
            // §7.3.1: a line starting with whitespace continues the previous header.
            Some(last) if i > 1 && (line.starts_with(' ') || line.starts_with('\t')) => {
                last.push(' ');
                last.push_str(line.trim_start());
            }
            _ => lines.push(line.to_string()),
        }
    }
    let mut out = String::with_capacity(head.len() + 64);
    for (i, line) in lines.iter().enumerate() {
        if i > 0 {
            out.push_str("\r\n");
        }
        let Some((name, value)) = line.split_once(':').filter(|_| i > 0) else {
            // The start line: a request's URI may carry `;` in its user part.
            out.push_str(&escape_user_semicolons(line));
            continue;
        };
        let name = name.trim();
        let name = COMPACT_FORMS
            .iter()
            .find(|(short, _)| name.eq_ignore_ascii_case(short))
            .map_or(name, |(_, long)| long);
        out.push_str(name);
        out.push_str(": ");
        let value = value.trim();
        if ["Via", "From", "To", "Contact"]
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h))
        {
            let value = escape_user_semicolons(value);
            tighten(&value, name.eq_ignore_ascii_case("Via"), &mut out);
        } else {
            out.push_str(value);
        }
    }
    out
}

/// Escapes `;` and `.` inside the user part of SIP URIs (`sip:+4930123;phone-context=
/// example.com@host`, `sip:john.doe@host`): §25.1 allows both there unescaped, as carriers and
/// PBXs send them, but the parser underneath (rsip 0.4) ends a user part at the first `.` and
/// takes `;` for the URI's parameters. Read users back with [`super::message::uri_user`].
pub(super) fn escape_user_semicolons(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains('@') {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    let mut rest = text;
    let next_uri = |s: &str| {
        [
            s.find("sip:").map(|i| i + 4),
            s.find("sips:").map(|i| i + 5),
        ]
        .into_iter()
        .flatten()
        .min()
    };
    while let Some(scheme_end) = next_uri(rest) {
        out.push_str(&rest[..scheme_end]);
        rest = &rest[scheme_end..];
        // The user part ends at `@`; no `@` before the URI ends means there is none.
        let uri_end = rest
            .find(|c: char| c == '>' || c == ',' || c.is_whitespace())
            .unwrap_or(rest.len());
        if let Some(user_end) = rest[..uri_end].find('@') {
            out.push_str(&rest[..user_end].replace(';', "%3B").replace('.', "%2E"));
            rest = &rest[user_end..];
        }
    }
    out.push_str(rest);
    out.into()
}

/// Writes `value` without the whitespace around `;`, `=` and `,` (and, in a Via, `/`)
/// outside quoted strings and `<...>`.
fn tighten(value: &str, via: bool, out: &mut String) {
    let separator = |c: char| matches!(c, ';' | '=' | ',') || (via && c == '/');
    let (mut quoted, mut escaped, mut angle, mut skip_space) = (false, false, false, false);
    for c in value.chars() {
        if quoted {
            out.push(c);
            match (escaped, c) {
                (false, '\\') => escaped = true,
                (false, '"') => quoted = false,
                _ => escaped = false,
            }
            continue;
        }
        match c {
            '"' => quoted = true,
            '<' => angle = true,
            '>' => angle = false,
            _ => {}
        }
        if !angle && separator(c) {
            while out.ends_with([' ', '\t']) {
                out.pop();
            }
            out.push(c);
            skip_space = true;
            continue;
        }
        if skip_space && (c == ' ' || c == '\t') {
            continue;
        }
        skip_space = false;
        out.push(c);
    }
}
