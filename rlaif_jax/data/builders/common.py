"""What the three TFDS builders share: raw-file discovery and bad-record policy.

Raw files come from `manual_dir` when it holds any (offline machines, tests,
users' mirrors), otherwise from the public URLs through `dl_manager.download`.
Bad raw records raise `BadRecordError` naming file and line, unless the builder
was made with `skip_bad_records=True`; then they are counted, logged and kept in
`builder.info.metadata["skipped"][split]` (saved in metadata.json).
"""
from __future__ import annotations

import fnmatch
import inspect
from typing import Callable, Iterable, Iterator

import tensorflow_datasets as tfds
from etils import epath

from rlaif_jax.data.records import BadRecordError, SkipReport, read_json_lines


def manual_files(dl_manager, patterns: Iterable[str]) -> list[epath.Path] | None:
  """Files in manual_dir matching any glob pattern (sorted); None if no manual dir."""
  try:
    root = epath.Path(dl_manager.manual_dir)
  except AssertionError:  # no manual dir given, or it is empty
    return None
  found = set()
  for pattern in patterns:
    found.update(p for p in root.glob(pattern) if p.is_file())
  return sorted(found)


def matching(files: list[epath.Path], *patterns: str) -> list[epath.Path]:
  return [f for f in files if any(fnmatch.fnmatch(f.name, p) for p in patterns)]


class RawRecordsMixin:
  """Adds the `skip_bad_records` builder argument and the shared record loop."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = "See the builder's module docstring for the file layout."

  def __init__(self, *, skip_bad_records: bool = False, **kwargs):
    self.skip_bad_records = skip_bad_records
    super().__init__(**kwargs)

  # tfds' default code_path consults `importlib_resources`, a package tfds
  # 4.9 imports but does not declare; the module file is all it needs.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(inspect.getfile(cls))

  def _metadata(self) -> tfds.core.MetadataDict:
    return tfds.core.MetadataDict(skipped={})

  def iter_records(self, split: str, files: Iterable[epath.Path],
                   parse: Callable[[str, object], dict | None]) -> Iterator[tuple[str, dict]]:
    """Yields (where, example) for every record `parse` accepts.

    `parse(where, value)` returns the example, None for a record that belongs
    elsewhere (another split), or raises BadRecordError.
    """
    report = SkipReport()
    for path in files:
      for where, value in read_json_lines(path):
        try:
          example = parse(where, value)
        except BadRecordError as err:
          if not self.skip_bad_records:
            raise
          report.add(err)
          continue
        if example is not None:
          yield where, example
    report.log(f"{self.name}/{split}")
    self.info.metadata["skipped"][split] = report.as_dict()
