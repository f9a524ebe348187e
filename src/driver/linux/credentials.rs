//! Registry credentials from the Docker config file, as `docker login` writes them.
//!
//! The file is `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json` (or a
//! directory the driver is given). Its `auths` entries map a registry to either
//! `auth` (base64 of `user:password`), `username`/`password`, or an
//! `identitytoken`. Credential helpers (`credsStore`) are not consulted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;

use crate::image::DOCKER_HUB;

/// One registry's credentials: a user and password, or an identity token.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct RegistryCredentials {
    /// The registry host (`docker.io` for Docker Hub).
    pub(crate) registry: String,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    /// An OAuth refresh token, as `docker login` keeps for some registries.
    pub(crate) identity_token: Option<String>,
}

impl std::fmt::Debug for RegistryCredentials {
    /// Never the password or token: credentials reach logs through errors.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredentials")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
}

/// The directory holding `config.json`: `explicit`, else `$DOCKER_CONFIG`, else `~/.docker`.
pub(crate) fn config_dir(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(dir) = explicit {
        return Some(dir.to_owned());
    }
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".docker"))
}

/// Reduces `https://index.docker.io/v1/` or `http://host:5000/` to the registry host.
fn normalize_registry(key: &str) -> &str {
    let without_scheme = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = without_scheme.split('/').next().unwrap_or(without_scheme);
    match host {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB,
        other => other,
    }
}

/// The credentials for `registry` (a host, or `docker.io`) in the config file of
/// `dir`. A missing file means no credentials; an unreadable one is an error.
pub(crate) fn lookup(
    dir: Option<&Path>,
    registry: &str,
) -> Result<Option<RegistryCredentials>, String> {
    let Some(path) = dir.map(|d| d.join("config.json")) else {
        return Ok(None);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let config: ConfigFile = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not a Docker config file: {e}", path.display()))?;
    let Some(entry) = config
        .auths
        .iter()
        .find(|(key, _)| normalize_registry(key) == registry)
        .map(|(_, entry)| entry)
    else {
        return Ok(None);
    };
    let (username, password) = match &entry.auth {
        Some(auth) => {
            let decoded = STANDARD.decode(auth.trim()).map_err(|e| {
                format!("{}: auth for {registry} is not base64: {e}", path.display())
            })?;
            let text = String::from_utf8_lossy(&decoded).into_owned();
            let (user, pass) = text.split_once(':').ok_or_else(|| {
                format!(
                    "{}: auth for {registry} is not user:password",
                    path.display()
                )
            })?;
            (Some(user.to_owned()), Some(pass.to_owned()))
        }
        None => (entry.username.clone(), entry.password.clone()),
    };
    Ok(Some(RegistryCredentials {
        registry: registry.to_owned(),
        username,
        password,
        identity_token: entry.identitytoken.clone(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_config(json: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), json).unwrap();
        dir
    }

    #[test]
    fn auth_field_is_base64_user_password() {
        let auth = STANDARD.encode("alice:s3:cret");
        let dir = write_config(&format!(
            r#"{{"auths":{{"127.0.0.1:5000":{{"auth":"{auth}"}}}}}}"#
        ));
        let creds = lookup(Some(dir.path()), "127.0.0.1:5000").unwrap().unwrap();
        assert_eq!(creds.username.as_deref(), Some("alice"));
        assert_eq!(creds.password.as_deref(), Some("s3:cret"));
        assert_eq!(creds.registry, "127.0.0.1:5000");
        assert!(
            !format!("{creds:?}").contains("s3:cret"),
            "no password in logs"
        );
    }

    #[test]
    fn keys_with_scheme_and_hub_aliases_match() {
        let dir = write_config(
            r#"{"auths":{"https://index.docker.io/v1/":{"username":"u","password":"p"},
                          "http://reg.local:5000/":{"identitytoken":"tok"}}}"#,
        );
        let hub = lookup(Some(dir.path()), DOCKER_HUB).unwrap().unwrap();
        assert_eq!(hub.username.as_deref(), Some("u"));
        let local = lookup(Some(dir.path()), "reg.local:5000").unwrap().unwrap();
        assert_eq!(local.identity_token.as_deref(), Some("tok"));
        assert!(lookup(Some(dir.path()), "other:1").unwrap().is_none());
    }

    #[test]
    fn missing_file_is_no_credentials_and_bad_file_is_an_error() {
        let empty = tempfile::tempdir().unwrap();
        assert!(lookup(Some(empty.path()), DOCKER_HUB).unwrap().is_none());
        let bad = write_config("{not json");
        let error = lookup(Some(bad.path()), DOCKER_HUB).unwrap_err();
        assert!(error.contains("not a Docker config file"), "{error}");
    }
}
