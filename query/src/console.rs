//! The built-in console: static files under `query/console/`, embedded in the
//! binary at build time, served at `/` (the page) and `/console/…` (its
//! scripts, styles and the vendored chart library). No build step: the page
//! is plain HTML, CSS and ES modules, and reads everything it shows from this
//! server's own API (`/api/v1/clusters`, `/api/v1/sql`).
//!
//! Every answer carries a strict Content-Security-Policy (scripts, styles and
//! requests from this origin only; no inline script or style, no framing),
//! `nosniff`, and `Cache-Control: no-cache` with an `ETag`, so a browser asks
//! again each time and gets `304 Not Modified` until the binary changes.
//! The console needs no token to load; its API calls do when `--token` is set.

use std::hash::{Hash as _, Hasher as _};
use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// The policy of every console answer.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    /// Its path under `/console/`.
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $content_type:literal) => {
        Asset {
            path: $path,
            content_type: $content_type,
            body: include_bytes!(concat!("../console/", $path)),
        }
    };
}

/// Every file of the console; nothing else is served under `/console/`.
static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("console.css", "text/css; charset=utf-8"),
    asset!("console.js", "text/javascript; charset=utf-8"),
    asset!("api.js", "text/javascript; charset=utf-8"),
    asset!("charts.js", "text/javascript; charset=utf-8"),
    asset!("sql.js", "text/javascript; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("vendor/uPlot.esm.js", "text/javascript; charset=utf-8"),
    asset!("vendor/uPlot.min.css", "text/css; charset=utf-8"),
    asset!("vendor/uPlot.LICENSE", "text/plain; charset=utf-8"),
];

/// Each asset's entity tag, in the order of [`ASSETS`]: a hash of its bytes.
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|asset| {
            let mut hasher = std::hash::DefaultHasher::new();
            asset.body.hash(&mut hasher);
            HeaderValue::from_str(&format!("\"{:016x}\"", hasher.finish())).expect("hex is a valid header value")
        })
        .collect()
});

/// `GET /` and `GET /console/{path}` (merge into the service's router).
pub fn console_router() -> Router {
    Router::new()
        .route(
            "/",
            get(|headers: HeaderMap| async move { serve("index.html", &headers) }),
        )
        .route(
            "/console/{*path}",
            get(|Path(path): Path<String>, headers: HeaderMap| async move { serve(&path, &headers) }),
        )
}

fn serve(path: &str, request: &HeaderMap) -> Response {
    let Some(index) = ASSETS.iter().position(|asset| asset.path == path) else {
        let mut response = (StatusCode::NOT_FOUND, "no such file in the console\n").into_response();
        secure(response.headers_mut());
        return response;
    };
    let (asset, etag) = (&ASSETS[index], &ETAGS[index]);
    let unchanged = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|tag| tag.trim() == etag || tag.trim() == "*"));
    let mut response = if unchanged {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut response = asset.body.into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
        response
    };
    let headers = response.headers_mut();
    headers.insert(header::ETAG, etag.clone());
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    secure(headers);
    response
}

fn secure(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_named_once_and_typed_by_its_extension() {
        for (index, asset) in ASSETS.iter().enumerate() {
            assert!(!asset.body.is_empty(), "{} is empty", asset.path);
            assert_eq!(
                ASSETS.iter().position(|a| a.path == asset.path),
                Some(index),
                "{} twice",
                asset.path
            );
            let extension = asset.path.rsplit('.').next().unwrap_or("");
            let expected = match extension {
                "html" => "text/html",
                "css" => "text/css",
                "js" => "text/javascript",
                "svg" => "image/svg+xml",
                _ => "text/plain",
            };
            assert!(asset.content_type.starts_with(expected), "{}", asset.path);
        }
    }

    #[test]
    fn every_file_of_the_console_directory_is_served() {
        fn files(dir: &std::path::Path, prefix: &str, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let entry = entry.unwrap();
                let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
                if entry.file_type().unwrap().is_dir() {
                    files(&entry.path(), &format!("{name}/"), out);
                } else if !name.ends_with("README.md") {
                    out.push(name);
                }
            }
        }
        let mut found = Vec::new();
        files(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("console"),
            "",
            &mut found,
        );
        for name in found {
            assert!(ASSETS.iter().any(|a| a.path == name), "console/{name} is not in ASSETS");
        }
    }

    #[test]
    fn the_page_has_no_inline_script_or_style() {
        let page = std::str::from_utf8(ASSETS[0].body).unwrap();
        assert_eq!(ASSETS[0].path, "index.html");
        assert!(
            !page.contains("<script>") && !page.contains("<style"),
            "inline script or style"
        );
        assert!(!page.contains("style="), "inline style");
        let handler = page.split(" on").skip(1).any(|after| {
            let name: String = after.chars().take_while(char::is_ascii_alphabetic).collect();
            !name.is_empty() && after[name.len()..].starts_with('=')
        });
        assert!(!handler, "an inline event handler");
    }
}
