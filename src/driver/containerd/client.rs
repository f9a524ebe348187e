//! The connection to containerd: one gRPC channel over its unix socket, every
//! request in hotpool's namespace (and in a lease, where it writes what the
//! garbage collector must not take yet), and every call under a deadline and
//! timed into `hotpool_engine_api_seconds{engine="containerd",op,result}`.
//!
//! Leases are how nothing leaks: what a pull or a prepare writes is held by a
//! lease that expires on its own (`containerd.io/gc.expire`) if hotpool dies
//! half-way, and is deleted at once when the work is done, failed or not.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::events_client::EventsClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::version_client::VersionClient;
use containerd_client::services::v1::{CreateRequest, DeleteRequest};
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use super::ENGINE;
use crate::driver::{EngineCallError, LABEL};

/// The deadline of a call that only reads or writes records.
pub(crate) const QUICK: Duration = Duration::from_secs(10);
/// The deadline of a call that starts or stops processes or mounts filesystems
/// (task create, start, delete; a layer's unpack): slower on a loaded host.
pub(crate) const SLOW: Duration = Duration::from_secs(60);

/// The gRPC metadata key naming the namespace of a request.
const NAMESPACE_HEADER: &str = "containerd-namespace";
/// The gRPC metadata key naming the lease a request writes under.
const LEASE_HEADER: &str = "containerd-lease";
/// The lease label after which the garbage collector may drop the lease.
const LEASE_EXPIRY_LABEL: &str = "containerd.io/gc.expire";

/// A connection to containerd in one namespace. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Client {
    channel: Channel,
    namespace: AsciiMetadataValue,
    socket: PathBuf,
}

impl Client {
    /// Connects to the socket at `socket` for namespace `namespace`; fails if
    /// nothing listens there within `deadline`.
    pub(crate) async fn connect(
        socket: &Path,
        namespace: &str,
        deadline: Duration,
    ) -> Result<Client, String> {
        let namespace = MetadataValue::try_from(namespace)
            .map_err(|e| format!("namespace {namespace:?} cannot be sent: {e}"))?;
        let channel = tokio::time::timeout(deadline, containerd_client::connect(socket))
            .await
            .map_err(|_| format!("no answer within {deadline:?}"))?
            .map_err(|e| match std::error::Error::source(&e) {
                Some(cause) => format!("{e}: {cause}"),
                None => e.to_string(),
            })?;
        Ok(Client {
            channel,
            namespace,
            socket: socket.to_owned(),
        })
    }

    /// The socket this client talks to.
    pub(crate) fn socket(&self) -> &Path {
        &self.socket
    }

    /// The namespace of its requests.
    pub(crate) fn namespace(&self) -> &str {
        self.namespace.to_str().unwrap_or_default()
    }

    /// `message` as a request in this client's namespace.
    pub(crate) fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert(NAMESPACE_HEADER, self.namespace.clone());
        request
    }

    /// `message` as a request in this client's namespace, writing under `lease`.
    pub(crate) fn leased<T>(&self, message: T, lease: &str) -> Request<T> {
        let mut request = self.request(message);
        if let Ok(lease) = MetadataValue::try_from(lease) {
            request.metadata_mut().insert(LEASE_HEADER, lease);
        }
        request
    }

    pub(crate) fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.channel.clone())
    }

    pub(crate) fn content(&self) -> ContentClient<Channel> {
        ContentClient::new(self.channel.clone())
    }

    pub(crate) fn diff(&self) -> DiffClient<Channel> {
        DiffClient::new(self.channel.clone())
    }

    pub(crate) fn events(&self) -> EventsClient<Channel> {
        EventsClient::new(self.channel.clone())
    }

    pub(crate) fn images(&self) -> ImagesClient<Channel> {
        ImagesClient::new(self.channel.clone())
    }

    pub(crate) fn leases(&self) -> LeasesClient<Channel> {
        LeasesClient::new(self.channel.clone())
    }

    pub(crate) fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel.clone())
    }

    pub(crate) fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.channel.clone())
    }

    /// The channel itself, for the services without an accessor here
    /// (introspection, streaming, transfer: `transfer.rs`).
    pub(crate) fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub(crate) fn version(&self) -> VersionClient<Channel> {
        VersionClient::new(self.channel.clone())
    }

    /// Creates lease `id`, carrying `labels`, that the garbage collector drops
    /// by itself `expiry` from now if nobody deletes it first.
    pub(crate) async fn create_lease(
        &self,
        id: &str,
        expiry: Duration,
        mut labels: HashMap<String, String>,
    ) -> Result<(), Status> {
        let expires = humantime::format_rfc3339_seconds(SystemTime::now() + expiry);
        labels.insert(LEASE_EXPIRY_LABEL.to_owned(), expires.to_string());
        let request = self.request(CreateRequest {
            id: id.to_owned(),
            labels,
        });
        call("lease_create", QUICK, self.leases().create(request)).await?;
        Ok(())
    }

    /// Deletes lease `id`; one already gone is fine. What it held and nothing
    /// else references goes with the next collection.
    pub(crate) async fn delete_lease(&self, id: &str) -> Result<(), Status> {
        let request = self.request(DeleteRequest {
            id: id.to_owned(),
            sync: false,
        });
        gone_is_fine(call("lease_delete", QUICK, self.leases().delete(request)).await)
    }
}

/// Awaits one call under `deadline` and records its latency in
/// `hotpool_engine_api_seconds{engine="containerd",op,result}`. A call past
/// its deadline fails with `DEADLINE_EXCEEDED`.
pub(crate) async fn call<T>(
    op: &'static str,
    deadline: Duration,
    response: impl Future<Output = Result<Response<T>, Status>>,
) -> Result<T, Status> {
    crate::driver::timed_engine_call(ENGINE, op, deadline, response)
        .await
        .map(Response::into_inner)
        .map_err(into_status)
}

/// A call's failure as gRPC says it: the engine's own status, or
/// `DEADLINE_EXCEEDED` for no answer within the deadline.
pub(crate) fn into_status(error: EngineCallError<Status>) -> Status {
    match error {
        EngineCallError::Failed(status) => status,
        no_answer @ EngineCallError::NoAnswer { .. } => {
            Status::deadline_exceeded(no_answer.to_string())
        }
    }
}

/// `Ok` for a call whose target is gone already (not found): removing what is
/// not there is done.
pub(crate) fn gone_is_fine<T>(result: Result<T, Status>) -> Result<(), Status> {
    match result {
        Ok(_) => Ok(()),
        Err(status) if status.code() == Code::NotFound => Ok(()),
        Err(status) => Err(status),
    }
}

/// The labels of what hotpool makes outside containers: images, leases.
pub(crate) fn hotpool_labels() -> HashMap<String, String> {
    HashMap::from([(LABEL.to_owned(), "1".to_owned())])
}

/// A containerd filter matching objects whose label `key` is `value`
/// (`labels."key"=="value"`, both quoted so any text matches itself).
pub(crate) fn label_filter(key: &str, value: &str) -> String {
    format!("labels.{}=={}", quoted(key), quoted(value))
}

/// `text` as a quoted string of containerd's filter language.
fn quoted(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_filters_quote_keys_and_values() {
        assert_eq!(
            label_filter("hotpool.pool", "p1"),
            r#"labels."hotpool.pool"=="p1""#
        );
        assert_eq!(label_filter("k", r#"a"b\c"#), r#"labels."k"=="a\"b\\c""#);
    }

    #[test]
    fn a_missing_target_is_gone_already() {
        assert!(gone_is_fine::<()>(Err(Status::not_found("no such lease"))).is_ok());
        assert!(gone_is_fine::<()>(Err(Status::unavailable("down"))).is_err());
    }
}
