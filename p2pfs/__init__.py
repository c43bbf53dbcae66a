"""p2pfs: peer-to-peer file distribution with one tracker and many peers.

A peer publishes a file; the tracker records which peer holds which chunk; downloaders fetch different
chunks from many holders at once, rarest first, verify each chunk's SHA-256, and serve what they have.
"""

__version__ = "1.0.0"
