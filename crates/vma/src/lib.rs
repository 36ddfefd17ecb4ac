//! VMA archive format: streaming writer, validating reader, cluster index
//!
//! Not implemented yet.

#![forbid(unsafe_code)]
