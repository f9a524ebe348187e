//! A real registry for pull tests: Debian's `docker-registry` on 127.0.0.1 with
//! htpasswd auth. The engine treats loopback registries as insecure, so plain HTTP.
//! [`Registry::tls_mirror`] serves the same repositories over HTTPS, still on
//! loopback but under a name ([`TLS_REGISTRY_NAME`]), for containerd 1.7's
//! Transfer service (HTTPS only).

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::query_parameters::{
    PushImageOptionsBuilder, RemoveImageOptionsBuilder, TagImageOptionsBuilder,
};
use futures_util::TryStreamExt;
use tempfile::TempDir;

use super::testfn_image;

/// The name the TLS mirror is served under: not a loopback address by its
/// looks, so hotpool does not take it for a plain-HTTP registry.
pub const TLS_REGISTRY_NAME: &str = "hotpool-registry.test";
/// Where that name points, on loopback.
pub const TLS_REGISTRY_IP: &str = "127.0.0.2";

/// The user the registry knows.
pub const USER: &str = "hotpool";
/// That user's password.
pub const PASSWORD: &str = "correct-horse";

/// A running registry; stopped when dropped.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:<port>`.
    pub addr: String,
    _dir: TempDir,
}

impl Registry {
    /// Starts a registry on a free loopback port and waits until it listens.
    pub fn start() -> Registry {
        let binary = registry_binary();
        let dir = tempfile::tempdir().expect("temp dir");
        let addr = format!("127.0.0.1:{}", super::free_port());
        let hash = bcrypt::hash(PASSWORD, 5).expect("bcrypt");
        std::fs::write(dir.path().join("htpasswd"), format!("{USER}:{hash}\n")).expect("htpasswd");
        let config = config(dir.path(), &addr, "");
        Registry::serve(binary, dir, addr, config)
    }

    /// Serves this registry's repositories (its storage and users) over HTTPS
    /// at `<TLS_REGISTRY_NAME>:<port>` (listening on [`TLS_REGISTRY_IP`]), with
    /// a certificate for that name signed by the CA in `ca_dir` (`ca.pem`,
    /// `ca.key`); stopped when dropped. The name must resolve to that address
    /// (`scripts/containerd-extra` writes it into `/etc/hosts`).
    pub fn tls_mirror(&self, ca_dir: &Path) -> Registry {
        let binary = registry_binary();
        let dir = tempfile::tempdir().expect("temp dir");
        let port = super::free_port();
        assert_tls_name_resolves();
        let listen = format!("{TLS_REGISTRY_IP}:{port}");
        let addr = format!("{TLS_REGISTRY_NAME}:{port}");
        let (cert, key) = tls_certificate(ca_dir, dir.path());
        let tls = format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            cert.display(),
            key.display()
        );
        let config = config(self._dir.path(), &listen, &tls);
        Registry::serve(binary, dir, addr, config)
    }

    /// Runs `binary` with `config` (written into `dir`) and waits until it
    /// listens at `addr`.
    fn serve(binary: &str, dir: TempDir, addr: String, config: String) -> Registry {
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("registry config");
        let child = Command::new(binary)
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let started = Instant::now();
        while TcpStream::connect(&addr).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "docker-registry did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Registry {
            child,
            addr,
            _dir: dir,
        }
    }

    /// Pushes the test-function image as `<addr>/<name>:v1` with the right
    /// credentials, then drops the local tag so that using it needs a pull.
    pub async fn push(&self, docker: &Docker, name: &str) -> String {
        self.push_as(docker, testfn_image(), name, "v1").await
    }

    /// Pushes the test-function image with one more layer of fresh bytes
    /// ([`super::fresh_layer_image`]) as `<addr>/<name>:v1`: a pull of it
    /// fetches at least that layer, whatever an engine holds already. Nothing
    /// of it stays in Docker.
    pub async fn push_fresh(&self, docker: &Docker, name: &str) -> String {
        /// Removes the local source tag however the push ends.
        struct Untag(String);
        impl Drop for Untag {
            fn drop(&mut self) {
                let _ = Command::new("docker")
                    .args(["image", "rm", &self.0])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let source = Untag(format!("hotpool-fresh-{}:v1", hotpool::driver::new_id()));
        super::fresh_layer_image(&source.0).await;
        self.push_as(docker, &source.0, name, "v1").await
    }

    /// Pushes the local image `source` as `<addr>/<name>:<tag>` with the right
    /// credentials, then drops that local tag so that using it needs a pull.
    pub async fn push_as(&self, docker: &Docker, source: &str, name: &str, tag: &str) -> String {
        let repo = format!("{}/{name}", self.addr);
        let image = format!("{repo}:{tag}");
        docker
            .tag_image(
                source,
                Some(
                    TagImageOptionsBuilder::default()
                        .repo(&repo)
                        .tag(tag)
                        .build(),
                ),
            )
            .await
            .expect("tag");
        let credentials = DockerCredentials {
            username: Some(USER.into()),
            password: Some(PASSWORD.into()),
            serveraddress: Some(self.addr.clone()),
            ..Default::default()
        };
        docker
            .push_image(
                &repo,
                Some(PushImageOptionsBuilder::default().tag(tag).build()),
                Some(credentials),
            )
            .try_for_each(|_| async { Ok(()) })
            .await
            .expect("push to the test registry");
        remove_image(docker, &image).await;
        image
    }

    /// A Docker config directory whose `config.json` holds `user:password` for this
    /// registry.
    pub fn docker_config(&self, user: &str, password: &str) -> TempDir {
        docker_config_for(&self.addr, user, password)
    }
}

/// A Docker config directory whose `config.json` holds `user:password` for the
/// registry at `addr` (`host:port`).
pub fn docker_config_for(addr: &str, user: &str, password: &str) -> TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let json = format!(r#"{{"auths":{{"{addr}":{{"auth":"{auth}"}}}}}}"#);
    std::fs::write(dir.path().join("config.json"), json).expect("config.json");
    dir
}

/// Fails the test unless [`TLS_REGISTRY_NAME`] names [`TLS_REGISTRY_IP`] here.
pub fn assert_tls_name_resolves() {
    use std::net::ToSocketAddrs;
    let resolved: Vec<_> = (TLS_REGISTRY_NAME, 443)
        .to_socket_addrs()
        .map(Iterator::collect)
        .unwrap_or_default();
    assert!(
        resolved
            .iter()
            .any(|a| a.ip().to_string() == TLS_REGISTRY_IP),
        "{TLS_REGISTRY_NAME} must name {TLS_REGISTRY_IP} in /etc/hosts: run scripts/containerd-extra 1.7"
    );
}

/// A new key and a certificate for [`TLS_REGISTRY_NAME`] signed by the CA in
/// `ca_dir` (`ca.pem`, `ca.key`), written into `dir`: the certificate's path
/// and the key's.
pub fn tls_certificate(ca_dir: &Path, dir: &Path) -> (PathBuf, PathBuf) {
    let (key, csr, cert) = (
        dir.join("key.pem"),
        dir.join("csr.pem"),
        dir.join("cert.pem"),
    );
    let openssl = |args: &[&str]| {
        let output = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl runs");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let san = format!("subjectAltName=DNS:{TLS_REGISTRY_NAME}");
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        "/CN=hotpool test registry",
        "-addext",
        &san,
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        csr.to_str().unwrap(),
    ]);
    let (ca, ca_key) = (ca_dir.join("ca.pem"), ca_dir.join("ca.key"));
    openssl(&[
        "x509",
        "-req",
        "-in",
        csr.to_str().unwrap(),
        "-CA",
        ca.to_str().unwrap(),
        "-CAkey",
        ca_key.to_str().unwrap(),
        "-CAcreateserial",
        "-CAserial",
        dir.join("ca.srl").to_str().unwrap(),
        "-days",
        "1",
        "-copy_extensions",
        "copy",
        "-out",
        cert.to_str().unwrap(),
    ]);
    (cert, key)
}

/// Debian's docker-registry, or a failed test saying how to get it.
fn registry_binary() -> &'static str {
    ["/usr/bin/docker-registry", "/usr/sbin/docker-registry"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or_else(|| {
            panic!("the pull tests need Debian's docker-registry: apt-get install docker-registry")
        })
}

/// A registry config serving the storage and users under `root` at `addr`,
/// with `tls` (lines of the `http` section) if not empty.
fn config(root: &Path, addr: &str, tls: &str) -> String {
    format!(
        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {root}/data\n\
         http:\n  addr: {addr}\n{tls}auth:\n  htpasswd:\n    realm: hotpool-test\n    path: {root}/htpasswd\n",
        root = root.display()
    )
}

/// Removes a local image tag; one that is not there is fine.
pub async fn remove_image(docker: &Docker, image: &str) {
    let options = RemoveImageOptionsBuilder::default().build();
    match docker.remove_image(image, Some(options), None).await {
        Ok(_)
        | Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => {}
        Err(e) => panic!("removing image {image}: {e}"),
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
