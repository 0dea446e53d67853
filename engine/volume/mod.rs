//! The volume client: maps volume offsets to extents (cached extent map),
//! routes I/O local-first to the reactor that owns the extent. Lands with
//! issue 4.
