//! Shared helpers for vpm integration tests.
