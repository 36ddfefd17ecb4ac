//! VM runtime: QEMU command line, process lifecycle, shutdown
//!
//! Not implemented yet.
