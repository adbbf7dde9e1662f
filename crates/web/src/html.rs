//! HTML on the server: every page is the same frame (navigation, who is
//! signed in, the CSRF token for the script) around a body. Text that did
//! not come from this crate goes through [`esc`], always.

use std::fmt::Write;

use axum::response::Html;

use crate::Can;
use crate::session::Session;

/// `text` safe in HTML text and in quoted attribute values.
pub(crate) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A page's path, its name, and whether a caller sees it.
type Tab = (&'static str, &'static str, fn(&Can) -> bool);

/// The pages, in the navigation's order.
const TABS: &[Tab] = &[
    ("/ui", "Overview", |_| true),
    ("/ui/charts", "Charts", Can::charts),
    ("/ui/models", "Models", |can| can.models),
    ("/ui/playground", "Playground", Can::playground),
    ("/ui/settings", "Settings", |can| can.settings),
    ("/ui/keys", "API keys", |can| can.keys),
    ("/ui/connections", "Connections", |can| can.connections),
];

/// `body` in the frame, with `path`'s tab marked.
pub(crate) fn page(path: &str, session: &Session, can: &Can, body: &str) -> Html<String> {
    let title = TABS
        .iter()
        .find(|(p, _, _)| *p == path)
        .map_or("JetsonMind", |(_, t, _)| t);
    let mut nav = String::new();
    for (href, label, shown) in TABS {
        if shown(can) {
            let current = if *href == path {
                r#" aria-current="page""#
            } else {
                ""
            };
            let _ = write!(nav, r#"<a href="{href}"{current}>{label}</a>"#);
        }
    }
    let who = esc(&session.principal.name);
    let csrf = esc(&session.csrf);
    Html(format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="csrf" content="{csrf}">
<link rel="icon" href="data:,">
<title>{title} · JetsonMind</title>
<link rel="stylesheet" href="/ui/assets/ui.css">
<link rel="stylesheet" href="/ui/assets/uPlot.min.css">
</head><body>
<header><strong>JetsonMind</strong><nav>{nav}</nav>
<form method="post" action="/ui/logout" class="who"><span>{who}</span>
<input type="hidden" name="csrf" value="{csrf}"><button>Sign out</button></form></header>
<main id="page-{id}">{body}</main>
<script src="/ui/assets/uPlot.iife.min.js"></script>
<script src="/ui/assets/ui.js"></script>
</body></html>"#,
        id = title.to_lowercase().replace(' ', "-"),
    ))
}

/// The sign-in page, with why the last try failed.
pub(crate) fn sign_in(error: Option<&str>) -> Html<String> {
    let error = error.map_or(String::new(), |e| {
        format!(r#"<p class="error" role="alert">{}</p>"#, esc(e))
    });
    Html(format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in · JetsonMind</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/ui/assets/ui.css"></head><body>
<main class="sign-in"><h1>JetsonMind</h1>
<form method="post" action="/ui/login">
<label>API key <input type="password" name="key" autocomplete="off" required autofocus></label>
{error}<button>Sign in</button></form>
<p class="hint">Keys come from <code>jetsonmind keys create</code> or an administrator.</p>
</main></body></html>"#
    ))
}

/// A table of `rows`, each cell already HTML.
pub(crate) fn table(id: &str, head: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = format!(r#"<table id="{id}"><thead><tr>"#);
    for h in head {
        let _ = write!(out, "<th>{h}</th>");
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{cell}</td>");
        }
        out.push_str("</tr>");
    }
    if rows.is_empty() {
        let _ = write!(
            out,
            r#"<tr><td colspan="{}" class="none">none</td></tr>"#,
            head.len()
        );
    }
    out.push_str("</tbody></table>");
    out
}

/// A reading, or a dash for one the device does not have.
pub(crate) fn figure(value: Option<f64>, unit: &str) -> String {
    value.map_or_else(|| "–".to_string(), |v| format!("{v:.1}{unit}"))
}

pub(crate) fn bytes(value: Option<u64>) -> String {
    value.map_or_else(
        || "–".to_string(),
        |b| format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
    )
}

/// A section saying why part of a page is missing (the gateway's refusal).
pub(crate) fn unavailable(what: &str, why: &str) -> String {
    format!(
        r#"<p class="error">{} is not available: {}</p>"#,
        esc(what),
        esc(why)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_text_is_shown_not_run() {
        assert_eq!(
            esc(r#"<script>alert("x" & 'y')</script>"#),
            "&lt;script&gt;alert(&quot;x&quot; &amp; &#39;y&#39;)&lt;/script&gt;"
        );
    }

    #[test]
    fn a_caller_sees_only_the_tabs_it_may_use() {
        let session = Session {
            principal: jetsonmind_core::auth::Principal::local(),
            csrf: "t".into(),
        };
        let can = Can {
            metrics: true,
            analytics: true,
            ..Can::default()
        };
        let Html(page) = page("/ui/charts", &session, &can, "");
        assert!(page.contains(r#"<a href="/ui/charts" aria-current="page">Charts</a>"#));
        assert!(!page.contains("/ui/keys") && !page.contains("/ui/playground"));
    }
}
