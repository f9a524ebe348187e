//! Making sure an image is present: one pull per missing image, however many ask.
//!
//! The first prepare that finds an image missing starts the pull on its own task;
//! prepares that come while it runs await the same pull and get the same result.
//! The engine's pull errors become `image_not_found`, `image_unauthorized` or
//! `pull_failed`, with the engine's own words in the message.

use std::sync::Arc;

use bollard::errors::Error as EngineError;
use bollard::query_parameters::CreateImageOptionsBuilder;
use futures_util::TryStreamExt;

use super::deadlines::Op;
use super::{Engine, Failure};
use crate::driver::EngineCallError;
use crate::driver::linux::credentials;
use crate::error::CallError;
use crate::image::parse_image;
use bollard::auth::DockerCredentials;

/// Returns once `image` is present, pulling it if needed, with the command its
/// containers run by default: its entrypoint, then its command.
pub(super) async fn ensure_image(
    engine: &Arc<Engine>,
    image: &str,
) -> Result<ImageCommand, CallError> {
    if let Some(command) = inspect(engine, image).await? {
        return Ok(command);
    }
    let (pulling, name) = (engine.clone(), image.to_owned());
    engine
        .pulls
        .pull(image, || async move { pull(&pulling, &name).await })
        .await?;
    inspect(engine, image).await?.ok_or_else(|| {
        CallError::engine(format!(
            "{image} was pulled but the engine does not have it"
        ))
    })
}

/// What a container of an image runs unless told otherwise.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct ImageCommand {
    pub(super) entrypoint: Vec<String>,
    pub(super) cmd: Vec<String>,
}

/// The image's default command, or `None` if the engine does not have it.
async fn inspect(engine: &Engine, image: &str) -> Result<Option<ImageCommand>, CallError> {
    match engine
        .timed(Op::InspectImage, engine.docker.inspect_image(image))
        .await
    {
        Ok(inspected) => {
            let config = inspected.config.unwrap_or_default();
            Ok(Some(ImageCommand {
                entrypoint: config.entrypoint.unwrap_or_default(),
                cmd: config.cmd.unwrap_or_default(),
            }))
        }
        Err(EngineCallError::Failed(EngineError::DockerResponseServerError {
            status_code: 404,
            ..
        })) => Ok(None),
        Err(e) => Err(CallError::engine(format!("inspecting image {image}: {e}"))),
    }
}

async fn pull(engine: &Engine, image: &str) -> Result<(), CallError> {
    let reference = parse_image(image);
    let credentials = credentials::lookup(
        engine.docker_config_dir.as_deref(),
        reference.registry_host(),
    )
    .map_err(|message| CallError::PullFailed {
        image: image.to_owned(),
        message,
    })?
    .map(|found| DockerCredentials {
        username: found.username,
        password: found.password,
        identitytoken: found.identity_token,
        serveraddress: Some(found.registry),
        ..Default::default()
    });
    let options = CreateImageOptionsBuilder::default()
        .from_image(&reference.name())
        .tag(reference.pull_reference())
        .build();
    let progress = engine
        .docker
        .create_image(Some(options), None, credentials)
        .try_for_each(|_| async { Ok(()) });
    engine
        .timed(Op::PullImage, progress)
        .await
        .map_err(|e| classify_pull_error(image, e))
}

/// Maps the engine's pull error onto the stable kinds.
fn classify_pull_error(image: &str, error: Failure) -> CallError {
    let error = match error {
        EngineCallError::Failed(error) => error,
        no_answer @ EngineCallError::NoAnswer { .. } => {
            return CallError::engine(format!("pulling {image}: {no_answer}"));
        }
    };
    let (status, message) = match error {
        EngineError::DockerResponseServerError {
            status_code,
            message,
        } => (Some(status_code), message),
        EngineError::DockerStreamError { error } => (None, error),
        other => return CallError::engine(format!("pulling {image}: {other}")),
    };
    let lower = message.to_ascii_lowercase();
    let image = image.to_owned();
    let unauthorized = [
        "unauthorized",
        "authentication required",
        "no basic auth credentials",
        "access to the resource is denied",
        "incorrect username or password",
    ];
    let not_found = [
        "manifest unknown",
        "name unknown",
        "not found",
        "does not exist",
    ];
    if unauthorized.iter().any(|needle| lower.contains(needle)) {
        CallError::ImageUnauthorized { image, message }
    } else if status == Some(404) || not_found.iter().any(|needle| lower.contains(needle)) {
        CallError::ImageNotFound { image, message }
    } else {
        CallError::PullFailed { image, message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn server(status_code: u16, message: &str) -> EngineError {
        EngineError::DockerResponseServerError {
            status_code,
            message: message.to_owned(),
        }
    }

    /// The messages are the ones Docker 20.10 gave against Debian's docker-registry.
    #[test]
    fn engine_messages_map_to_kinds() {
        let cases = [
            (
                server(
                    500,
                    r#"Head "http://127.0.0.1:5077/v2/probe/manifests/1": no basic auth credentials"#,
                ),
                ErrorKind::ImageUnauthorized,
            ),
            (
                server(500, "unauthorized: authentication required"),
                ErrorKind::ImageUnauthorized,
            ),
            (
                server(
                    404,
                    "manifest for 127.0.0.1:5077/nothere:1 not found: manifest unknown: manifest unknown",
                ),
                ErrorKind::ImageNotFound,
            ),
            (
                server(
                    500,
                    r#"Get "http://127.0.0.1:5099/v2/": dial tcp 127.0.0.1:5099: connect: connection refused"#,
                ),
                ErrorKind::PullFailed,
            ),
            (
                EngineError::DockerStreamError {
                    error: "unexpected EOF".into(),
                },
                ErrorKind::PullFailed,
            ),
        ];
        for (error, kind) in cases {
            let text = error.to_string();
            let classified = classify_pull_error("img", EngineCallError::Failed(error));
            assert_eq!(classified.kind(), kind, "{text}");
        }
    }
}
