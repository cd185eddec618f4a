//! The operator's web console at `/admin/console/`: static HTML, CSS and
//! JavaScript modules from `backend/console/`, compiled into the binary.
//!
//! Serving is all this module does. The pages hold no secret and need no
//! token; every action they offer is a call of the admin API from the
//! browser, with the bearer token the operator pasted, under that API's
//! own role checks. Nothing here reads or writes a store.

use axum::{
    Router,
    extract::Path,
    http::{HeaderValue, header},
    response::{IntoResponse, Redirect, Response},
    routing::get,
};

use super::{AppState, error::ApiError};

/// Where the console lives; `/admin/console` redirects here.
pub const PATH: &str = "/admin/console/";

/// One embedded file: its name under [`PATH`], content type and bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../../console/index.html"),
    },
    Asset {
        name: "console.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../../console/console.css"),
    },
    Asset {
        name: "console.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../console/console.js"),
    },
    Asset {
        name: "api.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../console/api.js"),
    },
    Asset {
        name: "dashboard.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../console/dashboard.js"),
    },
];

/// Scripts and styles from this origin only; API calls to this origin only.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// The console's routes, merged into the API router.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/admin/console",
            get(|| async { Redirect::permanent(PATH) }),
        )
        .route(PATH, get(|| async { serve("index.html") }))
        .route(
            "/admin/console/{file}",
            get(|Path(file): Path<String>| async move { serve(&file) }),
        )
}

fn serve(name: &str) -> Response {
    let Some(a) = ASSETS.iter().find(|a| a.name == name) else {
        return ApiError::NotFound("no such console file".into()).into_response();
    };
    let mut resp = a.body.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(a.content_type),
    );
    // The files change with the binary: always revalidate.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_the_page_names_is_embedded() {
        let index = ASSETS[0].body;
        for a in &ASSETS[1..] {
            let js_import = ASSETS
                .iter()
                .any(|o| o.body.contains(&format!("./{}", a.name)));
            assert!(
                index.contains(a.name) || js_import,
                "{} is embedded but nothing loads it",
                a.name
            );
        }
        assert!(serve("nope.js").status().is_client_error());
        assert!(serve("index.html").status().is_success());
    }
}
