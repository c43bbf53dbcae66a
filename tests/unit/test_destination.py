"""p2pfs.peer.destination: where a download goes, and what it refuses to replace."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from p2pfs.peer import destination
from p2pfs.peer.storage import StorageError


def test_a_new_path_is_the_final_name(tmp_path: Path) -> None:
    assert destination.resolve(tmp_path / "new.bin", "f.bin") == (tmp_path / "new.bin", None)


def test_a_directory_gets_dest_slash_name(tmp_path: Path) -> None:
    assert destination.resolve(tmp_path, "f.bin") == (tmp_path / "f.bin", None)


def test_an_existing_regular_file_is_reported_with_its_stat(tmp_path: Path) -> None:
    (tmp_path / "f.bin").write_bytes(b"12345")
    final, st = destination.resolve(tmp_path, "f.bin")
    assert final == tmp_path / "f.bin" and st is not None and st.st_size == 5


def test_a_missing_directory_is_named_not_the_part_file(tmp_path: Path) -> None:
    with pytest.raises(StorageError) as err:
        destination.resolve(tmp_path / "nodir" / "f.bin", "f.bin")
    assert f"directory {tmp_path / 'nodir'} does not exist" in str(err.value)
    assert ".part" not in str(err.value)


def test_a_fifo_or_a_socket_is_never_replaced(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(StorageError, match=r"not a regular file \(a FIFO\)"):
        destination.resolve(fifo, "f.bin")
    sock_path = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        with pytest.raises(StorageError, match=r"not a regular file \(a socket\)"):
            destination.resolve(sock_path, "f.bin")


def test_a_device_node_is_never_replaced(tmp_path: Path) -> None:
    node = tmp_path / "null"
    try:
        os.mknod(node, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("mknod needs root")
    with pytest.raises(StorageError, match=r"a character device"):
        destination.resolve(node, "f.bin")
    with pytest.raises(StorageError, match=r"a character device"):
        destination.check_replaceable(node)


def test_a_directory_at_dir_slash_name_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f.bin").mkdir()
    with pytest.raises(StorageError, match=r"a directory"):
        destination.resolve(tmp_path, "f.bin")


def test_a_link_named_by_the_user_is_followed(tmp_path: Path) -> None:
    target = tmp_path / "real.bin"
    target.write_bytes(b"abc")
    link = tmp_path / "link.bin"
    link.symlink_to(target)
    final, st = destination.resolve(link, "f.bin")
    assert final == target and st is not None and st.st_size == 3


def test_a_dangling_link_is_refused(tmp_path: Path) -> None:
    link = tmp_path / "link.bin"
    link.symlink_to(tmp_path / "nothing")
    with pytest.raises(StorageError, match="symbolic link to a missing file"):
        destination.resolve(link, "f.bin")


def test_a_link_at_dir_slash_name_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"keep")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f.bin").symlink_to(target)
    with pytest.raises(StorageError, match="symbolic link"):
        destination.resolve(tmp_path / "d", "f.bin")
    assert target.read_bytes() == b"keep"


def test_check_replaceable_allows_nothing_a_file_or_a_link(tmp_path: Path) -> None:
    destination.check_replaceable(tmp_path / "none")
    (tmp_path / "f").write_bytes(b"")
    destination.check_replaceable(tmp_path / "f")
    (tmp_path / "l").symlink_to(tmp_path / "f")
    destination.check_replaceable(tmp_path / "l")
    os.mkfifo(tmp_path / "p")
    with pytest.raises(StorageError):
        destination.check_replaceable(tmp_path / "p")
