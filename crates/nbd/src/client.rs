//! NBD client (in progress).
