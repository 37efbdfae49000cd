"""gs:// for real: workdirs, a TFDS data_dir and model checkpoints in a bucket of
a GCS-compatible server on loopback (tests/gcs_server.py), through the real
clients (gcsfs, google-cloud-storage, tensorstore) in real subprocesses.

After each run no stray local directory exists (a plain `open("gs://b/x")`
makes a local "gs:" one) and every artifact is in the bucket; what is in the
bucket is checked against the same run on a local disk."""
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from gcs_server import GcsServer

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", NPROC="16",
           JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  server = GcsServer(str(tmp_path_factory.mktemp("gcs") / "root"))
  yield server
  server.stop()


@pytest.fixture
def gcs_env(gcs, monkeypatch):
  """This process reaches the server too (store.load, reading the bucket)."""
  for k, v in gcs.env.items():
    monkeypatch.setenv(k, v)
  return dict(ENV, **gcs.env)


def start(args, workdir, cwd, env, log):
  cwd.mkdir(parents=True, exist_ok=True)
  return subprocess.Popen([sys.executable, "-m", "rlaif_jax.main", *args, f"--workdir={workdir}"],
                          env=dict(env, PYTHONPATH=str(ROOT)), cwd=cwd, stdout=log,
                          stderr=subprocess.STDOUT, start_new_session=True)


def finish(proc, log_path, timeout=300):
  try:
    rc = proc.wait(timeout)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
  out = log_path.read_text(errors="replace")
  assert rc == 0, out[-4000:]
  return out


def wait_for_object(gcs, pattern, proc, log_path, timeout=240):
  deadline = time.monotonic() + timeout
  while True:
    names = [n for n in gcs.objects() if re.fullmatch(pattern, n)]
    if names:
      return names
    assert proc.poll() is None, log_path.read_text(errors="replace")[-4000:]
    assert time.monotonic() < deadline, f"no object {pattern} within {timeout} s"
    time.sleep(0.05)


def assert_no_stray_local_dirs(*dirs):
  for d in dirs:
    assert not (pathlib.Path(d) / "gs:").exists(), d
  return True


def tldr_raw(d, n=(48, 16, 8)):
  """A tiny TL;DR in the raw layout the TFDS builder prepares from (manual_dir)."""
  rng = np.random.default_rng(0)
  d.mkdir(parents=True, exist_ok=True)
  for split, k in zip(("train", "valid", "test"), n):
    rows = []
    for i in range(k):
      w = "".join(rng.choice(list("abcdef"), 5))
      rows.append({"id": f"{split}{i}", "subreddit": "tifu", "title": f"t{i}",
                   "post": f"my {w}", "summary": w[::-1]})
    (d / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  return d


def test_sft_on_gcs_killed_and_resumed_matches_a_local_run(tmp_path, gcs, gcs_env):
  """SFT with workdir and TFDS data_dir in the bucket: SIGKILLed after its first
  checkpoint and rerun, it ends with the same params (store.load from the
  bucket), HF export and metrics as an uninterrupted run on local disk; the
  bucket holds checkpoints, TensorBoard events, metrics, HF export and data."""
  steps = 16
  raw = tldr_raw(tmp_path / "raw")
  common = [f"--config={ROOT / 'configs' / 'sft.py'}:toy", f"--config.train.steps={steps}",
            "--config.train.checkpoint_every=4", "--config.train.log_every=4",
            "--config.train.batch_size=8", "--config.train.export_hf=True",
            "--config.data.source=tldr", f"--config.data.manual_dir={raw}",
            "--config.data.eval_split=valid", "--config.data.max_prompt_len=48",
            "--config.model.arch.max_seq_len=64", "--config.mesh.data=2",
            "--config.mesh.fsdp=2", "--config.mesh.tensor=2"]
  local, cwd = tmp_path / "local", tmp_path / "cwd"
  logs = {n: tmp_path / f"{n}.log" for n in ("local", "killed", "resumed")}
  files = {n: open(p, "wb") for n, p in logs.items()}
  on_gcs = [*common, "--config.data.data_dir=gs://bkt/tfds"]
  try:
    p_local = start([*common, f"--config.data.data_dir={tmp_path / 'tfds'}"], local, cwd,
                    gcs_env, files["local"])
    p = start(on_gcs, "gs://bkt/sft", cwd, gcs_env, files["killed"])
    # Orbax marks a finished step on GCS with commit_success.txt (no rename there)
    wait_for_object(gcs, r"sft/checkpoints/\d+/commit_success\.txt", p, logs["killed"])
    os.killpg(p.pid, signal.SIGKILL)
    p.wait(30)
    killed_at = gcs.objects(prefix="sft/checkpoints/")
    assert not gcs.objects(prefix="sft/model/"), "the run finished before it was killed"
    p = start(on_gcs, "gs://bkt/sft", cwd, gcs_env, files["resumed"])
    out = finish(p, logs["resumed"])
    assert re.search(r"sft: resumed from step [1-9]", out), (killed_at, out[-3000:])
    finish(p_local, logs["local"])
  finally:
    for f in files.values():
      f.close()

  assert_no_stray_local_dirs(cwd, tmp_path, ROOT)
  assert os.listdir(cwd) == []                       # nothing written where it ran
  names = set(gcs.objects(prefix="sft/"))
  for want in ("sft/config_sft.json", f"sft/checkpoints/{steps}/commit_success.txt",
               "sft/model/model_config.json", "sft/hf/config.json", "sft/hf/model.safetensors",
               "sft/hf/tokenizer.json", "sft/metrics/sft.jsonl"):
    assert want in names, (want, sorted(names))
  assert any(re.fullmatch(r"sft/metrics/sft/events\.out\.tfevents\..+", n) for n in names)
  assert "tfds/tldr/1.0.0/dataset_info.json" in gcs.objects(prefix="tfds/")

  from rlaif_jax import paths
  from rlaif_jax.mesh import make_mesh
  from rlaif_jax import config as C
  from rlaif_jax.models import store
  # the HF export and every logged loss are the local run's, byte for byte
  assert (paths.path("gs://bkt/sft/hf/model.safetensors").read_bytes() ==
          (local / "hf" / "model.safetensors").read_bytes())
  rows = lambda text: {r["step"]: r["loss"] for r in map(json.loads, text.splitlines())
                       if "loss" in r}
  in_bucket = rows(paths.read_text("gs://bkt/sft/metrics/sft.jsonl"))
  assert sorted(in_bucket) == list(range(4, steps + 1, 4))   # the killed run's rows were kept
  assert in_bucket == rows((local / "metrics" / "sft.jsonl").read_text())
  # store.load of the model in the bucket: the local run's params exactly
  mesh = make_mesh(C.base_config().mesh, jax.devices()[:1])
  a = jax.tree.leaves(store.load("gs://bkt/sft/model", mesh))
  b = jax.tree.leaves(store.load(str(local / "model"), mesh))
  assert len(a) == len(b) > 0
  for x, y in zip(a, b):
    np.testing.assert_array_equal(np.asarray(x[...]), np.asarray(y[...]))


def test_label_stage_on_gcs_killed_and_resumed_matches_a_local_run(tmp_path, gcs, gcs_env):
  """The label stage with its workdir in the bucket and a labeler checkpoint
  saved to the bucket by an SFT run: SIGKILLed after its first shard and rerun,
  its labels equal those of an uninterrupted run with a local workdir."""
  cwd = tmp_path / "cwd"
  logs = {n: tmp_path / f"{n}.log" for n in ("sft", "local", "killed", "resumed")}
  files = {n: open(p, "wb") for n, p in logs.items()}
  label = [f"--config={ROOT / 'configs' / 'label.py'}:toy", "--config.labeler.max_pairs=32",
           "--config.labeler.shard_size=8", "--config.labeler.model.random_init=False",
           "--config.labeler.model.checkpoint=gs://bkt/labeler/model"]
  try:
    sft = start([f"--config={ROOT / 'configs' / 'sft.py'}:toy", "--config.train.steps=2",
                 "--config.model.arch.max_seq_len=512"], "gs://bkt/labeler", cwd, gcs_env,
                files["sft"])
    finish(sft, logs["sft"])
    p_local = start(label, tmp_path / "local", cwd, gcs_env, files["local"])
    p = start(label, "gs://bkt/label", cwd, gcs_env, files["killed"])
    wait_for_object(gcs, r"label/labels/shard-00000\.jsonl", p, logs["killed"])
    os.killpg(p.pid, signal.SIGKILL)
    p.wait(30)
    assert "label/labels.jsonl" not in gcs.objects(prefix="label/"), "finished before the kill"
    p = start(label, "gs://bkt/label", cwd, gcs_env, files["resumed"])
    out = finish(p, logs["resumed"])
    assert re.search(r"label: 32 pairs in 4 shards, [123] to do", out), out[-3000:]
    finish(p_local, logs["local"])
  finally:
    for f in files.values():
      f.close()

  assert_no_stray_local_dirs(cwd, tmp_path, ROOT)
  assert os.listdir(cwd) == []
  names = set(gcs.objects(prefix="label/"))
  for want in ["label/labels.jsonl", "label/alignment.json", "label/labels/meta.json",
               "label/config_label.json"] + [f"label/labels/shard-0000{k}.jsonl" for k in range(4)]:
    assert want in names, (want, sorted(names))
  assert not [n for n in names if ".tmp" in n]
  from rlaif_jax import paths
  in_bucket = paths.read_jsonl("gs://bkt/label/labels.jsonl")
  assert len(in_bucket) == 32
  local_rows = paths.read_jsonl(tmp_path / "local" / "labels.jsonl")
  # ids of JSONL rows are "<file>:<line>": the same line of each run's own copy
  key = lambda rows: [(r["id"].rpartition("/")[2], {k: v for k, v in r.items() if k != "id"})
                      for r in rows]
  assert key(in_bucket) == key(local_rows)
  assert (paths.read_json("gs://bkt/label/alignment.json") ==
          paths.read_json(tmp_path / "local" / "alignment.json"))


def test_hugging_face_checkpoint_in_a_bucket_imports_and_exports(tmp_path, gcs, gcs_env, mesh):
  """`model.checkpoint=gs://…` naming a Hugging Face directory: config.json and
  the safetensors (single file, then a sharded index) are read from the bucket
  by ranged reads, and export writes a directory transformers loads. Reference:
  transformers' PyTorch model, saved locally and uploaded."""
  import torch
  import transformers
  from flax import nnx
  from rlaif_jax import paths
  from rlaif_jax.models import build, hf
  import ml_collections

  cwd = tmp_path / "cwd"
  cwd.mkdir()
  os.chdir(cwd)                              # a stray 'gs:' directory would land here
  torch.manual_seed(0)
  ref = transformers.LlamaForCausalLM(transformers.LlamaConfig(
      vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64)).eval()
  with torch.no_grad():
    for n, p in ref.named_parameters():
      if "norm" in n:
        p.add_(0.1 * torch.randn_like(p))
  ref.save_pretrained(tmp_path / "hf_local")
  paths.upload_dir(str(tmp_path / "hf_local"), "gs://bkt/hf_in")

  model_cfg = ml_collections.ConfigDict(dict(checkpoint="gs://bkt/hf_in", dtype="float32",
                                             scan_layers=False, remat="none"))
  ours = build.build(model_cfg, mesh)
  tokens = np.random.default_rng(0).integers(1, 96, size=(2, 10))
  with torch.no_grad():
    want = ref(input_ids=torch.tensor(tokens)).logits.numpy()
  with jax.set_mesh(mesh):
    got, _ = nnx.jit(lambda m, t, k: m(t, k))(ours, tokens, np.ones((2, 10), bool))
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-4)

  hf.export_hf(ours, "gs://bkt/hf_out", max_shard_bytes=8_000)   # forces a sharded index
  names = set(gcs.objects(prefix="hf_out/"))
  assert "hf_out/model.safetensors.index.json" in names and len(names) > 3, sorted(names)
  again, _ = hf.load_hf("gs://bkt/hf_out", mesh)
  for (p, a), (_, b) in zip(nnx.to_flat_state(nnx.state(ours)), nnx.to_flat_state(nnx.state(again))):
    np.testing.assert_array_equal(np.asarray(a[...]), np.asarray(b[...]), err_msg=str(p))
  assert os.listdir(cwd) == []
  assert_no_stray_local_dirs(cwd, tmp_path, ROOT)
