"""Entry point: `python -m rlaif_jax.main --config=configs/x.py:variant --workdir=DIR`.

Picks the stage from `config.stage`, joins a multi-process run when asked,
validates the config against the devices, builds the mesh and runs the stage.
Without `--config` it runs the embedded default: the whole RLAIF pipeline on the
bundled demo world (configs/pipeline.py:demo).
"""
from __future__ import annotations

import json
import logging
import os
import sys

from absl import flags

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), os.pardir, "configs", "pipeline.py")


def define_flags():
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "config file, path.py[:variant]",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "where checkpoints, metrics and artifacts go")
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process)")
  flags.DEFINE_integer("num_processes", None, "number of processes (multi-process)")
  flags.DEFINE_integer("process_id", None, "this process's id (multi-process)")
  flags.DEFINE_bool("dry_run", False, "build the mesh for config.hardware, abstract-evaluate "
                    "the models and print parameters, per-device memory and shardings; "
                    "allocates nothing")
  flags.DEFINE_bool("aot", False, "compile the stage's jitted programs for "
                    "hardware.topology with the TPU compiler (libtpu, no TPU needed) and "
                    "print per-program compile time, memory, FLOPs and collectives; "
                    "refuses a config that does not fit")


# stage -> module with `run(config, workdir, mesh) -> dict` and `validate(config, mesh)`,
# which main calls with the abstract mesh (shapes, no devices) before building it
STAGES = {
    "sft": "rlaif_jax.learners.sft",
    "rm": "rlaif_jax.learners.reward",
    "label": "rlaif_jax.labeler.stage",
    "rl": "rlaif_jax.learners.rl",
    "dpo": "rlaif_jax.learners.dpo",
    "eval": "rlaif_jax.eval.stage",
    "pipeline": "rlaif_jax.demo.pipeline",
}


def run_stage(config, workdir: str, dry_run: bool = False, aot: bool = False) -> dict:
  import importlib

  import jax

  from rlaif_jax import config as cfglib
  from rlaif_jax import paths
  from rlaif_jax.mesh import abstract_mesh, make_mesh

  if config.stage not in STAGES:
    raise cfglib.ConfigError(f"stage={config.stage!r}: known stages are {sorted(STAGES)}")
  if aot:
    from rlaif_jax import aot as aotlib
    n = config.hardware.chips or jax.device_count()
    cfglib.validate(config, n)
    return aotlib.run(config)
  if dry_run:
    from rlaif_jax import dryrun
    n = config.hardware.chips or jax.device_count()
    cfglib.validate(config, n)
    est = dryrun.report(config, n)
    return {"total_gib_per_device": est["total_bytes_per_device"] / 2**30,
            "fits": est["fits"] if est["fits"] is not None else "no budget set"}
  cfglib.validate(config, jax.device_count())
  stage = importlib.import_module(STAGES[config.stage])
  if hasattr(stage, "validate"):   # the stage's own sections, against the mesh's shape
    stage.validate(config, abstract_mesh(config.mesh, jax.device_count()))
  mesh = make_mesh(config.mesh)
  logging.info("stage %s on mesh %s", config.stage, cfglib.describe_mesh(tuple(mesh.shape.values())))
  root = paths.path(workdir)
  root.mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:
    (root / f"config_{config.stage}.json").write_text(config.to_json_best_effort(indent=2))
  return stage.run(config, workdir, mesh)


def main(argv=None) -> int:
  argv = list(sys.argv if argv is None else argv)
  if not any(a.startswith("--config=") or a == "--config" for a in argv):
    argv.insert(1, f"--config={os.path.normpath(_DEFAULT_CONFIG)}:demo")
  define_flags()
  from rlaif_jax import config as cfglib
  cfglib.parse_flags(argv, flags.FLAGS)
  # absl owns the root logger once its flags are parsed: our INFO lines through
  # it, while libraries that log through absl itself (Orbax) stay at WARNING.
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.INFO)
  absl_logging.set_stderrthreshold(absl_logging.INFO)
  logging.getLogger().setLevel(logging.INFO)
  logging.getLogger("absl").setLevel(logging.WARNING)
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
  if not flags.FLAGS.workdir and not (flags.FLAGS.dry_run or flags.FLAGS.aot):
    sys.exit("error: --workdir is required (checkpoints, metrics and artifacts go there)")
  from rlaif_jax.mesh import maybe_initialize_distributed
  maybe_initialize_distributed(flags.FLAGS.coordinator_address, flags.FLAGS.num_processes,
                               flags.FLAGS.process_id)
  try:
    result = run_stage(flags.FLAGS.config, flags.FLAGS.workdir, flags.FLAGS.dry_run,
                       flags.FLAGS.aot)
  except cfglib.ConfigError as e:
    sys.exit(f"error: {e}")
  if flags.FLAGS.aot:
    return 0        # aot.run printed its JSON line last
  print(json.dumps({k: v for k, v in (result or {}).items()
                    if isinstance(v, (int, float, str))}, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
