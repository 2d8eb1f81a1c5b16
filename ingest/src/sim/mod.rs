//! Agent simulator (in progress).
