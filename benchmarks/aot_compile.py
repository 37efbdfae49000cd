"""TPU compile time and per-chip memory of a Gemma-2B-shaped SFT step, from a CPU
machine (deviceless AOT with libtpu), under the layout levers: layers, vocab,
rows x tokens per step, remat, scan, logits_chunk.

    TPU_ACCELERATOR_TYPE=v4-16 JAX_PLATFORMS=cpu python benchmarks/aot_compile.py \\
        --layers 18 --rows 16 --seq 1152 --remat full --logits_chunk 128

Prints lowering and compile seconds and memory_analysis() per chip. Compile
seconds move with the host's load: compare settings within one run (--compare
compiles the same step with logits_chunk 0 beside it).
"""
import argparse
import json
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v4-16")

from rlaif_jax import aot  # noqa: E402
from rlaif_jax.config import load_config_file  # noqa: E402
from rlaif_jax.models import presets  # noqa: E402


def measure(layers, vocab, rows, seq, remat, scan, chunk) -> dict:
  presets.PRESETS["gemma-2b"] = dict(presets.PRESETS["gemma-2b"], num_hidden_layers=layers,
                                     vocab_size=vocab)
  c = load_config_file("configs/sft.py:tldr")
  c.model.update(remat=remat, scan_layers=scan, logits_chunk=chunk)
  c.train.update(batch_size=rows, grad_accum=1)
  c.data.update(max_prompt_len=seq - 128, max_response_len=128)
  mesh = aot.topology_mesh(c.hardware.topology, c.mesh)
  t0 = time.perf_counter()
  (low, _, _), = aot.train_programs(c, mesh).values()
  t1 = time.perf_counter()
  ma = low.compile().memory_analysis()
  t2 = time.perf_counter()
  return {"layers": layers, "vocab": vocab, "rows": rows, "seq": seq, "remat": remat,
          "scan": scan, "logits_chunk": chunk, "lower_s": round(t1 - t0, 1),
          "compile_s": round(t2 - t1, 1), "args_gib": round(ma.argument_size_in_bytes / 2**30, 2),
          "temp_gib": round(ma.temp_size_in_bytes / 2**30, 2), "load": os.getloadavg()[0]}


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--layers", type=int, default=18)
  ap.add_argument("--vocab", type=int, default=256000)
  ap.add_argument("--rows", type=int, default=16)
  ap.add_argument("--seq", type=int, default=1152)
  ap.add_argument("--remat", default="full")
  ap.add_argument("--unrolled", action="store_true")
  ap.add_argument("--logits_chunk", type=int, default=128)
  ap.add_argument("--compare", action="store_true", help="also compile with logits_chunk 0")
  a = ap.parse_args()
  chunks = [a.logits_chunk] + ([0] if a.compare and a.logits_chunk else [])
  for chunk in chunks:
    print(json.dumps(measure(a.layers, a.vocab, a.rows, a.seq, a.remat, not a.unrolled, chunk)),
          flush=True)


if __name__ == "__main__":
  main()
