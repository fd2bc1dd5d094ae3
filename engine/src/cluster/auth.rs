//! The shared token between the caller and its workers (`TALLY_TOKEN`).
//!
//! A worker runs whatever plan it is sent, with the lake's credentials: with a token set it
//! refuses every request that does not carry it, and it binds loopback only without one (like
//! `tally serve`). The caller sends the token as `authorization: Bearer …` on every request;
//! a worker that calls another worker (a multi-stage plan) forwards it.

use crate::serve::auth::Token;
use axum::http::{self, HeaderMap, HeaderValue};
use tonic::{Request, Status};

/// The header to send with every request, or `None` without a token.
pub fn headers(token: &Token) -> Option<HeaderMap> {
    let bearer = token.bearer()?;
    let mut value = HeaderValue::from_str(&bearer).ok()?;
    // Never printed in a header dump.
    value.set_sensitive(true);
    let mut headers = HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, value);
    Some(headers)
}

/// A tonic interceptor that refuses requests without `token` (all pass without one).
pub fn check(token: Token) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    crate::serve::auth::grpc_guard(
        token,
        "missing or wrong token: this worker requires the caller's TALLY_TOKEN",
    )
}
