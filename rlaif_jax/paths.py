"""The one I/O layer: every artifact (checkpoint dirs, JSONL, reports, plots) goes
through `etils.epath`, so a workdir, data dir or checkpoint may be local or a
`gs://` URL (install the `tpu` extra, which brings gcsfs).

Paths stay strings in configs and summaries; `path()` turns one into an
`epath.Path`: local ones absolute (Orbax requires it), `file://` URLs local,
`gs://` (s3://, ...) through fsspec. A plain `open`/`os.makedirs` on
"gs://b/x" would instead create a local directory named "gs:" – the bug this
module exists to prevent.

Atomic writes: a reader (a resumed run, a concurrent process) sees a whole
file or none. Locally that is a private temp name, fsync, then `os.replace`;
on an object store an upload only becomes visible once finalised at close,
so the object is written in place (a rename there is a copy plus a delete,
neither atomic nor cheap).
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterable

from etils import epath


_FILE = "file://"


def is_url(p) -> bool:
  """A remote URL (gs://, s3://, ...); file:// URLs name local files."""
  s = os.fspath(p)
  return "://" in s and not s.startswith(_FILE)


def path(p) -> epath.Path:
  s = os.fspath(p)
  if s.startswith(_FILE):
    s = s[len(_FILE):]
  return epath.Path(s if is_url(s) else os.path.abspath(s))


def join(p, *parts: str) -> str:
  """`os.path.join` for local paths and URLs alike; returns a string (a file://
  URL stays one, so that what is derived from it is still read through here)."""
  s = os.fspath(p)
  return (_FILE if s.startswith(_FILE) else "") + os.fspath(path(s).joinpath(*parts))


def exists(p) -> bool:
  return path(p).exists()


def makedirs(p) -> epath.Path:
  """mkdir -p; on object stores a no-op (directories are name prefixes there)."""
  d = path(p)
  d.mkdir(parents=True, exist_ok=True)
  return d


def read_text(p) -> str:
  return path(p).read_text(encoding="utf-8")


def read_json(p) -> Any:
  return json.loads(read_text(p))


def read_jsonl(p) -> list[dict]:
  """One JSON value a non-blank line; a bad line raises naming file:line."""
  out = []
  for lineno, line in enumerate(read_text(p).splitlines(), 1):
    if not line.strip():
      continue
    try:
      out.append(json.loads(line))
    except json.JSONDecodeError as e:
      raise ValueError(f"{p}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
  return out


def write_bytes_atomic(p, data: bytes) -> None:
  """Writes `data` so that readers see the old file, or the whole new one."""
  dst = path(p)
  if is_url(dst):
    with dst.open("wb") as f:      # visible only once the upload is finalised
      f.write(data)
    return
  dst.parent.mkdir(parents=True, exist_ok=True)
  # A private temp name per process: concurrent writers of the same bytes (every
  # host writing a shared file) never see each other's half-written temp.
  tmp = f"{dst}.{os.getpid()}.tmp"
  try:
    with open(tmp, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())          # whole on disk before it gets the real name
    os.replace(tmp, dst)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_text_atomic(p, text: str) -> None:
  write_bytes_atomic(p, text.encode("utf-8"))


def write_json_atomic(p, obj: Any, indent: int | None = 1) -> None:
  write_text_atomic(p, json.dumps(obj, indent=indent) + ("\n" if indent is not None else ""))


def write_jsonl_atomic(p, rows: Iterable[Any]) -> None:
  write_text_atomic(p, "".join(json.dumps(r) + "\n" for r in rows))


def copy(src, dst) -> None:
  """Copies one file (local or URL, either side), atomically at `dst`."""
  write_bytes_atomic(dst, path(src).read_bytes())


def upload_dir(local_dir: str, dst, last: tuple[str, ...] = ()) -> None:
  """Copies the files under a local directory to `dst` (local or URL), each
  atomically; files named in `last` go after all others (a completeness marker)."""
  files = []
  for root, _, names in os.walk(local_dir):
    rel = os.path.relpath(root, local_dir)
    files += [(os.path.join(root, n), ([] if rel == "." else rel.split(os.sep)) + [n])
              for n in names]
  for src, parts in sorted(files, key=lambda f: f[1][-1] in last):
    with open(src, "rb") as f:
      write_bytes_atomic(path(dst).joinpath(*parts), f.read())


def walk_files(p) -> list[tuple[str, epath.Path]]:
  """Every file under directory `p` (local or URL): (its path relative to `p`,
  "/"-separated; the file). Use it rather than `epath.Path.walk`, whose
  directories come without the gs:// prefix (joined onto, they name local files)."""
  root = path(p)
  base = os.fspath(root).split("://", 1)[-1].rstrip("/")
  out = []
  for d, _, files in root.walk():
    rel = os.fspath(d).split("://", 1)[-1].rstrip("/")[len(base):].strip("/")
    parts = rel.split("/") if rel else []
    out += [("/".join(parts + [n]), root.joinpath(*parts, n)) for n in files]
  return out


def download_dir(src, local_dir: str) -> None:
  """Copies every file under `src` (local or URL) into `local_dir`, made whole
  under a temporary name first (concurrent callers: one of them wins, same files)."""
  import shutil
  tmp = f"{local_dir}.{os.getpid()}.tmp"
  os.makedirs(tmp, exist_ok=True)
  for rel, f in walk_files(src):
    dst = os.path.join(tmp, *rel.split("/"))
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    with open(dst, "wb") as out:
      out.write(f.read_bytes())
  os.makedirs(os.path.dirname(local_dir), exist_ok=True)
  try:
    os.replace(tmp, local_dir)
  except OSError:                  # another process won the race; same files
    shutil.rmtree(tmp, ignore_errors=True)


def cache_dir(url, fingerprint: str = "") -> str:
  """A local directory to mirror `url` in (under the temp dir), one per URL and
  `fingerprint` – the mirrored content's identity, so that a bucket whose
  content changed is never answered from a stale copy."""
  import hashlib
  import tempfile
  s = os.fspath(path(url))
  key = hashlib.sha256(f"{s}\0{fingerprint}".encode()).hexdigest()[:16]
  return os.path.join(tempfile.gettempdir(), "rlaif_jax_remote", f"{os.path.basename(s)}-{key}")


def local_dir(p) -> str:
  """A local directory with `p`'s files, for libraries that read only local files
  (Hugging Face tokenizers and configs): `p` itself when local, else a download
  (small directories only: it is fetched at every call, and kept once per content)."""
  if not is_url(p):
    return os.fspath(path(p))
  import hashlib
  import shutil
  import tempfile
  if not path(p).is_dir():
    raise FileNotFoundError(f"{p}: no such directory")
  root = os.path.join(tempfile.gettempdir(), "rlaif_jax_remote")
  os.makedirs(root, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=root)
  download_dir(p, os.path.join(tmp, "d"))
  digest = hashlib.sha256()
  for r, _, files in sorted(os.walk(os.path.join(tmp, "d"))):
    for name in sorted(files):
      digest.update(os.path.relpath(os.path.join(r, name), tmp).encode())
      with open(os.path.join(r, name), "rb") as f:
        digest.update(f.read())
  out = cache_dir(p, digest.hexdigest())
  try:
    os.replace(os.path.join(tmp, "d"), out)
  except OSError:                  # already there: the same content
    pass
  shutil.rmtree(tmp, ignore_errors=True)
  return out
