//! Who may call what, and the record of each call. Every request gets an id (the `x-request-id`
//! header of its answer, the `request_id` of an error body, and its log lines); with an API key
//! set, every route but `/health` needs `Authorization: Bearer KEY` (compared in constant time);
//! POST routes need a Host this server answers to and, from a browser, a same-origin Origin:
//! a page elsewhere cannot post to it, whether directly or through DNS rebinding.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, REQUEST_ID};
use super::AppState;

/// The header that carries a request's id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// What the access checks need.
pub struct Access {
    pub api_key: Option<String>,
    /// `Host` values POST routes accept, lowercase.
    pub hosts: Vec<String>,
}

impl Access {
    /// The hosts a server bound to `bound` answers to: its address, the loopback names with its
    /// port, and `allowed` (a name alone also accepted with the port).
    pub fn new(api_key: Option<String>, bound: SocketAddr, allowed: &[String]) -> Access {
        let port = bound.port();
        let mut names: Vec<String> = vec![
            "localhost".into(),
            "127.0.0.1".into(),
            "[::1]".into(),
            match bound.ip() {
                std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                ip => ip.to_string(),
            },
        ];
        let mut hosts = Vec::new();
        for a in allowed {
            let a = a.trim().to_ascii_lowercase();
            if a.rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
                && !a.ends_with(']')
            {
                hosts.push(a);
            } else {
                // A proxy forwards the name it was reached by, usually without a port.
                hosts.push(a.clone());
                names.push(a);
            }
        }
        for n in names {
            if port == 80 {
                hosts.push(n.clone());
            }
            hosts.push(format!("{n}:{port}"));
        }
        hosts.sort();
        hosts.dedup();
        Access { api_key, hosts }
    }

    /// Whether the headers carry the key (always, without one).
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(key) = &self.api_key else {
            return true;
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        constant_time_eq::constant_time_eq(given.trim().as_bytes(), key.as_bytes())
    }

    /// Why a state-changing request is refused, if it is.
    fn foreign(&self, headers: &HeaderMap) -> Option<String> {
        let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
            return Some("the request has no Host header".into());
        };
        let host = host.trim().to_ascii_lowercase();
        if !self.hosts.contains(&host) {
            return Some(format!(
                "Host {host:?} is not one this server answers to (see --allowed-host)"
            ));
        }
        // Browsers send Origin on cross-site posts; a client without one (curl) is no page.
        let origin = headers.get(header::ORIGIN)?;
        let origin = origin
            .to_str()
            .unwrap_or("null")
            .trim()
            .to_ascii_lowercase();
        let same = origin == format!("http://{host}") || origin == format!("https://{host}");
        (!same).then(|| {
            format!("Origin {origin:?} is not this server's; cross-site requests are refused")
        })
    }
}

/// Gives the request an id, and counts and logs it: route, status, milliseconds, id.
pub async fn account(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = format!("{:016x}", rand::random::<u64>());
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    // The route's pattern: the label stays one of the routes, whatever path was asked for.
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("other", |m| m.as_str())
        .to_string();
    let mut response = REQUEST_ID.scope(id.clone(), next.run(req)).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    let status = response.status().as_u16();
    let seconds = started.elapsed().as_secs_f64();
    if let Ok(mut r) = state.requests.lock() {
        *r.entry((route.clone(), status)).or_default() += 1;
    }
    if let Ok(mut l) = state.latency.lock() {
        let e = l.entry(route).or_default();
        e.0 += seconds;
        e.1 += 1;
    }
    tracing::info!(
        "{method} {path} -> {status} in {:.0} ms (request {id})",
        seconds * 1e3
    );
    response
}

/// The API key on every route but `/health`; the Host and Origin of every POST.
pub async fn guard(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let access = &state.access;
    if req.uri().path() != "/health" && !access.authorized(req.headers()) {
        let mut r = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this server needs an API key: send `Authorization: Bearer KEY`",
        )
        .into_response();
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    if req.method() == Method::POST {
        if let Some(why) = access.foreign(req.headers()) {
            tracing::warn!("request {}: refused: {why}", super::error::request_id());
            return ApiError::new(StatusCode::FORBIDDEN, why).into_response();
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn hosts_and_origins() {
        let a = Access::new(
            None,
            "127.0.0.1:8080".parse().unwrap(),
            &["cxr.example".into()],
        );
        for ok in [
            "127.0.0.1:8080",
            "localhost:8080",
            "[::1]:8080",
            "cxr.example:8080",
            // Behind a proxy that forwards the name alone.
            "cxr.example",
        ] {
            assert_eq!(a.foreign(&headers(&[("host", ok)])), None, "{ok}");
        }
        let same = headers(&[
            ("host", "localhost:8080"),
            ("origin", "http://localhost:8080"),
        ]);
        assert_eq!(a.foreign(&same), None);
        for (host, origin) in [
            ("evil.example:8080", None),
            ("evil.example", None),
            ("localhost", None),
            ("127.0.0.1:8081", None),
            ("127.0.0.1:8080", Some("http://evil.example")),
            ("127.0.0.1:8080", Some("null")),
        ] {
            let mut h = headers(&[("host", host)]);
            if let Some(o) = origin {
                h.insert("origin", HeaderValue::from_str(o).unwrap());
            }
            assert!(a.foreign(&h).is_some(), "{host} {origin:?}");
        }
        assert!(a.foreign(&HeaderMap::new()).unwrap().contains("no Host"));
    }

    #[test]
    fn the_key_must_match() {
        let a = Access::new(Some("s3cret".into()), "127.0.0.1:1".parse().unwrap(), &[]);
        assert!(a.authorized(&headers(&[("authorization", "Bearer s3cret")])));
        for bad in ["Bearer s3cre", "Bearer s3cretX", "s3cret", "Basic s3cret"] {
            assert!(!a.authorized(&headers(&[("authorization", bad)])), "{bad}");
        }
        assert!(!a.authorized(&HeaderMap::new()));
    }
}
