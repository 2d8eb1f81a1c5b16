//! placeholder: the pulse (see ARCHITECTURE.md)
