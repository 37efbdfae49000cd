"""Pairs/s of two-order pairwise scoring with and without the shared-prefix KV cache.

    python benchmarks/labeler.py [--json] [--d_model 512 --layers 8 --vocab 32000 ...]

Both paths run the same ScoringEngine on the same model in this process:
`ours` reuses the preamble's KV cache (encoded once) and encodes each pair's
context once for both orders; `reference` runs one full forward pass per
(pair, order) over preamble + context + responses + ending, which is what a
labeler without caching does. Token ids are random (speed does not depend on
them); lengths follow the issue: a 1-shot preamble of ~1000 tokens, contexts
of ~300, responses of ~40, ending of 4.

The bound implied by the token counts (attention cost aside) is

    tokens(reference) / tokens(ours) = 2(P + C + 2R + E) / (C + 2(2R + E)),

printed next to the measured ratio.
"""
from __future__ import annotations

import json
import os
import time

import jax
import numpy as np

import common


def run(engine, name, contexts, tails, query, reps):
  engine.score(name, contexts[:engine.batch_size], tails[:engine.batch_size], query)  # compile
  t = time.perf_counter()
  for _ in range(reps):
    engine.score(name, contexts, tails, query)
  return reps * len(contexts) / (time.perf_counter() - t)


def main():
  p = common.parser(__doc__)
  p.add_argument("--prefix", type=int, default=1000, help="preamble + 1 exemplar tokens")
  p.add_argument("--context", type=int, default=300)
  p.add_argument("--response", type=int, default=40)
  p.add_argument("--pairs", type=int, default=16)
  p.add_argument("--batch", type=int, default=8, help="pairs per program")
  p.add_argument("--reps", type=int, default=1)
  a = p.parse_args()


  from rlaif_jax.labeler.engine import ScoringEngine
  from rlaif_jax.models import Transformer, init_sharded
  cfg = common.model_config(a)
  mesh = common.data_parallel_mesh()
  model = init_sharded(lambda r: Transformer(cfg, r), mesh)
  rng = np.random.default_rng(0)
  ids = lambda n: rng.integers(3, a.vocab, n).tolist()
  ending = ids(4)
  prefix = ids(a.prefix)
  # lengths vary around the nominal ones, as real text does (±10%)
  vary = lambda n: int(n * rng.uniform(0.9, 1.1))
  contexts = [ids(vary(a.context)) for _ in range(a.pairs)]
  tails = []
  for _ in range(a.pairs):
    r1, r2 = ids(vary(a.response)), ids(vary(a.response))
    tails.append([r1 + r2 + ending, r2 + r1 + ending])
  query = ids(2)
  rates = {}
  for cached in (True, False):
    engine = ScoringEngine(model, mesh, pad_id=0, batch_size=a.batch, bucket=64,
                           prefix_cache=cached)
    engine.set_prefix("bench", prefix)
    rates[cached] = run(engine, "bench", contexts, tails, query, a.reps)
  c = a.context
  r = a.response
  bound = 2 * (a.prefix + c + 2 * r + 4) / (c + 2 * (2 * r + 4))
  result = {"name": f"labeler_two_order_pairs_d{a.d_model}_L{a.layers}_v{a.vocab}"
                    f"_P{a.prefix}_C{c}_R{r}_b{a.batch}",
            "ours": round(rates[True], 3), "reference": round(rates[False], 3),
            "ratio": round(rates[True] / rates[False], 3), "unit": "pairs/s",
            "token_bound_ratio": round(bound, 3),
            "device": str(jax.devices()[0].device_kind), "n_devices": jax.device_count()}
  if a.json:
    print(json.dumps(result))
  else:
    print(f"{result['name']} on {jax.device_count()} x {result['device']}")
    print(f"  ours (prefix + context KV reuse) {rates[True]:8.2f} pairs/s")
    print(f"  reference (no cache)             {rates[False]:8.2f} pairs/s")
    print(f"  ratio {result['ratio']:.2f}x   (token-count bound {bound:.2f}x)")


if __name__ == "__main__":
  os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
  main()
