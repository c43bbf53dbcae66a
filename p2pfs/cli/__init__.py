"""Command line: argument parsing, the tracker and peer shells, rendering with rich."""
