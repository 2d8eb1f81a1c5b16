//! JetStream key-value buckets: opened, or created when missing, in one place.
//!
//! "Missing" is the server's answer "stream not found" for the bucket's
//! stream, nothing else: a timeout, a JetStream that is not enabled or a
//! permission error is an error of its own, never a reason to create a
//! bucket (which would fail with a less helpful message, or worse, succeed
//! somewhere unintended).

use async_nats::jetstream::context::{
    CreateKeyValueError, GetStreamError, GetStreamErrorKind, KeyValueError, KeyValueErrorKind,
};
use async_nats::jetstream::{self, kv};

/// A bucket that could neither be opened nor created.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// Looking the bucket up failed for another reason than its absence.
    #[error("opening key-value bucket {bucket}")]
    Open {
        bucket: String,
        #[source]
        source: KeyValueError,
    },
    /// The bucket was missing and creating it failed (and no one else had
    /// created it meanwhile).
    #[error("creating key-value bucket {bucket}")]
    Create {
        bucket: String,
        #[source]
        source: CreateKeyValueError,
    },
}

/// Opens bucket `bucket`; `None` when it does not exist.
pub async fn open(js: &jetstream::Context, bucket: &str) -> Result<Option<kv::Store>, KvError> {
    match js.get_key_value(bucket).await {
        Ok(store) => Ok(Some(store)),
        Err(e) if is_missing(&e) => Ok(None),
        Err(source) => Err(KvError::Open {
            bucket: bucket.to_string(),
            source,
        }),
    }
}

/// Opens bucket `config.bucket`, creating it with `config` when it does not
/// exist. An existing bucket is used as it is (never reconfigured).
pub async fn open_or_create(js: &jetstream::Context, config: kv::Config) -> Result<kv::Store, KvError> {
    let bucket = config.bucket.clone();
    if let Some(store) = open(js, &bucket).await? {
        return Ok(store);
    }
    match js.create_key_value(config).await {
        Ok(store) => Ok(store),
        // Another process may have created it meanwhile.
        Err(source) => match open(js, &bucket).await {
            Ok(Some(store)) => Ok(store),
            _ => Err(KvError::Create { bucket, source }),
        },
    }
}

/// Whether a bucket look-up failed because the bucket's stream does not exist.
fn is_missing(error: &KeyValueError) -> bool {
    error.kind() == KeyValueErrorKind::GetBucket
        && std::error::Error::source(error)
            .and_then(|source| source.downcast_ref::<GetStreamError>())
            .is_some_and(|lookup| {
                matches!(lookup.kind(), GetStreamErrorKind::JetStream(ref js_error)
                    if js_error.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
            })
}
