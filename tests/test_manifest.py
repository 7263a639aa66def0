"""The output folder a run owns only in part: manifest, conflicts, atomic renames, stale outputs."""

from __future__ import annotations

import hashlib
import json

import pytest

from crop2seg_pipeline.manifest import MANIFEST, OutputConflict, OutputFolder, read_manifest


def _run(folder, names, contents, settings=None):
    out = OutputFolder(folder, "crop2seg-predict", settings or {"k": 1})
    out.plan(names)
    for name in names:
        with out.output(name) as tmp:
            tmp.write_text(contents[name])
    out.finish()
    return out


def test_manifest_lists_what_was_written_with_sizes_and_checksums(tmp_path):
    _run(tmp_path / "o", ["a.txt", "b.txt"], {"a.txt": "alpha", "b.txt": "beta"}, settings={"overlap": 32})
    doc = read_manifest(tmp_path / "o")
    assert doc["complete"] is True and doc["command"] == "crop2seg-predict" and doc["settings"] == {"overlap": 32}
    assert sorted(doc["files"]) == ["a.txt", "b.txt"]
    a = doc["files"]["a.txt"]
    assert a["size"] == 5 and a["sha256"] == hashlib.sha256(b"alpha").hexdigest()
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a.txt", "b.txt", MANIFEST]


def test_a_users_file_under_an_output_name_refuses_the_run_before_anything(tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "summary.json").write_text('{"mine": true}')
    (tmp_path / "o" / "notes.txt").write_text("keep")
    out = OutputFolder(tmp_path / "o", "crop2seg-predict")
    with pytest.raises(OutputConflict, match=r"summary.json \(not written by crop2seg: no manifest lists it\)"):
        out.plan(["classes.tif", "summary.json"])
    assert (tmp_path / "o" / "summary.json").read_text() == '{"mine": true}'
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["notes.txt", "summary.json"]


def test_a_foreign_manifest_or_a_changed_output_refuses(tmp_path):
    _run(tmp_path / "o", ["a.txt"], {"a.txt": "alpha"})
    (tmp_path / "o" / "a.txt").write_text("edited by the user")
    with pytest.raises(OutputConflict, match=r"a.txt \(changed since crop2seg-predict wrote it\)"):
        OutputFolder(tmp_path / "o", "crop2seg-predict").plan(["a.txt"])
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / MANIFEST).write_text("{}")
    with pytest.raises(OutputConflict, match="manifest.json .not a manifest written by crop2seg"):
        OutputFolder(tmp_path / "p", "crop2seg-predict").plan(["a.txt"])


def test_rerun_replaces_its_own_outputs_and_removes_those_it_does_not_write(tmp_path):
    _run(tmp_path / "o", ["a.txt", "extra.txt", "kept.txt"], {"a.txt": "1", "extra.txt": "2", "kept.txt": "3"})
    (tmp_path / "o" / "kept.txt").write_text("changed by the user")  # no longer ours: left alone
    (tmp_path / "o" / "user.txt").write_text("not ours")
    _run(tmp_path / "o", ["a.txt"], {"a.txt": "new"})
    assert (tmp_path / "o" / "a.txt").read_text() == "new"
    assert not (tmp_path / "o" / "extra.txt").exists()
    assert (tmp_path / "o" / "kept.txt").read_text() == "changed by the user"
    assert (tmp_path / "o" / "user.txt").read_text() == "not ours"
    assert sorted(read_manifest(tmp_path / "o")["files"]) == ["a.txt"]


def test_outputs_appear_only_complete_and_a_failure_leaves_the_old_one(tmp_path):
    _run(tmp_path / "o", ["a.txt"], {"a.txt": "old"})
    out = OutputFolder(tmp_path / "o", "crop2seg-predict")
    out.plan(["a.txt", "b.txt"])
    with pytest.raises(RuntimeError):
        with out.output("a.txt") as tmp:
            tmp.write_text("half")
            assert (tmp_path / "o" / "a.txt").read_text() == "old"  # written beside, not over it
            assert tmp.parent == tmp_path / "o"
            raise RuntimeError("interrupted")
    assert (tmp_path / "o" / "a.txt").read_text() == "old"
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a.txt", MANIFEST]
    with out.output("b.txt") as tmp:
        tmp.write_text("b")
    doc = read_manifest(tmp_path / "o")
    assert doc["complete"] is False and sorted(doc["files"]) == ["a.txt", "b.txt"]  # truthful mid-run


def test_leftovers_of_a_killed_run_are_removed_folders_replace_folders(tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / ".a.txt.partial-0123456789ab").write_text("left by a SIGKILL")
    out = OutputFolder(tmp_path / "o", "crop2seg-predict")
    out.plan(["d.zarr"])
    assert not (tmp_path / "o" / ".a.txt.partial-0123456789ab").exists()
    tmp = out.temp("d.zarr")
    (tmp / "x").mkdir(parents=True)
    (tmp / "x" / "0").write_bytes(b"12")
    out.commit("d.zarr", tmp)
    out.finish()
    out2 = OutputFolder(tmp_path / "o", "crop2seg-predict")
    out2.plan(["d.zarr"])
    tmp = out2.temp("d.zarr")
    tmp.mkdir()
    (tmp / "y").write_bytes(b"3")
    out2.commit("d.zarr", tmp)
    out2.finish()
    assert sorted(p.name for p in (tmp_path / "o" / "d.zarr").iterdir()) == ["y"]
    assert json.loads((tmp_path / "o" / MANIFEST).read_text())["files"]["d.zarr"]["kind"] == "dir"
    with pytest.raises(ValueError, match="was not planned"):
        out2.temp("other.txt")
