//! The one shared secret every endpoint of `tally serve` checks.
//!
//! With `TALLY_TOKEN` set, a client proves itself with the token: as a bearer token, as the
//! password of HTTP basic auth (any user name; BI tools only offer user + password), or as
//! the Postgres password. The token is compared in constant time and never printed, logged or
//! put in an error message; `Debug` shows only whether one is set.

use base64::Engine;
use std::fmt;

/// The server's token, if any.
#[derive(Clone, Default)]
pub struct Token(Option<String>);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Token(set)"
        } else {
            "Token(none)"
        })
    }
}

impl Token {
    /// `None` or an empty string means no authentication.
    pub fn new(token: Option<String>) -> Self {
        Self(token.filter(|t| !t.is_empty()))
    }

    /// True when clients must present the token.
    pub fn is_required(&self) -> bool {
        self.0.is_some()
    }

    /// True when `presented` is the token (always true without one).
    pub fn accepts(&self, presented: &str) -> bool {
        match &self.0 {
            None => true,
            Some(token) => constant_time_eq(token.as_bytes(), presented.as_bytes()),
        }
    }

    /// Checks an `Authorization` header value: `Bearer <token>` or `Basic base64(user:token)`.
    pub fn accepts_header(&self, header: Option<&str>) -> bool {
        if !self.is_required() {
            return true;
        }
        let Some(header) = header else {
            return false;
        };
        let (scheme, value) = header.trim().split_once(' ').unwrap_or((header, ""));
        if scheme.eq_ignore_ascii_case("bearer") {
            self.accepts(value.trim())
        } else if scheme.eq_ignore_ascii_case("basic") {
            basic_password(value.trim()).is_some_and(|p| self.accepts(&p))
        } else {
            false
        }
    }

    /// The `authorization` value a Flight handshake answers with: `Bearer <token>`.
    pub(crate) fn bearer(&self) -> Option<String> {
        self.0.as_ref().map(|t| format!("Bearer {t}"))
    }
}

/// Standard base64 with or without padding: the Arrow Flight Go client (under ADBC) sends
/// basic credentials unpadded.
const BASIC: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// The password of a basic-auth value (`base64(user:password)`).
fn basic_password(value: &str) -> Option<String> {
    let bytes = BASIC.decode(value).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    text.split_once(':').map(|(_, p)| p.to_string())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A tonic interceptor: lets a gRPC request through when its `authorization` metadata carries
/// the token, and answers `unauthenticated` with `refusal` otherwise. Shared by Flight SQL
/// and `tally worker`.
pub fn grpc_guard(
    token: Token,
    refusal: &'static str,
) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone {
    move |req: tonic::Request<()>| {
        let header = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if token.accepts_header(header) {
            Ok(req)
        } else {
            Err(tonic::Status::unauthenticated(refusal))
        }
    }
}

/// HTTP middleware: lets a request through when it carries the token (bearer or basic), and
/// answers 401 with the schemes a browser or scraper can use otherwise. Shared by `tally
/// serve`'s HTTP endpoint and `tally live --metrics`.
pub async fn http_guard(
    axum::extract::State(token): axum::extract::State<Token>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if token.accepts_header(presented) {
        next.run(request).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"tally\", Bearer")],
            "missing or wrong token\n",
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, pass: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        )
    }

    #[test]
    fn bearer_and_basic_carry_the_token() {
        let t = Token::new(Some("s3cret".into()));
        assert!(t.accepts_header(Some("Bearer s3cret")));
        assert!(t.accepts_header(Some(&basic("anyone", "s3cret"))));
        // Unpadded, as the Go Flight client sends it.
        let unpadded = basic("bi-tool", "s3cret").trim_end_matches('=').to_string();
        assert!(t.accepts_header(Some(&unpadded)));
        assert!(!t.accepts_header(Some("Bearer s3cre")));
        assert!(!t.accepts_header(Some(&basic("s3cret", "x"))));
        assert!(!t.accepts_header(None));
        assert!(!t.accepts_header(Some("s3cret")));
    }

    #[test]
    fn no_token_accepts_everyone_and_debug_hides_the_token() {
        assert!(Token::new(None).accepts_header(None));
        assert!(Token::new(Some(String::new())).accepts("x"));
        assert_eq!(
            format!("{:?}", Token::new(Some("s3cret".into()))),
            "Token(set)"
        );
    }
}
