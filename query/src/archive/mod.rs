//! The Parquet archive: what is sealed (the events of windows already
//! reported, their reports, and dead letters) written once as Parquet files
//! through `object_store`, to a local directory or to S3.
//!
//! Layout (hive-style directories under the archive's prefix):
//! `{table}/cluster_id={cluster}/date={YYYY-MM-DD}/{from:020}-{to:020}_w{min}-{max}.parquet`.
//! A file holds the rows of one table of one cluster that one seal took:
//! for `claims`, `beats` and `rejects` the rows with a stream sequence in
//! `from..=to`; for `bar_reports` the reports of windows `from..=to`.
//! `min`/`max` are the lowest and highest `window_index` in the file (file
//! statistics for pruning); the date is that of the file's earliest row
//! time. **The file names are the archive's record of what it holds**: each
//! file is one complete `put` (atomic on a local disk and on S3), so a file
//! is there whole or not at all, and the highest `to` of a table and cluster
//! is how far the archive holds it. `_positions/{STREAM}` (JSON
//! `{"through_seq": n}`) says that every row of the stream at or below `n`
//! is archived: where a restart reads the stream from; it is written after
//! the files it counts on, so a crash between the two only makes a restart
//! read more, and the names' ranges drop what is read again.

pub mod location;
pub mod parquet;
pub mod view;
pub mod writer;

pub use location::Archive;
pub use view::{ArchiveView, ArchivedFile};
