//! The operator's web console at `/admin/console/`: static HTML, CSS and
//! JavaScript modules from `backend/console/`, compiled into the binary.
//!
//! Serving is all this module does. The pages hold no secret and need no
//! token; every action they offer is a call of the admin API from the
//! browser, with the bearer token the operator pasted, under that API's
//! own role checks. Nothing here reads or writes a store.

use axum::{
    extract::Path,
    http::{HeaderValue, header},
    response::{IntoResponse, Redirect, Response},
};

use super::error::{ApiError, ErrorBody};

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

/// `/admin/console` without its slash: a permanent redirect to [`PATH`].
#[utoipa::path(
    get,
    path = "/admin/console",
    tag = "console",
    responses((status = 308, description = "Redirect to /admin/console/", headers(("location" = String))))
)]
pub async fn redirect() -> Redirect {
    Redirect::permanent(PATH)
}

/// The console's page.
#[utoipa::path(
    get,
    path = "/admin/console/",
    tag = "console",
    responses((status = 200, description = "The console's HTML page", content_type = "text/html", body = String))
)]
pub async fn index() -> Response {
    serve("index.html")
}

/// One of the console's scripts or styles.
#[utoipa::path(
    get,
    path = "/admin/console/{file}",
    tag = "console",
    params(("file" = String, Path, description = "A file of the console, e.g. `console.js`")),
    responses(
        (status = 200, description = "The file (JavaScript or CSS)", content_type = "text/javascript", body = String),
        (status = 404, description = "No such file", body = ErrorBody),
    )
)]
pub async fn file(Path(file): Path<String>) -> Response {
    serve(&file)
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
