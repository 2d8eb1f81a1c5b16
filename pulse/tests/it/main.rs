//! Integration tests (see modules).
