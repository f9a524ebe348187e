//! A token-auth front for the test registry: the Bearer half of the
//! distribution spec's auth, as Docker Hub, GHCR or Harbor ask for it, served
//! on loopback in front of a real [`Registry`] (which itself wants Basic auth).
//!
//! - `/v2/...` without a token it granted for that repository: `401` with
//!   `WWW-Authenticate: Bearer realm="<its /token>",service="hotpool-test",
//!   scope="repository:<repo>:pull"`.
//! - `GET /token`: checks the Basic credentials ([`USER`], [`PASSWORD`]), the
//!   `service` and the `scope` (`repository:<repo>:pull`) and answers
//!   `{"token": ...}` (or `access_token`, or a failure, as the test asks).
//!   `POST /token` (the OAuth form containerd tries first) is `405`, as at
//!   token servers without it: containerd then asks with `GET`.
//! - With a valid token, a request is forwarded to the registry with the
//!   registry's own Basic credentials and the answer relayed as it comes:
//!   status, headers (a redirect's too: the front follows none) and the body,
//!   streamed. Or, once [`TokenFront::redirecting_blobs`], a blob `GET` is
//!   answered `307` to a "CDN" of its own on another port, which wants no
//!   token and counts the requests that bring one anyway (a client must not
//!   hand a registry's token to another host).
//!
//! It counts what it saw ([`Seen`]), so a test can tell that a pull went
//! through the token dance and not around it. Plain HTTP on `127.0.0.1` (the
//! containerd driver's own pulls speak plain HTTP to loopback) or HTTPS at
//! [`TLS_REGISTRY_NAME`] with a certificate of the test CA (containerd 1.7's
//! Transfer service speaks only HTTPS). Stopped, connections and all, when
//! dropped.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use futures_util::TryStreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::header::{AUTHORIZATION, HeaderValue, LOCATION, WWW_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::registry::{
    PASSWORD, Registry, TLS_REGISTRY_IP, TLS_REGISTRY_NAME, USER, assert_tls_name_resolves,
    docker_config_for, tls_certificate,
};

/// The `service` the front's challenges name and its token endpoint wants.
pub const SERVICE: &str = "hotpool-test";

/// How the token endpoint answers a request it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenAnswer {
    /// `{"token": ...}`.
    Token,
    /// `{"access_token": ...}` (OAuth's name; the spec allows either).
    AccessToken,
    /// `500 Internal Server Error`, whatever was asked.
    ServerError,
    /// `200` with a body that is no token: an HTML page.
    Garbage,
}

/// What the front saw, by kind of request.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// `GET /token`, whatever came of it.
    pub token_requests: usize,
    /// Tokens granted (right credentials, service and scope).
    pub tokens_granted: usize,
    /// `POST /token`, answered `405`.
    pub token_posts: usize,
    /// `/v2/` requests refused with the Bearer challenge.
    pub challenged: usize,
    /// Manifest requests forwarded with a valid token.
    pub manifests: usize,
    /// Blob requests forwarded (or redirected) with a valid token.
    pub blobs: usize,
    /// Blob requests at the CDN.
    pub cdn_blobs: usize,
    /// Of those, the ones with an `Authorization` header.
    pub cdn_authorized: usize,
}

/// A running front; stopped when dropped.
pub struct TokenFront {
    /// `host:port`, as image references name it.
    pub addr: String,
    state: Arc<State>,
    /// Accepting connections: the front's, and the CDN's if any.
    servers: Vec<tokio::task::JoinHandle<()>>,
    _tls: Option<TempDir>,
}

/// What the requests of a front share.
struct State {
    /// The registry's `http://127.0.0.1:<port>`.
    upstream: String,
    /// The token endpoint's URL, as challenges name it.
    realm: String,
    answer: TokenAnswer,
    /// The CDN's `host:port`, once blobs are redirected there.
    cdn: OnceLock<String>,
    /// Granted tokens and the repository each is good for.
    tokens: Mutex<HashMap<String, String>>,
    seen: Mutex<Seen>,
    http: reqwest::Client,
}

type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

impl TokenFront {
    /// A front in plain HTTP on `127.0.0.1` before `registry`.
    pub async fn plain(registry: &Registry, answer: TokenAnswer) -> TokenFront {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address").to_string();
        TokenFront::serve(
            registry,
            answer,
            listener,
            format!("http://{addr}"),
            addr,
            None,
        )
    }

    /// A front in HTTPS at [`TLS_REGISTRY_NAME`] (listening on
    /// [`TLS_REGISTRY_IP`]) before `registry`, with a certificate signed by
    /// the CA in `ca_dir`.
    pub async fn tls(registry: &Registry, ca_dir: &Path, answer: TokenAnswer) -> TokenFront {
        assert_tls_name_resolves();
        let dir = tempfile::tempdir().expect("temp dir");
        let (cert, key) = tls_certificate(ca_dir, dir.path());
        let chain = CertificateDer::pem_file_iter(&cert)
            .and_then(Iterator::collect)
            .expect("the certificate just made");
        let key = PrivateKeyDer::from_pem_file(&key).expect("the key just made");
        let mut config = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("a TLS server config");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let listener = TcpListener::bind((TLS_REGISTRY_IP, 0)).await.expect("bind");
        let port = listener.local_addr().expect("local address").port();
        let addr = format!("{TLS_REGISTRY_NAME}:{port}");
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let mut front = TokenFront::serve(
            registry,
            answer,
            listener,
            format!("https://{addr}"),
            addr,
            Some(acceptor),
        );
        front._tls = Some(dir);
        front
    }

    /// Serves on `listener` (through `tls` if some) what `base` names.
    fn serve(
        registry: &Registry,
        answer: TokenAnswer,
        listener: TcpListener,
        base: String,
        addr: String,
        tls: Option<TlsAcceptor>,
    ) -> TokenFront {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .build()
            .expect("an HTTP client");
        let state = Arc::new(State {
            upstream: format!("http://{}", registry.addr),
            realm: format!("{base}/token"),
            answer,
            cdn: OnceLock::new(),
            tokens: Mutex::new(HashMap::new()),
            seen: Mutex::new(Seen::default()),
            http,
        });
        let server = tokio::spawn(accept(listener, tls, state.clone()));
        TokenFront {
            addr,
            state,
            servers: vec![server],
            _tls: None,
        }
    }

    /// From now on, answers a blob `GET` that carries a valid token with a
    /// redirect to a CDN of its own: plain HTTP on another port of
    /// `127.0.0.1`, another host to a client.
    pub async fn redirecting_blobs(mut self) -> TokenFront {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let cdn = listener.local_addr().expect("local address").to_string();
        self.state.cdn.set(cdn).expect("one CDN");
        let server = tokio::spawn(accept(listener, None, self.state.clone()));
        self.servers.push(server);
        self
    }

    /// What it saw so far.
    pub fn seen(&self) -> Seen {
        *self.state.seen.lock().unwrap()
    }

    /// A Docker config directory holding `user:password` for the front.
    pub fn docker_config(&self, user: &str, password: &str) -> TempDir {
        docker_config_for(&self.addr, user, password)
    }
}

impl Drop for TokenFront {
    fn drop(&mut self) {
        // The connections are in the accept tasks' sets: they go with them.
        for server in &self.servers {
            server.abort();
        }
    }
}

/// Accepts connections and serves each in a task of its own, until aborted.
async fn accept(listener: TcpListener, tls: Option<TlsAcceptor>, state: Arc<State>) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        while connections.try_join_next().is_some() {}
        let state = state.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, request).await) }
            });
            let connection = http1::Builder::new();
            // A connection that breaks off only ends itself.
            let _ = match tls {
                Some(tls) => match tls.accept(tcp).await {
                    Ok(stream) => {
                        connection
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                    }
                    Err(_) => return,
                },
                None => {
                    connection
                        .serve_connection(TokioIo::new(tcp), service)
                        .await
                }
            };
        });
    }
}

/// Answers one request.
async fn handle(state: &State, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    if path == "/token" {
        return token(state, &request);
    }
    if let Some(blob) = path.strip_prefix("/cdn/") {
        {
            let mut seen = state.seen.lock().unwrap();
            seen.cdn_blobs += 1;
            if request.headers().contains_key(AUTHORIZATION) {
                seen.cdn_authorized += 1;
            }
        }
        let upstream = format!("/v2/{blob}");
        return forward(state, request, &upstream).await;
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return text(StatusCode::NOT_FOUND, "not a registry path");
    };
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "a pull needs GET and HEAD");
    }
    // `<repo>/manifests/<ref>` or `<repo>/blobs/<digest>`; `` is the ping.
    let (repository, kind) = match rest.rsplitn(3, '/').collect::<Vec<_>>()[..] {
        [_, kind @ ("manifests" | "blobs"), repository] => (repository, kind),
        _ => ("", ""),
    };
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    let valid = presented.is_some_and(|token| {
        state
            .tokens
            .lock()
            .unwrap()
            .get(token)
            .is_some_and(|granted| rest.is_empty() || granted == repository)
    });
    if !valid {
        state.seen.lock().unwrap().challenged += 1;
        let mut challenge = format!("Bearer realm=\"{}\",service=\"{SERVICE}\"", state.realm);
        if !repository.is_empty() {
            challenge.push_str(&format!(",scope=\"repository:{repository}:pull\""));
        }
        let mut response = text(
            StatusCode::UNAUTHORIZED,
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
        );
        response.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_str(&challenge).expect("a header value"),
        );
        return response;
    }
    {
        let mut seen = state.seen.lock().unwrap();
        match kind {
            "manifests" => seen.manifests += 1,
            "blobs" => seen.blobs += 1,
            _ => {}
        }
    }
    if kind == "blobs"
        && request.method() == Method::GET
        && let Some(cdn) = state.cdn.get()
    {
        let mut response = text(StatusCode::TEMPORARY_REDIRECT, "");
        let location = format!("http://{cdn}/cdn/{rest}");
        response.headers_mut().insert(
            LOCATION,
            HeaderValue::from_str(&location).expect("a header value"),
        );
        return response;
    }
    let path = request
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |path| path.as_str().to_owned());
    forward(state, request, &path).await
}

/// The token endpoint.
fn token(state: &State, request: &Request<Incoming>) -> Response<Body> {
    if request.method() == Method::POST {
        state.seen.lock().unwrap().token_posts += 1;
        return text(StatusCode::METHOD_NOT_ALLOWED, "no OAuth form here: GET");
    }
    state.seen.lock().unwrap().token_requests += 1;
    match state.answer {
        TokenAnswer::ServerError => {
            return text(StatusCode::INTERNAL_SERVER_ERROR, "the token service broke");
        }
        TokenAnswer::Garbage => {
            return text(StatusCode::OK, "<html><body>Welcome!</body></html>");
        }
        TokenAnswer::Token | TokenAnswer::AccessToken => {}
    }
    let expected = format!("Basic {}", STANDARD.encode(format!("{USER}:{PASSWORD}")));
    let credentials = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    if credentials != Some(expected.as_str()) {
        return text(
            StatusCode::UNAUTHORIZED,
            r#"{"details":"incorrect username or password"}"#,
        );
    }
    let url = reqwest::Url::parse(&format!("http://front{}", request.uri())).expect("a URL");
    let query: HashMap<String, String> = url.query_pairs().into_owned().collect();
    let repository = query
        .get("scope")
        .and_then(|scope| scope.strip_prefix("repository:"))
        .and_then(|scope| scope.strip_suffix(":pull"))
        .filter(|repository| !repository.is_empty() && !repository.contains(':'));
    let (Some(repository), Some(SERVICE)) = (repository, query.get("service").map(String::as_str))
    else {
        return text(
            StatusCode::BAD_REQUEST,
            &format!("want service={SERVICE} and scope=repository:<name>:pull, not {query:?}"),
        );
    };
    let granted = format!("hotpool-token-{}", hotpool::driver::new_id());
    state
        .tokens
        .lock()
        .unwrap()
        .insert(granted.clone(), repository.to_owned());
    state.seen.lock().unwrap().tokens_granted += 1;
    let field = match state.answer {
        TokenAnswer::AccessToken => "access_token",
        _ => "token",
    };
    text(
        StatusCode::OK,
        &format!(r#"{{"{field}":"{granted}","expires_in":300}}"#),
    )
}

/// Forwards `request` to `path` of the registry with its Basic credentials
/// and relays the answer, the body streamed.
async fn forward(state: &State, request: Request<Incoming>, path: &str) -> Response<Body> {
    let mut outgoing = state
        .http
        .request(
            request.method().clone(),
            format!("{}{path}", state.upstream),
        )
        .basic_auth(USER, Some(PASSWORD));
    for (name, value) in request.headers() {
        if !is_hop_by_hop(name.as_str()) && name != AUTHORIZATION && name != "host" {
            outgoing = outgoing.header(name, value);
        }
    }
    let answer = match outgoing.send().await {
        Ok(answer) => answer,
        Err(e) => return text(StatusCode::BAD_GATEWAY, &format!("the registry: {e}")),
    };
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if !is_hop_by_hop(name.as_str()) {
            response = response.header(name, value);
        }
    }
    let body = StreamBody::new(
        answer
            .bytes_stream()
            .map_ok(Frame::data)
            .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>),
    );
    response.body(BodyExt::boxed(body)).expect("a response")
}

/// Headers that belong to one connection, not to the message.
fn is_hop_by_hop(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ]
    .contains(&name)
}

/// A response of `status` with `body`.
fn text(status: StatusCode, body: &str) -> Response<Body> {
    let body = Full::new(Bytes::from(body.to_owned())).map_err(|never| match never {});
    Response::builder()
        .status(status)
        .body(BodyExt::boxed(body))
        .expect("a response")
}
