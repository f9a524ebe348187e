//! A hostile registry against the containerd driver's own pulls: one that
//! sends a manifest, an image config or a layer that never ends, or more
//! bytes than its manifest says. Each pull fails as `pull_failed` once the
//! bytes pass their bound (not at the pull's deadline, and not after filling
//! hotpool's memory or the disk), and leaves nothing in containerd's content
//! store.
//!
//! The registry is the test's own: a few lines of HTTP on loopback that lie as
//! told, which no real registry can be made to do.

mod support;

use std::process::Command;
use std::time::Duration;

use hotpool::driver::{Cookie, Driver, Task};
use hotpool::error::ErrorKind;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::containerd::{NAMESPACE, SOCKET, driver_with};

/// What the lying registry sends for one blob or manifest.
#[derive(Clone)]
enum Body {
    /// These bytes, with their length.
    Exact(Vec<u8>, &'static str),
    /// Chunks of zeros for as long as the client reads.
    Endless,
}

/// A registry on loopback that answers `routes` (a path under `/v2/` and its
/// body) and 404 to the rest.
struct LyingRegistry {
    addr: String,
}

impl LyingRegistry {
    async fn start(routes: Vec<(String, Body)>) -> LyingRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve(stream, routes.clone()));
            }
        });
        LyingRegistry { addr }
    }
}

/// Answers the requests of one connection.
async fn serve(mut stream: TcpStream, routes: Vec<(String, Body)>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        head.clear();
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                return;
            }
            head.push(byte[0]);
        }
        let text = String::from_utf8_lossy(&head).to_string();
        let path = text.split_whitespace().nth(1).unwrap_or("").to_owned();
        let route = routes
            .iter()
            .find(|(route, _)| path.ends_with(route.as_str()));
        let written = match route.map(|(_, body)| body) {
            Some(Body::Exact(bytes, media_type)) => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {media_type}\r\nContent-Length: {}\r\n\r\n",
                    bytes.len()
                );
                let mut answer = head.into_bytes();
                answer.extend_from_slice(bytes);
                stream.write_all(&answer).await
            }
            Some(Body::Endless) => {
                let head = "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nTransfer-Encoding: chunked\r\n\r\n";
                if stream.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = [b"10000\r\n".as_slice(), &[b' '; 0x10000], b"\r\n"].concat();
                // Until the client hangs up.
                while stream.write_all(&chunk).await.is_ok() {}
                return;
            }
            None => {
                let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}"#;
                let head = format!(
                    "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                stream.write_all(&[head.as_bytes(), body].concat()).await
            }
        };
        if written.is_err() {
            return;
        }
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// An OCI manifest of one layer of `layer_size` bytes, `layer_digest`, and
/// a valid config, with the config's bytes.
fn manifest(layer_digest: &str, layer_size: u64) -> (Vec<u8>, Vec<u8>) {
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{}},"rootfs":{{"type":"layers","diff_ids":["{layer_digest}"]}}}}"#
    )
    .into_bytes();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer_digest}","size":{layer_size}}}]}}"#,
        sha256(&config),
        config.len()
    )
    .into_bytes();
    (manifest, config)
}

/// Prepares `image` and returns the error's kind and message.
async fn pull_error(image: &str) -> (ErrorKind, String) {
    let driver = driver_with(Default::default()).await;
    let task = Task::new(hotpool::driver::new_id(), "pull-hostile", image);
    let prepared = tokio::time::timeout(Duration::from_secs(120), driver.prepare(task))
        .await
        .expect("a lying registry must fail the pull well before its deadline");
    match prepared {
        Ok(cookie) => {
            cookie.close().await;
            panic!("a lying registry's image was pulled: {image}");
        }
        Err(e) => (e.kind(), e.to_string()),
    }
}

/// What containerd's content store holds, and writes in progress, of `digest`.
fn stored(digest: &str) -> Vec<String> {
    let ctr = |args: &[&str]| {
        let output = Command::new("ctr")
            .args(["--address", SOCKET, "--namespace", NAMESPACE, "content"])
            .args(args)
            .output()
            .expect("ctr (Debian's containerd package)");
        assert!(output.status.success(), "ctr content {args:?} failed");
        String::from_utf8_lossy(&output.stdout).to_string()
    };
    [ctr(&["ls", "--quiet"]), ctr(&["active"])]
        .concat()
        .lines()
        .filter(|line| line.contains(digest.trim_start_matches("sha256:")))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn an_endless_manifest_fails_the_pull_at_its_bound() {
    let registry = LyingRegistry::start(vec![("/manifests/v1".into(), Body::Endless)]).await;
    let (kind, message) = pull_error(&format!("{}/endless:v1", registry.addr)).await;
    assert_eq!(kind, ErrorKind::PullFailed, "{message}");
    assert!(message.contains("bytes"), "the bound is named: {message}");
}

#[tokio::test]
async fn an_endless_config_fails_the_pull_at_its_bound() {
    let layer = sha256(b"a layer never fetched");
    let (manifest, config) = manifest(&layer, 100);
    let routes = vec![
        (
            "/manifests/v1".into(),
            Body::Exact(manifest, "application/vnd.oci.image.manifest.v1+json"),
        ),
        (format!("/blobs/{}", sha256(&config)), Body::Endless),
    ];
    let registry = LyingRegistry::start(routes).await;
    let (kind, message) = pull_error(&format!("{}/endless-config:v1", registry.addr)).await;
    assert_eq!(kind, ErrorKind::PullFailed, "{message}");
    assert!(message.contains("bytes"), "the bound is named: {message}");
}

#[tokio::test]
async fn a_layer_longer_than_its_manifest_says_is_cut_and_not_kept() {
    // Any digest will do: the bytes never reach the point of being checked.
    let layer = sha256(b"a layer of 4096 bytes, says the manifest");
    let (manifest, config) = manifest(&layer, 4096);
    let routes = vec![
        (
            "/manifests/v1".into(),
            Body::Exact(manifest, "application/vnd.oci.image.manifest.v1+json"),
        ),
        (
            format!("/blobs/{}", sha256(&config)),
            Body::Exact(config, "application/octet-stream"),
        ),
        (format!("/blobs/{layer}"), Body::Endless),
    ];
    let registry = LyingRegistry::start(routes).await;
    let (kind, message) = pull_error(&format!("{}/long-layer:v1", registry.addr)).await;
    assert_eq!(kind, ErrorKind::PullFailed, "{message}");
    assert!(
        message.contains("more than the 4096 bytes"),
        "the lie is named: {message}"
    );
    // containerd drops an uncommitted write once its client goes.
    let mut left = stored(&layer);
    for _ in 0..50 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = stored(&layer);
    }
    assert_eq!(left, Vec::<String>::new(), "the cut layer is not kept");
}
