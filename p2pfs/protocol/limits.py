"""Every limit of the wire protocol, named, with the reason for its number."""

#: Largest frame body a reader accepts. A 1 MiB chunk in base64 JSON is ~1.34 MiB; 16 MiB leaves room for
#: the largest chunk size (8 MiB -> 10.7 MiB of base64) and for big REPLY_FILE_LOCATION lists. BitTorrent
#: clients commonly cap a message at 16 MiB too (libtorrent: max piece 16 MiB + header).
MAX_FRAME_SIZE = 16 * 1024 * 1024

#: Default chunk size, as in the seed's "ten 1 MB chunks" example.
DEFAULT_CHUNK_SIZE = 1024 * 1024

#: Smallest chunk size a publisher may choose; smaller chunks make the per-chunk overhead dominate.
MIN_CHUNK_SIZE = 1024

#: Largest chunk size: its base64 form must fit in one frame (8 MiB * 4/3 + header < MAX_FRAME_SIZE).
MAX_CHUNK_SIZE = 8 * 1024 * 1024

#: Most chunks a file may have: 256 GiB at the default 1 MiB, 2 TiB at 8 MiB chunks. Bounds the tracker's
#: bookkeeping per file, and keeps the publisher's chunk hashes (32 bytes each, 8 MiB in all, 11.2 MB as
#: base64) inside one frame.
MAX_CHUNKS = 1 << 18

#: Bytes of one chunk digest (SHA-256) in the binary `chunkhashes` extension field.
DIGEST_SIZE = 32

#: Longest published name in UTF-8 bytes: the usual file-system limit for one path component.
MAX_FILENAME_BYTES = 255

#: Longest host name in REQUEST_REGISTER (DNS limit).
MAX_HOST_LENGTH = 253

#: Most chunk numbers in one batch REQUEST_CHUNK_REGISTER (`chunknums`): ~460 KB of JSON. Enforced on
#: receive, so one frame buys the tracker a bounded amount of work (the same cap the sender batches by).
MAX_REGISTER_BATCH = 65536

#: Largest frame a tracker accepts: a REQUEST_PUBLISH carrying the hashes of a MAX_CHUNKS file
#: (8 MiB, 11.2 MB as base64) and its header. Every other request is small (see MAX_SMALL_FRAME).
MAX_TRACKER_FRAME = 12 * 1024 * 1024

#: Largest frame of any type but REQUEST_PUBLISH that a tracker accepts: a full batch registration is
#: ~460 KB. A larger frame must be a REQUEST_PUBLISH whose body begins with its `type` (p2pfs writes it
#: first), so a tracker can refuse a 12 MB flood of something else without parsing it.
MAX_SMALL_FRAME = 1024 * 1024

#: Largest frame a chunk server accepts: it receives only PEER_REQUEST_CHUNK, PEER_PING_PONG and the
#: handshake, each well under 1 KiB (a 255-byte name, a 64-digit nonce or proof).
MAX_CHUNK_SERVER_FRAME = 8 * 1024

#: Largest frame accepted before a connection has passed the secret handshake (AUTH_* messages only).
MAX_HANDSHAKE_FRAME = 4 * 1024

#: Bytes of a handshake nonce and of an HMAC-SHA256 proof.
NONCE_SIZE = 32
PROOF_SIZE = 32
