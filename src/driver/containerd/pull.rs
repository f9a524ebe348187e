//! Images on containerd: present and unpacked before a container is made,
//! pulled by hotpool itself when missing, one pull however many prepares ask.
//!
//! Where containerd's Transfer service can do the pull (1.7 and later, see
//! `transfer.rs`), it does. Otherwise (1.6 has no such service; 1.7's speaks
//! no plain HTTP, which a loopback registry needs) hotpool does what `ctr pull`
//! does, through the content, diff, snapshot and image services:
//!
//! 1. A lease, expiring by itself in an hour: everything below is written
//!    under it, so a pull that dies half-way leaves nothing for long. It is
//!    deleted when the pull ends, however it ends.
//! 2. The manifest, from the registry (`registry.rs`): for an index (a
//!    manifest list), the manifest of this host's platform.
//! 3. The image config, then each layer missing from the content store,
//!    streamed into it (`content.rs`); the manifest last. Labels tie them
//!    together for the garbage collector once the lease is gone: the manifest
//!    references its config and layers, the config the image's top snapshot.
//! 4. Unpacking: each layer is applied onto a snapshot of the ones below and
//!    committed under its chain ID, unless a snapshot of that ID exists.
//! 5. The image record, named by the full reference
//!    (`docker.io/library/alpine:latest`), pointing at the manifest.
//!
//! Registry errors become `image_not_found`, `image_unauthorized` or
//! `pull_failed`, with the registry's words; failures of containerd during a
//! pull are `pull_failed`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    AddResourceRequest, ApplyRequest, CreateImageRequest, GetImageRequest, Image, Info, Resource,
    UpdateImageRequest, UpdateRequest,
};
use containerd_client::types::Descriptor;
use futures_util::TryStreamExt;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tonic::{Code, Status};

use super::Engine;
use super::client::{QUICK, SLOW, call, gone_is_fine, hotpool_labels};
use super::content::{self, WriteError};
use super::registry::{Registry, RegistryError, read_capped};
use crate::driver::linux::credentials;
use crate::error::CallError;
use crate::id::new_id;
use crate::image::{ImageRef, parse_image, this_architecture};

/// How long a pull's lease holds what it wrote if hotpool dies mid-pull.
const PULL_LEASE_EXPIRY: Duration = Duration::from_secs(3600);
/// How long an unpack of content already present may hold its lease.
const UNPACK_LEASE_EXPIRY: Duration = Duration::from_secs(600);

/// The labels that keep content and snapshots alive once the lease is gone.
const CONFIG_REF_LABEL: &str = "containerd.io/gc.ref.content.config";
const LAYER_REF_LABEL: &str = "containerd.io/gc.ref.content.l";
const SNAPSHOT_REF_LABEL: &str = "containerd.io/gc.ref.snapshot";
const UNCOMPRESSED_LABEL: &str = "containerd.io/uncompressed";

/// What a container of an image needs from it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ImageConfig {
    /// The snapshot of its top layer (its chain ID): a container's root
    /// filesystem is a snapshot prepared on it.
    pub(crate) top_snapshot: String,
    pub(crate) entrypoint: Vec<String>,
    pub(crate) cmd: Vec<String>,
    /// `NAME=value` pairs.
    pub(crate) env: Vec<String>,
    pub(crate) workdir: Option<String>,
}

/// Returns once `image` is present and unpacked, pulling it if needed, with
/// what its containers need from it.
pub(super) async fn ensure_image(
    engine: &Arc<Engine>,
    image: &str,
) -> Result<Arc<ImageConfig>, CallError> {
    let reference = parse_image(image);
    let name = record_name(&reference);
    if let Some(config) = present(engine, &name).await? {
        return Ok(config);
    }
    let (pulling, image_owned, record) = (engine.clone(), image.to_owned(), name.clone());
    engine
        .pulls
        .pull(&name, || async move {
            pull(&pulling, &image_owned, &reference, &record).await
        })
        .await?;
    present(engine, &name).await?.ok_or_else(|| {
        CallError::engine(format!(
            "{image} was pulled but containerd does not have it"
        ))
    })
}

/// Forgets what was read of the image whose top snapshot is `top_snapshot`:
/// the snapshot went (removed from outside), so the next prepare unpacks again.
pub(super) fn forget_unpacked(engine: &Engine, top_snapshot: &str) {
    engine
        .images
        .retain(|_, config| config.top_snapshot != top_snapshot);
}

/// The image record name of `reference`: registry, repository, then tag
/// and/or digest, as containerd's own tools name images.
fn record_name(reference: &ImageRef) -> String {
    let mut name = format!("{}/{}", reference.registry_host(), reference.repository);
    if let Some(tag) = &reference.tag {
        name.push(':');
        name.push_str(tag);
    }
    if let Some(digest) = &reference.digest {
        name.push('@');
        name.push_str(digest);
    }
    name
}

/// What the image record `name` points at, unpacked (again, if its snapshots
/// went); `None` if there is no such record.
async fn present(engine: &Engine, name: &str) -> Result<Option<Arc<ImageConfig>>, CallError> {
    let client = &engine.client;
    let failed = |status: Status| {
        CallError::engine(format!(
            "reading image {name} in containerd: {}",
            status.message()
        ))
    };
    let request = client.request(GetImageRequest {
        name: name.to_owned(),
    });
    let target = match call("image_get", QUICK, client.images().get(request)).await {
        Ok(found) => found.image.and_then(|image| image.target),
        Err(status) if status.code() == Code::NotFound => return Ok(None),
        Err(status) => return Err(failed(status)),
    };
    let Some(target) = target else {
        return Ok(None);
    };
    if let Some(config) = engine.images.get(&target.digest) {
        return Ok(Some(config.clone()));
    }
    let manifest = stored_manifest(engine, &target).await.map_err(failed)?;
    let config_blob = content::read_small(client, &manifest.config.digest)
        .await
        .map_err(failed)?;
    let config = parse_config(&config_blob).map_err(CallError::engine)?;
    let chains = chain_ids(&config.rootfs.diff_ids);
    let Some(top) = chains.last().cloned() else {
        return Err(CallError::engine(format!("image {name} has no layers")));
    };
    if !snapshot_exists(engine, &top).await.map_err(failed)? {
        let lease = format!("hotpool-unpack-{}", new_id());
        client
            .create_lease(&lease, UNPACK_LEASE_EXPIRY, hotpool_labels())
            .await
            .map_err(failed)?;
        let unpacked = unpack(engine, &lease, &manifest.layers, &config.rootfs.diff_ids).await;
        let _ = client.delete_lease(&lease).await;
        unpacked.map_err(|e| CallError::engine(format!("unpacking image {name}: {e}")))?;
    }
    let image = Arc::new(config.into_image_config(top));
    engine.images.insert(target.digest, image.clone());
    Ok(Some(image))
}

/// The manifest an image record points at; for an index, this platform's.
async fn stored_manifest(engine: &Engine, target: &Descriptor) -> Result<Manifest, Status> {
    let blob = content::read_small(&engine.client, &target.digest).await?;
    let mut manifest = parse_manifest(&blob).map_err(Status::data_loss)?;
    if is_index(&target.media_type) || !manifest.manifests.is_empty() {
        let chosen = this_platform(&manifest.manifests).map_err(Status::not_found)?;
        let blob = content::read_small(&engine.client, &chosen.digest).await?;
        manifest = parse_manifest(&blob).map_err(Status::data_loss)?;
    }
    Ok(manifest)
}

/// Why a pull failed, before it is told in the image's terms.
enum PullError {
    Registry(RegistryError),
    /// containerd failed a step: what it was doing, and its words.
    Store(String),
}

impl PullError {
    fn into_call_error(self, image: &str) -> CallError {
        let image = image.to_owned();
        match self {
            PullError::Registry(RegistryError::NotFound(message)) => {
                CallError::ImageNotFound { image, message }
            }
            PullError::Registry(RegistryError::Unauthorized(message)) => {
                CallError::ImageUnauthorized { image, message }
            }
            PullError::Registry(RegistryError::Failed(message)) | PullError::Store(message) => {
                CallError::PullFailed { image, message }
            }
        }
    }
}

impl From<RegistryError> for PullError {
    fn from(error: RegistryError) -> Self {
        PullError::Registry(error)
    }
}

/// A containerd failure during `what`.
fn store(what: &str) -> impl Fn(Status) -> PullError + '_ {
    move |status| PullError::Store(format!("containerd, {what}: {}", status.message()))
}

async fn pull(
    engine: &Engine,
    image: &str,
    reference: &ImageRef,
    name: &str,
) -> Result<(), CallError> {
    if let Some(pulled) = super::transfer::pull(engine, image, reference, name).await {
        return pulled;
    }
    let credentials = credentials::lookup(
        engine.docker_config_dir.as_deref(),
        reference.registry_host(),
    )
    .map_err(|message| CallError::PullFailed {
        image: image.to_owned(),
        message,
    })?;
    let registry = Registry::new(reference, credentials)
        .map_err(|e| PullError::Registry(e).into_call_error(image))?;
    let lease = format!("hotpool-pull-{}", new_id());
    engine
        .client
        .create_lease(&lease, PULL_LEASE_EXPIRY, hotpool_labels())
        .await
        .map_err(|status| store("creating the pull's lease")(status).into_call_error(image))?;
    let pulled = fetch(engine, &registry, &lease, reference, name).await;
    if let Err(status) = engine.client.delete_lease(&lease).await {
        tracing::warn!(lease, error = %status.message(), "could not delete a pull's lease; it expires by itself within the hour");
    }
    pulled.map_err(|e| e.into_call_error(image))
}

/// Steps 2 to 5 of a pull, under `lease`.
async fn fetch(
    engine: &Engine,
    registry: &Registry,
    lease: &str,
    reference: &ImageRef,
    name: &str,
) -> Result<(), PullError> {
    let (mut body, mut media_type) = registry.manifest(reference.pull_reference()).await?;
    if let Some(pinned) = &reference.digest
        && sha256_digest(&body) != *pinned
    {
        return Err(
            RegistryError::Failed(format!("manifest {pinned} does not match its digest")).into(),
        );
    }
    let mut manifest = parse_manifest(&body).map_err(RegistryError::Failed)?;
    if is_index(&media_type) || !manifest.manifests.is_empty() {
        let chosen = this_platform(&manifest.manifests).map_err(RegistryError::NotFound)?;
        let digest = chosen.digest.clone();
        (body, media_type) = registry.manifest(&digest).await?;
        if sha256_digest(&body) != digest {
            return Err(RegistryError::Failed(format!(
                "manifest {digest} does not match its digest"
            ))
            .into());
        }
        manifest = parse_manifest(&body).map_err(RegistryError::Failed)?;
    }
    let manifest_digest = sha256_digest(&body);
    let config_blob = read_capped(
        registry.blob(&manifest.config.digest).await?,
        &format!("config {}", manifest.config.digest),
    )
    .await?;
    if sha256_digest(&config_blob) != manifest.config.digest {
        return Err(RegistryError::Failed(format!(
            "config {} does not match its digest",
            manifest.config.digest
        ))
        .into());
    }
    let config = parse_config(&config_blob).map_err(RegistryError::Failed)?;
    let diff_ids = &config.rootfs.diff_ids;
    if diff_ids.len() != manifest.layers.len() || diff_ids.is_empty() {
        return Err(RegistryError::Failed(format!(
            "image {name} has {} layers and {} diff IDs",
            manifest.layers.len(),
            diff_ids.len()
        ))
        .into());
    }
    let chains = chain_ids(diff_ids);
    let top = chains.last().cloned().unwrap_or_default();

    let snapshot_label = format!("{SNAPSHOT_REF_LABEL}.{}", engine.snapshotter);
    let config_labels = HashMap::from([(snapshot_label, top.clone())]);
    let config_bytes = bytes::Bytes::from(config_blob);
    store_blob(engine, lease, &manifest.config, config_labels, || {
        futures_util::stream::iter([Ok::<_, String>(config_bytes.clone())])
    })
    .await?;
    for (layer, diff_id) in manifest.layers.iter().zip(diff_ids) {
        if content::has(&engine.client, &layer.digest)
            .await
            .map_err(store("looking for a layer"))?
        {
            hold(engine, lease, &layer.digest).await?;
            continue;
        }
        let labels = HashMap::from([(UNCOMPRESSED_LABEL.to_owned(), diff_id.clone())]);
        let download = registry.blob(&layer.digest).await?;
        let reference = format!("hotpool-pull-{}-{}", new_id(), layer.digest);
        content::write(
            &engine.client,
            lease,
            &reference,
            &layer.digest,
            layer.size,
            labels,
            Box::pin(download.bytes_stream().map_err(|e| e.to_string())),
        )
        .await
        .map_err(|e| write_error(&layer.digest, e))?;
    }
    let mut manifest_labels =
        HashMap::from([(CONFIG_REF_LABEL.to_owned(), manifest.config.digest.clone())]);
    for (index, layer) in manifest.layers.iter().enumerate() {
        manifest_labels.insert(format!("{LAYER_REF_LABEL}.{index}"), layer.digest.clone());
    }
    let manifest_descriptor = Blob {
        media_type: media_type.clone(),
        digest: manifest_digest.clone(),
        size: body.len() as i64,
        platform: None,
    };
    let manifest_bytes = bytes::Bytes::from(body);
    store_blob(engine, lease, &manifest_descriptor, manifest_labels, || {
        futures_util::stream::iter([Ok::<_, String>(manifest_bytes.clone())])
    })
    .await?;

    unpack(engine, lease, &manifest.layers, diff_ids)
        .await
        .map_err(PullError::Store)?;

    let record = Image {
        name: name.to_owned(),
        labels: hotpool_labels(),
        target: Some(Descriptor {
            media_type,
            digest: manifest_digest,
            size: manifest_descriptor.size,
            annotations: HashMap::new(),
        }),
        ..Default::default()
    };
    let client = &engine.client;
    let create = client.request(CreateImageRequest {
        image: Some(record.clone()),
        ..Default::default()
    });
    match call("image_create", QUICK, client.images().create(create)).await {
        Ok(_) => Ok(()),
        Err(status) if status.code() == Code::AlreadyExists => {
            let update = client.request(UpdateImageRequest {
                image: Some(record),
                ..Default::default()
            });
            call("image_update", QUICK, client.images().update(update))
                .await
                .map(|_| ())
                .map_err(store("updating the image record"))
        }
        Err(status) => Err(store("creating the image record")(status)),
    }
}

/// Stores a small blob (a config, a manifest) with `labels`; one already
/// stored gets the labels and is held by the lease.
async fn store_blob<S>(
    engine: &Engine,
    lease: &str,
    blob: &Blob,
    labels: HashMap<String, String>,
    bytes: impl Fn() -> S,
) -> Result<(), PullError>
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, String>> + Send + Unpin + 'static,
{
    let client = &engine.client;
    if content::has(client, &blob.digest)
        .await
        .map_err(store("looking for a blob"))?
    {
        hold(engine, lease, &blob.digest).await?;
        let paths = labels.keys().map(|key| format!("labels.{key}")).collect();
        let update = client.request(UpdateRequest {
            info: Some(Info {
                digest: blob.digest.clone(),
                labels,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths }),
        });
        return call("content_update", QUICK, client.content().update(update))
            .await
            .map(|_| ())
            .map_err(store("labelling a blob"));
    }
    let reference = format!("hotpool-pull-{}-{}", new_id(), blob.digest);
    content::write(
        client,
        lease,
        &reference,
        &blob.digest,
        blob.size,
        labels,
        bytes(),
    )
    .await
    .map_err(|e| write_error(&blob.digest, e))
}

/// Makes the pull's lease hold blob `digest`, present already: the collector
/// must not take it before the manifest references it.
async fn hold(engine: &Engine, lease: &str, digest: &str) -> Result<(), PullError> {
    let client = &engine.client;
    let request = client.request(AddResourceRequest {
        id: lease.to_owned(),
        resource: Some(Resource {
            id: digest.to_owned(),
            r#type: "content".to_owned(),
        }),
    });
    call(
        "lease_add_resource",
        QUICK,
        client.leases().add_resource(request),
    )
    .await
    .map(|_| ())
    .map_err(store("holding a blob"))
}

fn write_error(digest: &str, error: WriteError) -> PullError {
    match error {
        WriteError::Source(message) => PullError::Registry(RegistryError::Failed(message)),
        WriteError::Store(status) => PullError::Store(format!(
            "containerd, writing {digest}: {}",
            status.message()
        )),
    }
}

/// Applies `layers` (their uncompressed digests `diff_ids`) onto snapshots,
/// each committed under its chain ID, skipping those that exist.
async fn unpack(
    engine: &Engine,
    lease: &str,
    layers: &[Blob],
    diff_ids: &[String],
) -> Result<(), String> {
    let client = &engine.client;
    let snapshotter = engine.snapshotter.clone();
    let chains = chain_ids(diff_ids);
    for (index, (layer, chain)) in layers.iter().zip(&chains).enumerate() {
        let said = |what: &'static str| {
            move |status: Status| format!("{what} layer {}: {}", layer.digest, status.message())
        };
        if snapshot_exists(engine, chain)
            .await
            .map_err(said("looking for"))?
        {
            continue;
        }
        let key = format!("hotpool-extract-{}-{chain}", new_id());
        let parent = if index == 0 {
            String::new()
        } else {
            chains[index - 1].clone()
        };
        let prepare = client.leased(
            PrepareSnapshotRequest {
                snapshotter: snapshotter.clone(),
                key: key.clone(),
                parent,
                labels: HashMap::new(),
            },
            lease,
        );
        let mounts = call(
            "snapshot_prepare",
            QUICK,
            client.snapshots().prepare(prepare),
        )
        .await
        .map_err(said("preparing a snapshot for"))?
        .mounts;
        let applied = async {
            let apply = client.leased(
                ApplyRequest {
                    diff: Some(Descriptor {
                        media_type: layer.media_type.clone(),
                        digest: layer.digest.clone(),
                        size: layer.size,
                        annotations: HashMap::new(),
                    }),
                    mounts,
                    ..Default::default()
                },
                lease,
            );
            let applied = call("diff_apply", SLOW, client.diff().apply(apply))
                .await
                .map_err(said("applying"))?
                .applied
                .map(|applied| applied.digest)
                .unwrap_or_default();
            if applied != diff_ids[index] {
                return Err(format!(
                    "layer {} unpacked to {applied}, not its diff ID {}",
                    layer.digest, diff_ids[index]
                ));
            }
            let commit = client.leased(
                CommitSnapshotRequest {
                    snapshotter: snapshotter.clone(),
                    name: chain.clone(),
                    key: key.clone(),
                    labels: HashMap::new(),
                },
                lease,
            );
            match call("snapshot_commit", QUICK, client.snapshots().commit(commit)).await {
                Ok(_) => Ok(()),
                // Another pull committed it meanwhile.
                Err(status) if status.code() == Code::AlreadyExists => Ok(()),
                Err(status) => Err(said("committing")(status)),
            }
        }
        .await;
        if applied.is_err() {
            let remove = client.request(RemoveSnapshotRequest {
                snapshotter: snapshotter.clone(),
                key,
            });
            let _ = gone_is_fine(
                call("snapshot_remove", QUICK, client.snapshots().remove(remove)).await,
            );
        }
        applied?;
    }
    Ok(())
}

/// Whether snapshot `key` exists in the driver's snapshotter.
async fn snapshot_exists(engine: &Engine, key: &str) -> Result<bool, Status> {
    let client = &engine.client;
    let request = client.request(StatSnapshotRequest {
        snapshotter: engine.snapshotter.clone(),
        key: key.to_owned(),
    });
    match call("snapshot_stat", QUICK, client.snapshots().stat(request)).await {
        Ok(_) => Ok(true),
        Err(status) if status.code() == Code::NotFound => Ok(false),
        Err(status) => Err(status),
    }
}

/// The chain IDs of layers with uncompressed digests `diff_ids`: the first
/// is its diff ID, each next `sha256("<chain below> <diff ID>")`.
fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut chains: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let chain = match chains.last() {
            None => diff_id.clone(),
            Some(below) => sha256_digest(format!("{below} {diff_id}").as_bytes()),
        };
        chains.push(chain);
    }
    chains
}

fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

fn is_index(media_type: &str) -> bool {
    media_type.contains("image.index") || media_type.contains("manifest.list")
}

/// A content descriptor in a manifest or index.
#[derive(Debug, Clone, Deserialize)]
struct Blob {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: i64,
    platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize)]
struct Platform {
    os: String,
    architecture: String,
}

/// A manifest, or an index (then only `manifests` is filled).
#[derive(Debug, Deserialize)]
struct Manifest {
    #[serde(default = "no_config")]
    config: Blob,
    #[serde(default)]
    layers: Vec<Blob>,
    #[serde(default)]
    manifests: Vec<Blob>,
}

fn no_config() -> Blob {
    Blob {
        media_type: String::new(),
        digest: String::new(),
        size: 0,
        platform: None,
    }
}

fn parse_manifest(blob: &[u8]) -> Result<Manifest, String> {
    serde_json::from_slice(blob).map_err(|e| format!("a manifest that does not parse: {e}"))
}

/// The manifest of an index for this host: Linux, this architecture.
fn this_platform(manifests: &[Blob]) -> Result<&Blob, String> {
    let architecture = this_architecture();
    manifests
        .iter()
        .find(|manifest| {
            manifest
                .platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == architecture)
        })
        .ok_or_else(|| format!("the image has no manifest for linux/{architecture}"))
}

/// An image config, as far as hotpool reads it.
#[derive(Debug, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    config: Option<RunConfig>,
    rootfs: RootFs,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RunConfig {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

impl ConfigFile {
    fn into_image_config(self, top_snapshot: String) -> ImageConfig {
        let run = self.config.unwrap_or_default();
        ImageConfig {
            top_snapshot,
            entrypoint: run.entrypoint.unwrap_or_default(),
            cmd: run.cmd.unwrap_or_default(),
            env: run.env.unwrap_or_default(),
            workdir: run.working_dir.filter(|dir| !dir.is_empty()),
        }
    }
}

fn parse_config(blob: &[u8]) -> Result<ConfigFile, String> {
    serde_json::from_slice(blob).map_err(|e| format!("an image config that does not parse: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_names_are_full_references() {
        assert_eq!(
            record_name(&parse_image("alpine")),
            "docker.io/library/alpine:latest"
        );
        assert_eq!(
            record_name(&parse_image("127.0.0.1:5000/fn:v1")),
            "127.0.0.1:5000/fn:v1"
        );
        let digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(
            record_name(&parse_image(&format!("quay.io/a/b@{digest}"))),
            format!("quay.io/a/b@{digest}")
        );
    }

    #[test]
    fn chain_ids_fold_the_diff_ids() {
        let one = "sha256:aaaa".to_owned();
        let two = "sha256:bbbb".to_owned();
        let chains = chain_ids(&[one.clone(), two.clone()]);
        assert_eq!(chains[0], one);
        assert_eq!(chains[1], sha256_digest(b"sha256:aaaa sha256:bbbb"));
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn an_index_yields_this_platforms_manifest() {
        let index = br#"{"schemaVersion":2,"manifests":[
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:arm","size":1,
             "platform":{"os":"linux","architecture":"arm64"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:amd","size":1,
             "platform":{"os":"linux","architecture":"amd64"}}]}"#;
        let manifest = parse_manifest(index).unwrap();
        let chosen = this_platform(&manifest.manifests).unwrap();
        if std::env::consts::ARCH == "x86_64" {
            assert_eq!(chosen.digest, "sha256:amd");
        }
        assert!(this_platform(&[]).is_err());
    }

    #[test]
    fn an_image_config_gives_the_command_and_environment() {
        let config = br#"{"architecture":"amd64","config":{"Env":["PATH=/bin"],
            "Entrypoint":["/fn"],"Cmd":null,"WorkingDir":""},
            "rootfs":{"type":"layers","diff_ids":["sha256:aaaa"]}}"#;
        let image = parse_config(config)
            .unwrap()
            .into_image_config("top".into());
        assert_eq!(image.entrypoint, vec!["/fn"]);
        assert!(image.cmd.is_empty());
        assert_eq!(image.env, vec!["PATH=/bin"]);
        assert_eq!(image.workdir, None);
    }
}
