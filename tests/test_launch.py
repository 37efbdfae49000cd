"""Launching at scale: dry runs of the paper-scale configs, and the pod launcher's commands."""
import pathlib
import shlex
import subprocess

import pytest

from rlaif_jax import config as cfglib
from rlaif_jax import dryrun

ROOT = pathlib.Path(__file__).resolve().parents[1]
REAL = ([("sft.py", v) for v in ("tldr", "hh_helpful", "hh_harmless")] +
        [("rm.py", v) for v in ("tldr", "hh_helpful", "hh_harmless")] +
        [("dpo.py", "tldr"), ("rl.py", "tldr_distilled"), ("rl.py", "tldr_direct")] +
        [("label.py", v) for v in ("tldr_base", "tldr_detailed", "tldr_detailed_cot",
                                   "hh_helpful_cot", "hh_harmless_base")])
PUBLIC = {"gemma-2b": 2.506e9, "gemma-7b": 8.538e9, "llama-3-8b": 8.030e9}


@pytest.mark.parametrize("path,variant", REAL)
def test_paper_scale_configs_fit_their_hardware(path, variant, capsys):
  c = cfglib.load_config_file(f"{ROOT / 'configs' / path}:{variant}")
  assert c.hardware.chips >= 4 and c.hardware.memory_gib_per_chip > 0
  cfglib.validate(c, c.hardware.chips)
  est = dryrun.report(c, c.hardware.chips)
  assert est["fits"], est["bytes_per_device"]
  printed = capsys.readouterr().out
  # parameters named as the run lays them out: stacked layers (scan_layers) or one per layer
  section = c.labeler.model if c.stage == "label" else c.model
  q = "layers/attn/q " if section.get("scan_layers") else "layers/0/attn/q "
  assert "per device: total" in printed and q in printed
  # the parameter count is the public one for the preset architecture (a reward
  # model drops Llama's untied LM head, 128256 x 4096, and adds a d+1 head)
  n = next(iter(est["models"].values()))["params"]
  preset = c.labeler.model.preset if c.stage == "label" else c.model.preset
  public = PUBLIC[preset]
  if c.stage == "rm" and preset == "llama-3-8b":
    public -= 128256 * 4096
  assert n == pytest.approx(public, rel=1e-3)


def test_dry_run_memory_matches_hand_count_for_params():
  """Params/grads per device equal a hand count: every weight split over the
  mesh axes its rule names (Llama-3-8B, fsdp=8, tensor=2)."""
  c = cfglib.load_config_file(f"{ROOT / 'configs' / 'sft.py'}:hh_helpful")
  c.mesh.tensor = 2
  est = dryrun.estimate(c, 16)
  d, f, v, L = 4096, 14336, 128256, 32
  q, kv = 32 * 128, 8 * 128
  per_layer = (d * q + 2 * d * kv + q * d + 3 * d * f) / 16 + 2 * d     # norms replicated
  expected = 4 * (L * per_layer + 2 * v * d / 16 + d)
  assert est["bytes_per_device"]["params"] == pytest.approx(expected, rel=1e-9)
  assert est["bytes_per_device"]["grads"] == est["bytes_per_device"]["params"]


def test_tpu_pod_dry_run_prints_gcloud_commands_for_all_workers():
  def dry(*args):
    out = subprocess.run([str(ROOT / "launch" / "tpu_pod.sh"), "--name", "rlaif-pod", "--zone",
                          "us-central2-b", "--project", "my-proj", "--type", "v4-32", "--dry_run",
                          *args], capture_output=True, text=True, check=True)
    return [shlex.split(line) for line in out.stdout.strip().splitlines()]
  (create,) = dry("up")
  assert create[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"]
  assert {"rlaif-pod", "--zone=us-central2-b", "--project=my-proj", "--accelerator-type=v4-32"} <= set(create)
  cmds = dry("run", "--", "--config=configs/sft.py:tldr", "--workdir=gs://b/run 1",
             "--config.train.lr=1e-5")
  (ssh,) = cmds
  assert ssh[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"] and "--worker=all" in ssh
  remote = next(a for a in ssh if a.startswith("--command="))[len("--command="):]
  # what each worker's shell will run: the same command, arguments intact
  assert shlex.split(remote) == ["cd", "~/rlaif_jax", "&&", "RLAIF_JAX_DISTRIBUTED=1", "python3",
                                 "-m", "rlaif_jax.main", "--config=configs/sft.py:tldr",
                                 "--workdir=gs://b/run 1", "--config.train.lr=1e-5"]
  install = dry("install")
  assert install[1][4] == "scp" and "--worker=all" in install[1]
  assert "--worker=all" in install[2] and "pip install -q -e '.[tpu]'" in install[2][-1]
  (delete,) = dry("down")
  assert delete[4] == "delete" and "--quiet" in delete
  (stop,) = dry("stop")
  # the pattern must not match the remote shell that runs pkill (it would kill itself)
  remote = next(a for a in stop if a.startswith("--command="))[len("--command="):]
  assert remote == "pkill -TERM -f '[r]laif_jax.main' || true"


@pytest.mark.parametrize("capacity", ["--spot", "--preemptible"])
def test_tpu_pod_preemptible_run_resumes_in_a_loop(capacity):
  """--spot/--preemptible: `up` asks for that capacity, and `run` shows its resume
  loop: the stage, then (after a preemption) state check, recreate, reinstall and
  the very same stage command again."""
  base = [str(ROOT / "launch" / "tpu_pod.sh"), "--name", "p", "--zone", "z", capacity, "--dry_run"]
  out = lambda *a: subprocess.run([*base, *a], capture_output=True, text=True,
                                  check=True).stdout.strip().splitlines()
  (create,) = [shlex.split(l) for l in out("up")]
  assert create[4] == "create" and create[-1] == capacity
  lines = out("run", "--", "--config=configs/sft.py:tldr", "--workdir=gs://b/r")
  assert lines[0].startswith("#") and "auto-resume" in lines[0]
  cmds = [shlex.split(l) for l in lines if not l.startswith("#")]
  verbs = [c[4] for c in cmds if c[0] == "gcloud"]
  assert verbs == ["ssh", "describe", "delete", "create", "scp", "ssh", "ssh"]
  stage = [c for c in cmds if c[0] == "gcloud" and c[4] == "ssh"]
  assert stage[0] == stage[-1]                       # the rerun is the same command
  assert "--workdir=gs://b/r" in stage[0][-1] and "--format=value(state)" in cmds[1]
  assert [c for c in cmds if c[0] == "gcloud" and c[4] == "create"][0][-1] == capacity
  text = (ROOT / "launch" / "tpu_pod.sh").read_text()
  from rlaif_jax import preemption
  assert f"PREEMPTED={preemption.PREEMPTED_EXIT}" in text   # the loop knows the stage's status


def test_local_launcher_dry_run_lists_every_process(monkeypatch):
  def dry(**env):
    for k, v in env.items():
      monkeypatch.setenv(k, v) if v else monkeypatch.delenv(k, raising=False)
    return subprocess.run([str(ROOT / "launch" / "local.sh"), "-n", "3", "-d", "2", "--dry_run",
                           "--", "--config=configs/sft.py:toy", "--workdir=/tmp/w"],
                          capture_output=True, text=True, check=True).stdout.strip().splitlines()
  out = dry(PYTHON="/opt/my venv/bin/python")
  assert len(out) == 3
  for i, line in enumerate(out):
    argv = shlex.split(line)
    assert f"--process_id={i}" in argv and "--num_processes=3" in argv
    assert "XLA_FLAGS=--xla_force_host_platform_device_count=2" in argv
    assert argv[argv.index("-m") - 1] == "/opt/my venv/bin/python"   # the caller's interpreter
  argv = shlex.split(dry(PYTHON="")[0])
  assert argv[argv.index("-m") - 1] == "python3"                        # the fallback


def test_dry_run_counts_the_networks_and_rows_of_the_rl_algorithm():
  """grpo and rloo train no value network (and a shared value head is d floats,
  not a network): the dry run's parameters are the policy, reference and RM;
  their rollout holds group_size responses per prompt."""
  def est(**rl):
    c = cfglib.load_config_file(f"{ROOT / 'configs' / 'rl.py'}:tldr_distilled")
    c.rl.update(rl)
    return dryrun.estimate(c, 4)
  ppo, grpo = est(algorithm="ppo"), est(algorithm="grpo", group_size=4)
  shared = est(algorithm="ppo", shared_value_head=True)
  assert set(ppo["models"]) == {"policy", "value", "reference", "reward_model"}
  assert set(grpo["models"]) == set(shared["models"]) == {"policy", "reference", "reward_model"}
  value = ppo["models"]["value"]["params"]
  assert value > 2e9                                    # a Gemma-2B trunk
  b, g = ppo["bytes_per_device"], grpo["bytes_per_device"]
  assert b["params"] - g["params"] == pytest.approx(4 * value / 4, rel=0.01)   # fsdp over 4 chips
  assert g["kv_cache"] == 4 * b["kv_cache"]             # 4 responses to each prompt
