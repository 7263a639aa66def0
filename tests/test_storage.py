"""Local atomic writes (:func:`crop2seg_pipeline.storage.write_local_atomic`, ``write_bytes``).

Checkpoints, ``model.json``, PASTIS exports, reports and scene files all go through them: an
interrupted write must leave the previous file whole and no temporary file behind.
"""

from __future__ import annotations

import pytest

from crop2seg_pipeline import storage


class Boom(Exception):
    pass


@pytest.mark.parametrize("fsync", [False, True])
def test_write_local_atomic_replaces_the_file_whole(tmp_path, fsync):
    path = tmp_path / "weights.pt"
    path.write_bytes(b"old")
    storage.write_local_atomic(path, lambda f: (f.write(b"new "), f.write(b"content")), fsync=fsync)
    assert path.read_bytes() == b"new content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.pt"]


@pytest.mark.parametrize("error", [Boom, KeyboardInterrupt])
def test_an_interrupted_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, error):
    path = tmp_path / "model.json"
    path.write_bytes(b"old")

    def half_then_fail(f):
        f.write(b"half of the new")
        raise error()

    with pytest.raises(error):
        storage.write_local_atomic(path, half_then_fail)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json"]


def test_an_interrupted_first_write_leaves_nothing(tmp_path):
    path = tmp_path / "new.npy"
    with pytest.raises(Boom):
        storage.write_local_atomic(path, lambda f: (f.write(b"x"), (_ for _ in ()).throw(Boom())))
    assert list(tmp_path.iterdir()) == []


def test_write_bytes_makes_missing_folders_and_replaces(tmp_path):
    path = tmp_path / "a" / "b" / "items.json"
    storage.write_bytes(path, b"[1]")
    storage.write_bytes(str(path), b"[2]")
    assert path.read_bytes() == b"[2]"
    assert [p.name for p in path.parent.iterdir()] == ["items.json"]
