"""Folder scans: walk a server folder without following links, hash and probe what changed,
commit it as blocks, serve it back only from verified descriptors."""
