"""The peer: picker (pure), window (pure), storage, chunk server, tracker client, transfer engine, node."""
