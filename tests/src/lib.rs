//! Harness for cluster-level tests.
