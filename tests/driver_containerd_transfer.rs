//! Pulls through containerd's Transfer service, against real containerd
//! daemons beside the host's (`scripts/containerd-extra`: 1.7 and 2.1) and a
//! real registry with htpasswd auth, answered through the auth stream. On
//! each, through Transfer: a refused password and a missing tag have their
//! kinds, and the pulled image runs a cold call. containerd 1.7's Transfer
//! service speaks HTTPS only, so there the image is served over HTTPS from a
//! name on loopback, and the same image from the plain-HTTP loopback registry
//! comes through the content, diff and snapshot services instead; 2.1's
//! speaks plain HTTP where asked, so there the loopback registry's image comes
//! through Transfer too, and so does the HTTPS one. Nothing is left in
//! hotpool's namespace of either daemon afterwards.

mod support;

use std::path::Path;

use hotpool::driver::containerd::ContainerdOptions;
use hotpool::error::ErrorKind;

use support::containerd::{CONTAINERD_17, CONTAINERD_21, ExtraContainerd, ExtraGuard, TestImage};
use support::prepare::{cold_echo, prepare_kind};
use support::registry::{PASSWORD, Registry, USER};

/// The repository the test function is pushed to.
const REPOSITORY: &str = "hotpool-testfn-transfer";

/// Options reading credentials from the Docker config in `dir`.
fn options(dir: &Path) -> ContainerdOptions {
    let mut options = ContainerdOptions::default();
    options.docker_config_dir = Some(dir.to_owned());
    options
}

/// A new pool name, for the labels a guard removes by.
fn new_pool() -> String {
    format!("transfer-test-{}", hotpool::driver::new_id())
}

/// The lines of `ctr <kind> ls -q` (all of them for snapshots, which has no
/// `-q`) in hotpool's namespace of `daemon`.
fn listed(daemon: &ExtraContainerd, kind: &str) -> Vec<String> {
    let args: &[&str] = if kind == "snapshots" {
        &["snapshots", "ls"]
    } else {
        &[kind, "ls", "-q"]
    };
    let lines: Vec<String> = daemon.ctr(args).lines().map(str::to_owned).collect();
    if kind == "snapshots" {
        lines.into_iter().skip(1).collect()
    } else {
        lines
    }
}

/// Asserts that hotpool's namespace of `daemon` is empty.
fn assert_nothing_left(daemon: &ExtraContainerd) {
    for kind in [
        "images",
        "containers",
        "tasks",
        "leases",
        "snapshots",
        "content",
    ] {
        assert_eq!(
            listed(daemon, kind),
            Vec::<String>::new(),
            "containerd {}'s hotpool namespace still has {kind}",
            daemon.version
        );
    }
}

/// Through `daemon`'s Transfer service, from `registry` (which holds the test
/// function in [`REPOSITORY`], tag `v1`): a refused password is
/// `image_unauthorized`, a missing tag `image_not_found`, and the image pulls,
/// named and labelled as the other path leaves it, and runs a cold call. Then
/// the image is removed and the namespace is empty.
async fn pulls_through_transfer(daemon: &'static ExtraContainerd, registry: &Registry) {
    let image = format!("{}/{REPOSITORY}:v1", registry.addr);
    let pool = new_pool();
    let _guard = ExtraGuard {
        daemon,
        image: image.clone(),
        pool: pool.clone(),
    };

    let wrong_config = registry.docker_config(USER, "not-the-password");
    let wrong = daemon.driver(options(wrong_config.path())).await.unwrap();
    assert_eq!(
        prepare_kind(&wrong, &image, &pool).await,
        Some(ErrorKind::ImageUnauthorized)
    );
    assert_eq!(wrong.statistics().transfer_pulls, 1, "through Transfer");

    let right_config = registry.docker_config(USER, PASSWORD);
    let right = daemon.driver(options(right_config.path())).await.unwrap();
    let missing = format!("{}/{REPOSITORY}:no-such-tag", registry.addr);
    assert_eq!(
        prepare_kind(&right, &missing, &pool).await,
        Some(ErrorKind::ImageNotFound)
    );

    // The pull, then a cold call of the image.
    assert_eq!(
        cold_echo(&right, &image, &pool, b"through transfer").await,
        b"through transfer"
    );
    let statistics = right.statistics();
    assert_eq!(
        (statistics.image_pulls, statistics.transfer_pulls),
        (2, 2),
        "the missing tag's pull and this one, both through Transfer"
    );
    // As the other path leaves it: named by the full reference, labelled.
    let records = daemon.ctr(&["images", "ls", "labels.hotpool==1"]);
    assert!(
        records.contains(&image),
        "images labelled hotpool=1: {records}"
    );
    let snapshots = listed(daemon, "snapshots");
    assert!(
        !snapshots.is_empty() && snapshots.iter().all(|s| s.contains("Committed")),
        "unpacked with overlayfs: {snapshots:?}"
    );

    daemon.ctr(&["images", "rm", "--sync", &image]);
    assert_nothing_left(daemon);
}

#[tokio::test]
async fn containerd_17_pulls_through_transfer_and_the_image_runs() {
    let daemon = &CONTAINERD_17;
    if daemon.driver(ContainerdOptions::default()).await.is_none() {
        return;
    }
    // Pushed by Docker to the plain-HTTP loopback registry, served over HTTPS
    // from a name on loopback by a second registry on the same storage.
    let pushed = TestImage::push(REPOSITORY).await;
    let mirror = pushed.registry().tls_mirror(Path::new(daemon.ca));
    pulls_through_transfer(daemon, &mirror).await;

    // A loopback registry speaks plain HTTP, which 1.7's Transfer service
    // cannot: that pull takes the content, diff and snapshot services.
    let pool = new_pool();
    let _guard = ExtraGuard {
        daemon,
        image: pushed.name.clone(),
        pool: pool.clone(),
    };
    let loopback = daemon
        .driver(options(pushed.docker_config()))
        .await
        .unwrap();
    assert_eq!(prepare_kind(&loopback, &pushed.name, &pool).await, None);
    let statistics = loopback.statistics();
    assert_eq!(
        (statistics.image_pulls, statistics.transfer_pulls),
        (1, 0),
        "a loopback registry's image comes through the services"
    );
    daemon.ctr(&["images", "rm", "--sync", &pushed.name]);
    assert_nothing_left(daemon);
}

#[tokio::test]
async fn containerd_21_pulls_through_transfer_over_plain_http_and_https() {
    let daemon = &CONTAINERD_21;
    if daemon.driver(ContainerdOptions::default()).await.is_none() {
        return;
    }
    // The loopback registry's plain HTTP, through Transfer: the branch 1.7
    // cannot take.
    let pushed = TestImage::push(REPOSITORY).await;
    pulls_through_transfer(daemon, pushed.registry()).await;
    // The same image over HTTPS, from a name on loopback.
    let mirror = pushed.registry().tls_mirror(Path::new(daemon.ca));
    pulls_through_transfer(daemon, &mirror).await;
}
