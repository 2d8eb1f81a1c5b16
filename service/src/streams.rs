//! The JetStream streams of SPEC §1, created when missing and used as they are
//! when present (with a warning where their settings differ). Nothing here
//! deletes or reconfigures a stream.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use backbeat_schemas::names::{
    BARS_STREAM, BARS_SUBJECTS, EVENTS_DUPLICATE_WINDOW_MIN, EVENTS_STREAM, EVENTS_SUBJECTS, REJECTS_STREAM,
    REJECTS_SUBJECTS,
};

use crate::ServiceError;

/// How many replicas new streams get (1 for a single server, 3 for a cluster).
#[derive(Debug, Clone, Copy)]
pub struct StreamOptions {
    pub replicas: usize,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions { replicas: 1 }
    }
}

/// `BACKBEAT_EVENTS`: beats and accepted claims of every cluster, one total order.
pub fn events_config(options: StreamOptions) -> stream::Config {
    stream::Config {
        name: EVENTS_STREAM.to_string(),
        subjects: EVENTS_SUBJECTS.iter().map(|s| s.to_string()).collect(),
        storage: stream::StorageType::File,
        duplicate_window: EVENTS_DUPLICATE_WINDOW_MIN,
        num_replicas: options.replicas,
        description: Some("BACKBEAT beats and accepted claims (SPEC §1)".into()),
        ..Default::default()
    }
}

/// `BACKBEAT_BARS`: BarReports, deduplicated by window id.
pub fn bars_config(options: StreamOptions) -> stream::Config {
    stream::Config {
        name: BARS_STREAM.to_string(),
        subjects: BARS_SUBJECTS.iter().map(|s| s.to_string()).collect(),
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        num_replicas: options.replicas,
        description: Some("BACKBEAT BarReports (SPEC §1)".into()),
        ..Default::default()
    }
}

/// The most `BACKBEAT_REJECTS` keeps, in bytes: past it the oldest dead letters
/// go first. A client sending garbage without end must not fill the disk the
/// accepted claims need; the newest dead letters, which an operator looks at,
/// are the ones kept.
pub const REJECTS_BYTES_MAX: i64 = 1 << 30;

/// `BACKBEAT_REJECTS`: dead letters, nothing an agent sent is silently lost
/// (within [`REJECTS_BYTES_MAX`], oldest discarded first).
pub fn rejects_config(options: StreamOptions) -> stream::Config {
    stream::Config {
        name: REJECTS_STREAM.to_string(),
        subjects: REJECTS_SUBJECTS.iter().map(|s| s.to_string()).collect(),
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        num_replicas: options.replicas,
        max_bytes: REJECTS_BYTES_MAX,
        discard: stream::DiscardPolicy::Old,
        description: Some("BACKBEAT rejected input, with reasons (SPEC §1)".into()),
        ..Default::default()
    }
}

/// Creates the stream when missing; when present, warns about settings that
/// differ from `wanted` and uses it as it is. Returns the stream handle.
pub async fn ensure_stream(js: &jetstream::Context, wanted: stream::Config) -> Result<stream::Stream, ServiceError> {
    let name = wanted.name.clone();
    match js.get_stream(&name).await {
        Ok(mut existing) => {
            let info = existing.info().await.map_err(|source| ServiceError::StreamInfo {
                name: name.clone(),
                source,
            })?;
            let have = &info.config;
            let mut subjects_have = have.subjects.clone();
            let mut subjects_want = wanted.subjects.clone();
            subjects_have.sort();
            subjects_want.sort();
            if subjects_have != subjects_want {
                tracing::warn!(stream = %name, have = ?subjects_have, want = ?subjects_want, "stream subjects differ; using the stream as it is");
            }
            if have.storage != wanted.storage {
                tracing::warn!(stream = %name, have = ?have.storage, "stream storage differs; using the stream as it is");
            }
            if wanted.max_bytes > 0 && (have.max_bytes <= 0 || have.max_bytes > wanted.max_bytes) {
                tracing::warn!(stream = %name, have = have.max_bytes, want = wanted.max_bytes, "stream is not bounded in bytes as wanted; using the stream as it is");
            }
            if have.duplicate_window < wanted.duplicate_window {
                tracing::warn!(stream = %name, have = ?have.duplicate_window, want = ?wanted.duplicate_window, "stream duplicate window shorter than wanted; using the stream as it is");
            }
            Ok(existing)
        }
        Err(e)
            if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(ref js_error)
            if js_error.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            js.create_stream(wanted)
                .await
                .map_err(|source| ServiceError::CreateStream { name, source })
        }
        Err(source) => Err(ServiceError::GetStream { name, source }),
    }
}

/// Ensures the three streams of SPEC §1.
pub async fn ensure_all_streams(js: &jetstream::Context, options: StreamOptions) -> Result<(), ServiceError> {
    ensure_stream(js, events_config(options)).await?;
    ensure_stream(js, bars_config(options)).await?;
    ensure_stream(js, rejects_config(options)).await?;
    Ok(())
}
