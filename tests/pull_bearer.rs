//! Bearer-token auth on both of the containerd driver's pull paths, against
//! real containerd daemons: a token-auth front of the test's own
//! (`support::token_front`) before the real registry challenges every
//! request, grants tokens for the Docker config's credentials and forwards
//! what carries one.
//!
//! - containerd 1.6 (hotpool's own registry client, plain HTTP to loopback):
//!   the right credentials pull (the token as `token` and as `access_token`)
//!   and the image runs a cold call; a wrong password and no credentials are
//!   `image_unauthorized`; a token endpoint answering `500` or an HTML page is
//!   `pull_failed`, not a hang; blobs redirected to another host (a CDN) come
//!   from there without the token.
//! - containerd 1.7 (its Transfer service, HTTPS only, answered for
//!   credentials on the auth stream): the right credentials pull; a wrong
//!   password and no credentials are `image_unauthorized`, a token endpoint
//!   answering `500` is `pull_failed`.
//!
//! Each pull's front counts the token requests and the Bearer-authorised
//! manifest and blob requests it saw, so no pull passes by another way; each
//! test leaves nothing in hotpool's namespace of either daemon.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use hotpool::driver::containerd::{ContainerdDriver, ContainerdOptions};
use hotpool::error::ErrorKind;
use hotpool::pool::POOL_LABEL;

use support::containerd::{
    CONTAINERD_17, ExtraGuard, NAMESPACE, PoolGuard, SOCKET, driver_with, leftovers,
    remove_from_containerd,
};
use support::prepare::{cold_echo, prepare_kind};
use support::registry::{PASSWORD, Registry, USER};
use support::token_front::{Seen, TokenAnswer, TokenFront};

/// The test image's repository and tag, behind every front.
const REPOSITORY: &str = "hotpool-testfn-bearer";

/// The longest a pull that must fail may take before the test calls it hung.
const NO_HANG: Duration = Duration::from_secs(120);

/// Options reading credentials from the Docker config in `dir`.
fn options(dir: &Path) -> ContainerdOptions {
    let mut options = ContainerdOptions::default();
    options.docker_config_dir = Some(dir.to_owned());
    options
}

/// The test image as named through `front`.
fn image_at(front: &TokenFront) -> String {
    format!("{}/{REPOSITORY}:v1", front.addr)
}

/// A registry holding the test image with a layer no daemon has yet (the
/// test function's own layer may be there from other pulls, and a pull skips
/// the layers it has).
async fn registry_with_fresh_image() -> Registry {
    let registry = Registry::start();
    let docker = support::driver().await;
    registry.push_fresh(docker.docker(), REPOSITORY).await;
    registry
}

/// A pool name of its own for one test.
fn new_pool() -> String {
    format!("bearer-test-{}", hotpool::driver::new_id())
}

/// Removes, when dropped, images `.0` from containerd 1.6's hotpool namespace
/// (waiting for the collector): a test that fails half-way leaves nothing.
struct Images16(Vec<String>);

impl Drop for Images16 {
    fn drop(&mut self) {
        for image in &self.0 {
            remove_from_containerd(image);
        }
    }
}

/// The image names in containerd 1.6's hotpool namespace.
fn images_16() -> Vec<String> {
    let output = Command::new("ctr")
        .args(["--address", SOCKET, "--namespace", NAMESPACE])
        .args(["images", "ls", "-q"])
        .output()
        .expect("ctr runs");
    assert!(
        output.status.success(),
        "ctr images ls: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Fails unless `seen` shows a pull that went through the token dance: a
/// challenge, a token granted, and manifests and at least `blobs` blobs
/// fetched with it.
fn assert_token_dance(seen: Seen, blobs: usize) {
    assert!(
        seen.challenged >= 1
            && seen.token_requests >= 1
            && seen.tokens_granted >= 1
            && seen.manifests >= 1
            && seen.blobs >= blobs,
        "the front saw no pull through its tokens (at least {blobs} blobs): {seen:?}"
    );
}

#[tokio::test]
async fn containerd_16_pulls_with_a_token_and_the_image_runs() {
    let registry = registry_with_fresh_image().await;
    let front = TokenFront::plain(&registry, TokenAnswer::Token).await;
    let oauth_front = TokenFront::plain(&registry, TokenAnswer::AccessToken).await;
    let (image, oauth_image) = (image_at(&front), image_at(&oauth_front));
    let pool = new_pool();
    let images_guard = Images16(vec![image.clone(), oauth_image.clone()]);
    let pool_guard = PoolGuard(pool.clone());

    let config = front.docker_config(USER, PASSWORD);
    let driver = driver_with(options(config.path())).await;
    let echoed = cold_echo(&driver, &image, &pool, b"through a token").await;
    assert_eq!(echoed, b"through a token");
    let statistics = driver.statistics();
    assert_eq!(
        (statistics.image_pulls, statistics.transfer_pulls),
        (1, 0),
        "one pull, by hotpool's own client"
    );
    // The config and at least the fresh layer.
    assert_token_dance(front.seen(), 2);
    assert_eq!(front.seen().token_posts, 0, "hotpool asks with GET");

    // The same image through a front that names its token `access_token`:
    // the layers are in containerd now, the config is fetched again.
    let oauth_config = oauth_front.docker_config(USER, PASSWORD);
    let oauth_driver = driver_with(options(oauth_config.path())).await;
    assert_eq!(prepare_kind(&oauth_driver, &oauth_image, &pool).await, None);
    assert_token_dance(oauth_front.seen(), 1);

    drop(pool_guard);
    drop(images_guard);
    let left = images_16();
    assert!(
        !left.contains(&image) && !left.contains(&oauth_image),
        "images left in containerd 1.6: {left:?}"
    );
    assert_eq!(leftovers(POOL_LABEL, &pool, &[]).await, Default::default());
}

#[tokio::test]
async fn containerd_16_refused_token_requests_are_image_unauthorized() {
    let registry = Registry::start();
    let front = TokenFront::plain(&registry, TokenAnswer::Token).await;
    let image = image_at(&front);
    let pool = new_pool();
    let images_guard = Images16(vec![image.clone()]);
    let pool_guard = PoolGuard(pool.clone());

    let wrong_config = front.docker_config(USER, "not-the-password");
    let wrong = driver_with(options(wrong_config.path())).await;
    let no_config = tempfile::tempdir().unwrap();
    let anonymous = driver_with(options(no_config.path())).await;
    for (driver, tokens_asked) in [(&wrong, 1), (&anonymous, 2)] {
        let kind = tokio::time::timeout(NO_HANG, prepare_kind(driver, &image, &pool))
            .await
            .expect("a refused pull fails, not hangs");
        assert_eq!(kind, Some(ErrorKind::ImageUnauthorized));
        let seen = front.seen();
        assert_eq!(
            (seen.token_requests, seen.tokens_granted),
            (tokens_asked, 0),
            "each pull asked for a token and got none: {seen:?}"
        );
    }
    let seen = front.seen();
    assert_eq!(
        (seen.manifests, seen.blobs),
        (0, 0),
        "nothing reached the registry: {seen:?}"
    );

    drop(pool_guard);
    drop(images_guard);
    assert!(!images_16().contains(&image));
    assert_eq!(leftovers(POOL_LABEL, &pool, &[]).await, Default::default());
}

#[tokio::test]
async fn containerd_16_a_broken_token_endpoint_is_pull_failed() {
    let registry = Registry::start();
    let pool = new_pool();
    let pool_guard = PoolGuard(pool.clone());
    for answer in [TokenAnswer::ServerError, TokenAnswer::Garbage] {
        let front = TokenFront::plain(&registry, answer).await;
        let image = image_at(&front);
        let images_guard = Images16(vec![image.clone()]);
        let config = front.docker_config(USER, PASSWORD);
        let driver = driver_with(options(config.path())).await;
        let kind = tokio::time::timeout(NO_HANG, prepare_kind(&driver, &image, &pool))
            .await
            .unwrap_or_else(|_| panic!("a token endpoint answering {answer:?} hung the pull"));
        assert_eq!(kind, Some(ErrorKind::PullFailed), "{answer:?}");
        let seen = front.seen();
        assert_eq!(
            (seen.token_requests, seen.manifests, seen.blobs),
            (1, 0, 0),
            "{answer:?}: one token request and nothing past it: {seen:?}"
        );
        drop(images_guard);
        assert!(!images_16().contains(&image));
    }
    drop(pool_guard);
    assert_eq!(leftovers(POOL_LABEL, &pool, &[]).await, Default::default());
}

/// A driver of containerd 1.7 reading the Docker config in `dir`.
async fn driver_17_with(dir: &Path) -> Option<ContainerdDriver> {
    CONTAINERD_17.driver(options(dir)).await
}

#[tokio::test]
async fn containerd_17_pulls_with_a_token_through_transfer() {
    let Some(probe) = CONTAINERD_17.driver(ContainerdOptions::default()).await else {
        return;
    };
    drop(probe);
    let registry = registry_with_fresh_image().await;
    let front = TokenFront::tls(&registry, Path::new(CONTAINERD_17.ca), TokenAnswer::Token).await;
    let image = image_at(&front);
    let pool = new_pool();
    let guard = ExtraGuard {
        daemon: &CONTAINERD_17,
        image: image.clone(),
        pool: pool.clone(),
    };

    // Refusals, each through Transfer and typed.
    let wrong_config = front.docker_config(USER, "not-the-password");
    let no_config = tempfile::tempdir().unwrap();
    for (config, what) in [
        (wrong_config.path(), "a wrong password"),
        (no_config.path(), "no credentials"),
    ] {
        let driver = driver_17_with(config).await.unwrap();
        let kind = tokio::time::timeout(NO_HANG, prepare_kind(&driver, &image, &pool))
            .await
            .unwrap_or_else(|_| panic!("the pull with {what} hung"));
        assert_eq!(kind, Some(ErrorKind::ImageUnauthorized), "{what}");
        assert_eq!(
            driver.statistics().transfer_pulls,
            1,
            "{what}: through Transfer"
        );
    }
    let seen = front.seen();
    assert!(
        seen.token_requests >= 2 && seen.tokens_granted == 0 && seen.manifests + seen.blobs == 0,
        "containerd asked for tokens twice and got none: {seen:?}"
    );

    // A token endpoint that breaks fails the pull as such.
    let broken = TokenFront::tls(
        &registry,
        Path::new(CONTAINERD_17.ca),
        TokenAnswer::ServerError,
    )
    .await;
    let broken_image = image_at(&broken);
    let broken_guard = ExtraGuard {
        daemon: &CONTAINERD_17,
        image: broken_image.clone(),
        pool: pool.clone(),
    };
    let broken_config = broken.docker_config(USER, PASSWORD);
    let driver = driver_17_with(broken_config.path()).await.unwrap();
    let kind = tokio::time::timeout(NO_HANG, prepare_kind(&driver, &broken_image, &pool))
        .await
        .expect("a pull from a broken token endpoint fails, not hangs");
    assert_eq!(kind, Some(ErrorKind::PullFailed));
    let seen = broken.seen();
    assert!(
        seen.token_requests >= 1 && seen.manifests + seen.blobs == 0,
        "containerd asked the broken endpoint and went no further: {seen:?}"
    );

    let right_config = front.docker_config(USER, PASSWORD);
    let right = driver_17_with(right_config.path()).await.unwrap();
    assert_eq!(prepare_kind(&right, &image, &pool).await, None);
    let statistics = right.statistics();
    assert_eq!(
        (statistics.image_pulls, statistics.transfer_pulls),
        (1, 1),
        "pulled by containerd's Transfer service"
    );
    assert_token_dance(front.seen(), 2);
    let records = CONTAINERD_17.ctr(&["images", "ls", "-q"]);
    assert!(records.contains(&image), "images: {records}");

    drop(guard);
    drop(broken_guard);
    let records = CONTAINERD_17.ctr(&["images", "ls", "-q"]);
    assert!(
        !records.contains(&image) && !records.contains(&broken_image),
        "images left: {records}"
    );
    let filter = format!("labels.\"{POOL_LABEL}\"=={pool}");
    let containers = CONTAINERD_17.ctr(&["containers", "ls", "-q", &filter]);
    assert_eq!(containers, "", "containers left in containerd 1.7");
}

#[tokio::test]
async fn containerd_16_follows_blob_redirects_without_the_token() {
    let registry = registry_with_fresh_image().await;
    let front = TokenFront::plain(&registry, TokenAnswer::Token)
        .await
        .redirecting_blobs()
        .await;
    let image = image_at(&front);
    let pool = new_pool();
    let images_guard = Images16(vec![image.clone()]);
    let pool_guard = PoolGuard(pool.clone());

    let config = front.docker_config(USER, PASSWORD);
    let driver = driver_with(options(config.path())).await;
    assert_eq!(prepare_kind(&driver, &image, &pool).await, None);
    let seen = front.seen();
    assert_token_dance(seen, 2);
    assert_eq!(
        (seen.cdn_blobs, seen.cdn_authorized),
        (seen.blobs, 0),
        "every blob came from the CDN, and no token went there: {seen:?}"
    );

    drop(pool_guard);
    drop(images_guard);
    assert!(!images_16().contains(&image));
    assert_eq!(leftovers(POOL_LABEL, &pool, &[]).await, Default::default());
}
