//! The file `tsig-keygen` writes: a tiny subset of `named.conf`, so that one
//! file configures `named` and pg2dns.
//!
//! ```text
//! key "ddns-key" {
//!         algorithm hmac-sha256;
//!         secret "base64…";
//! };
//! ```
//!
//! Secrets are decoded with the `base64` crate's standard engine: padding
//! required, no stray bits.

use base64::Engine as _;

use super::{Algorithm, KeyError, TsigKey};

#[derive(Debug, PartialEq)]
enum Token {
    Word(String),
    Quoted(String),
    Open,
    Close,
    Semi,
}

fn err(line: usize, reason: impl Into<String>) -> KeyError {
    KeyError::Syntax {
        line,
        reason: reason.into(),
    }
}

fn invalid(line: usize, source: KeyError) -> KeyError {
    KeyError::InvalidKey {
        line,
        source: Box::new(source),
    }
}

fn missing(line: usize, key: &str, statement: &'static str) -> KeyError {
    KeyError::MissingStatement {
        line,
        key: key.to_owned(),
        statement,
    }
}

/// Decodes a secret: standard base64 with padding. ASCII whitespace inside
/// is skipped, as BIND does.
fn decode_secret(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    let compact: String = text.split_ascii_whitespace().collect();
    base64::engine::general_purpose::STANDARD.decode(compact)
}

fn tokenize(text: &str) -> Result<Vec<(usize, Token)>, KeyError> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while let Some(c) = chars.next() {
        match c {
            '\n' => line += 1,
            c if c.is_whitespace() => {}
            '#' => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        line += 1;
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        line += 1;
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                let start = line;
                chars.next();
                let mut prev = ' ';
                let mut closed = false;
                for c in chars.by_ref() {
                    if c == '\n' {
                        line += 1;
                    }
                    if prev == '*' && c == '/' {
                        closed = true;
                        break;
                    }
                    prev = c;
                }
                if !closed {
                    return Err(err(start, "unterminated /* comment"));
                }
            }
            '"' => {
                let start = line;
                let mut s = String::new();
                let mut closed = false;
                for c in chars.by_ref() {
                    match c {
                        '"' => {
                            closed = true;
                            break;
                        }
                        '\n' => {
                            line += 1;
                            s.push(c);
                        }
                        c => s.push(c),
                    }
                }
                if !closed {
                    return Err(err(start, "unterminated quoted string"));
                }
                tokens.push((start, Token::Quoted(s)));
            }
            '{' => tokens.push((line, Token::Open)),
            '}' => tokens.push((line, Token::Close)),
            ';' => tokens.push((line, Token::Semi)),
            c => {
                let mut s = String::from(c);
                while let Some(&n) = chars.peek() {
                    if n.is_whitespace() || matches!(n, '{' | '}' | ';' | '"' | '#') {
                        break;
                    }
                    s.push(n);
                    chars.next();
                }
                tokens.push((line, Token::Word(s)));
            }
        }
    }
    Ok(tokens)
}

/// Reads every key of `text`; see [`TsigKey::parse_keygen_file`].
pub(super) fn parse(text: &str) -> Result<Vec<TsigKey>, KeyError> {
    let tokens = tokenize(text)?;
    let last_line = text.lines().count().max(1);
    let mut it = tokens.into_iter().peekable();
    let mut keys: Vec<TsigKey> = Vec::new();
    let mut next = |what: &str| -> Result<(usize, Token), KeyError> {
        it.next()
            .ok_or_else(|| err(last_line, format!("file ends, {what} expected")))
    };
    while let Ok((line, token)) = next("") {
        match token {
            Token::Word(w) if w.eq_ignore_ascii_case("key") => {}
            other => {
                return Err(err(
                    line,
                    format!("expected `key`, found {}", describe(&other)),
                ))
            }
        }
        let (name_line, name) = match next("a key name")? {
            (l, Token::Word(n) | Token::Quoted(n)) => (l, n),
            (l, other) => {
                return Err(err(
                    l,
                    format!("expected a key name, found {}", describe(&other)),
                ))
            }
        };
        match next("`{`")? {
            (_, Token::Open) => {}
            (l, other) => return Err(err(l, format!("expected `{{`, found {}", describe(&other)))),
        }
        let mut algorithm = None;
        let mut secret = None;
        loop {
            let (l, token) = next("`}`")?;
            let field = match token {
                Token::Close => break,
                Token::Word(w) => w.to_ascii_lowercase(),
                other => {
                    return Err(err(
                        l,
                        format!(
                            "expected `algorithm`, `secret` or `}}`, found {}",
                            describe(&other)
                        ),
                    ))
                }
            };
            let value = match next("a value")? {
                (_, Token::Word(v) | Token::Quoted(v)) => v,
                (l, other) => {
                    return Err(err(
                        l,
                        format!("expected a value for `{field}`, found {}", describe(&other)),
                    ))
                }
            };
            match next("`;`")? {
                (_, Token::Semi) => {}
                (l, other) => {
                    return Err(err(l, format!("expected `;`, found {}", describe(&other))))
                }
            }
            match field.as_str() {
                "algorithm" => {
                    let alg: Algorithm = value.parse().map_err(|e| invalid(l, e))?;
                    algorithm = Some(alg);
                }
                "secret" => {
                    let bytes =
                        decode_secret(&value).map_err(|source| KeyError::SecretNotBase64 {
                            line: l,
                            key: name.clone(),
                            source,
                        })?;
                    secret = Some(bytes);
                }
                other => return Err(err(l, format!("unknown key statement `{other}`"))),
            }
        }
        match next("`;`")? {
            (_, Token::Semi) => {}
            (l, other) => {
                return Err(err(
                    l,
                    format!("expected `;` after `}}`, found {}", describe(&other)),
                ))
            }
        }
        let algorithm = algorithm.ok_or_else(|| missing(name_line, &name, "algorithm"))?;
        let secret = secret.ok_or_else(|| missing(name_line, &name, "secret"))?;
        let key = TsigKey::new(&name, algorithm, secret).map_err(|e| invalid(name_line, e))?;
        if keys.iter().any(|k| k.name == key.name) {
            return Err(KeyError::Duplicate {
                line: name_line,
                key: key.name.to_string(),
            });
        }
        keys.push(key);
    }
    if keys.is_empty() {
        return Err(KeyError::NoKey { line: last_line });
    }
    Ok(keys)
}

fn describe(token: &Token) -> String {
    match token {
        Token::Word(w) => format!("`{w}`"),
        Token::Quoted(q) => format!("\"{q}\""),
        Token::Open => "`{`".into(),
        Token::Close => "`}`".into(),
        Token::Semi => "`;`".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tsig::fixtures::KEYS;
    use proptest::prelude::*;

    /// The line of a key file error, and its message with every cause.
    fn line_and_chain(err: &KeyError) -> (usize, String) {
        let line = match err {
            KeyError::Syntax { line, .. }
            | KeyError::SecretNotBase64 { line, .. }
            | KeyError::MissingStatement { line, .. }
            | KeyError::InvalidKey { line, .. }
            | KeyError::Duplicate { line, .. }
            | KeyError::NoKey { line } => *line,
            other => panic!("not a key file error: {other:?}"),
        };
        let mut chain = err.to_string();
        let mut source = std::error::Error::source(err);
        while let Some(cause) = source {
            chain.push_str(": ");
            chain.push_str(&cause.to_string());
            source = cause.source();
        }
        (line, chain)
    }

    #[test]
    fn the_keygen_file_with_several_keys_and_comments_parses() {
        let keys = TsigKey::parse_keygen_file(KEYS).unwrap();
        let summary: Vec<String> = keys
            .iter()
            .map(|k| format!("{} {}", k.name, k.algorithm))
            .collect();
        assert_eq!(
            summary,
            [
                "k-sha1. hmac-sha1",
                "k-sha224. hmac-sha224",
                "k-sha256. hmac-sha256",
                "k-sha384. hmac-sha384",
                "k-sha512. hmac-sha512"
            ]
        );
        assert_eq!(keys[2].secret().len(), 32);
        assert_eq!(keys[4].secret().len(), 64);
    }

    #[test]
    fn key_file_mistakes_are_reported_with_their_line() {
        let cases = [
            ("key \"a\" {\n algorithm hmac-sha256;\n};\n", 1, "no `secret`"),
            ("key \"a\" {\n algorithm hmac-md5;\n secret \"AAAA\";\n};", 2, "unsupported TSIG algorithm"),
            ("# c\nkey a {\n algorithm hmac-sha1;\n secret \"AA!A\";\n};", 4, "not valid base64"),
            ("key a {\n algorithm hmac-sha1\n secret \"AAAA\";\n};", 3, "expected `;`"),
            ("/* open\n\nkey a {};", 1, "unterminated"),
            ("options { };", 1, "expected `key`"),
            ("", 1, "no key found"),
            ("key a { algorithm hmac-sha1; secret \"AAAA\"; };\nkey A { algorithm hmac-sha1; secret \"AAAA\"; };", 2, "defined twice"),
            ("key a { algorithm hmac-sha1; secret \"AAAA\"; }", 1, "file ends"),
            ("key \"\" { algorithm hmac-sha1; secret \"AAAA\"; };", 1, "key name is empty"),
            ("key a { algorithm hmac-sha1; secret \"\"; };", 1, "empty secret"),
        ];
        for (text, line, reason) in cases {
            let err = TsigKey::parse_keygen_file(text).unwrap_err();
            let (l, chain) = line_and_chain(&err);
            assert_eq!(l, line, "{text:?}: {chain}");
            assert!(chain.contains(reason), "{text:?}: {chain}");
        }
    }

    #[test]
    fn a_bad_secret_keeps_the_decoder_error_as_its_source() {
        let err = TsigKey::parse_keygen_file("key a { algorithm hmac-sha1; secret \"AA!A\"; };")
            .unwrap_err();
        assert!(
            matches!(&err, KeyError::SecretNotBase64 { line: 1, key, source: base64::DecodeError::InvalidByte(2, b'!') } if key == "a"),
            "{err:?}"
        );
        assert!(!err.to_string().contains("Invalid"), "{err}");
    }

    proptest! {
        #[test]
        fn the_key_file_parser_never_panics(text in "\\PC{0,200}") {
            let _ = TsigKey::parse_keygen_file(&text);
        }

        #[test]
        fn a_secret_split_by_whitespace_reads_back(
            bytes in proptest::collection::vec(any::<u8>(), 1..100),
            cut in any::<usize>(),
        ) {
            let text = base64::engine::general_purpose::STANDARD.encode(&bytes);
            let cut = cut % (text.len() + 1);
            let file = format!(
                "key k {{ algorithm hmac-sha256; secret \"{}\n\t {}\"; }};",
                &text[..cut],
                &text[cut..]
            );
            let keys = TsigKey::parse_keygen_file(&file).unwrap();
            prop_assert_eq!(keys[0].secret(), &bytes[..]);
        }
    }
}
