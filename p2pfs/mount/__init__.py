"""`p2pfs mount`: the tracker's files as a read-only file system, their chunks fetched on demand through
the transfer engine, cached on disk and served to the swarm."""
