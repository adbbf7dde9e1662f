//! The sign-in and sign-out pages: an API key given on the sign-in page
//! opens a session ([`crate::session`]) and sets its cookie.

use std::sync::Arc;
use std::time::Duration;

use axum::Form;
use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use http::{HeaderMap, StatusCode, header};
use jetsonmind_core::auth::Principal;
use serde::Deserialize;

use crate::session::{cookie_token, set_cookie, unavailable};
use crate::{Dashboard, html};

pub(crate) async fn login_page(State(ui): State<Arc<Dashboard>>) -> Response {
    if !ui.auth.required() {
        return Redirect::to("/ui").into_response();
    }
    html::sign_in(None).into_response()
}

#[derive(Deserialize)]
pub(crate) struct SignIn {
    key: String,
}

pub(crate) async fn login(State(ui): State<Arc<Dashboard>>, Form(form): Form<SignIn>) -> Response {
    let signed = match ui.auth.required() {
        false => Some((Principal::local(), None)),
        true => ui.auth.keys().verify(form.key.trim()).map(|(key, scopes)| {
            let principal = Principal::api_key(&key.id, key.name, scopes);
            (principal, Some(key.id))
        }),
    };
    let Some((principal, key_id)) = signed else {
        let page = html::sign_in(Some("unknown or revoked API key"));
        return (StatusCode::UNAUTHORIZED, page).into_response();
    };
    tracing::info!(caller = %principal.id, "signed in to the dashboard");
    let Some((token, _)) = ui.sessions.open(principal, key_id) else {
        return unavailable();
    };
    let mut response = Redirect::to("/ui").into_response();
    let cookie = set_cookie(&token, ui.sessions.ttl);
    response.headers_mut().append(header::SET_COOKIE, cookie);
    response
}

pub(crate) async fn logout(State(ui): State<Arc<Dashboard>>, headers: HeaderMap) -> Response {
    if let Some(token) = cookie_token(&headers) {
        ui.sessions.close(token);
    }
    let mut response = Redirect::to("/ui/login").into_response();
    let gone = set_cookie("", Duration::ZERO);
    response.headers_mut().append(header::SET_COOKIE, gone);
    response
}
