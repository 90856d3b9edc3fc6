//! HTTP services: a handler function instead of the raw `wasi:http` bindings.
//!
//! A skiff HTTP service is a component that exports `wasi:http/incoming-handler`
//! (the `wasi:http/proxy` world). The node runs a fresh instance of it for every
//! request, so a handler keeps no state between requests; what it needs comes from
//! the environment ([`crate::config`]), its volumes, or other services.
//!
//! Write a function from [`Request`] to [`Response`] and export it:
//!
//! ```ignore
//! use skiff_sdk::http::{Request, Response};
//!
//! fn handle(req: Request) -> Response {
//!     match req.path() {
//!         "/" => Response::text(200, "hello\n"),
//!         _ => Response::not_found(),
//!     }
//! }
//!
//! skiff_sdk::http::export!(handle);
//! ```
//!
//! in a crate built as a `cdylib` for `wasm32-wasip2`:
//!
//! ```toml
//! [lib]
//! crate-type = ["cdylib"]
//! ```
//!
//! `cargo build --release --target wasm32-wasip2` then makes
//! `target/wasm32-wasip2/release/NAME.wasm`, which `skiff deploy` takes as it is.
//!
//! Outbound requests ([`get`], [`send`]) reach another deployment by name
//! (`http://NAME.skiff.local/...`, routed inside the cluster) and any host the
//! deployment lists in `allowed_hosts`, over `http://` or `https://`; the node
//! refuses every other host ([`Error::Denied`]).
//!
//! Bodies are read and written whole, in memory: this layer is for the requests and
//! answers of an API, not for streaming gigabytes (the raw bindings are in
//! [`wasip2`] for that).

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;
use std::io::{Read, Write};
use wasip2::http::types::{
    ErrorCode, Fields, IncomingBody, IncomingRequest, IncomingResponse, OutgoingBody, OutgoingRequest,
    OutgoingResponse, ResponseOutparam, Scheme,
};

/// The raw `wasi:http` bindings this module is built on, for the [`export!`]
/// macro's expansion (and for what this layer does not cover).
pub use wasip2;

/// An HTTP method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// `GET`
    Get,
    /// `HEAD`
    Head,
    /// `POST`
    Post,
    /// `PUT`
    Put,
    /// `DELETE`
    Delete,
    /// `PATCH`
    Patch,
    /// `OPTIONS`
    Options,
    /// Any other method, as sent (`CONNECT`, `TRACE`, extensions).
    Other(String),
}

impl Method {
    /// The method as it appears on the wire: `GET`, `POST`, ...
    pub fn as_str(&self) -> &str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Patch => "PATCH",
            Method::Options => "OPTIONS",
            Method::Other(m) => m,
        }
    }

    fn from_wasi(m: wasip2::http::types::Method) -> Method {
        use wasip2::http::types::Method as W;
        match m {
            W::Get => Method::Get,
            W::Head => Method::Head,
            W::Post => Method::Post,
            W::Put => Method::Put,
            W::Delete => Method::Delete,
            W::Patch => Method::Patch,
            W::Options => Method::Options,
            W::Connect => Method::Other("CONNECT".into()),
            W::Trace => Method::Other("TRACE".into()),
            W::Other(m) => Method::Other(m),
        }
    }

    fn to_wasi(&self) -> wasip2::http::types::Method {
        use wasip2::http::types::Method as W;
        match self {
            Method::Get => W::Get,
            Method::Head => W::Head,
            Method::Post => W::Post,
            Method::Put => W::Put,
            Method::Delete => W::Delete,
            Method::Patch => W::Patch,
            Method::Options => W::Options,
            Method::Other(m) => W::Other(m.clone()),
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request: one that a handler received, or one to [`send`].
///
/// Header names are kept in lowercase; values that are not UTF-8 are read lossily.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    method: Method,
    /// A received request: its path and query. One to send: the whole URL.
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    /// A request of `method` for `url` (`http://HOST[:PORT]/PATH?QUERY` or
    /// `https://...`), without headers or body, to pass to [`send`].
    pub fn new(method: Method, url: &str) -> Request {
        Request { method, target: url.to_string(), headers: Vec::new(), body: Vec::new() }
    }

    /// `GET url`.
    pub fn get(url: &str) -> Request {
        Request::new(Method::Get, url)
    }

    /// `POST url` with `body`.
    pub fn post(url: &str, body: impl Into<Vec<u8>>) -> Request {
        Request::new(Method::Post, url).with_body(body)
    }

    /// Adds header `name: value` (names are case-insensitive; a repeated name
    /// sends the header more than once).
    pub fn with_header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_ascii_lowercase(), value.to_string()));
        self
    }

    /// Sets the body.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    /// Sets the body to `value` as JSON, with `content-type: application/json`.
    pub fn with_json<T: Serialize + ?Sized>(self, value: &T) -> Result<Request, Error> {
        let body = serde_json::to_vec(value).map_err(|e| Error::Invalid(format!("cannot encode the body: {e}")))?;
        Ok(self.with_header("content-type", "application/json").with_body(body))
    }

    /// The method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The path without the query: `/users/7` for `/users/7?full=1`.
    pub fn path(&self) -> &str {
        let path = match self.target.split_once("://") {
            Some((_, rest)) if !self.target.starts_with('/') => rest.find('/').map_or("/", |i| &rest[i..]),
            _ => &self.target,
        };
        path.split('?').next().unwrap_or("/")
    }

    /// The query string after `?`, if any.
    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, q)| q)
    }

    /// The value of query parameter `name` (the first one, `+` and `%XX` decoded),
    /// if present.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query()?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k) == name).then(|| percent_decode(v))
        })
    }

    /// The value of header `name` (the first one, case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// Every header, as (lowercase name, value), in the order received.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON; the error says what is wrong with it, in words fit
    /// for a 400 answer.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_slice(&self.body).map_err(|e| format!("the body is not valid JSON for this request: {e}"))
    }
}

/// A response: one a handler returns, or one that [`send`] received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    /// A response with `status`, no headers and an empty body.
    pub fn new(status: u16) -> Response {
        Response { status, headers: Vec::new(), body: Vec::new() }
    }

    /// `status` with `body` as `text/plain; charset=utf-8`.
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response::new(status).with_header("content-type", "text/plain; charset=utf-8").with_body(body.into())
    }

    /// `status` with `value` as JSON (`application/json`, one line ending in a
    /// newline). A value that cannot be encoded (a map with non-string keys, say)
    /// gives a 500 saying so.
    pub fn json<T: Serialize + ?Sized>(status: u16, value: &T) -> Response {
        match serde_json::to_vec(value) {
            Ok(mut body) => {
                body.push(b'\n');
                Response::new(status).with_header("content-type", "application/json").with_body(body)
            }
            Err(e) => Response::text(500, format!("cannot encode the answer as JSON: {e}\n")),
        }
    }

    /// 404 with a one-line JSON error naming nothing but the fact.
    pub fn not_found() -> Response {
        Response::json(404, &serde_json::json!({ "error": "not found" }))
    }

    /// Adds header `name: value`.
    pub fn with_header(mut self, name: &str, value: &str) -> Response {
        self.headers.push((name.to_ascii_lowercase(), value.to_string()));
        self
    }

    /// Sets the body.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Response {
        self.body = body.into();
        self
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The value of header `name` (the first one, case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// Every header, as (lowercase name, value).
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text_body(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn json_body<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body)
            .map_err(|e| Error::Invalid(format!("the answer is not the JSON expected: {e}")))
    }
}

/// Why an outbound request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The node refused to send it: the host is neither `NAME.skiff.local` nor in
    /// the deployment's `allowed_hosts`.
    Denied,
    /// The request cannot be sent as it is (a URL without `http://` or
    /// `https://`, a header the host manages such as `host` or `connection`, ...).
    Invalid(String),
    /// It was sent but failed: no connection, a TLS error, a timeout, ... (the
    /// `wasi:http` error code).
    Failed(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Denied => f.write_str("host not allowed: add it to the deployment's allowed_hosts"),
            Error::Invalid(why) => write!(f, "invalid request: {why}"),
            Error::Failed(why) => write!(f, "request failed: {why}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<ErrorCode> for Error {
    fn from(code: ErrorCode) -> Error {
        match code {
            ErrorCode::HttpRequestDenied => Error::Denied,
            other => Error::Failed(format!("{other:?}")),
        }
    }
}

/// `GET url`: see [`send`].
pub fn get(url: &str) -> Result<Response, Error> {
    send(Request::get(url))
}

/// Sends `request` (its target a whole URL, as [`Request::new`] takes) and waits
/// for the whole answer. Any status is an answer; only a request that got none is
/// an [`Error`].
pub fn send(request: Request) -> Result<Response, Error> {
    let url = Url::parse(&request.target)?;
    let headers = Fields::new();
    for (name, value) in &request.headers {
        headers
            .append(name, value.as_bytes())
            .map_err(|e| Error::Invalid(format!("header {name:?} cannot be set ({e:?})")))?;
    }
    if !request.body.is_empty() && request.header("content-length").is_none() {
        let _ = headers.append("content-length", request.body.len().to_string().as_bytes());
    }
    let out = OutgoingRequest::new(headers);
    let set =
        |ok: Result<(), ()>, what: &str| ok.map_err(|()| Error::Invalid(format!("bad {what} in {}", request.target)));
    set(out.set_method(&request.method.to_wasi()), "method")?;
    set(out.set_scheme(Some(&url.scheme)), "scheme")?;
    set(out.set_authority(Some(url.authority)), "host")?;
    set(out.set_path_with_query(Some(&url.path)), "path")?;
    let body = out.body().map_err(|()| Error::Invalid("the request body was taken".into()))?;
    let pending = wasip2::http::outgoing_handler::handle(out, None)?;
    write_body(body, &request.body).map_err(|e| Error::Failed(format!("cannot send the body: {e}")))?;
    pending.subscribe().block();
    let answer = match pending.get() {
        Some(Ok(answer)) => answer?,
        Some(Err(())) | None => return Err(Error::Failed("no answer".into())),
    };
    read_response(answer)
}

fn read_response(answer: IncomingResponse) -> Result<Response, Error> {
    let headers = entries(&answer.headers());
    let body = answer.consume().map_err(|()| Error::Failed("the answer's body was taken".into()))?;
    let body = read_body(body).map_err(|e| Error::Failed(format!("cannot read the answer: {e}")))?;
    Ok(Response { status: answer.status(), headers, body })
}

/// The parts of an outbound URL that `wasi:http` wants separately.
#[derive(Debug)]
struct Url<'a> {
    scheme: Scheme,
    authority: &'a str,
    /// The path and query, starting with `/`.
    path: String,
}

impl<'a> Url<'a> {
    fn parse(url: &'a str) -> Result<Url<'a>, Error> {
        let (scheme, rest) = match url.split_once("://") {
            Some(("http", rest)) => (Scheme::Http, rest),
            Some(("https", rest)) => (Scheme::Https, rest),
            _ => return Err(Error::Invalid(format!("{url:?} is not an http:// or https:// URL"))),
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest[i..].starts_with('?') => (&rest[..i], format!("/{}", &rest[i..])),
            Some(i) => (&rest[..i], rest[i..].to_string()),
            None => (rest, "/".to_string()),
        };
        if authority.is_empty() {
            return Err(Error::Invalid(format!("{url:?} names no host")));
        }
        Ok(Url { scheme, authority, path })
    }
}

// ---- serving: what `export!` expands to calls these ----

/// Serves one request with `handler`. Called by the code [`export!`] generates;
/// not meant to be called otherwise.
#[doc(hidden)]
pub fn __serve(handler: fn(Request) -> Response, request: IncomingRequest, out: ResponseOutparam) {
    let response = match read_request(&request) {
        Ok(req) => handler(req),
        Err(e) => Response::text(400, format!("cannot read the request: {e}\n")),
    };
    respond(out, response);
}

fn read_request(request: &IncomingRequest) -> std::io::Result<Request> {
    let method = Method::from_wasi(request.method());
    let target = request.path_with_query().unwrap_or_else(|| "/".to_string());
    let headers = entries(&request.headers());
    let body = match request.consume() {
        Ok(body) => read_body(body)?,
        Err(()) => Vec::new(),
    };
    Ok(Request { method, target, headers, body })
}

fn respond(out: ResponseOutparam, response: Response) {
    let headers = Fields::new();
    for (name, value) in &response.headers {
        // A header the host manages (connection, transfer-encoding) is its to set.
        let _ = headers.append(name, value.as_bytes());
    }
    let resp = OutgoingResponse::new(headers);
    if resp.set_status_code(response.status).is_err() {
        let _ = resp.set_status_code(500);
    }
    let Ok(body) = resp.body() else { return };
    ResponseOutparam::set(out, Ok(resp));
    // The status is sent; a client that went away while the body is written
    // has nothing to be told.
    let _ = write_body(body, &response.body);
}

fn read_body(body: IncomingBody) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    {
        // The stream is a child of the body and must go before it.
        let mut stream = body.stream().map_err(|()| std::io::Error::other("the body stream was taken"))?;
        stream.read_to_end(&mut bytes)?;
    }
    drop(IncomingBody::finish(body));
    Ok(bytes)
}

fn write_body(body: OutgoingBody, bytes: &[u8]) -> std::io::Result<()> {
    {
        let mut stream = body.write().map_err(|()| std::io::Error::other("the body stream was taken"))?;
        stream.write_all(bytes)?;
        stream.blocking_flush().map_err(|e| std::io::Error::other(format!("{e:?}")))?;
    }
    OutgoingBody::finish(body, None).map_err(|e| std::io::Error::other(format!("{e:?}")))
}

fn entries(fields: &Fields) -> Vec<(String, String)> {
    fields
        .entries()
        .into_iter()
        .map(|(name, value)| (name.to_ascii_lowercase(), String::from_utf8_lossy(&value).into_owned()))
        .collect()
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// Decodes `+` and `%XX` of a query component; bad escapes are kept as they are.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Exports `handler`, a `fn(Request) -> Response`, as the component's
/// `wasi:http/incoming-handler`: the node calls it for every request.
///
/// ```ignore
/// fn handle(req: skiff_sdk::http::Request) -> skiff_sdk::http::Response {
///     skiff_sdk::http::Response::text(200, format!("you asked for {}\n", req.path()))
/// }
/// skiff_sdk::http::export!(handle);
/// ```
///
/// Use it once, at the top level of a `cdylib` crate built for `wasm32-wasip2`.
#[doc(inline)]
pub use crate::__skiff_http_export as export;

/// The body of [`export!`] (macros by example live at the crate root).
#[doc(hidden)]
#[macro_export]
macro_rules! __skiff_http_export {
    ($handler:path) => {
        const _: () = {
            struct SkiffHttpHandler;

            impl $crate::http::wasip2::exports::http::incoming_handler::Guest for SkiffHttpHandler {
                fn handle(
                    request: $crate::http::wasip2::http::types::IncomingRequest,
                    out: $crate::http::wasip2::http::types::ResponseOutparam,
                ) {
                    $crate::http::__serve($handler, request, out)
                }
            }

            $crate::http::wasip2::http::proxy::export!(SkiffHttpHandler);
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_queries_and_params() {
        let r = Request::get("/users/7?full=1&name=a+b%21&x");
        assert_eq!(r.path(), "/users/7");
        assert_eq!(r.query(), Some("full=1&name=a+b%21&x"));
        assert_eq!(r.query_param("name").as_deref(), Some("a b!"));
        assert_eq!(r.query_param("x").as_deref(), Some(""));
        assert_eq!(r.query_param("nope"), None);
        assert_eq!(Request::get("/call?to=http://x/y").path(), "/call");
        assert_eq!(Request::get("http://api.skiff.local").path(), "/");
        assert_eq!(Request::get("https://h:8443/a/b?c").path(), "/a/b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
    }

    #[test]
    fn urls_split_for_wasi() {
        let u = Url::parse("https://api.example.com:8443/v1/x?y=1").expect("url");
        assert!(matches!(u.scheme, Scheme::Https));
        assert_eq!((u.authority, u.path.as_str()), ("api.example.com:8443", "/v1/x?y=1"));
        let u = Url::parse("http://other.skiff.local").expect("url");
        assert_eq!((u.authority, u.path.as_str()), ("other.skiff.local", "/"));
        let u = Url::parse("http://h?q").expect("url");
        assert_eq!((u.authority, u.path.as_str()), ("h", "/?q"));
        assert_eq!(
            Url::parse("ftp://x/").unwrap_err(),
            Error::Invalid("\"ftp://x/\" is not an http:// or https:// URL".into())
        );
        assert!(Url::parse("http:///x").is_err());
    }

    #[test]
    fn json_answers_and_headers() {
        let r = Response::json(201, &serde_json::json!({"id": 7}));
        assert_eq!((r.status(), r.header("Content-Type")), (201, Some("application/json")));
        assert_eq!(r.text_body(), "{\"id\":7}\n");
        assert_eq!(r.json_body::<serde_json::Value>().expect("json")["id"], 7);
        assert_eq!(Response::not_found().text_body(), "{\"error\":\"not found\"}\n");
        let req = Request::post("http://x/", "{\"a\":1").with_header("X-A", "1");
        assert_eq!(req.header("x-a"), Some("1"));
        assert!(req.json::<serde_json::Value>().unwrap_err().starts_with("the body is not valid JSON"));
    }
}
