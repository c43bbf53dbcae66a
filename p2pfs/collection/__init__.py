"""Collections: a directory tree shared and fetched as one name (manifest, tree walk, member storage)."""
