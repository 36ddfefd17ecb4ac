//! Streaming zstd, lzo (lzop container) and gzip codecs for archives
//!
//! Not implemented yet.

#![forbid(unsafe_code)]
