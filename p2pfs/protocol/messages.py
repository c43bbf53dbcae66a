"""The message schemas: one msgspec struct per message type of the seed's table, plus ERROR.

Every message is a JSON object whose `type` field names its kind; the field names are the seed's.
Fields marked *extension* are optional: a peer that does not know them ignores them (msgspec drops unknown
fields), and we accept messages that lack them.
"""

from __future__ import annotations

import itertools
from typing import Annotated

import msgspec

from p2pfs.protocol.limits import (
    DIGEST_SIZE,
    MAX_CHUNK_SIZE,
    MAX_CHUNKS,
    MAX_FILENAME_BYTES,
    MAX_HOST_LENGTH,
    MAX_REGISTER_BATCH,
    MIN_CHUNK_SIZE,
    NONCE_SIZE,
    PROOF_SIZE,
)
from p2pfs.safetext import unsafe_character

# A published name is a plain file name: no path separators, no NUL, not "." or "..". Control characters
# and bidirectional overrides are refused too (checked in __post_init__, see p2pfs.safetext).
Filename = Annotated[
    str,
    msgspec.Meta(min_length=1, max_length=MAX_FILENAME_BYTES, pattern=r"^(?!\.\.?$)[^/\\\x00]+$"),
]
ChunkNumber = Annotated[int, msgspec.Meta(ge=0, lt=MAX_CHUNKS)]
FileSize = Annotated[int, msgspec.Meta(ge=0, le=MAX_CHUNKS * MAX_CHUNK_SIZE)]
ChunkCount = Annotated[int, msgspec.Meta(ge=0, le=MAX_CHUNKS)]
ChunkSize = Annotated[int, msgspec.Meta(ge=MIN_CHUNK_SIZE, le=MAX_CHUNK_SIZE)]
ChunkLength = Annotated[int, msgspec.Meta(ge=0, le=MAX_CHUNK_SIZE)]
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
Host = Annotated[str, msgspec.Meta(max_length=MAX_HOST_LENGTH)]
Sha256Hex = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-fA-F]{64}$")]
Nonce = Annotated[str, msgspec.Meta(pattern=rf"^[0-9a-f]{{{2 * NONCE_SIZE}}}$")]
Proof = Annotated[str, msgspec.Meta(pattern=rf"^[0-9a-f]{{{2 * PROOF_SIZE}}}$")]

#: Seconds a refused requester waits before asking the same holder again (PEER_BUSY).
RetryAfter = Annotated[float, msgspec.Meta(ge=0, le=60)]

#: (filesize, totalchunknum), a JSON array of two integers.
FileInfo = tuple[FileSize, ChunkCount]


class Message(msgspec.Struct, tag_field="type", forbid_unknown_fields=False):
    """Base of every message; `type` is the tag."""


def _check_filename(name: str) -> None:
    # msgspec's max_length counts characters; the limit is in UTF-8 bytes. A ValueError raised in
    # __post_init__ becomes a msgspec.ValidationError, like any other schema violation. The name itself
    # is never quoted in the error: it is what a terminal must not see.
    if len(name.encode("utf-8", "surrogatepass")) > MAX_FILENAME_BYTES:
        raise ValueError(f"filename longer than {MAX_FILENAME_BYTES} UTF-8 bytes")
    bad = unsafe_character(name)
    if bad is not None:
        raise ValueError(f"filename contains a control character ({bad})")


class _NamesFile(Message):
    """A message whose `filename` names a published file (checked in UTF-8 bytes)."""

    filename: Filename

    def __post_init__(self) -> None:
        _check_filename(self.filename)


#: Longest REL/PATH of a collection member `NAME/REL/PATH` (as p2pfs.collection.manifest.MAX_PATH_BYTES).
MAX_MEMBER_PATH_BYTES = 4096
# A name looked up (located, registered, asked a chunk of): a published name, or a collection's member
# `NAME/REL/PATH` (docs/PROTOCOL.md §14). Only NAME is checked here; a REL/PATH that no manifest could hold
# (`..`, empty components) is simply not found by whoever resolves it.
LookupName = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=MAX_FILENAME_BYTES + 1 + MAX_MEMBER_PATH_BYTES,
        pattern=r"^(?!\.\.?(?:/|$))[^/\\\x00]+(?:/[^\x00]+)?$",
    ),
]


class _LooksUpName(Message):
    """A message whose `filename` is a published name or a member `NAME/REL/PATH` (checked in UTF-8 bytes)."""

    filename: LookupName

    def __post_init__(self) -> None:
        name, _, path = self.filename.partition("/")
        _check_filename(name)
        if len(path.encode("utf-8", "surrogatepass")) > MAX_MEMBER_PATH_BYTES:
            raise ValueError(f"member path longer than {MAX_MEMBER_PATH_BYTES} UTF-8 bytes")
        bad = unsafe_character(path)
        if bad is not None:
            raise ValueError(f"filename contains a control character ({bad})")


class RequestRegister(Message, tag="REQUEST_REGISTER"):
    address: tuple[Host, Port]

    def __post_init__(self) -> None:
        bad = unsafe_character(self.address[0])
        if bad is not None:
            raise ValueError(f"host contains a control character ({bad})")


class ReplyRegister(Message, tag="REPLY_REGISTER", omit_defaults=True):
    # extension: the address the tracker recorded (the connection's host when a wildcard was registered)
    address: tuple[str, int] | None = None


Count = Annotated[int, msgspec.Meta(ge=0, le=1 << 40)]


class Collection(msgspec.Struct, forbid_unknown_fields=False):
    """Extension: the published name is a collection (a directory tree). Its bytes are its manifest
    (`manifestsize` bytes), zeros to the next chunk boundary, then every member file's bytes; `files`
    and `size` are the members' count and total size (docs/PROTOCOL.md, Collections)."""

    files: Count
    size: Count
    manifestsize: Annotated[int, msgspec.Meta(ge=1, le=1 << 40)]


class RequestPublish(_NamesFile, tag="REQUEST_PUBLISH", omit_defaults=True):
    fileinfo: FileInfo
    # extension: bytes per chunk (all chunks but the last); absent means the default, 1 MiB
    chunksize: ChunkSize | None = None
    # extension: the publisher's SHA-256 of every chunk, concatenated (32 bytes each), base64 in JSON.
    # Downloaders verify chunks against these, not against what a holder claims.
    chunkhashes: bytes | None = None
    # extension: what makes this name a collection (a collection always comes with chunkhashes)
    collection: Collection | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.chunkhashes is not None and len(self.chunkhashes) != DIGEST_SIZE * self.fileinfo[1]:
            raise ValueError(f"chunkhashes must hold {DIGEST_SIZE} bytes per chunk")
        if self.collection is not None:
            if self.chunkhashes is None:
                raise ValueError("a collection is published with its chunkhashes")
            if self.collection.manifestsize + self.collection.size > self.fileinfo[0]:
                raise ValueError("a collection's manifest and members exceed its filesize")


class ReplyPublish(Message, tag="REPLY_PUBLISH"):
    result: bool
    message: str = ""


class RequestFileList(Message, tag="REQUEST_FILE_LIST"):
    pass


class ReplyFileList(Message, tag="REPLY_FILE_LIST", omit_defaults=True):
    filelist: dict[str, FileInfo]
    # extension: the content id of every file published with chunk hashes (absent: unverified file)
    contentids: dict[str, str] | None = None
    # extension: which names are collections (filelist then has the collection's whole size)
    collections: dict[str, Collection] | None = None


class RequestFileLocation(_LooksUpName, tag="REQUEST_FILE_LOCATION", omit_defaults=True):
    # extension: the asker understands `chunkranges`; the tracker may answer with ranges instead of lists
    ranges: bool = False
    # extension: also push news of this file (new holders, new chunks) on this connection, as
    # REPLY_FILE_LOCATION with `update`, until the asker holds every chunk or disconnects
    watch: bool = False
    # extension: the asker already has the chunk hashes of this content id: leave them out if unchanged
    contentid: str | None = None


#: [first, end) chunk numbers: a run of consecutive chunks (end excluded).
ChunkRange = tuple[ChunkNumber, Annotated[int, msgspec.Meta(ge=1, le=MAX_CHUNKS)]]


#: Most runs a holder's chunks can form (every other chunk held), and most holders one reply may name.
MAX_RUNS = MAX_CHUNKS // 2 + 1
MAX_HOLDERS_LISTED = 65536

HolderNumbers = Annotated[list[ChunkNumber], msgspec.Meta(max_length=MAX_CHUNKS)]
HolderRuns = Annotated[list[ChunkRange], msgspec.Meta(max_length=MAX_RUNS)]


class ReplyFileLocation(Message, tag="REPLY_FILE_LOCATION", omit_defaults=True):
    filename: str
    chunkinfo: Annotated[dict[str, HolderNumbers], msgspec.Meta(max_length=MAX_HOLDERS_LISTED)]
    # extensions: the file's (filesize, totalchunknum) and chunk size, so a downloader needs no other call
    fileinfo: FileInfo | None = None
    chunksize: ChunkSize | None = None
    # extensions: the publisher's chunk hashes (as in REQUEST_PUBLISH) and the content id derived from them
    chunkhashes: bytes | None = None
    contentid: str | None = None
    # extension, only to a request with `ranges`: each holder's chunks as runs [first, end); `chunkinfo`
    # is then empty. A complete holder of a 100 GiB file is `[[0, 102400]]`, not 102,400 numbers.
    chunkranges: Annotated[dict[str, HolderRuns], msgspec.Meta(max_length=MAX_HOLDERS_LISTED)] | None = None
    # extension: an unsolicited update to a watcher (see REQUEST_FILE_LOCATION.watch), not a reply to a
    # request; `chunkranges` then holds only chunks registered since the last update
    update: bool = False
    # extension: the holders (`host:port`) that published the file from their own copy (REQUEST_PUBLISH);
    # only these super-seed, so a downloader asks only them for `substitute` and accepts substitutes
    # from no one else
    publishers: Annotated[list[str], msgspec.Meta(max_length=MAX_HOLDERS_LISTED)] | None = None
    # extension: the name is a collection (see REQUEST_PUBLISH)
    collection: Collection | None = None

    def __post_init__(self) -> None:
        # (a tracker builds replies with pre-encoded msgspec.Raw values in place of bytes: checked on decode)
        if isinstance(self.chunkhashes, bytes) and (
            len(self.chunkhashes) % DIGEST_SIZE or len(self.chunkhashes) > DIGEST_SIZE * MAX_CHUNKS
        ):
            raise ValueError(f"chunkhashes must hold {DIGEST_SIZE} bytes per chunk, for at most {MAX_CHUNKS} chunks")

    def holder_chunks(self) -> dict[str, list[int]]:
        """Each holder's chunk numbers, whichever form the tracker used (ranges are checked: ProtocolError
        is not raised here; a run with end <= first is simply empty)."""
        if self.chunkranges is None:
            return self.chunkinfo
        return {
            holder: list(itertools.chain.from_iterable(itertools.starmap(range, runs)))
            for holder, runs in self.chunkranges.items()
        }

    def holder_runs(self) -> dict[str, list[tuple[int, int]]]:
        """Each holder's chunks as runs [first, end), whichever form the tracker used: `chunkranges` as
        sent (unchecked: a run with end <= first is empty; the reader clips runs to the file), or the
        seed's lists turned into runs. A complete holder of a huge file stays one run, never a list."""
        if self.chunkranges is not None:
            return self.chunkranges
        return {holder: runs_of(numbers) for holder, numbers in self.chunkinfo.items()}


def runs_of(numbers: list[int]) -> list[tuple[int, int]]:
    """The numbers (in any order, repeats allowed) as maximal runs [first, end), ascending."""
    runs: list[tuple[int, int]] = []
    first = end = -1
    for number in sorted(set(numbers)):
        if number != end:
            if end >= 0:
                runs.append((first, end))
            first = number
        end = number + 1
    if end >= 0:
        runs.append((first, end))
    return runs


class RequestChunkRegister(_LooksUpName, tag="REQUEST_CHUNK_REGISTER", omit_defaults=True):
    chunknum: ChunkNumber
    # extension (batch form): every chunk number to register; `chunknum` is then the first of them, so a
    # tracker that knows only the seed's form still registers one
    chunknums: Annotated[list[ChunkNumber], msgspec.Meta(max_length=MAX_REGISTER_BATCH)] | None = None


class RequestUnpublish(_NamesFile, tag="REQUEST_UNPUBLISH"):
    """Extension: the registered sender stops being a holder of `filename` (every chunk of it it held); the
    file is delisted if that leaves a chunk with no holder. Answered by REPLY_UNPUBLISH."""


class ReplyUnpublish(_NamesFile, tag="REPLY_UNPUBLISH", omit_defaults=True):
    """Extension: the answer to REQUEST_UNPUBLISH (`message`: the reason of a refusal; absent on success)."""

    result: bool
    message: str = ""


#: Bytes a PEER_STATS total may count (2^62: far beyond any uptime's traffic, still a JSON-safe int).
ByteTotal = Annotated[int, msgspec.Meta(ge=0, le=1 << 62)]


class PeerStats(Message, tag="PEER_STATS"):
    """Extension: a registered peer's transfer totals since it started (chunk bytes sent to and received
    from other peers), sent every second or two while they change; the tracker derives rates from
    successive reports. No reply (an older tracker answers ERROR, which the peer takes as "stop")."""

    uploaded: ByteTotal
    downloaded: ByteTotal


class PeerRequestChunk(_LooksUpName, tag="PEER_REQUEST_CHUNK", omit_defaults=True):
    chunknum: ChunkNumber
    # extension (binary fast path): ask for the chunk as raw bytes after the reply's header frame
    raw: bool = False
    # extension (super-seeding): the asker also accepts another chunk of the file in reply (the reply's
    # `chunknum` says which); an origin seeder uses it to send every chunk once before any twice
    substitute: bool = False
    # extension (upload slots): the asker accepts PEER_BUSY in reply (the holder sends to a few
    # downloaders at a time and refuses the rest); without it a request waits for a slot in line
    busyok: bool = False


class PeerReplyChunk(Message, tag="PEER_REPLY_CHUNK", omit_defaults=True):
    filename: str
    chunknum: ChunkNumber
    digest: Sha256Hex
    # the seed's form: the chunk in base64 (msgspec encodes and decodes it)
    data: bytes | None = None
    # extension (binary fast path): the chunk follows this frame as exactly `rawlength` raw bytes
    rawlength: ChunkLength | None = None

    def __post_init__(self) -> None:
        if (self.data is None) == (self.rawlength is None):
            raise ValueError("PEER_REPLY_CHUNK needs exactly one of `data` and `rawlength`")


class PeerBusy(Message, tag="PEER_BUSY"):
    """Extension (upload slots): the answer, in place of PEER_REPLY_CHUNK, to a request carrying
    `busyok` that the holder will not serve now (every upload slot and the line behind them are taken).
    Ask again after `retryafter` seconds, or ask another holder meanwhile."""

    filename: str
    chunknum: ChunkNumber
    retryafter: RetryAfter


class PeerPingPong(Message, tag="PEER_PING_PONG"):
    pass


class Error(Message, tag="ERROR", omit_defaults=True):
    """Answer to a request that could not be served (malformed, unknown file, missing chunk...)."""

    message: str
    # the `type` of the request this answers, when it could be read
    request: str | None = None


class AuthChallenge(Message, tag="AUTH_CHALLENGE"):
    """Extension (admission by shared secret): a fresh random nonce, sent first by the side that opened the
    connection, then by the side that accepted it."""

    nonce: Nonce


class AuthProof(Message, tag="AUTH_PROOF"):
    """Extension (admission by shared secret): HMAC-SHA256 over both nonces, proving the sender knows the
    secret; sent first by the connecting side, then (once that proof checks) by the accepting side."""

    proof: Proof


AnyMessage = (
    RequestRegister
    | ReplyRegister
    | RequestPublish
    | ReplyPublish
    | RequestFileList
    | ReplyFileList
    | RequestFileLocation
    | ReplyFileLocation
    | RequestChunkRegister
    | PeerRequestChunk
    | PeerReplyChunk
    | PeerBusy
    | PeerPingPong
    | Error
    | AuthChallenge
    | AuthProof
    | RequestUnpublish
    | ReplyUnpublish
    | PeerStats
)

#: The 12 message types of the seed's table, by wire name (ERROR is our addition).
SEED_TYPES = (
    "REQUEST_REGISTER",
    "REPLY_REGISTER",
    "REQUEST_PUBLISH",
    "REPLY_PUBLISH",
    "REQUEST_FILE_LIST",
    "REPLY_FILE_LIST",
    "REQUEST_FILE_LOCATION",
    "REPLY_FILE_LOCATION",
    "REQUEST_CHUNK_REGISTER",
    "PEER_REQUEST_CHUNK",
    "PEER_REPLY_CHUNK",
    "PEER_PING_PONG",
)
