//! A registry's HTTP API (the distribution spec, v2), as far as a pull needs
//! it: manifests and blobs of one repository, with the registry's own auth.
//!
//! Requests go out without credentials first. A `401` names the scheme in
//! `WWW-Authenticate`: `Basic` is answered with the user and password of the
//! Docker config file; `Bearer realm=...,service=...,scope=...` by fetching a
//! token from the realm (with those credentials if there are any, else
//! anonymously) and sending it. What was learned is kept for the rest of the
//! pull. Registries on loopback (`127.0.0.0/8`, `::1`, `localhost`) are
//! spoken to in plain HTTP, as Docker does by default; all others in HTTPS,
//! trusting the host's CA certificates and the Mozilla set. Blob downloads
//! follow redirects (to a CDN, say); credentials are not sent to another host.
//! Identity tokens (OAuth refresh tokens some registries give `docker login`)
//! are not used.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::{Response, StatusCode};
use serde::Deserialize;

use crate::driver::linux::credentials::RegistryCredentials;
use crate::image::{DOCKER_HUB, ImageRef};

/// The media types of manifests and indexes a pull accepts, best first.
pub(crate) const MANIFEST_TYPES: [&str; 4] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// Where Docker Hub's registry API answers.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// How long connecting to a registry may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a registry may leave a response (or a blob's next bytes) waiting.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// The most bytes a registry may send for a manifest, an index, an image
/// config, a token or an error: real ones are kilobytes, and a registry that
/// sends more must not fill hotpool's memory.
pub(crate) const SMALL_BODY_MAX: usize = 4 << 20;

/// Why a registry request failed, in the terms a pull's error needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RegistryError {
    /// The registry has no such repository, tag or blob.
    NotFound(String),
    /// The registry refused us: no credentials, wrong ones, or no access.
    Unauthorized(String),
    /// Anything else: unreachable, a server error, a malformed answer.
    Failed(String),
}

/// One repository of one registry, and the authorization learned so far.
pub(crate) struct Registry {
    http: reqwest::Client,
    /// `https://host` or `http://127.0.0.1:5000`.
    base: String,
    repository: String,
    credentials: Option<RegistryCredentials>,
    /// The `Authorization` header a challenge asked for, once answered.
    authorization: Mutex<Option<String>>,
}

impl Registry {
    /// The registry and repository `image` names, to be spoken to with
    /// `credentials` if it asks for them.
    pub(crate) fn new(
        image: &ImageRef,
        credentials: Option<RegistryCredentials>,
    ) -> Result<Registry, RegistryError> {
        let host = match image.registry_host() {
            DOCKER_HUB => DOCKER_HUB_API,
            host => host,
        };
        let scheme = if is_loopback(host) { "http" } else { "https" };
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(concat!("hotpool/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| RegistryError::Failed(format!("an HTTP client: {e}")))?;
        Ok(Registry {
            http,
            base: format!("{scheme}://{host}"),
            repository: image.repository.clone(),
            credentials,
            authorization: Mutex::new(None),
        })
    }

    /// Fetches the manifest (or index) `reference` (a tag or a digest):
    /// its bytes and its media type.
    pub(crate) async fn manifest(
        &self,
        reference: &str,
    ) -> Result<(Vec<u8>, String), RegistryError> {
        let response = self
            .get(
                &format!("manifests/{reference}"),
                &MANIFEST_TYPES.join(", "),
            )
            .await?;
        let header_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .map(|value| value.split(';').next().unwrap_or(value).trim().to_owned());
        let body = read_capped(response, &format!("manifest {reference}")).await?;
        let media_type = match header_type.filter(|t| MANIFEST_TYPES.contains(&t.as_str())) {
            Some(media_type) => media_type,
            // Some registries answer `application/json`: the manifest says.
            None => media_type_of(&body).ok_or_else(|| {
                RegistryError::Failed(format!("manifest {reference} names no media type"))
            })?,
        };
        Ok((body, media_type))
    }

    /// Starts fetching blob `digest`: the response, its body still to be read.
    pub(crate) async fn blob(&self, digest: &str) -> Result<Response, RegistryError> {
        self.get(&format!("blobs/{digest}"), "*/*").await
    }

    /// GETs `path` of the repository, answering one auth challenge.
    async fn get(&self, path: &str, accept: &str) -> Result<Response, RegistryError> {
        let url = format!("{}/v2/{}/{path}", self.base, self.repository);
        let mut answered_challenge = false;
        loop {
            let mut request = self.http.get(&url).header(ACCEPT, accept);
            let authorization = self
                .authorization
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if let Some(authorization) = authorization {
                request = request.header(AUTHORIZATION, authorization);
            }
            let response = request
                .send()
                .await
                .map_err(|e| RegistryError::Failed(format!("GET {url}: {}", error_chain(&e))))?;
            let status = response.status();
            if status.is_success() {
                return Ok(response);
            }
            if status == StatusCode::UNAUTHORIZED && !answered_challenge {
                let challenge = response
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let answer = self.answer(&challenge).await?;
                *self.authorization.lock().unwrap_or_else(|e| e.into_inner()) = Some(answer);
                answered_challenge = true;
                continue;
            }
            let words = registry_words(response).await;
            let message = format!("GET {url}: {status}{words}");
            return Err(match status {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    RegistryError::Unauthorized(message)
                }
                StatusCode::NOT_FOUND => RegistryError::NotFound(message),
                _ => RegistryError::Failed(message),
            });
        }
    }

    /// The `Authorization` header that answers `challenge`.
    async fn answer(&self, challenge: &str) -> Result<String, RegistryError> {
        let (scheme, parameters) = challenge.split_once(' ').unwrap_or((challenge, ""));
        let user_password = self.credentials.as_ref().and_then(|credentials| {
            Some((credentials.username.clone()?, credentials.password.clone()?))
        });
        if scheme.eq_ignore_ascii_case("basic") {
            let (user, password) = user_password.ok_or_else(|| {
                RegistryError::Unauthorized(format!(
                    "{} asks for credentials and the Docker config file has none for it",
                    self.base
                ))
            })?;
            return Ok(format!(
                "Basic {}",
                STANDARD.encode(format!("{user}:{password}"))
            ));
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(RegistryError::Unauthorized(format!(
                "{} asks for authentication hotpool cannot give: {challenge:?}",
                self.base
            )));
        }
        let parameters = challenge_parameters(parameters);
        let realm = parameters
            .iter()
            .find(|(key, _)| key == "realm")
            .map(|(_, value)| value.clone())
            .ok_or_else(|| {
                RegistryError::Failed(format!("{}: a Bearer challenge with no realm", self.base))
            })?;
        let scope = format!("repository:{}:pull", self.repository);
        let mut query: Vec<(String, String)> = parameters
            .into_iter()
            .filter(|(key, _)| key == "service" || key == "scope")
            .collect();
        if !query.iter().any(|(key, _)| key == "scope") {
            query.push(("scope".to_owned(), scope));
        }
        let mut request = self.http.get(&realm).query(&query);
        if let Some((user, password)) = user_password {
            request = request.basic_auth(user, Some(password));
        }
        let response = request
            .send()
            .await
            .map_err(|e| RegistryError::Failed(format!("GET {realm}: {}", error_chain(&e))))?;
        let status = response.status();
        if !status.is_success() {
            let words = registry_words(response).await;
            let message = format!("token from {realm}: {status}{words}");
            return Err(
                if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                    RegistryError::Unauthorized(message)
                } else {
                    RegistryError::Failed(message)
                },
            );
        }
        #[derive(Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let body = read_capped(response, &format!("token from {realm}")).await?;
        let token: Token = serde_json::from_slice(&body)
            .map_err(|e| RegistryError::Failed(format!("token from {realm}: {e}")))?;
        let token = token
            .token
            .or(token.access_token)
            .ok_or_else(|| RegistryError::Failed(format!("{realm} answered with no token")))?;
        Ok(format!("Bearer {token}"))
    }
}

/// Whether `host` (with or without a port) is this machine's loopback.
pub(crate) fn is_loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or(bracketed),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name == "localhost" || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The `key="value"` pairs of a challenge's parameters.
fn challenge_parameters(text: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut rest = text.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remaining) = match after.strip_prefix('"') {
            Some(quoted) => match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            },
            None => match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            },
        };
        pairs.push((key, value.to_owned()));
        rest = remaining.trim_start_matches([',', ' ']);
    }
    pairs
}

/// The `mediaType` a manifest or index names itself.
fn media_type_of(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Typed {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
    }
    serde_json::from_slice::<Typed>(body).ok()?.media_type
}

/// `: <the registry's own words>` from an error response, or nothing.
async fn registry_words(response: Response) -> String {
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        code: Option<String>,
        message: Option<String>,
    }
    let Ok(body) = read_capped(response, "an error").await else {
        return String::new();
    };
    match serde_json::from_slice::<Errors>(&body) {
        Ok(errors) => {
            let words: Vec<String> = errors
                .errors
                .into_iter()
                .map(|entry| match (entry.code, entry.message) {
                    (Some(code), Some(message)) => format!("{code}: {message}"),
                    (code, message) => code.or(message).unwrap_or_default(),
                })
                .collect();
            format!(": {}", words.join("; "))
        }
        Err(_) => String::new(),
    }
}

/// Reads `what`, the body of `response`, whole; fails once it passes
/// [`SMALL_BODY_MAX`] bytes.
pub(crate) async fn read_capped(
    mut response: Response,
    what: &str,
) -> Result<Vec<u8>, RegistryError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| RegistryError::Failed(format!("reading {what}: {}", error_chain(&e))))?
    {
        if body.len() + chunk.len() > SMALL_BODY_MAX {
            return Err(RegistryError::Failed(format!(
                "{what} is over {SMALL_BODY_MAX} bytes: no real one is"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// An HTTP error with its causes (reqwest's own message hides them).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_told_apart() {
        for host in [
            "127.0.0.1:5000",
            "127.8.0.1",
            "localhost:5000",
            "[::1]:5000",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["registry-1.docker.io", "10.0.0.2:5000", "quay.io"] {
            assert!(!is_loopback(host), "{host}");
        }
    }

    #[test]
    fn bearer_challenges_are_read() {
        let pairs = challenge_parameters(
            r#"realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        );
        assert_eq!(
            pairs,
            vec![
                ("realm".into(), "https://auth.docker.io/token".into()),
                ("service".into(), "registry.docker.io".into()),
                ("scope".into(), "repository:library/alpine:pull".into()),
            ]
        );
        assert_eq!(
            challenge_parameters(r#"realm="hotpool-test""#),
            vec![("realm".into(), "hotpool-test".into())]
        );
    }

    #[test]
    fn a_manifest_names_its_own_media_type() {
        let body = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json"}"#;
        assert_eq!(
            media_type_of(body).as_deref(),
            Some("application/vnd.oci.image.index.v1+json")
        );
        assert_eq!(media_type_of(b"{}"), None);
    }
}
