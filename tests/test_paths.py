"""The I/O layer (rlaif_jax.paths): atomic writes, readers, URL handling."""
import json
import os

import pytest

from rlaif_jax import paths


def test_atomic_write_keeps_the_old_file_when_the_new_one_fails(tmp_path, monkeypatch):
  f = tmp_path / "a" / "x.json"
  paths.write_json_atomic(f, {"v": 1})           # makes the parent directory too
  assert json.loads(f.read_text()) == {"v": 1}

  def broken_fsync(fd):
    raise OSError("disk full")
  monkeypatch.setattr(os, "fsync", broken_fsync)
  with pytest.raises(OSError, match="disk full"):
    paths.write_json_atomic(f, {"v": 2})
  assert json.loads(f.read_text()) == {"v": 1}   # the reader still sees the whole old file
  assert os.listdir(f.parent) == ["x.json"]      # and no temp file is left behind


def test_jsonl_round_trip_and_a_bad_line_names_file_and_line(tmp_path):
  rows = [{"a": 1}, {"b": "ü\n"}, [1, 2]]
  paths.write_jsonl_atomic(tmp_path / "r.jsonl", iter(rows))
  assert (tmp_path / "r.jsonl").read_text(encoding="utf-8").count("\n") == 3
  assert paths.read_jsonl(tmp_path / "r.jsonl") == rows
  (tmp_path / "bad.jsonl").write_text('{"a": 1}\n\n{"a": \n')
  with pytest.raises(ValueError, match=r"bad\.jsonl:3: malformed JSON"):
    paths.read_jsonl(tmp_path / "bad.jsonl")


def test_paths_local_file_url_and_gs_url(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert os.fspath(paths.path("rel/x")) == os.path.join(str(tmp_path), "rel", "x")
  assert os.fspath(paths.path(f"file://{tmp_path}/y")) == f"{tmp_path}/y"
  # a file:// URL stays one when joined (what is derived from it still goes
  # through the I/O layer), and is local for everything else
  assert paths.join(f"file://{tmp_path}", "a", "b") == f"file://{tmp_path}/a/b"
  assert not paths.is_url(f"file://{tmp_path}") and paths.is_url("gs://b/x")
  assert paths.local_dir(f"file://{tmp_path}") == str(tmp_path)
  assert paths.join("gs://bucket/w", "sft", "DONE") == "gs://bucket/w/sft/DONE"
  # os.path.join would have been fine here, but `path` must not make a URL
  # absolute (that is how a local "gs:" directory comes about)
  assert os.fspath(paths.path("gs://bucket/w")) == "gs://bucket/w"
  assert not (tmp_path / "gs:").exists()


def test_copy_upload_dir_and_local_dir(tmp_path):
  src = tmp_path / "src"
  (src / "sub").mkdir(parents=True)
  (src / "a.txt").write_text("A")
  (src / "sub" / "b.bin").write_bytes(b"\x00\x01")
  paths.upload_dir(str(src), tmp_path / "dst")
  assert (tmp_path / "dst" / "a.txt").read_text() == "A"
  assert (tmp_path / "dst" / "sub" / "b.bin").read_bytes() == b"\x00\x01"
  paths.copy(tmp_path / "dst" / "a.txt", tmp_path / "c" / "a2.txt")
  assert (tmp_path / "c" / "a2.txt").read_text() == "A"
  assert paths.local_dir(str(src)) == str(src)   # a local directory is used in place


def test_walk_files_names_files_relative_to_the_root(tmp_path):
  (tmp_path / "d" / "sub" / "deeper").mkdir(parents=True)
  for rel in ("a", "sub/b", "sub/deeper/c"):
    (tmp_path / "d" / rel).write_text(rel)
  found = sorted((rel, f.read_text()) for rel, f in paths.walk_files(tmp_path / "d"))
  assert found == [("a", "a"), ("sub/b", "sub/b"), ("sub/deeper/c", "sub/deeper/c")]
  paths.download_dir(tmp_path / "d", str(tmp_path / "copy"))
  assert (tmp_path / "copy" / "sub" / "deeper" / "c").read_text() == "sub/deeper/c"
