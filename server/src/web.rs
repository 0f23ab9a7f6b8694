//! The web client: the pages and static files under `web-client/`, embedded
//! in the binary at compile time (a single-file deploy, no build step).
//!
//! - `/` start page, `/widget` customer chat (may be framed by any site),
//!   `/console` agents, `/dashboard` supervisors, `/admin` administrators
//!   (these three refuse to be framed);
//! - `/embed.js` the snippet other sites paste (loadable cross-origin);
//! - `/static/{path}` the modules and styles of the pages; `/static/vendor/…`
//!   the vendored third-party files, whose directory names carry their
//!   version, so they are cached for a year.
//!
//! Every answer has a strong `ETag` (SHA-256 of the bytes) and honours
//! `If-None-Match`; pages and modules are `no-cache` (revalidated, so a new
//! deploy is seen at once). Pages get a strict Content-Security-Policy: only
//! same-origin scripts, styles and connections, no inline code.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// One embedded file: its path under `web-client/`, bytes and content type.
struct Asset {
    path: &'static str,
    body: &'static [u8],
    mime: &'static str,
}

macro_rules! asset {
    ($path:literal, $mime:expr) => {
        Asset {
            path: $path,
            body: include_bytes!(concat!("../../web-client/", $path)),
            mime: $mime,
        }
    };
}

static ASSETS: &[Asset] = &[
    asset!("index.html", HTML),
    asset!("widget.html", HTML),
    asset!("console.html", HTML),
    asset!("dashboard.html", HTML),
    asset!("admin.html", HTML),
    asset!("embed.js", JS),
    asset!("static/sb.js", JS),
    asset!("static/i18n.js", JS),
    asset!("static/ui.js", JS),
    asset!("static/chat.js", JS),
    asset!("static/widgetstate.js", JS),
    asset!("static/staff.js", JS),
    asset!("static/widget.js", JS),
    asset!("static/console.js", JS),
    asset!("static/dashboard.js", JS),
    asset!("static/admin.js", JS),
    asset!("static/widget.css", CSS),
    asset!("static/staff.css", CSS),
    asset!("vendor/uplot-1.6.32/uPlot.iife.min.js", JS),
    asset!("vendor/uplot-1.6.32/uPlot.min.css", CSS),
    asset!("vendor/uplot-1.6.32/LICENSE", TEXT),
];

/// The Content-Security-Policy of the pages. `frame-ancestors` is appended:
/// `*` for the widget (it lives in other sites' iframes), `'none'` otherwise.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' blob: data:; media-src 'self' blob:; connect-src 'self'; \
     font-src 'self'; form-action 'self'; base-uri 'none'; frame-src 'none'; \
     object-src 'none'";

/// How an answer may be framed and cached.
#[derive(Clone, Copy)]
enum Kind {
    /// A page that refuses to be framed.
    Page,
    /// The widget page: any site may frame it.
    FramablePage,
    /// A module or stylesheet of the pages (same origin).
    Module,
    /// `/embed.js`: loaded by other sites.
    Embed,
    /// A vendored file in a versioned directory.
    Vendor,
}

/// The routes of the web client.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|h: HeaderMap| serve(h, "index.html", Kind::Page)))
        .route(
            "/widget",
            get(|h: HeaderMap| serve(h, "widget.html", Kind::FramablePage)),
        )
        .route(
            "/console",
            get(|h: HeaderMap| serve(h, "console.html", Kind::Page)),
        )
        .route(
            "/dashboard",
            get(|h: HeaderMap| serve(h, "dashboard.html", Kind::Page)),
        )
        .route(
            "/admin",
            get(|h: HeaderMap| serve(h, "admin.html", Kind::Page)),
        )
        .route(
            "/embed.js",
            get(|h: HeaderMap| serve(h, "embed.js", Kind::Embed)),
        )
        .route("/static/{*path}", get(static_file))
}

async fn static_file(headers: HeaderMap, Path(path): Path<String>) -> Response {
    match path.strip_prefix("vendor/") {
        Some(rest) => serve(headers, &format!("vendor/{rest}"), Kind::Vendor).await,
        None => serve(headers, &format!("static/{path}"), Kind::Module).await,
    }
}

/// The strong ETag of every asset, in the order of [`ASSETS`].
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| format!("\"{}\"", &hex::encode(Sha256::digest(a.body))[..32]))
            .collect()
    })
}

async fn serve(headers: HeaderMap, path: &str, kind: Kind) -> Response {
    let Some(index) = ASSETS.iter().position(|a| a.path == path) else {
        return (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, TEXT)],
            "not found\n",
        )
            .into_response();
    };
    let asset = &ASSETS[index];
    let etag = &etags()[index];
    let cache = match kind {
        Kind::Vendor => "public, max-age=31536000, immutable",
        Kind::Embed => "public, max-age=300, must-revalidate",
        Kind::Page | Kind::FramablePage | Kind::Module => "no-cache",
    };
    let mut out = HeaderMap::new();
    let mut set = |name: header::HeaderName, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            out.insert(name, v);
        }
    };
    set(header::ETAG, etag);
    set(header::CACHE_CONTROL, cache);
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(header::REFERRER_POLICY, "no-referrer");
    match kind {
        Kind::Page => {
            set(
                header::CONTENT_SECURITY_POLICY,
                &format!("{CSP}; frame-ancestors 'none'"),
            );
            set(header::X_FRAME_OPTIONS, "DENY");
        }
        Kind::FramablePage => {
            set(
                header::CONTENT_SECURITY_POLICY,
                &format!("{CSP}; frame-ancestors *"),
            );
        }
        Kind::Embed => {
            set(
                header::HeaderName::from_static("cross-origin-resource-policy"),
                "cross-origin",
            );
        }
        Kind::Module | Kind::Vendor => {
            set(
                header::HeaderName::from_static("cross-origin-resource-policy"),
                "same-origin",
            );
        }
    }
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if fresh {
        return (StatusCode::NOT_MODIFIED, out).into_response();
    }
    set(header::CONTENT_TYPE, asset.mime);
    (out, asset.body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_has_a_unique_path_and_a_body() {
        for (i, a) in ASSETS.iter().enumerate() {
            assert!(!a.body.is_empty(), "{} is empty", a.path);
            assert!(
                ASSETS[i + 1..].iter().all(|b| b.path != a.path),
                "{} twice",
                a.path
            );
        }
        assert_eq!(etags().len(), ASSETS.len());
    }

    #[test]
    fn pages_reference_only_embedded_same_origin_files() {
        // Every `/static/…` URL named in a page or module must be embedded,
        // or the page breaks only once deployed.
        for a in ASSETS.iter().filter(|a| a.mime == HTML || a.mime == JS) {
            let text = std::str::from_utf8(a.body).unwrap();
            for (at, _) in text.match_indices("/static/") {
                let rest = &text[at + "/static/".len()..];
                let end = rest
                    .find(['"', '\'', '`', ')', ' ', '?', '#'])
                    .unwrap_or(rest.len());
                let target = &rest[..end];
                if target.is_empty() || a.path.starts_with("vendor/") {
                    continue;
                }
                let key = match target.strip_prefix("vendor/") {
                    Some(v) => format!("vendor/{v}"),
                    None => format!("static/{target}"),
                };
                assert!(
                    ASSETS.iter().any(|b| b.path == key),
                    "{} names /static/{target}, which is not embedded",
                    a.path
                );
            }
        }
    }
}
