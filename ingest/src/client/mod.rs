//! Agent client library (in progress).
