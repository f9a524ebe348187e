//! Pulling through the Docker driver from a real registry with htpasswd auth:
//! every pull error kind, credentials from the Docker config file, one pull for
//! many concurrent prepares.

mod support;

use hotpool::driver::docker::{DockerDriver, DockerOptions};
use hotpool::driver::{Cookie, Driver, Task};
use hotpool::error::ErrorKind;
use tempfile::TempDir;

use support::registry::{PASSWORD, Registry, USER, remove_image};
use support::{driver, driver_with};

async fn driver_using(config: &TempDir) -> DockerDriver {
    let mut options = DockerOptions::default();
    options.docker_config_dir = Some(config.path().to_owned());
    driver_with(options).await
}

fn task(image: &str) -> Task {
    Task::new(hotpool::driver::new_id(), "pull-test", image)
}

/// Prepares `image` and returns the error kind, or `None` when it worked.
async fn prepare_kind(driver: &DockerDriver, image: &str) -> Option<ErrorKind> {
    match driver.prepare(task(image)).await {
        Ok(cookie) => {
            cookie.close().await;
            None
        }
        Err(e) => Some(e.kind()),
    }
}

#[tokio::test]
async fn pull_errors_have_their_kinds() {
    let registry = Registry::start();
    let plain = driver().await;
    let image = registry.push(plain.docker(), "testfn-auth").await;

    let no_credentials = tempfile::tempdir().unwrap();
    let anonymous = driver_using(&no_credentials).await;
    assert_eq!(
        prepare_kind(&anonymous, &image).await,
        Some(ErrorKind::ImageUnauthorized)
    );

    let wrong_config = registry.docker_config(USER, "not-the-password");
    let wrong = driver_using(&wrong_config).await;
    assert_eq!(
        prepare_kind(&wrong, &image).await,
        Some(ErrorKind::ImageUnauthorized)
    );

    let right_config = registry.docker_config(USER, PASSWORD);
    let right = driver_using(&right_config).await;
    let missing = format!("{}/no-such-repository:v1", registry.addr);
    assert_eq!(
        prepare_kind(&right, &missing).await,
        Some(ErrorKind::ImageNotFound)
    );
    assert_eq!(
        prepare_kind(&right, &image).await,
        None,
        "right password pulls"
    );

    remove_image(plain.docker(), &image).await;
}

#[tokio::test]
async fn concurrent_prepares_of_a_missing_image_pull_once() {
    let registry = Registry::start();
    let plain = driver().await;
    let image = registry.push(plain.docker(), "testfn-once").await;
    let config = registry.docker_config(USER, PASSWORD);
    let driver = driver_using(&config).await;

    let prepares = (0..8).map(|_| driver.prepare(task(&image)));
    let cookies = futures_util::future::join_all(prepares).await;
    for cookie in cookies {
        cookie.expect("every prepare succeeds").close().await;
    }
    assert_eq!(driver.statistics().image_pulls, 1);

    remove_image(plain.docker(), &image).await;
}

#[tokio::test]
async fn a_failed_pull_reaches_every_concurrent_prepare() {
    let registry = Registry::start();
    let empty = tempfile::tempdir().unwrap();
    let driver = driver_using(&empty).await;
    let image = format!("{}/never-pushed:v1", registry.addr);
    let prepares = (0..4).map(|_| driver.prepare(task(&image)));
    for result in futures_util::future::join_all(prepares).await {
        assert_eq!(
            result.err().map(|e| e.kind()),
            Some(ErrorKind::ImageUnauthorized)
        );
    }
    assert_eq!(driver.statistics().image_pulls, 1);
}
