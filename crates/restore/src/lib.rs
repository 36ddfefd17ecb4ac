//! Restore of VMA archives to storage
//!
//! Not implemented yet.
