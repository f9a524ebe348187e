//! Pulls through containerd's Transfer service, against a real containerd 1.7
//! (`scripts/containerd-17`) and a real registry: the test image served over
//! HTTPS (1.7's Transfer service speaks no plain HTTP) from the host's own
//! address, with htpasswd auth answered through the auth stream. A refused
//! password and a missing tag have their kinds; the pulled image runs a cold
//! call; the same image from the plain-HTTP loopback registry comes through
//! the content, diff and snapshot services instead; nothing is left in
//! hotpool's namespace of that containerd afterwards.

mod support;

use std::io::Cursor;
use std::path::Path;
use std::time::Duration;

use hotpool::driver::containerd::{ContainerdDriver, ContainerdOptions};
use hotpool::driver::{Cookie, Driver, Task};
use hotpool::error::ErrorKind;
use hotpool::pool::POOL_LABEL;
use tokio_util::sync::CancellationToken;

use support::SharedBuf;
use support::containerd::{CA_17, Guard17, TestImage, ctr_17, driver_17};
use support::registry::{PASSWORD, USER};

/// Options reading credentials from the Docker config in `dir`.
fn options(dir: &Path) -> ContainerdOptions {
    let mut options = ContainerdOptions::default();
    options.docker_config_dir = Some(dir.to_owned());
    options
}

/// A task of the test function on `image`, in a pool of its own.
fn task(image: &str, pool: &str) -> Task {
    let mut task = Task::new(hotpool::driver::new_id(), "transfer-test", image);
    task.labels.insert(POOL_LABEL.to_owned(), pool.to_owned());
    task.memory = 64 << 20;
    task.timeout = Some(Duration::from_secs(60));
    task
}

/// Prepares `image` and returns the error kind, or `None` when it worked.
async fn prepare_kind(driver: &ContainerdDriver, image: &str, pool: &str) -> Option<ErrorKind> {
    match driver.prepare(task(image, pool)).await {
        Ok(cookie) => {
            cookie.close().await;
            None
        }
        Err(e) => {
            eprintln!("prepare {image}: {e}");
            Some(e.kind())
        }
    }
}

/// The lines of `ctr <kind> ls -q` (all of them for snapshots, which has no
/// `-q`) in hotpool's namespace of containerd 1.7.
fn listed(kind: &str) -> Vec<String> {
    let args: &[&str] = if kind == "snapshots" {
        &["snapshots", "ls"]
    } else {
        &[kind, "ls", "-q"]
    };
    let lines: Vec<String> = ctr_17(args).lines().map(str::to_owned).collect();
    if kind == "snapshots" {
        lines.into_iter().skip(1).collect()
    } else {
        lines
    }
}

#[tokio::test]
async fn containerd_17_pulls_through_transfer_and_the_image_runs() {
    let Some(probe) = driver_17(ContainerdOptions::default()).await else {
        return;
    };
    drop(probe);
    // Pushed by Docker to the plain-HTTP loopback registry, served over HTTPS
    // from the host's address by a second registry on the same storage.
    let pushed = TestImage::push("hotpool-testfn-transfer").await;
    let mirror = pushed.registry().tls_mirror(Path::new(CA_17));
    let image = format!("{}/hotpool-testfn-transfer:v1", mirror.addr);
    let pool = format!("transfer-test-{}", hotpool::driver::new_id());
    let _guard = Guard17(image.clone(), pool.clone());

    let wrong_config = mirror.docker_config(USER, "not-the-password");
    let wrong = driver_17(options(wrong_config.path())).await.unwrap();
    assert_eq!(
        prepare_kind(&wrong, &image, &pool).await,
        Some(ErrorKind::ImageUnauthorized)
    );
    assert_eq!(wrong.statistics().transfer_pulls, 1, "through Transfer");

    let right_config = mirror.docker_config(USER, PASSWORD);
    let right = driver_17(options(right_config.path())).await.unwrap();
    let missing = format!("{}/hotpool-testfn-transfer:no-such-tag", mirror.addr);
    assert_eq!(
        prepare_kind(&right, &missing, &pool).await,
        Some(ErrorKind::ImageNotFound)
    );

    // The pull, then a cold call of the image.
    let stdout = SharedBuf::default();
    let stderr = SharedBuf::default();
    let mut call = task(&image, &pool);
    call.command = vec!["echo".to_owned()];
    call.input = Some(Box::new(Cursor::new(b"through transfer".to_vec())));
    call.stdout = Some(Box::new(stdout.clone()));
    call.stderr = Box::new(stderr.clone());
    let mut cookie = right
        .prepare(call)
        .await
        .expect("prepare pulls and creates");
    cookie.run().await.expect("run");
    let result = cookie.wait(&CancellationToken::new()).await;
    cookie.close().await;
    assert_eq!(result, Ok(()), "stderr: {}", stderr.text());
    assert_eq!(stdout.bytes(), b"through transfer");
    let statistics = right.statistics();
    assert_eq!(
        (statistics.image_pulls, statistics.transfer_pulls),
        (2, 2),
        "the missing tag's pull and this one, both through Transfer"
    );
    // As the other path leaves it: named by the full reference, labelled.
    let records = ctr_17(&["images", "ls", "labels.hotpool==1"]);
    assert!(
        records.contains(&image),
        "images labelled hotpool=1: {records}"
    );
    let snapshots = listed("snapshots");
    assert!(
        !snapshots.is_empty() && snapshots.iter().all(|s| s.contains("Committed")),
        "unpacked with overlayfs: {snapshots:?}"
    );

    // A loopback registry speaks plain HTTP, which 1.7's Transfer service
    // cannot: that pull takes the content, diff and snapshot services.
    let _loopback_guard = Guard17(pushed.name.clone(), pool.clone());
    let loopback = driver_17(options(pushed.docker_config())).await.unwrap();
    assert_eq!(prepare_kind(&loopback, &pushed.name, &pool).await, None);
    let statistics = loopback.statistics();
    assert_eq!(
        (statistics.image_pulls, statistics.transfer_pulls),
        (1, 0),
        "a loopback registry's image comes through the services"
    );

    ctr_17(&["images", "rm", "--sync", &image, &pushed.name]);
    for kind in [
        "images",
        "containers",
        "tasks",
        "leases",
        "snapshots",
        "content",
    ] {
        assert_eq!(
            listed(kind),
            Vec::<String>::new(),
            "containerd 1.7's hotpool namespace still has {kind}"
        );
    }
}
