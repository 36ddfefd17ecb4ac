//! Proxmox-compatible configuration: storage.cfg, vzdump.conf, guest configs
//!
//! Not implemented yet.

#![forbid(unsafe_code)]
