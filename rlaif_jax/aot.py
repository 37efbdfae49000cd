"""`--aot`: compile a stage's own jitted programs for a Cloud TPU topology, here.

With libtpu installed (the `aot` extra) the real TPU compiler compiles for a
topology that is not attached ("deviceless" ahead-of-time compilation):
`jax.experimental.topologies` describes the chips of e.g. `v4:2x2x2`, a mesh is
laid over those device descriptions, every input is a ShapeDtypeStruct that
carries its sharding (nothing is allocated), and the stage's programs are
lowered by the code that runs them – `Trainer.lower_step` for SFT / RM / DPO
and RL's train step, the labeler's scoring program for labeling, direct RLAIF
and the eval judge, the Sampler's `generate_program` for rollouts and eval
generation, `rl.score_rollout` and `rl_rewards.rm_scores` – then compiled.
Per program:

  compile_s        wall time of `.compile()` on this machine
  memory           `memory_analysis()` per device: arguments, outputs, aliases
                   (donated inputs reused as outputs), temporaries;
                   total = arguments + outputs − aliases + temporaries
  flops            `cost_analysis()["flops"]`, per device, of one call
  collectives      the optimised HLO's all-gather / reduce-scatter / all-reduce /
                   collective-permute / all-to-all instructions, counted by kind,
                   with the largest array each kind moves and its jax op

The stage's peak per chip is the largest, over its programs (they run one at a
time), of the program's total plus what stays resident on the chips without
being its input (RL: e.g. the optimizer state and the reward model while the
rollout runs). It is set against
`hardware.memory_gib_per_chip` and beside the `--dry_run` formula estimate
(their ratio checks the formulas). A config that does not fit is refused with
the levers that change it. The last line printed is one JSON object.

Roofline (per step, per chip): max(flops / peak bf16 FLOP/s, bytes accessed /
HBM bandwidth) with the chip's published figures (`CHIPS`): a lower bound on
step time, named by whichever term is larger.
"""
from __future__ import annotations

import glob
import inspect
import json
import math
import os
import re
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from rlaif_jax.config import ConfigError
from rlaif_jax.mesh import MESH_AXES, batch_sharding, resolve_mesh_shape

GIB = 1024**3
# chip -> (libtpu chip config, TPU_ACCELERATOR_TYPE prefix, accelerator units per chip,
#          peak bf16 FLOP/s, HBM bytes/s): Cloud TPU's published per-chip figures.
CHIPS = {
    "v4": ("megacore", "v4", 2, 275e12, 1228e9),
    "v5p": ("megacore", "v5p", 2, 459e12, 2765e9),
    "v5e": ("default", "v5litepod", 1, 197e12, 819e9),
}
COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "collective-permute", "all-to-all")
# an instruction line: "%x = <result type> all-gather-start(...), ..., metadata={op_name=...}"
_COLLECTIVE_RE = re.compile(r"=\s(.*?)\s(" + "|".join(COLLECTIVES) + r")(?:-start)?\(")
_ARRAY_RE = re.compile(r"\b(pred|[suf](?:8|16|32|64)|bf16)\[([\d,]*)\]")
_OP_NAME_RE = re.compile(r'op_name="([^"]*)"')
_COMPUTATION_RE = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$")
_CALLS_RE = re.compile(r"calls=%([\w.\-]+)")


def topology_devices(topology: str) -> list:
  """TPU device descriptions of `topology` ("v4:2x2x2", "v5e:2x2", "v5p:2x2x1"): one
  per chip (v4 / v5p as megacore chips). Needs libtpu; no TPU is attached."""
  gen, _, dims = topology.partition(":")
  if gen not in CHIPS or not re.fullmatch(r"\d+(x\d+){1,2}", dims):
    raise ConfigError(f"hardware.topology={topology!r}: expected <chip>:<AxB[xC]> with chip "
                      f"one of {sorted(CHIPS)}, e.g. v4:2x2x2")
  chip_config, accel, units, _, _ = CHIPS[gen]
  shape = [int(d) for d in dims.split("x")]
  chips = math.prod(shape)
  # libtpu reads these as if it ran on a TPU VM; without them it warns about each.
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", f"{accel}-{chips * units}")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  # compiling only: several processes (tests, parallel compiles) may load libtpu at once
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  try:
    from jax.experimental import topologies
  except ImportError as e:  # pragma: no cover
    raise ConfigError(f"--aot needs jax.experimental.topologies: {e}") from None
  host = tuple(min(d, 2) for d in shape) + (1,) * (3 - len(shape))
  try:
    topo = topologies.get_topology_desc(topology_name=f"{gen}:{dims}", platform="tpu",
                                        chip_config_name=chip_config,
                                        chips_per_host_bounds=host[:3], num_slices=1)
  except Exception as e:   # no libtpu, or a topology it does not know
    raise ConfigError(f"--aot: cannot describe TPU topology {topology!r} ({e}); "
                      "install the TPU compiler with pip install -e '.[aot]'") from None
  return list(topo.devices)


def topology_mesh(topology: str, mesh_cfg) -> Mesh:
  """The (data, fsdp, tensor) mesh of `mesh_cfg` over the topology's chips (its
  first `mesh_cfg.devices` when set: the labeler's sub-mesh)."""
  devices = topology_devices(topology)
  if mesh_cfg.get("devices"):
    devices = devices[:mesh_cfg.devices]
  shape = resolve_mesh_shape((mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor), len(devices))
  try:   # lay the mesh along the physical torus where the shape allows
    from jax.experimental import mesh_utils
    grid = mesh_utils.create_device_mesh(shape, devices)
  except Exception:
    grid = np.array(devices).reshape(shape)
  return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * 3)


# ------------------------------------------------------------------ inputs

def abstract_model(ctor, mesh):
  """The model with every parameter a ShapeDtypeStruct carrying its sharding."""
  from rlaif_jax.models.sharding import abstract_model as split_abstract, state_shardings
  graphdef, abstract = split_abstract(ctor)
  sh = nnx.to_pure_dict(state_shardings(abstract, mesh))
  params = jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s),
                        nnx.to_pure_dict(abstract), sh)
  return nnx.merge(graphdef, params)


def batch_spec(config, kind: str, rows: int, mesh) -> dict:
  """A global `kind` batch ("sft" | "pairs") as the data pipeline builds it (its
  own row encoder, shapes from data.max_prompt_len / max_response_len)."""
  from rlaif_jax.data.formats import plain_prompt
  from rlaif_jax.data.pipeline import TokenEncoder, encode_example, numeric
  from rlaif_jax.models.tokenizer import load_tokenizer
  enc = TokenEncoder(load_tokenizer("byte"), config.data.max_prompt_len,
                     config.data.max_response_len)
  ex = {"prompt": plain_prompt("p"), "response": "r", "response_a": "a", "response_b": "b",
        "id": "0"}
  row = numeric({k: v for k, v in encode_example(ex, kind, enc, False).items()
                 if not k.startswith("_")})
  return {k: jax.ShapeDtypeStruct((rows,) + np.shape(v), np.asarray(v).dtype,
                                  sharding=batch_sharding(mesh, 1 + np.ndim(v)))
          for k, v in row.items()}


def _model_cfg(config, section):
  """The architecture a model section names (as --dry_run reads it) with the
  section's layout (`scan_layers`, `remat`)."""
  from rlaif_jax.dryrun import model_config_for
  cfg = model_config_for(section, section.dtype)
  return cfg.replace(**{k: section[k] for k in ("scan_layers", "remat") if k in section})


# --------------------------------------------------------------- programs

def _step(trainer, batch):
  """(lowered step, its inputs, its jaxpr) of a Trainer."""
  inputs = (trainer.state, batch, trainer.frozen)
  with jax.set_mesh(trainer.mesh):
    jaxpr = jax.make_jaxpr(trainer._train_step)(*inputs)
  return trainer.lower_step(batch), inputs, jaxpr


def train_programs(config, mesh) -> dict:
  """{name: (lowered, abstract inputs)} of the SFT / RM / DPO train step (the
  stage's own Trainer and loss)."""
  from rlaif_jax.learners.trainer import Trainer
  from rlaif_jax.models.transformer import ScalarModel, Transformer
  cfg = _model_cfg(config, config.model)
  b = config.train.batch_size
  if config.stage == "sft":
    from rlaif_jax.learners import sft
    model = abstract_model(lambda r: Transformer(cfg, r), mesh)
    trainer = Trainer(config, None, mesh, model, sft.loss_fn(config), name="sft")
    return {"sft_train_step": _step(trainer, batch_spec(config, "sft", b, mesh))}
  if config.stage == "rm":
    from rlaif_jax.learners.reward import rm_loss
    model = abstract_model(lambda r: ScalarModel(cfg, r), mesh)
    trainer = Trainer(config, None, mesh, model, rm_loss, name="rm")
    return {"rm_train_step": _step(trainer, batch_spec(config, "pairs", b, mesh))}
  if config.stage == "dpo":
    from rlaif_jax.learners.dpo import make_loss_fn
    model = abstract_model(lambda r: Transformer(cfg, r), mesh)
    graphdef, params = nnx.split(model)
    loss = make_loss_fn(graphdef, config.dpo.beta, config.dpo.label_smoothing,
                        config.model.logits_chunk)
    trainer = Trainer(config, None, mesh, model, loss, name="dpo",
                      frozen=nnx.to_pure_dict(params))     # the reference: the initial policy
    return {"dpo_train_step": _step(trainer, batch_spec(config, "pairs", b, mesh))}
  raise ConfigError(f"--aot: stage {config.stage!r} is not covered yet "
                    "(covered: sft, rm, dpo)")


# The labeler's shared prefix (preamble, exemplars) in tokens: the paper's
# "detailed" summarization preamble is ~400 Gemma tokens; the bucket rounds up.
LABEL_PREFIX_TOKENS = 448
# What a context adds to the post (its "Text - ..." framing) and a tail to the
# response (the order's "Summary 1 - ...", the ending that asks for the choice).
LABEL_FRAMING_TOKENS = 64


def _labeler_step(lab, mesh, ctx_tokens: int, tail_tokens: int, g: int, n_query: int):
  """(lowered, inputs, jaxpr) of the labeler engine's own jitted `cached_scores` scoring
  program: `labeler.batch_size` rows after the shared prefix's cache, contexts
  of `ctx_tokens` and `g` tails of `tail_tokens` per row (bucketed as the engine
  buckets them), `n_query` query tokens."""
  from rlaif_jax.labeler import engine
  from rlaif_jax.mesh import data_parallel_size
  from rlaif_jax.models.transformer import Transformer, cache_shardings, init_cache
  cfg = _model_cfg(None, lab.model)
  graphdef, state = nnx.split(abstract_model(lambda r: Transformer(cfg, r), mesh))
  params = nnx.to_pure_dict(state)
  dp = data_parallel_size(mesh)
  b = -(-lab.batch_size // dp) * dp
  lp = engine.bucketed(LABEL_PREFIX_TOKENS, lab.bucket)
  c = engine.bucketed(ctx_tokens, lab.bucket)
  t = engine.bucketed(tail_tokens, lab.bucket) if g else 1
  prefix = _sds(jax.eval_shape(lambda: init_cache(cfg, 1, lp)),
                cache_shardings(cfg, mesh, 1, lp, batch_axis=None))
  rows = lambda n, w, dt: jax.ShapeDtypeStruct((n, w), dt, sharding=batch_sharding(mesh, 2))
  query = jax.ShapeDtypeStruct((n_query,), jnp.int32, sharding=NamedSharding(mesh, P()))
  args = (params, prefix, lp, rows(b, c, jnp.int32), rows(b, c, bool),
          rows(max(g, 1) * b, t, jnp.int32), rows(max(g, 1) * b, t, bool), query)
  # static arguments: graphdef, g (and, where the engine has it, want_logp=False:
  # the options' / scores' log-probs only, not every tail token's)
  static = (graphdef, g)
  if "want_logp" in inspect.signature(engine.cached_scores.__wrapped__).parameters:
    static += (False,)
  with jax.set_mesh(mesh):
    jaxpr = jax.make_jaxpr(engine.cached_scores.__wrapped__,
                           static_argnums=tuple(range(len(static))))(*static, *args)
    low = engine.cached_scores.lower(*static, *args)
  return low, (params, prefix) + args[3:], jaxpr


def label_programs(config, mesh) -> dict:
  """The labeler's two-order scoring step with its prefix cache, one batch of
  `labeler.batch_size` pairs at the widest buckets the config allows."""
  lab = config.labeler
  ctx = (lab.max_context_tokens or config.data.max_prompt_len) + LABEL_FRAMING_TOKENS
  tail = config.data.max_response_len + LABEL_FRAMING_TOKENS
  return {"label_score_step": _labeler_step(lab, mesh, ctx, tail, g=2, n_query=2)}


def _sds(tree, shardings):
  return jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                      tree, shardings)


def _copy(tree):
  """Distinct ShapeDtypeStructs for a second resident copy (e.g. the reference)."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _generate_step(cfg, graphdef, params, mesh, b: int, p: int, n_new: int, scfg):
  """(lowered, inputs, jaxpr, decode trips) of the Sampler's own jitted
  `generate_program` – prefill and the decode while-loop – for `b` rows of `p`
  prompt tokens and `n_new` new ones, its KV cache sharded as the Sampler's."""
  from rlaif_jax import sampling
  from rlaif_jax.models.transformer import cache_shardings, init_cache
  slots = p + n_new - 1
  cache = _sds(jax.eval_shape(lambda: init_cache(cfg, b, slots)),
               cache_shardings(cfg, mesh, b, slots))
  rows = lambda dt: jax.ShapeDtypeStruct((b, p), dt, sharding=batch_sharding(mesh, 2))
  key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=NamedSharding(mesh, P()))
  static = (graphdef, scfg, (), 1, 0)
  args = (params, cache, rows(jnp.int32), rows(bool), key)
  with jax.set_mesh(mesh):
    return (sampling.generate_program.lower(*static, *args), args,
            jax.make_jaxpr(sampling.generate_program.__wrapped__,
                           static_argnums=tuple(range(5)))(*static, *args),
            n_new - 1)


def eval_programs(config, mesh) -> tuple[dict, list]:
  """The eval stage's programs: a policy's generation (`eval.batch_size` prompts,
  the eval's temperature; every policy has the model section's shape) and, with
  the labeler as judge, its two-order scoring step. The stage loads the judge
  after the policies have answered, so nothing else is resident."""
  from rlaif_jax import sampling
  from rlaif_jax.mesh import data_parallel_size
  from rlaif_jax.models.transformer import Transformer
  e, d = config.eval, config.data
  cfg = _model_cfg(config, config.model)
  graphdef, state = nnx.split(abstract_model(lambda k: Transformer(cfg, k), mesh))
  dp = data_parallel_size(mesh)
  b = -(-e.batch_size // dp) * dp
  n_new = e.max_new_tokens or d.max_response_len
  scfg = sampling.SamplingConfig(max_new_tokens=n_new, temperature=e.temperature)
  out = {"eval_generate": _generate_step(cfg, graphdef, nnx.to_pure_dict(state), mesh, b,
                                         d.max_prompt_len, n_new, scfg)}
  if e.judge == "labeler":
    ctx = (e.labeler.max_context_tokens or d.max_prompt_len) + LABEL_FRAMING_TOKENS
    # on its own (sub-)mesh, eval.labeler.mesh, as the stage builds it
    lab_mesh = topology_mesh(config.hardware.topology, e.labeler.mesh)
    low, inputs, jaxpr = _labeler_step(e.labeler, lab_mesh, ctx, n_new + LABEL_FRAMING_TOKENS,
                                       g=2, n_query=2)
    out["eval_judge_step"] = (low, inputs, jaxpr)
  return out, []


def rl_programs(config, mesh) -> tuple[dict, list]:
  """The RL iteration's programs – rollout (prefill + decode loop, the sampler's
  own `generate_program`), the scoring pass (policy, value, reference: rl.score_rollout), the
  reward (the RM's `rm_scores`, or the direct labeler's scoring step) and the
  train step (the learner's Trainer) – and what stays resident between them."""
  from rlaif_jax import sampling
  from rlaif_jax.learners import rl, rl_rewards
  from rlaif_jax.learners.trainer import Trainer
  from rlaif_jax.models.transformer import ScalarModel, Transformer
  from rlaif_jax.learners.rl_algorithms import ALGORITHMS
  from rlaif_jax.mesh import logical_sharding
  r, d = config.rl, config.data
  alg = ALGORITHMS[r.algorithm]
  epochs, minibatches = alg.updates(r)
  cfg = _model_cfg(config, config.model)
  n_new = r.max_new_tokens or d.max_response_len
  policy = abstract_model(lambda k: Transformer(cfg, k), mesh)
  if not alg.value_model:                      # grpo, rloo: no value network or head
    model = rl.ActorCritic(policy, None, value_head=False)
  elif r.shared_value_head:                    # a value head on the policy's trunk
    model = rl.ActorCritic(policy, None)
    model.value_head = nnx.Param(
        jax.ShapeDtypeStruct((cfg.d_model,), jnp.float32,
                             sharding=logical_sharding(("embed",), mesh, (cfg.d_model,))),
        logical_axes=("embed",))
  else:
    model = rl.ActorCritic(policy, abstract_model(lambda k: ScalarModel(cfg, k), mesh))
  trainer = Trainer(config, None, mesh, model, rl.make_loss_fn(r, n_new), "rl",
                    total_steps=config.train.steps * epochs * minibatches)
  params = trainer.state["params"]
  ref_graphdef = nnx.graphdef(model.policy)
  reference = _copy(params["policy"])          # a copy of the initial policy
  # the rollout: alg.group_size(r) responses to each of train.batch_size prompts
  b, p = config.train.batch_size * alg.group_size(r), d.max_prompt_len
  rows = lambda w, dt: jax.ShapeDtypeStruct((b, w), dt, sharding=batch_sharding(mesh, 2))
  out = {}
  # rollout: the Sampler's program (prefill, then the decode while-loop)
  out["rl_rollout"] = _generate_step(cfg, ref_graphdef, params["policy"], mesh, b, p, n_new,
                                     sampling.SamplingConfig(
                                         max_new_tokens=n_new, temperature=r.temperature,
                                         top_k=r.top_k, top_p=r.top_p))
  with jax.set_mesh(mesh):
    # scoring pass: log π, V, entropy and log π_ref over prompt + response
    seq = (rows(p + n_new, jnp.int32), rows(p + n_new, bool))
    score_static = (trainer.graphdef, ref_graphdef, n_new, float(r.temperature))
    out["rl_score"] = (rl.score_rollout.lower(*score_static, params, reference, *seq),
                       (params, reference) + seq,
                       jax.make_jaxpr(rl.score_rollout.__wrapped__, static_argnums=(0, 1, 2, 3))(
                           *score_static, params, reference, *seq))
  residents = [trainer.state, reference]
  if r.reward == "model":
    rm_graphdef, rm_state = nnx.split(abstract_model(lambda k: ScalarModel(cfg, k), mesh))
    rm_params = nnx.to_pure_dict(rm_state)
    residents.append(rm_params)
    with jax.set_mesh(mesh):
      out["rl_reward_model"] = (
          rl_rewards.rm_scores.lower(rm_graphdef, rm_params, *seq), (rm_params,) + seq,
          jax.make_jaxpr(rl_rewards.rm_scores.__wrapped__, static_argnums=0)(
              rm_graphdef, rm_params, *seq))
  elif r.reward == "labeler":
    # direct RLAIF: the labeler reads post + response, scores its 1-10 options
    lab = r.labeler
    ctx = (lab.max_context_tokens or p) + n_new + LABEL_FRAMING_TOKENS
    low, inputs, jaxpr = _labeler_step(lab, mesh, ctx, 0, g=0, n_query=10)
    residents.append(inputs[:2])
    out["rl_direct_labeler"] = (low, inputs, jaxpr)
  train = {k: jax.ShapeDtypeStruct((b // minibatches,)
                                   + ((p + n_new,) if k in ("tokens", "mask") else
                                      () if k == "kl_coef" else (n_new,)),
                                   jnp.int32 if k == "tokens" else
                                   bool if k in ("mask", "response_mask") else jnp.float32)
           for k in rl.TRAIN_KEYS}
  train = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding(mesh, len(v.shape)))
           for k, v in train.items()}
  out["rl_train_step"] = _step(trainer, train)
  return out, residents


# ---------------------------------------------------------------- report

def jaxpr_flops(jaxpr, while_trips: int = 1) -> float:
  """Matmul FLOPs of a (closed) jaxpr, whole program (all devices): 2·M·N·K per
  dot_general, scan bodies times their length, cond the dearest branch, while
  bodies `while_trips` times (their trip count is data-dependent: the decode
  loop's most). XLA's cost analysis counts every loop body once, so it
  under-counts a scanned model L-fold."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (lc, _), _ = eqn.params["dimension_numbers"]
      k = math.prod(eqn.invars[0].aval.shape[d] for d in lc)
      total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * k
      continue
    subs = [v for v in eqn.params.values() if hasattr(v, "eqns") or hasattr(v, "jaxpr")]
    branches = eqn.params.get("branches")
    if branches:
      total += max(jaxpr_flops(b, while_trips) for b in branches)
    elif name == "while":
      total += jaxpr_flops(eqn.params["cond_jaxpr"], while_trips) + while_trips * jaxpr_flops(
          eqn.params["body_jaxpr"], while_trips)
    elif subs:
      inner = sum(jaxpr_flops(j, while_trips) for j in subs)
      total += inner * (eqn.params.get("length", 1) if name == "scan" else 1)
  return total


def state_bytes(tree) -> int:
  """Bytes one device holds of a pytree of sharded ShapeDtypeStructs / arrays."""
  total = 0
  for x in jax.tree.leaves(tree):
    shard = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
    dt = x.dtype
    if jax.dtypes.issubdtype(dt, jax.dtypes.prng_key):   # a typed key: its uint32 words
      shard, dt = tuple(shard) + jax.random.key_data(jax.random.key(0)).shape, jnp.uint32
    total += math.prod(shard) * jnp.dtype(dt).itemsize
  return total


def compile_with_hlo(lowered):
  """(compiled, compile seconds, optimised HLO text). The text is the compiler's
  own dump (xla_dump_to): `compiled.as_text()` re-parses the executable's HLO
  proto, which libtpu 0.0.52 refuses for the Gemma-2B programs on v5p ("async-update
  instruction should have 1 operands but sees 3") though they compile."""
  with tempfile.TemporaryDirectory() as d:
    t0 = time.perf_counter()
    compiled = lowered.compile({"xla_dump_to": d, "xla_dump_hlo_as_text": True})
    secs = time.perf_counter() - t0
    dumps = sorted(glob.glob(os.path.join(d, "*.after_optimizations.txt")))
    text = open(dumps[-1]).read() if dumps else compiled.as_text()
  return compiled, secs, text


def collectives(hlo: str) -> dict:
  """{kind: {"count", "largest_bytes", "largest", "op"}}: each collective kind's
  instructions in the optimised HLO, and the largest array one of them moves
  (bytes per device, its type and the jax op it came from) – a whole weight
  gathered where FSDP should gather it piece by piece shows here.

  The TPU compiler writes some reduce-scatters as an all-reduce inside a fusion
  computation named all-reduce-scatter* (each chip keeps its shard of the sum);
  those count as reduce-scatter, named by the op of the fusion that calls them."""
  lines = hlo.splitlines()
  caller_op = {}                       # fused computation -> op_name of its caller
  for line in lines:
    called, op = _CALLS_RE.search(line), _OP_NAME_RE.search(line)
    if called and op:
      caller_op.setdefault(called.group(1), op.group(1))
  out, computation = {}, ""
  for line in lines:
    head = _COMPUTATION_RE.match(line)
    if head:
      computation = head.group(1)
      continue
    m = _COLLECTIVE_RE.search(line)
    if not m:
      continue
    arrays = [(math.prod(int(n) for n in dims.split(",") if n) * _BYTES[dt], f"{dt}[{dims}]")
              for dt, dims in _ARRAY_RE.findall(m.group(1))]
    size, shape = max(arrays, default=(0, "?"))
    named = _OP_NAME_RE.search(line)
    op, kind = named.group(1) if named else "", m.group(2)
    if kind == "all-reduce" and computation.startswith("all-reduce-scatter"):
      kind, op = "reduce-scatter", op or caller_op.get(computation, "")
    k = out.setdefault(kind, {"count": 0, "largest_bytes": -1})
    k["count"] += 1
    if size > k["largest_bytes"]:
      k.update(largest_bytes=size, largest=shape, op=op)
  return out


_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
          "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}


def analyse(lowered, flops: float) -> dict:
  """Compiles; `flops` per device (from `jaxpr_flops`) goes beside XLA's own count."""
  compiled, secs, hlo = compile_with_hlo(lowered)
  ma = compiled.memory_analysis()
  mem = {"arguments": ma.argument_size_in_bytes, "outputs": ma.output_size_in_bytes,
         "aliases": ma.alias_size_in_bytes, "temporaries": ma.temp_size_in_bytes}
  mem["total"] = mem["arguments"] + mem["outputs"] - mem["aliases"] + mem["temporaries"]
  cost = compiled.cost_analysis() or {}
  if isinstance(cost, list):
    cost = cost[0] if cost else {}
  return {"compile_s": secs, "memory": mem, "flops": flops,
          "xla_flops": float(cost.get("flops", 0.0)),
          "bytes_accessed": float(cost.get("bytes accessed", 0.0)),
          "collectives": collectives(hlo)}


def _size(n: float) -> str:
  return f"{n / GIB:.2f} GiB" if n >= 0.1 * GIB else f"{n / 2**20:.1f} MiB"


def levers(config) -> str:
  m, t = config.mesh, config.train
  return (f"levers: model.remat (now {config.model.get('remat', 'none')}; full keeps least), "
          f"train.grad_accum (now {t.grad_accum}; more micro-batches, smaller each), "
          f"mesh.fsdp (now {m.fsdp}; shards params, grads and optimizer state), "
          f"mesh.tensor (now {m.tensor}; shards heads, MLP and vocabulary)")


def run(config) -> dict:
  """Compiles the stage's programs for `hardware.topology`; prints the report and
  returns the JSON summary. Raises ConfigError when the stage does not fit."""
  from rlaif_jax import dryrun
  hw = config.hardware
  if not hw.get("topology"):
    raise ConfigError("--aot needs hardware.topology (a Cloud TPU topology, e.g. "
                      "--config.hardware.topology=v4:2x2x2)")
  mesh = topology_mesh(hw.topology, config.labeler.mesh if config.stage == "label"
                       else config.mesh)
  gen = hw.topology.split(":")[0]
  _, _, _, peak_flops, hbm = CHIPS[gen]
  budget = hw.memory_gib_per_chip * GIB if hw.memory_gib_per_chip else None
  print(f"aot: stage {config.stage} for TPU {hw.topology} ({mesh.size} chips, mesh "
        + " x ".join(f"{k}={v}" for k, v in mesh.shape.items()) + ")"
        + (f", {hw.memory_gib_per_chip:g} GiB per chip" if budget else ""))
  # each program lowers under its own set_mesh
  residents = []
  if config.stage == "label":
    lowered = label_programs(config, mesh)
  elif config.stage == "rl":
    lowered, residents = rl_programs(config, mesh)
  elif config.stage == "eval":
    lowered, residents = eval_programs(config, mesh)
  else:
    lowered = train_programs(config, mesh)
  programs = {}
  for name, (low, inputs, jaxpr, *trips) in lowered.items():
    # what stays on the chips while this program runs without being its input
    # (RL: the other models and the optimizer state)
    taken = {id(x) for x in jax.tree.leaves(inputs)}
    idle = state_bytes([x for x in jax.tree.leaves(residents) if id(x) not in taken])
    args = state_bytes(inputs)
    if budget and args + idle > budget:   # refused before compiling: the inputs alone do not fit
      raise ConfigError(
          f"{config.stage} does not fit {hw.topology}: the inputs of {name} alone take "
          f"{(args + idle) / GIB:.1f} GiB per chip of {hw.memory_gib_per_chip:g}; "
          f"{levers(config)}")
    try:
      r = analyse(low, jaxpr_flops(jaxpr, *trips) / mesh.size)
    except jax.errors.JaxRuntimeError as e:
      # the TPU compiler itself refuses a program that cannot fit its HBM
      oom = re.search(r"Ran out of memory[^.]*\(([\d.]+G)\)[^(]*\(([\d.]+G)\)", str(e))
      if "RESOURCE_EXHAUSTED" not in str(e):
        raise
      need = f"{oom.group(1)} of temporaries, {oom.group(2)} available" if oom else str(e)[:200]
      raise ConfigError(f"{config.stage} does not fit {hw.topology}: the TPU compiler ran out "
                        f"of memory for {name} ({need}); {levers(config)}") from None
    r["memory"]["resident_elsewhere"] = idle
    r["peak"] = r["memory"]["total"] + idle
    programs[name] = r
    mem = r["memory"]
    bound = max(r["flops"] / peak_flops, r["bytes_accessed"] / hbm)
    which = "compute" if r["flops"] / peak_flops >= r["bytes_accessed"] / hbm else "memory"
    r["roofline_s"], r["roofline_bound"] = bound, which
    print(f"  {name}: compiled in {r['compile_s']:.1f} s")
    print("    per device: " + ", ".join(f"{k} {_size(v)}" for k, v in mem.items()))
    print(f"    {r['flops'] / 1e12:.3g} TFLOP per device (matmuls, loops unrolled; XLA's "
          f"count {r['xla_flops'] / 1e12:.3g}), {_size(r['bytes_accessed'])} accessed; "
          f"roofline >= {bound * 1e3:.3g} ms ({which}-bound)")
    print("    collectives: " + (", ".join(f"{k} x{v['count']}" for k, v in
                                           r["collectives"].items()) or "none"))
    for k, v in r["collectives"].items():
      print(f"      largest {k}: {v['largest']} ({_size(v['largest_bytes'])}) from "
            f"{v['op'][-90:] or '?'}")
  peak = max(r["peak"] for r in programs.values())
  est = dryrun.estimate(config, mesh.size)["total_bytes_per_device"]
  fits = None if budget is None else peak <= budget
  print(f"  stage peak per chip: {_size(peak)}"
        + ("" if budget is None else f" of {hw.memory_gib_per_chip:g} GiB: "
           + ("fits" if fits else "DOES NOT FIT"))
        + f"; --dry_run formula {_size(est)} (compiler / formula = {peak / est:.2f})")
  summary = {"stage": config.stage, "topology": hw.topology,
             "programs": {n: {"compile_s": round(r["compile_s"], 2),
                              "gib_per_device": round(r["peak"] / GIB, 3),
                              "memory_bytes": r["memory"],
                              "flops": r["flops"], "xla_flops": r["xla_flops"],
                              "roofline_s": r["roofline_s"],
                              "roofline_bound": r["roofline_bound"],
                              "collectives": {k: v["count"] for k, v in
                                              r["collectives"].items()}}
                          for n, r in programs.items()},
             "peak_gib_per_device": round(peak / GIB, 3),
             "formula_gib_per_device": round(est / GIB, 3), "fits": fits}
  print(json.dumps(summary))
  if fits is False:
    raise ConfigError(f"{config.stage} does not fit {hw.topology}: {peak / GIB:.1f} GiB per chip "
                      f"of {hw.memory_gib_per_chip:g}; {levers(config)}")
  return summary
