"""What a stage reads from `config.data`: bundled data materialised in its
workdir, this process's training batches, and the held-out batches."""
from __future__ import annotations

from rlaif_jax import paths
from rlaif_jax.data import toy
from rlaif_jax.data.pipeline import make_iterator, numeric
from rlaif_jax.data.sources import SERVES
from rlaif_jax.errors import ConfigError
from rlaif_jax.mesh import global_batch

BUNDLED = ("toy",)        # written into the workdir by `prepare_data`


def check_data(config, kind: str) -> None:
  """The data section can serve a stage that reads `kind` ("sft" | "pairs" |
  "prompts") examples."""
  d = config.data
  if d.source == "jsonl":
    if not d.jsonl_path:
      raise ConfigError("data.source='jsonl' needs --config.data.jsonl_path=<file.jsonl>")
    if not paths.exists(d.jsonl_path):
      raise ConfigError(f"data.jsonl_path={d.jsonl_path} does not exist")
    return
  if d.source in BUNDLED:
    return
  if d.source not in SERVES:
    raise ConfigError(f"data.source={d.source!r}: use one of "
                      f"{', '.join((*SERVES, 'jsonl', *BUNDLED))}")
  if kind not in SERVES[d.source]:
    fits = [s for s, kinds in SERVES.items() if kind in kinds] + ["jsonl", *BUNDLED]
    raise ConfigError(f"data.source={d.source!r} has no {kind} examples (it serves "
                      f"{', '.join(SERVES[d.source])}); use one of {', '.join(fits)}")


def prepare_data(config, workdir: str, kind: str = "sft") -> None:
  """Materialises bundled sources (the toy tasks) inside the workdir; afterwards
  `config.data` reads them as plain JSONL."""
  if config.data.source == "toy":
    files = toy.write(paths.join(workdir, "data", "toy"), kind, seed=config.seed)
    with config.unlocked():
      config.data.source = "jsonl"
      config.data.jsonl_path = files["train"]
      config.data.eval_jsonl_path = files["valid"]


def data_iterator(config, tok, kind: str, num_epochs=None):
  """This process's share of the training batches, checkpointable (rlaif_jax.data)."""
  return make_iterator(config.data, tok, kind=kind, batch_size=config.train.batch_size,
                       seed=config.seed, num_epochs=num_epochs)


def heldout_batches(config, tok, kind: str) -> list[dict]:
  """Up to `train.eval_batches` of this process's batches of the held-out split
  (`data.eval_split`, or `data.eval_jsonl_path` for jsonl), fixed order; [] if none."""
  d = config.data.copy_and_resolve_references()
  with d.unlocked():
    d.split, d.shuffle = config.data.eval_split, False
    if d.source == "jsonl":
      if not config.data.eval_jsonl_path:
        return []
      d.jsonl_path, d.jsonl_kind = config.data.eval_jsonl_path, kind
  it = make_iterator(d, tok, kind=kind, batch_size=config.train.batch_size, num_epochs=1)
  return [b for b, _ in zip(it, range(config.train.eval_batches))]


def eval_batches(config, tok, kind: str, mesh) -> list:
  """Up to `train.eval_batches` global batches of the held-out split (fixed order)."""
  return [global_batch(numeric(b), mesh) for b in heldout_batches(config, tok, kind)]
