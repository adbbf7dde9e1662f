//! The dashboard's script, style sheet and uPlot, built into the binary:
//! the dashboard needs no internet and no other web server. uPlot comes
//! from npm, pinned with its checksum in `assets/package-lock.json`;
//! `scripts/ui-assets.sh` fetches it again and checks these copies.

use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};

const FILES: &[(&str, &str, &[u8])] = &[
    (
        "ui.js",
        "text/javascript",
        include_bytes!("../assets/ui.js"),
    ),
    ("ui.css", "text/css", include_bytes!("../assets/ui.css")),
    (
        "uPlot.iife.min.js",
        "text/javascript",
        include_bytes!("../assets/vendor/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        "text/css",
        include_bytes!("../assets/vendor/uPlot.min.css"),
    ),
];

pub(crate) async fn serve(Path(name): Path<String>) -> Response {
    match FILES.iter().find(|(file, _, _)| *file == name) {
        Some((_, kind, body)) => (
            [
                (header::CONTENT_TYPE, *kind),
                // A new binary may bring new files under the same names.
                (header::CACHE_CONTROL, "no-cache"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            *body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}
