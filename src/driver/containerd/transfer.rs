//! Pulls through containerd's Transfer service (containerd 1.7 and later): one
//! call, `Transfer(OCIRegistry -> ImageStore)`, and containerd itself resolves
//! the reference, fetches the blobs into its content store, unpacks them with
//! hotpool's snapshotter and names the image; hotpool only answers the
//! registry's questions for credentials.
//!
//! - Whether the daemon has the service is asked once per driver, of the
//!   introspection service (the `io.containerd.grpc.v1` plugin `transfer`,
//!   loaded without error). A daemon without it (1.6) pulls through the
//!   content, diff and snapshot services (`pull.rs`).
//! - Credentials: the request names an auth stream, opened beforehand through
//!   the streaming service; containerd sends an `AuthRequest` (the registry
//!   host) on it when the registry asks for credentials and hotpool answers
//!   from the same Docker config file as the other path.
//! - Plain HTTP: hotpool speaks plain HTTP only to a loopback registry. The
//!   Transfer API says so with `RegistryResolver.default_scheme`, which only
//!   containerd 2.0 and later read; 1.7 knows no such field and always speaks
//!   HTTPS, so on 1.7 a loopback registry's images take the services' path.
//!   (containerd 2.1 also falls back to plain HTTP by itself for a loopback
//!   registry left at the default scheme: the field states what hotpool
//!   means rather than being what makes 2.1 work.)
//! - The image ends as the other path leaves it: named by the full reference,
//!   labelled `hotpool=1`, unpacked for this host's platform with the driver's
//!   snapshotter (containerd unpacks only for the snapshotters of its
//!   `unpack_config`; `pull::ensure_image` unpacks what it did not).
//! - Deadlines: the streams' opening and the daemon's introspection are
//!   quick calls; the transfer has [`TRANSFER_DEADLINE`] in all, and
//!   [`STALL_DEADLINE`] between two of containerd's progress events (read
//!   from a progress stream it is given), as the other path gives a registry
//!   between two reads and a layer for its unpack.
//! - Errors: containerd's `NotFound` is `image_not_found`; a registry's `401`
//!   or `403` (containerd passes its words on) is `image_unauthorized`;
//!   anything else, and a deadline passed, `pull_failed`.

use std::time::Duration;

use containerd_client::services::v1::introspection_client::IntrospectionClient;
use containerd_client::services::v1::streaming_client::StreamingClient;
use containerd_client::services::v1::transfer_client::TransferClient;
use containerd_client::services::v1::{
    PluginsRequest, StreamInit, TransferOptions, TransferRequest,
};
use containerd_client::types::Platform;
use containerd_client::types::transfer::{
    AuthRequest, AuthResponse, AuthType, ImageStore, OciRegistry, RegistryResolver,
    UnpackConfiguration,
};
use futures_util::{Stream, StreamExt};
use prost::Message;
use prost_types::Any;
use tonic::{Code, Status, Streaming};

use super::Engine;
use super::client::{QUICK, SLOW, call, hotpool_labels};
use super::registry::is_loopback;
use crate::driver::linux::credentials;
use crate::error::CallError;
use crate::id::new_id;
use crate::image::{DOCKER_HUB, ImageRef, this_architecture};

/// How long one pull through the Transfer service may take, end to end (the
/// other path's lease holds for an hour; a pull is one call here).
pub(crate) const TRANSFER_DEADLINE: Duration = Duration::from_secs(1800);
/// How long a transfer may go without a progress event (bytes of a blob, a
/// blob done): a registry that stops sending, say. A layer's unpack has as
/// long on the other path.
pub(crate) const STALL_DEADLINE: Duration = SLOW;

/// What the daemon's Transfer service can do for a pull.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TransferSupport {
    /// No Transfer service (containerd 1.6): the services' path.
    None,
    /// containerd 1.7: registries over HTTPS only.
    HttpsOnly,
    /// containerd 2.0 and later: plain HTTP too, where the request asks.
    Full,
}

impl TransferSupport {
    /// Whether a pull from `registry` (a host) can go through the service.
    fn serves(self, registry: &str) -> bool {
        match self {
            TransferSupport::None => false,
            TransferSupport::HttpsOnly => !is_loopback(registry),
            TransferSupport::Full => true,
        }
    }
}

/// The type URLs containerd's Transfer and streaming services match on: the
/// messages' full protobuf names, without a `type.googleapis.com/` prefix.
const OCI_REGISTRY_TYPE: &str = "containerd.types.transfer.OCIRegistry";
const IMAGE_STORE_TYPE: &str = "containerd.types.transfer.ImageStore";
const AUTH_REQUEST_TYPE: &str = "containerd.types.transfer.AuthRequest";
const AUTH_RESPONSE_TYPE: &str = "containerd.types.transfer.AuthResponse";
const STREAM_INIT_TYPE: &str = "containerd.services.streaming.v1.StreamInit";

/// Pulls `image` through the Transfer service if the daemon has one that can
/// reach its registry: `None` if the services' path must do it.
pub(super) async fn pull(
    engine: &Engine,
    image: &str,
    reference: &ImageRef,
    name: &str,
) -> Option<Result<(), CallError>> {
    let support = *engine
        .transfer
        .get_or_init(|| async { detect(engine).await })
        .await;
    if !support.serves(reference.registry_host()) {
        return None;
    }
    engine
        .transfer_pulls
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Some(transfer(engine, image, reference, name, support).await)
}

/// What the daemon's Transfer service can do. A daemon that cannot say (its
/// introspection failing) is taken to have none: the services' path works on
/// every version.
async fn detect(engine: &Engine) -> TransferSupport {
    let client = &engine.client;
    let request = client.request(PluginsRequest {
        filters: vec!["type==io.containerd.grpc.v1,id==transfer".to_owned()],
    });
    let introspection = IntrospectionClient::new(client.channel());
    let plugins = match call("plugins", QUICK, introspection.clone().plugins(request)).await {
        Ok(response) => response.plugins,
        Err(status) => {
            tracing::warn!(error = %status.message(), "containerd's plugins unknown; pulling through its content, diff and snapshot services");
            return TransferSupport::None;
        }
    };
    if !plugins
        .iter()
        .any(|plugin| plugin.id == "transfer" && plugin.init_err.is_none())
    {
        return TransferSupport::None;
    }
    let version = call(
        "version",
        QUICK,
        client.version().version(client.request(())),
    )
    .await
    .map(|v| v.version)
    .unwrap_or_default();
    support_of_version(&version)
}

/// The Transfer support of a daemon that has the service, by its version
/// (`1.7.24~ds1`, `v2.0.0`).
fn support_of_version(version: &str) -> TransferSupport {
    let major = version
        .trim_start_matches('v')
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|major| major.parse::<u32>().ok());
    match major {
        Some(major) if major >= 2 => TransferSupport::Full,
        _ => TransferSupport::HttpsOnly,
    }
}

/// The pull itself: the auth stream, then the transfer.
async fn transfer(
    engine: &Engine,
    image: &str,
    reference: &ImageRef,
    name: &str,
    support: TransferSupport,
) -> Result<(), CallError> {
    let failed = |message: String| CallError::PullFailed {
        image: image.to_owned(),
        message,
    };
    // The config file is read now, as on the other path: a broken one fails
    // the pull rather than an anonymous attempt.
    credentials::lookup(
        engine.docker_config_dir.as_deref(),
        reference.registry_host(),
    )
    .map_err(&failed)?;
    let stream_id = format!("hotpool-auth-{}", new_id());
    let auth = AuthStream::open(engine, &stream_id)
        .await
        .map_err(|status| {
            failed(format!(
                "containerd, opening the credentials stream: {}",
                status.message()
            ))
        })?;
    let registry = OciRegistry {
        reference: name.to_owned(),
        resolver: Some(RegistryResolver {
            auth_stream: stream_id,
            default_scheme: if support == TransferSupport::Full
                && is_loopback(reference.registry_host())
            {
                "http".to_owned()
            } else {
                String::new()
            },
            ..Default::default()
        }),
    };
    let platform = this_platform();
    let store = ImageStore {
        name: name.to_owned(),
        labels: hotpool_labels(),
        platforms: vec![platform.clone()],
        unpacks: vec![UnpackConfiguration {
            platform: Some(platform),
            snapshotter: engine.snapshotter.clone(),
        }],
        ..Default::default()
    };
    // Progress events, to tell a slow pull from a stalled one. Without them
    // (the stream refused), only the whole pull's deadline holds.
    let progress_id = format!("hotpool-progress-{}", new_id());
    // Its sending half stays open until the transfer is done.
    let (_progress_sender, progress) = match open_stream(engine, &progress_id).await {
        Ok((sender, events)) => (Some(sender), Some(events)),
        Err(status) => {
            tracing::warn!(error = %status.message(), "containerd's progress stream refused; a stalled pull fails only at its deadline");
            (None, None)
        }
    };
    let request = engine.client.request(TransferRequest {
        source: Some(any(OCI_REGISTRY_TYPE, &registry)),
        destination: Some(any(IMAGE_STORE_TYPE, &store)),
        options: progress.as_ref().map(|_| TransferOptions {
            progress_stream: progress_id,
        }),
    });
    let mut service = TransferClient::new(engine.client.channel());
    let result = watched(
        call("transfer", TRANSFER_DEADLINE, service.transfer(request)),
        progress,
    )
    .await;
    let auth_error = auth.close().await;
    result.map(|_| ()).map_err(|status| {
        let mut error = classify(image, &status);
        if let (Some(auth_error), CallError::PullFailed { message, .. }) = (auth_error, &mut error)
        {
            message.push_str(&format!(
                " (answering containerd for credentials: {auth_error})"
            ));
        }
        error
    })
}

/// A failed transfer's status in the image's terms.
fn classify(image: &str, status: &Status) -> CallError {
    let image = image.to_owned();
    let message = format!("containerd's Transfer service: {}", status.message());
    let refused = [
        "401 Unauthorized",
        "403 Forbidden",
        "unauthorized",
        "denied",
    ];
    if matches!(
        status.code(),
        Code::Unauthenticated | Code::PermissionDenied
    ) || refused.iter().any(|word| status.message().contains(word))
    {
        return CallError::ImageUnauthorized { image, message };
    }
    if status.code() == Code::NotFound {
        return CallError::ImageNotFound { image, message };
    }
    CallError::PullFailed { image, message }
}

/// `message` packed as containerd's services unpack it.
fn any(type_url: &str, message: &impl Message) -> Any {
    Any {
        type_url: type_url.to_owned(),
        value: message.encode_to_vec(),
    }
}

/// This host's platform, as containerd names it.
fn this_platform() -> Platform {
    Platform {
        os: "linux".to_owned(),
        architecture: this_architecture().to_owned(),
        ..Default::default()
    }
}

/// The stream containerd asks for credentials on, answered by a task of its
/// own until closed.
struct AuthStream {
    answering: tokio::task::JoinHandle<Result<(), String>>,
}

impl AuthStream {
    /// Opens stream `id` (containerd acknowledges it once registered) and
    /// answers what comes on it from the Docker config file of `engine`.
    async fn open(engine: &Engine, id: &str) -> Result<AuthStream, Status> {
        let (sender, mut incoming) = open_stream(engine, id).await?;
        let config_dir = engine.docker_config_dir.clone();
        let answering = tokio::spawn(async move {
            while let Some(question) = incoming
                .message()
                .await
                .map_err(|s| s.message().to_owned())?
            {
                if question.type_url.trim_start_matches("type.googleapis.com/") != AUTH_REQUEST_TYPE
                {
                    return Err(format!("an unexpected {} on the stream", question.type_url));
                }
                let question = AuthRequest::decode(question.value.as_slice())
                    .map_err(|e| format!("an unreadable AuthRequest: {e}"))?;
                let answer = answer(config_dir.as_deref(), &question.host)?;
                sender
                    .send(any(AUTH_RESPONSE_TYPE, &answer))
                    .await
                    .map_err(|_| "the stream closed".to_owned())?;
            }
            Ok(())
        });
        Ok(AuthStream { answering })
    }

    /// Stops answering (the stream goes with the task); what went wrong
    /// answering, if anything did.
    async fn close(self) -> Option<String> {
        if self.answering.is_finished() {
            return match self.answering.await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(e) => Some(e.to_string()),
            };
        }
        self.answering.abort();
        None
    }
}

/// A message going out on a stream of the streaming service.
type Outgoing = tokio::sync::mpsc::Sender<Any>;

/// Opens stream `id` of the streaming service and waits for containerd to
/// acknowledge it (it is registered under `id` then, for a transfer to name).
async fn open_stream(engine: &Engine, id: &str) -> Result<(Outgoing, Streaming<Any>), Status> {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Any>(4);
    sender
        .send(any(STREAM_INIT_TYPE, &StreamInit { id: id.to_owned() }))
        .await
        .map_err(|_| Status::internal("the stream's sender closed"))?;
    let outgoing = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|message| (message, receiver))
    });
    let mut streaming = StreamingClient::new(engine.client.channel());
    let mut incoming = call(
        "stream_open",
        QUICK,
        streaming.stream(engine.client.request(outgoing)),
    )
    .await?;
    match tokio::time::timeout(QUICK, incoming.message()).await {
        Ok(Ok(Some(_))) => Ok((sender, incoming)),
        Ok(Ok(None)) => Err(Status::unavailable("the stream closed unacknowledged")),
        Ok(Err(status)) => Err(status),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "no acknowledgement within {QUICK:?}"
        ))),
    }
}

/// Runs `transfer` while reading containerd's progress events from
/// `progress`: a transfer with no event for [`STALL_DEADLINE`] (no byte of
/// any blob, no blob done) is given up, as is one not done by its own deadline.
/// Once the events end or fail, only the transfer's own deadline holds.
async fn watched<T>(
    transfer: impl std::future::Future<Output = Result<T, Status>>,
    mut progress: Option<impl Stream<Item = Result<Any, Status>> + Unpin>,
) -> Result<T, Status> {
    tokio::pin!(transfer);
    loop {
        let Some(events) = progress.as_mut() else {
            return transfer.await;
        };
        tokio::select! {
            result = &mut transfer => return result,
            event = tokio::time::timeout(STALL_DEADLINE, events.next()) => match event {
                Ok(Some(Ok(_))) => {}
                // containerd closes the stream as the transfer ends.
                Ok(None) | Ok(Some(Err(_))) => progress = None,
                Err(_) => {
                    return Err(Status::deadline_exceeded(format!(
                        "no progress for {STALL_DEADLINE:?}"
                    )));
                }
            },
        }
    }
}

/// The answer to containerd's question for the credentials of `host` (a
/// registry's API host: `registry-1.docker.io` for Docker Hub).
fn answer(config_dir: Option<&std::path::Path>, host: &str) -> Result<AuthResponse, String> {
    let registry = match host {
        "registry-1.docker.io" | "index.docker.io" => DOCKER_HUB,
        host => host,
    };
    let found = credentials::lookup(config_dir, registry)?;
    Ok(match found {
        Some(credentials) => match (
            credentials.username,
            credentials.password,
            credentials.identity_token,
        ) {
            (Some(username), Some(secret), _) if !username.is_empty() => AuthResponse {
                auth_type: AuthType::Credentials as i32,
                username,
                secret,
                ..Default::default()
            },
            (_, _, Some(token)) if !token.is_empty() => AuthResponse {
                auth_type: AuthType::Refresh as i32,
                secret: token,
                ..Default::default()
            },
            _ => AuthResponse::default(),
        },
        None => AuthResponse::default(),
    })
}

#[cfg(test)]
mod tests {
    use futures_util::stream;
    use tokio::time::{Instant, sleep};

    use super::*;

    /// `count` progress events, one every `every`, then silence: the stream
    /// stays open with nothing more on it.
    fn events_then_silence(
        every: Duration,
        count: usize,
    ) -> impl Stream<Item = Result<Any, Status>> + Unpin {
        Box::pin(stream::unfold(0, move |sent| async move {
            if sent == count {
                std::future::pending::<()>().await;
            }
            sleep(every).await;
            Some((Ok(Any::default()), sent + 1))
        }))
    }

    /// A transfer that succeeds after `took`.
    async fn done_after(took: Duration) -> Result<&'static str, Status> {
        sleep(took).await;
        Ok("pulled")
    }

    #[tokio::test(start_paused = true)]
    async fn a_transfer_whose_progress_goes_silent_is_cut_after_the_stall_deadline() {
        let start = Instant::now();
        let events = events_then_silence(Duration::from_secs(10), 3);
        let hour = Duration::from_secs(3600);
        let cut = watched(done_after(hour), Some(events)).await.unwrap_err();
        assert_eq!(cut.code(), Code::DeadlineExceeded);
        assert_eq!(cut.message(), "no progress for 60s");
        // Cut a whole deadline after the last event, not before.
        assert!(start.elapsed() >= Duration::from_secs(30) + STALL_DEADLINE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_transfer_with_steady_progress_outlives_the_stall_deadline() {
        let long = 5 * STALL_DEADLINE;
        let events = events_then_silence(STALL_DEADLINE / 2, usize::MAX);
        assert_eq!(
            watched(done_after(long), Some(events)).await.unwrap(),
            "pulled"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn without_progress_events_only_the_transfer_ends_itself() {
        let long = 5 * STALL_DEADLINE;
        let ended = stream::empty();
        let failed = stream::iter([Err(Status::unavailable("the stream broke"))]);
        let after_events = stream::iter([Ok(Any::default()), Ok(Any::default())]);
        assert_eq!(
            watched(done_after(long), Some(ended)).await.unwrap(),
            "pulled"
        );
        assert_eq!(
            watched(done_after(long), Some(failed)).await.unwrap(),
            "pulled"
        );
        assert_eq!(
            watched(done_after(long), Some(after_events)).await.unwrap(),
            "pulled"
        );
        // Refused when opened: no stream at all.
        let refused: Option<stream::Empty<_>> = None;
        assert_eq!(watched(done_after(long), refused).await.unwrap(), "pulled");
        // The transfer's own failure passes through as it is.
        let missing = async { Err::<(), _>(Status::not_found("no such image")) };
        let events = events_then_silence(Duration::from_secs(1), usize::MAX);
        assert_eq!(
            watched(missing, Some(events)).await.unwrap_err().code(),
            Code::NotFound
        );
    }

    #[test]
    fn versions_tell_https_only_from_full() {
        assert_eq!(support_of_version("1.7.24~ds1"), TransferSupport::HttpsOnly);
        assert_eq!(support_of_version("v1.7.0"), TransferSupport::HttpsOnly);
        assert_eq!(support_of_version("v2.0.0"), TransferSupport::Full);
        assert_eq!(support_of_version("2.1.4"), TransferSupport::Full);
        assert_eq!(support_of_version(""), TransferSupport::HttpsOnly);
    }

    #[test]
    fn loopback_registries_need_plain_http() {
        assert!(!TransferSupport::HttpsOnly.serves("127.0.0.1:5000"));
        assert!(!TransferSupport::HttpsOnly.serves("localhost:5000"));
        assert!(TransferSupport::HttpsOnly.serves("ghcr.io"));
        assert!(TransferSupport::Full.serves("127.0.0.1:5000"));
        assert!(!TransferSupport::None.serves("ghcr.io"));
    }

    #[test]
    fn refusals_and_missing_images_are_told_apart() {
        let unauthorized = Status::unknown(
            "failed to resolve image: pulling from host 192.0.2.2:5000 failed with status code \
             [manifests v1]: 401 Unauthorized",
        );
        assert!(matches!(
            classify("i", &unauthorized),
            CallError::ImageUnauthorized { .. }
        ));
        let missing = Status::not_found("failed to resolve image: 192.0.2.2:5000/x:v9: not found");
        assert!(matches!(
            classify("i", &missing),
            CallError::ImageNotFound { .. }
        ));
        assert!(matches!(
            classify("i", &Status::unavailable("connection refused")),
            CallError::PullFailed { .. }
        ));
    }

    #[test]
    fn credentials_answer_by_kind() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"auths":{"r.example":{"username":"u","password":"p"},
                "t.example":{"identitytoken":"tok"}}}"#,
        )
        .unwrap();
        let user = answer(Some(dir.path()), "r.example").unwrap();
        assert_eq!(user.auth_type, AuthType::Credentials as i32);
        assert_eq!((user.username.as_str(), user.secret.as_str()), ("u", "p"));
        let token = answer(Some(dir.path()), "t.example").unwrap();
        assert_eq!(token.auth_type, AuthType::Refresh as i32);
        assert_eq!(token.secret, "tok");
        let none = answer(Some(dir.path()), "other.example").unwrap();
        assert_eq!(none.auth_type, AuthType::None as i32);
    }
}
