"""`--aot`: the stage's own programs compiled by the TPU compiler (libtpu) for a
Cloud TPU topology that is not attached. Each topology runs in its own
subprocess (libtpu reads the accelerator type from the environment once)."""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("libtpu")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 1024**3

# Runs in a subprocess: aot.run on a small SFT config under several settings,
# and the same Trainer step compiled directly, for its memory_analysis().
SCRIPT = r'''
import json, sys
import jax
from rlaif_jax import aot
from rlaif_jax.config import load_config_file
topology = sys.argv[1]

def config(**over):
  c = load_config_file("configs/sft.py:toy")
  # activations (16 rows x 256 tokens per chip) outweigh the 0.6 M parameters
  c.model.arch.update(d_model=128, n_layers=3, d_ff=256, vocab_size=512, max_seq_len=256)
  c.data.update(max_prompt_len=200, max_response_len=56)
  c.model.scan_layers = True
  c.hardware.update(topology=topology, memory_gib_per_chip=16.0)
  c.train.update(batch_size=64, grad_accum=1)
  for k, v in over.items():
    node, *path = k.split(".")
    sec = c[node]
    for p in path[:-1]:
      sec = sec[p]
    sec[path[-1]] = v
  return c

VARIANTS = {"base": {}, "double": {"train.batch_size": 128}, "full": {"model.remat": "full"}}
out = {}
for name in sys.argv[2].split(","):
  out[name] = aot.run(config(**VARIANTS[name]))
# memory_analysis() of the step compiled here, independently of aot.run's report
c = config()
mesh = aot.topology_mesh(topology, c.mesh)
(low, _, _), = aot.train_programs(c, mesh).values()
ma = low.compile().memory_analysis()
out["direct"] = [ma.argument_size_in_bytes, ma.output_size_in_bytes, ma.alias_size_in_bytes,
                 ma.temp_size_in_bytes]
print("RESULT " + json.dumps(out))
'''


def run_py(args, timeout=900):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  env.pop("XLA_FLAGS", None)          # the TPU compiler takes no host-device flags
  return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)


# v4 (8 megacore chips): the memory comparisons too; v5e (4 chips): the report only
VARIANTS = {"v5e:2x2": "base", "v4:2x2x2": "base,double,full"}
CHIPS = {"v5e:2x2": 4, "v4:2x2x2": 8}


@pytest.fixture(scope="module", params=list(VARIANTS))
def small(request):
  p = run_py(["-c", SCRIPT, request.param, VARIANTS[request.param]])
  assert p.returncode == 0, p.stderr[-3000:]
  line = next(l for l in p.stdout.splitlines() if l.startswith("RESULT "))
  return request.param, json.loads(line[len("RESULT "):])


def test_small_model_compiles_and_reports_memory_analysis(small):
  topology, out = small
  base = out["base"]
  assert base["topology"] == topology and base["stage"] == "sft" and base["fits"] is True
  prog = base["programs"]["sft_train_step"]
  mem = prog["memory_bytes"]
  arg, outp, alias, temp = out["direct"]
  assert [mem["arguments"], mem["outputs"], mem["aliases"], mem["temporaries"]] == out["direct"]
  assert mem["total"] == arg + outp - alias + temp
  assert prog["gib_per_device"] == round(mem["total"] / GIB, 3)
  assert base["peak_gib_per_device"] == prog["gib_per_device"]
  # the state is donated: the new state reuses the old one's buffers
  assert alias > 0 and alias <= min(arg, outp)
  # 4 chips, 3 layers, batch 64 x 256 tokens: matmul FLOPs per device near
  # 6·N·tokens / chips plus attention's 12·L·T²·d per row
  n_params = 3 * (4 * 128 * 64 + 3 * 128 * 256) + 2 * 512 * 128
  approx = (6 * n_params * 256 + 12 * 3 * 256**2 * 64) * 64 / CHIPS[topology]
  assert 0.7 * approx < prog["flops"] < 1.6 * approx, (prog["flops"], approx)
  assert prog["compile_s"] > 0 and "all-reduce" in prog["collectives"]   # data-parallel grads


def test_more_rows_raise_and_remat_lowers_temporaries(small):
  topology, out = small
  if "full" not in out:
    pytest.skip(f"memory comparisons run on v4 only (this is {topology})")
  temp = {k: out[k]["programs"]["sft_train_step"]["memory_bytes"]["temporaries"]
          for k in ("base", "double", "full")}
  assert temp["double"] > temp["base"]
  assert temp["full"] < temp["base"]
  # the same math recomputed: remat's FLOPs count is higher; twice the rows, twice the FLOPs
  flops = {k: out[k]["programs"]["sft_train_step"]["flops"] for k in ("base", "double", "full")}
  assert flops["full"] > flops["base"]
  assert flops["double"] == pytest.approx(2 * flops["base"], rel=1e-6)


def test_gemma_2b_sft_compiles_for_its_topology_with_scan():
  """The whole Gemma-2B (18 scanned layers, 256k vocabulary, FSDP 8 on a v4-16)
  with a short batch: the full 128 x 1152 step compiles in minutes (README)."""
  p = run_py(["-m", "rlaif_jax.main", "--config=configs/sft.py:tldr", "--aot",
              "--config.train.batch_size=8", "--config.train.grad_accum=1",
              "--config.data.max_prompt_len=64", "--config.data.max_response_len=64"])
  assert p.returncode == 0, p.stderr[-3000:]
  summary = json.loads(p.stdout.strip().splitlines()[-1])
  assert summary["topology"] == "v4:2x2x2" and summary["fits"] is True
  assert 1 < summary["peak_gib_per_device"] < 32
  assert "--dry_run formula" in p.stdout and "compiler / formula" in p.stdout


def test_llama_3_8b_without_fsdp_on_v4_16_is_refused_naming_the_levers():
  p = run_py(["-m", "rlaif_jax.main", "--config=configs/sft.py:hh_helpful", "--aot",
              "--config.hardware.topology=v4:2x2x2", "--config.hardware.chips=8",
              "--config.mesh.fsdp=1", "--config.mesh.tensor=1", "--config.mesh.data=-1"])
  assert p.returncode != 0
  err = p.stderr.strip().splitlines()[-1]
  assert err.startswith("error: sft does not fit v4:2x2x2"), err
  for lever in ("model.remat", "train.grad_accum", "mesh.fsdp", "mesh.tensor"):
    assert lever in err, err


RL_SCRIPT = r'''
import json, sys
import jax
from rlaif_jax import aot
from rlaif_jax.config import load_config_file
mesh = None
out = {}
for name, over in {"grpo": dict(algorithm="grpo", group_size=4, minibatches=2, ppo_epochs=1),
                   "ppo_shared": dict(algorithm="ppo", shared_value_head=True, minibatches=4),
                   "reinforce": dict(algorithm="reinforce_baseline")}.items():
  c = load_config_file("configs/rl.py:toy")
  c.rl.update(over)
  c.train.batch_size = 16
  mesh = aot.topology_mesh("v5e:2x2", c.mesh)
  programs, _ = aot.rl_programs(c, mesh)
  rollout_rows = programs["rl_rollout"][1][2].shape[0]
  state = programs["rl_train_step"][1][0]
  batch = programs["rl_train_step"][1][1]
  out[name] = {"rollout_rows": rollout_rows, "train_rows": batch["tokens"].shape[0],
               "nets": sorted(state["params"])}
print("RESULT " + json.dumps(out))
'''


def test_rl_programs_follow_the_algorithm_table():
  """The RL programs --aot lowers are the algorithm's: grpo samples group_size
  responses per prompt and has no value network, the shared value head is a
  head (no second network), and minibatches split the rollout's rows."""
  p = run_py(["-c", RL_SCRIPT], timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  out = json.loads(next(l for l in p.stdout.splitlines() if l.startswith("RESULT "))[7:])
  assert out["grpo"] == {"rollout_rows": 64, "train_rows": 32, "nets": ["policy"]}
  assert out["ppo_shared"] == {"rollout_rows": 16, "train_rows": 4,
                               "nets": ["policy", "value_head"]}
  assert out["reinforce"] == {"rollout_rows": 16, "train_rows": 16, "nets": ["policy", "value"]}


def test_collectives_are_counted_by_kind_with_the_largest_array_each_moves():
  """The HLO reading behind the report, on lines written by hand: async -start
  forms count once (their -done does not), a tuple result's largest array is the
  one named, bytes follow the dtype, and the op's name comes from its metadata."""
  from rlaif_jax import aot
  hlo = "\n".join([
      '  %ag = (bf16[32000,256]{1,0}, bf16[256000,2048]{1,0}) all-gather-start(bf16[32000,256]'
      '{1,0} %p), dimensions={0}, metadata={op_name="jit(step)/embed"}',
      '  %agd = bf16[256000,2048]{1,0} all-gather-done((bf16[32000,256]{1,0}, bf16[256000,2048]'
      '{1,0}) %ag)',
      '  %ar = f32[256,16]{1,0} all-reduce(f32[256,16]{1,0} %g), to_apply=%add, '
      'metadata={op_name="jit(step)/transpose(jvp())/dot_general"}',
      '  %ar2 = (f32[]{:T(128)}, s32[7]{0}) all-reduce(f32[] %l, s32[7] %n), to_apply=%add',
      '  %cp = u8[3,5]{1,0} collective-permute(u8[3,5]{1,0} %x), source_target_pairs={{0,1}}',
      '  %add.1 = f32[4]{0} add(f32[4]{0} %a, f32[4]{0} %b)',
  ])
  got = aot.collectives(hlo)
  assert set(got) == {"all-gather", "all-reduce", "collective-permute"}
  ag, ar, cp = got["all-gather"], got["all-reduce"], got["collective-permute"]
  assert ag["count"] == 1 and ag["largest"] == "bf16[256000,2048]"
  assert ag["largest_bytes"] == 256000 * 2048 * 2 and ag["op"] == "jit(step)/embed"
  assert ar["count"] == 2 and ar["largest_bytes"] == 256 * 16 * 4
  assert ar["op"] == "jit(step)/transpose(jvp())/dot_general"
  assert cp == {"count": 1, "largest_bytes": 15, "largest": "u8[3,5]", "op": ""}


def test_an_all_reduce_fused_as_a_reduce_scatter_counts_as_one():
  """The TPU compiler's all-reduce-scatter fusion (lines as libtpu dumps them):
  its inner all-reduce is a reduce-scatter, named by the calling fusion's op;
  an all-reduce in any other computation stays one."""
  from rlaif_jax import aot
  hlo = "\n".join([
      "%all-reduce-scatter.14.clone.1 (input.30: f32[256000,2048]) -> f32[64064,2048] {",
      "  %input.30 = f32[256000,2048]{1,0:T(8,128)} parameter(0)",
      "  %all-reduce.241 = f32[256256,2048]{1,0:T(8,128)} all-reduce(%pad.249), channel_id=98,"
      " replica_groups={{0,1,2,3}}, to_apply=%add.29.clone",
      "}",
      "",
      "%region_0 (p: f32[8]) -> f32[8] {",
      "  %all-reduce.7 = f32[8]{0} all-reduce(%p), to_apply=%add",
      "}",
      "",
      "ENTRY %main.1 (x: f32[256000,2048]) -> f32[64064,2048] {",
      "  %fusion.778 = f32[64064,2048]{1,0:T(8,128)} fusion(%c), kind=kCustom, "
      "calls=%all-reduce-scatter.14.clone.1, metadata={op_name=\"jit(step)/transpose(jvp())"
      "/dot_general\" stack_frame_id=23}",
      "}",
  ])
  got = aot.collectives(hlo)
  assert got["reduce-scatter"] == {"count": 1, "largest_bytes": 256256 * 2048 * 4,
                                   "largest": "f32[256256,2048]",
                                   "op": "jit(step)/transpose(jvp())/dot_general"}
  assert got["all-reduce"]["count"] == 1 and got["all-reduce"]["largest"] == "f32[8]"


EVAL_SCRIPT = r'''
import json
from rlaif_jax import aot
from rlaif_jax.config import load_config_file
c = load_config_file("configs/eval.py:tldr")
small = dict(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=128,
             vocab_size=256, max_seq_len=512)
c.model.update(preset="")
c.model.arch.update(small)
c.eval.labeler.model.update(preset="")
c.eval.labeler.model.arch.update(small, n_layers=3)
c.eval.labeler.mesh.update(devices=2)        # the judge on a sub-mesh of 2 of the 4 chips
c.eval.update(batch_size=12, max_new_tokens=24)
c.data.update(max_prompt_len=100, max_response_len=24)
c.hardware.update(topology="v5e:2x2", chips=4, memory_gib_per_chip=16.0)
out = aot.run(c)
lowered, _ = aot.eval_programs(c, aot.topology_mesh("v5e:2x2", c.mesh))
gen = lowered["eval_generate"][1]
judge = lowered["eval_judge_step"][1]
out["gen_rows"] = list(gen[2].shape)
out["judge_devices"] = len(judge[0]["embed"].sharding.mesh.devices.flat)
print("RESULT " + json.dumps(out))
'''


def test_eval_compiles_generation_and_the_labeler_judge():
  """--aot on the eval stage: the policy's generation (eval.batch_size prompts,
  rounded up to the data-parallel size, at the prompt budget) and the judge's
  two-order scoring step on its own sub-mesh, with the report's JSON line."""
  p = run_py(["-c", EVAL_SCRIPT], timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  out = json.loads(next(l for l in p.stdout.splitlines() if l.startswith("RESULT "))[7:])
  assert out["stage"] == "eval" and out["fits"] is True
  assert set(out["programs"]) == {"eval_generate", "eval_judge_step"}
  assert out["gen_rows"] == [12, 100]          # 12 prompts on data x fsdp = 4: no padding
  assert out["judge_devices"] == 2
  assert all(p["flops"] > 0 for p in out["programs"].values())
