//! QEMU Machine Protocol and guest agent clients
//!
//! Not implemented yet.

#![forbid(unsafe_code)]
