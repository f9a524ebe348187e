//! Optional bearer-token authentication of `hotpool serve`.
//!
//! Tokens come from a file, one per line (blank lines and lines starting with `#`
//! are skipped). A request is let in when its `Authorization: Bearer <token>`
//! matches one of them; the comparison takes the same time wherever the first
//! differing byte is, so response times do not leak a token byte by byte.

use std::path::Path;

use axum::http::{HeaderMap, header};

/// The tokens that let a request in.
#[derive(Clone)]
pub struct Tokens(Vec<Vec<u8>>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} configured)", self.0.len())
    }
}

/// Why a tokens file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Unreadable {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds no token.
    #[error("{path} holds no token (one per line; `#` starts a comment)")]
    Empty {
        /// The file.
        path: String,
    },
}

impl Tokens {
    /// Reads the tokens of `path`.
    pub fn load(path: &Path) -> Result<Tokens, TokensError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Unreadable {
            path: path.display().to_string(),
            source,
        })?;
        Tokens::parse(&text).ok_or_else(|| TokensError::Empty {
            path: path.display().to_string(),
        })
    }

    /// The tokens of a file's text; `None` if there is none.
    pub fn parse(text: &str) -> Option<Tokens> {
        let tokens: Vec<Vec<u8>> = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(|line| line.as_bytes().to_vec())
            .collect();
        (!tokens.is_empty()).then_some(Tokens(tokens))
    }

    /// Whether the request's headers carry one of the tokens.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        let Some(given) = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| bearer(value.as_bytes()))
        else {
            return false;
        };
        // Every token is compared, so which one matched does not show either.
        self.0
            .iter()
            .fold(false, |found, token| found | constant_time_eq(token, given))
    }
}

/// The token of a `Bearer <token>` header value (the scheme in any case).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| token.trim_ascii())
}

/// Whether `a == b`, in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let longest = a.len().max(b.len());
    let mut difference = u8::from(a.len() != b.len());
    for i in 0..longest {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        difference |= x ^ y;
    }
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_authorization(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn the_file_skips_blanks_and_comments() {
        let tokens = Tokens::parse("# ops\n\n  alpha  \nbeta\n").unwrap();
        assert_eq!(tokens.0, [b"alpha".to_vec(), b"beta".to_vec()]);
        assert!(Tokens::parse("# only a comment\n\n").is_none());
    }

    #[test]
    fn only_a_listed_bearer_token_is_admitted() {
        let tokens = Tokens::parse("alpha\nbeta\n").unwrap();
        assert!(tokens.admits(&with_authorization("Bearer alpha")));
        assert!(tokens.admits(&with_authorization("bearer beta")));
        for refused in [
            "Bearer alph",
            "Bearer alphaa",
            "Bearer ",
            "Basic alpha",
            "alpha",
        ] {
            assert!(
                !tokens.admits(&with_authorization(refused)),
                "{refused:?} must be refused"
            );
        }
        assert!(!tokens.admits(&HeaderMap::new()));
    }

    #[test]
    fn comparison_is_exact() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abc\0"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn missing_file_is_an_error_naming_it() {
        let error = Tokens::load(Path::new("/nonexistent/tokens")).unwrap_err();
        assert!(error.to_string().contains("/nonexistent/tokens"), "{error}");
    }
}
