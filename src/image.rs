//! Image references: which registry, repository and tag or digest an image names,
//! and which of an image's platforms this host runs (`this_architecture`).
//!
//! [`parse_image`] keeps the semantics of fn's `ParseImage` (Docker Hub names get
//! `library/`, a missing tag is `latest`) and fixes what it got wrong: the first
//! component is a registry when it has a `.` or a `:` or is `localhost` (so
//! `localhost/x` and `host:5000/a/b:tag` work), a port is never mistaken for a tag,
//! and `repo@sha256:...` digests are kept.

use std::fmt;

/// The registry that images without one come from.
pub const DOCKER_HUB: &str = "docker.io";

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct ImageRef {
    /// The registry host (with port), or `None` for Docker Hub.
    pub registry: Option<String>,
    /// The repository path, `library/` prefixed for Docker Hub official images.
    pub repository: String,
    /// The tag; `latest` when neither a tag nor a digest is given.
    pub tag: Option<String>,
    /// The digest (`sha256:...`), when pinned.
    pub digest: Option<String>,
}

impl ImageRef {
    /// The registry host to look up credentials for (`docker.io` for Docker Hub).
    pub fn registry_host(&self) -> &str {
        self.registry.as_deref().unwrap_or(DOCKER_HUB)
    }

    /// The name without tag or digest, as the engine's pull API wants it.
    pub fn name(&self) -> String {
        match &self.registry {
            Some(registry) => format!("{registry}/{}", self.repository),
            None => self.repository.clone(),
        }
    }

    /// What to pull: the digest when pinned, else the tag.
    pub fn pull_reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Parses an image reference such as `alpine`, `user/app:v1`,
/// `host:5000/a/b:tag` or `repo@sha256:...`.
pub fn parse_image(image: &str) -> ImageRef {
    let (name_and_tag, digest) = match image.split_once('@') {
        Some((name, digest)) => (name, Some(digest.to_owned())),
        None => (image, None),
    };
    // A tag follows the last ':' only if no '/' comes after it (else it is a port).
    let (name, tag) = match name_and_tag.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, Some(tag.to_owned())),
        _ => (name_and_tag, None),
    };
    let (registry, repository) = match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
            (Some(first.to_owned()), rest.to_owned())
        }
        Some(_) => (None, name.to_owned()),
        None => (None, format!("library/{name}")),
    };
    let tag = match (&tag, &digest) {
        (None, None) => Some("latest".to_owned()),
        _ => tag,
    };
    ImageRef {
        registry,
        repository,
        tag,
        digest,
    }
}

/// This host's architecture as OCI platforms name it.
pub(crate) fn this_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let pinned = format!("repo@{digest}");
        let tagged_and_pinned = format!("127.0.0.1:5000/repo:v2@{digest}");
        // input, registry, repository, tag, digest
        type Case<'a> = (
            &'a str,
            Option<&'a str>,
            &'a str,
            Option<&'a str>,
            Option<&'a str>,
        );
        let cases: Vec<Case> = vec![
            // The seed's cases.
            ("alpine", None, "library/alpine", Some("latest"), None),
            ("alpine:3.19", None, "library/alpine", Some("3.19"), None),
            ("user/app", None, "user/app", Some("latest"), None),
            ("user/app:v1", None, "user/app", Some("v1"), None),
            ("quay.io/app", Some("quay.io"), "app", Some("latest"), None),
            (
                "quay.io/org/app:1",
                Some("quay.io"),
                "org/app",
                Some("1"),
                None,
            ),
            // What the seed got wrong.
            ("localhost/x", Some("localhost"), "x", Some("latest"), None),
            ("host:5000/x", Some("host:5000"), "x", Some("latest"), None),
            (
                "host:5000/a/b:tag",
                Some("host:5000"),
                "a/b",
                Some("tag"),
                None,
            ),
            ("gcr.io/a/b/c:7", Some("gcr.io"), "a/b/c", Some("7"), None),
            ("a/b/c", None, "a/b/c", Some("latest"), None),
            (&pinned, None, "library/repo", None, Some(digest)),
            (
                &tagged_and_pinned,
                Some("127.0.0.1:5000"),
                "repo",
                Some("v2"),
                Some(digest),
            ),
        ];
        for (input, registry, repository, tag, digest) in cases {
            let parsed = parse_image(input);
            assert_eq!(parsed.registry.as_deref(), registry, "registry of {input}");
            assert_eq!(parsed.repository, repository, "repository of {input}");
            assert_eq!(parsed.tag.as_deref(), tag, "tag of {input}");
            assert_eq!(parsed.digest.as_deref(), digest, "digest of {input}");
        }
    }

    #[test]
    fn pull_names() {
        let local = parse_image("127.0.0.1:5000/fn/echo:v3");
        assert_eq!(local.name(), "127.0.0.1:5000/fn/echo");
        assert_eq!(local.pull_reference(), "v3");
        assert_eq!(local.registry_host(), "127.0.0.1:5000");
        assert_eq!(local.to_string(), "127.0.0.1:5000/fn/echo:v3");
        let hub = parse_image("alpine");
        assert_eq!(hub.registry_host(), DOCKER_HUB);
        assert_eq!(hub.to_string(), "library/alpine:latest");
        let pinned = parse_image("repo@sha256:ab");
        assert_eq!(pinned.pull_reference(), "sha256:ab");
    }
}
