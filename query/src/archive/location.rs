//! Where the archive is: a local directory, or `s3://bucket/prefix` with the
//! usual AWS environment variables (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`; plain HTTP is
//! allowed when the endpoint is an `http://` one, as a local test server).

use std::sync::Arc;

use anyhow::Context as _;
use datafusion::execution::object_store::ObjectStoreUrl;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};

use super::view::{ArchiveView, ArchivedFile};

/// The URL the query engine knows the archive's store by.
pub const STORE_URL: &str = "backbeat-archive://archive";

/// The archive: its store and the prefix its files are under.
#[derive(Debug, Clone)]
pub struct Archive {
    pub store: Arc<dyn ObjectStore>,
    /// Every object of the archive is under it (empty: the store's root).
    pub prefix: Path,
    /// As configured, for status and logs.
    pub location: String,
}

impl Archive {
    /// Opens `location`: `s3://bucket[/prefix]`, or a local directory (created when missing).
    pub fn open(location: &str) -> anyhow::Result<Archive> {
        if let Some(rest) = location.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            anyhow::ensure!(!bucket.is_empty(), "--archive {location}: no bucket named");
            let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
            let endpoint = std::env::var("AWS_ENDPOINT_URL").or_else(|_| std::env::var("AWS_ENDPOINT"));
            if endpoint.is_ok_and(|e| e.starts_with("http://")) {
                builder = builder.with_allow_http(true);
            }
            let store = builder.build().with_context(|| format!("--archive {location}"))?;
            return Ok(Archive {
                store: Arc::new(store),
                prefix: Path::from(prefix.trim_matches('/')),
                location: location.to_string(),
            });
        }
        anyhow::ensure!(
            !location.contains("://"),
            "--archive {location}: only s3://bucket/prefix or a local directory"
        );
        std::fs::create_dir_all(location).with_context(|| format!("creating the archive directory {location}"))?;
        let store = LocalFileSystem::new_with_prefix(location).with_context(|| format!("--archive {location}"))?;
        Ok(Archive {
            store: Arc::new(store),
            prefix: Path::default(),
            location: location.to_string(),
        })
    }

    /// The engine's URL of the store.
    pub fn store_url() -> ObjectStoreUrl {
        ObjectStoreUrl::parse(STORE_URL).expect("a valid URL")
    }

    /// The object `relative` (slash-separated) under the prefix.
    pub fn path(&self, relative: &str) -> Path {
        let mut path = self.prefix.clone();
        for part in relative.split('/') {
            path = path.join(part);
        }
        path
    }

    /// What the archive holds, from a listing of its files.
    pub async fn list(&self) -> anyhow::Result<ArchiveView> {
        use futures::TryStreamExt as _;
        let objects: Vec<_> = self
            .store
            .list(Some(&self.prefix))
            .try_collect()
            .await
            .with_context(|| format!("listing the archive {}", self.location))?;
        let mut view = ArchiveView::default();
        for object in objects {
            let Some(relative) = object.location.prefix_match(&self.prefix) else {
                continue;
            };
            let parts: Vec<String> = relative.map(|p| p.as_ref().to_string()).collect();
            if let Some(file) = ArchivedFile::parse(&parts, object.location.clone(), object.size) {
                view.add(file);
            }
        }
        Ok(view)
    }

    /// Writes one complete object (atomically: a local file is written aside
    /// and renamed; an S3 object appears whole).
    pub async fn put(&self, path: &Path, bytes: Vec<u8>) -> anyhow::Result<()> {
        self.store
            .put(path, PutPayload::from(bytes))
            .await
            .with_context(|| format!("writing {path} to the archive {}", self.location))?;
        Ok(())
    }

    /// `_positions/{stream}`: every row of the stream at or below it is archived (0 when unset).
    pub async fn position(&self, stream: &str) -> anyhow::Result<u64> {
        let path = self.path(&format!("_positions/{stream}"));
        match self.store.get(&path).await {
            Ok(result) => {
                let bytes = result.bytes().await.with_context(|| format!("reading {path}"))?;
                let value: serde_json::Value =
                    serde_json::from_slice(&bytes).with_context(|| format!("{path} is not JSON"))?;
                value["through_seq"]
                    .as_u64()
                    .with_context(|| format!("{path} has no through_seq"))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(0),
            Err(e) => Err(e).with_context(|| format!("reading {path}")),
        }
    }

    pub async fn set_position(&self, stream: &str, through_seq: u64) -> anyhow::Result<()> {
        let path = self.path(&format!("_positions/{stream}"));
        let body = serde_json::to_vec(&serde_json::json!({ "through_seq": through_seq }))?;
        self.put(&path, body).await
    }
}
