"""Where a download goes, and what is already there (checks on the local file system, no network).

The rule, as docs and `get --help` state it:
- DEST a directory (or a symbolic link to one): the file goes to `DEST/NAME`.
- DEST a symbolic link the user named, to a regular file: the link is followed (its target is compared
  and, with --force, replaced). `DIR/NAME` being a link when DEST is the directory DIR is refused: the
  user never named that link.
- Nothing but a regular file is ever replaced: a device node, a FIFO, a socket or a directory at the
  final name is refused, with or without --force.
- DEST's directory must exist (it is named in the error, not the `.part` file inside it).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from p2pfs.peer.storage import StorageError

_KINDS = {
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a directory",
}


def kind(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def resolve(dest: Path, name: str) -> tuple[Path, os.stat_result | None]:
    """The final path of a download of `name` to `dest`, and the stat of the regular file already there
    (None if there is none). StorageError (one line) if the download must not go there."""
    explicit = not dest.is_dir()
    final = dest if explicit else dest / name
    parent = final.parent
    if not parent.is_dir():
        why = "does not exist" if not parent.exists() else "is not a directory"
        raise StorageError(f"cannot download to {dest}: directory {parent} {why}")
    try:
        st = os.lstat(final)
    except FileNotFoundError:
        return final, None
    except OSError as exc:
        raise StorageError(f"cannot download to {final}: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        if not explicit:
            raise StorageError(
                f"cannot download to {final}: it is a symbolic link (name it or its target as DEST, or remove it)"
            )
        try:
            st = os.stat(final)
        except FileNotFoundError:
            raise StorageError(
                f"cannot download to {final}: it is a symbolic link to a missing file"
            ) from None
        except OSError as exc:
            raise StorageError(f"cannot download to {final}: {exc.strerror}") from None
        final = Path(os.path.realpath(final))
    if not stat.S_ISREG(st.st_mode):
        raise StorageError(f"cannot download to {final}: it is not a regular file ({kind(st.st_mode)})")
    return final, st


def check_replaceable(final: Path) -> None:
    """Just before the rename: what is at `final` now may be replaced (nothing, a regular file, or a
    link, which a rename replaces without writing through it). Closes the window between `resolve` and
    the rename in which something else could have been put there."""
    try:
        st = os.lstat(final)
    except FileNotFoundError:
        return
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        raise StorageError(f"cannot download to {final}: it is not a regular file ({kind(st.st_mode)})")
