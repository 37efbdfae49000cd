"""SFT loss and the shared Trainer: masking, learning, mesh independence, NaN guard,
held-out evaluation and keep-best."""
import pathlib

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import make_mesh
from rlaif_jax.config import base_config
from rlaif_jax.learners.sft import response_nll, sft_loss
from rlaif_jax.learners.trainer import NonFiniteLossError, Trainer
from rlaif_jax.mesh import global_batch
from rlaif_jax.models import ModelConfig, Transformer, init_sharded

CFG = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                  head_dim=8, d_ff=64)


def make_batch(seed=0, b=8, t=12, prompt=5):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(prompt + 2, t + 1, b)
  mask = np.arange(t)[None] < lengths[:, None]
  tokens = np.where(mask, rng.integers(3, 64, (b, t)), 0).astype(np.int32)
  response = mask & (np.arange(t)[None] >= prompt)
  return {"tokens": tokens, "mask": mask, "response_mask": response}


def fixed_length_batch(seed):
  """Every row has the same number of response tokens (so per-micro-batch means
  average to the full-batch mean)."""
  b = make_batch(seed)
  b["mask"][:] = True
  b["response_mask"] = np.broadcast_to(np.arange(12)[None] >= 5, b["mask"].shape).copy()
  return b


def reference_nll(logits, batch):
  """Cross-entropy over response positions, computed independently in numpy."""
  lp = logits - logits.max(-1, keepdims=True)
  lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
  total, n = 0.0, 0
  for b in range(batch["tokens"].shape[0]):
    for t in range(1, batch["tokens"].shape[1]):
      if batch["response_mask"][b, t] and batch["mask"][b, t]:
        total -= lp[b, t - 1, batch["tokens"][b, t]]
        n += 1
  return total / n


def test_loss_is_response_only_cross_entropy(mesh):
  model = init_sharded(lambda r: Transformer(CFG, r), mesh)
  batch = make_batch()
  with jax.set_mesh(mesh):
    loss, aux = nnx.jit(sft_loss)(model, batch)
    logits, _ = nnx.jit(lambda m, t, k: m(t, k))(model, batch["tokens"], batch["mask"])
  logits = np.asarray(logits, np.float64)
  np.testing.assert_allclose(float(loss), reference_nll(logits, batch), rtol=1e-5)
  assert int(aux["weight"]) == int((batch["response_mask"][:, 1:] & batch["mask"][:, 1:]).sum())
  # counting the prompt as response would give a different number
  assert abs(float(loss) - reference_nll(logits, dict(batch, response_mask=batch["mask"]))) > 1e-4


def test_prompt_targets_carry_no_loss(mesh):
  """With the logits held fixed, changing only the targets at prompt positions
  leaves the loss unchanged; changing one response target changes it."""
  model = init_sharded(lambda r: Transformer(CFG, r), mesh)
  batch = make_batch(seed=3)
  with jax.set_mesh(mesh):
    logits, _ = nnx.jit(lambda m, t, k: m(t, k))(model, batch["tokens"], batch["mask"])

  def loss_of(b):
    nll, w = response_nll(logits[:, :-1], b)
    return float((nll * w).sum() / w.sum())
  prompt_edit = dict(batch, tokens=batch["tokens"].copy())
  prompt_edit["tokens"][:, 1:5] = (prompt_edit["tokens"][:, 1:5] + 7) % 61 + 3
  response_edit = dict(batch, tokens=batch["tokens"].copy())
  response_edit["tokens"][0, 6] = (response_edit["tokens"][0, 6] + 7) % 61 + 3
  assert loss_of(prompt_edit) == loss_of(batch)
  assert loss_of(response_edit) != loss_of(batch)


class ListIterator:
  def __init__(self, batches):
    self.batches, self.i = batches, 0

  def __next__(self):
    b = self.batches[self.i % len(self.batches)]
    self.i += 1
    return b

  def get_state(self):
    return {"i": self.i}

  def set_state(self, s):
    self.i = s["i"]


def train_config(steps, **kw):
  c = base_config()
  c.train.update({**dict(batch_size=8, steps=steps, lr=3e-3, warmup_steps=0, log_every=5,
                          checkpoint_every=5, schedule="constant"), **kw})
  return c


def test_loss_falls_on_memorisable_set(tmp_path, mesh):
  model = init_sharded(lambda r: Transformer(CFG, r), mesh)
  batch = make_batch()
  trainer = Trainer(train_config(60, checkpoint_every=1000), str(tmp_path), mesh, model, sft_loss)
  with jax.set_mesh(mesh):
    first = float(sft_loss(trainer.model(), global_batch(batch, mesh))[0])
  last = trainer.fit(ListIterator([batch]))
  assert last["loss"] < 0.3 * first, (first, last["loss"])


def test_same_loss_on_every_mesh(tmp_path):
  """Three steps (so optimizer updates are compared too) on data-parallel, FSDP and
  FSDP x tensor meshes; the last also accumulates gradients over 2 micro-batches,
  whose mean loss equals the full batch's when micro-batches hold equal token counts."""
  losses = {}
  for shape, accum in [((8, 1, 1), 1), ((2, 4, 1), 1), ((2, 2, 2), 1), ((2, 2, 2), 2)]:
    mesh = make_mesh(*shape)
    model = init_sharded(lambda r: Transformer(CFG, r), mesh, seed=0)
    tr = Trainer(train_config(3, grad_accum=accum), str(tmp_path / f"{shape}{accum}"), mesh,
                 model, sft_loss)
    losses[shape, accum] = [float(tr.step(fixed_length_batch(seed=s))["loss"]) for s in range(3)]
  ref = losses[(8, 1, 1), 1]
  for key, got in losses.items():
    np.testing.assert_allclose(got, ref, atol=1e-5, err_msg=str(key))


def test_nan_stops_run_and_last_good_checkpoint_restores(tmp_path, mesh):
  def poisoned(model, batch, rng):
    loss, aux = sft_loss(model, batch, rng)
    # batch marker: a first token of 63 injects a NaN into the loss
    return loss + jax.numpy.where(batch["tokens"][0, 0] == 63, jax.numpy.nan, 0.0), aux
  good = make_batch(seed=1)
  good["tokens"][0, 0] = 5
  bad = dict(good, tokens=good["tokens"].copy())
  bad["tokens"][0, 0] = 63
  batches = [good] * 7 + [bad] + [good] * 10
  model = init_sharded(lambda r: Transformer(CFG, r), mesh)
  trainer = Trainer(train_config(15), str(tmp_path), mesh, model, poisoned)
  with pytest.raises(NonFiniteLossError, match=r"at step 8; stopped. The last good checkpoint is step 5"):
    trainer.fit(ListIterator(batches))
  # Params after the NaN step are exactly those of step 7 (the update was refused);
  # a fresh trainer restores step 5, and training from there is finite.
  fresh = Trainer(train_config(15), str(tmp_path), mesh,
                  init_sharded(lambda r: Transformer(CFG, r), mesh, seed=9), sft_loss)
  it = ListIterator(batches)
  assert fresh.restore(it) == 5 and it.i == 5
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(fresh.state["params"]))


# ------------------------------------------------------------ evaluation, keep-best

TOY = f"{pathlib.Path(__file__).resolve().parents[1] / 'configs' / 'sft.py'}:toy"

def numpy_logits(model, mesh, batch):
  with jax.set_mesh(mesh):
    logits, _ = nnx.jit(lambda m, t, k: m(t, k))(model, batch["tokens"], batch["mask"])
  return np.asarray(logits, np.float64)


def test_evaluate_is_the_token_mean_over_all_batches(tmp_path, mesh):
  """Two held-out batches with very different response token counts: eval loss
  is Σ NLL / Σ tokens over both (numpy), not the mean of the batches' means."""
  from rlaif_jax.learners.sft import eval_metrics, with_perplexity
  model = init_sharded(lambda r: Transformer(CFG, r), mesh)
  trainer = Trainer(train_config(10), str(tmp_path), mesh, model, sft_loss)
  long, short = make_batch(seed=1, prompt=2), make_batch(seed=2, prompt=9)
  for _ in range(10):           # `long` partly memorised: the batches' losses differ
    trainer.step(long)
  model = trainer.model()
  ev = with_perplexity(trainer.evaluate([global_batch(b, mesh) for b in (long, short)],
                                        eval_metrics))
  both = {k: np.concatenate([long[k], short[k]]) for k in long}
  want = reference_nll(np.concatenate([numpy_logits(model, mesh, long),
                                       numpy_logits(model, mesh, short)]), both)
  np.testing.assert_allclose(ev["loss"], want, rtol=1e-5)
  np.testing.assert_allclose(ev["perplexity"], np.exp(want), rtol=1e-5)
  mean_of_means = (reference_nll(numpy_logits(model, mesh, long), long) +
                   reference_nll(numpy_logits(model, mesh, short), short)) / 2
  assert abs(mean_of_means - want) > 0.05 * want      # the check has teeth


def test_select_best_keeps_the_lowest_eval_loss_model(tmp_path, mesh, monkeypatch):
  """The SFT stage with train.select=best: held-out batch A; 8 steps on A, then
  8 on B (A's prompts, responses of other tokens), so the held-out loss falls, then rises.
  model/ is the model of the lowest logged eval/loss: reloaded, a numpy NLL of
  its logits on A reproduces that loss (not the last model's). The best
  validation is in the checkpoint (a resumed run ranks against it)."""
  from rlaif_jax.config import load_config_file
  from rlaif_jax.learners import sft
  from rlaif_jax.learners.metrics import read_jsonl
  from rlaif_jax.models import store
  a = make_batch(seed=4)
  # B's responses use other tokens than A's: learning them unlearns A's
  b = dict(a, tokens=np.where(a["response_mask"], a["tokens"] + 64, a["tokens"]))
  c = load_config_file(TOY)
  c.train.update(batch_size=8, steps=16, lr=1e-2, warmup_steps=0, schedule="constant",
                 log_every=2, eval_every=2, checkpoint_every=1000, select="best")
  sft.validate(c, mesh)
  monkeypatch.setattr(sft, "prepare_data", lambda config, workdir: None)
  monkeypatch.setattr(sft, "data_iterator", lambda *args: ListIterator([a] * 8 + [b] * 8))
  monkeypatch.setattr(sft, "eval_batches", lambda *args: [global_batch(a, mesh)])
  result = sft.run(c, str(tmp_path), mesh)

  evals = {r["step"]: r["eval/loss"] for r in read_jsonl(tmp_path / "metrics" / "sft.jsonl")
           if "eval/loss" in r}
  assert sorted(evals) == list(range(2, 17, 2))
  best = min(evals, key=evals.get)
  assert 2 < best < 16 and evals[16] > evals[best] + 0.5, evals    # it fell, then rose
  assert result["best_step"] == best and result["best_eval/loss"] == evals[best]
  assert result["eval/loss"] == evals[16]                          # the last evaluation
  kept = store.load(str(tmp_path / "model"), mesh)
  np.testing.assert_allclose(reference_nll(numpy_logits(kept, mesh, a), a), evals[best],
                             rtol=1e-5)
  fresh = Trainer(c, str(tmp_path), mesh, kept, sft_loss, name="sft")
  assert fresh.restore() == 16 and fresh.best == {"step": best, "metric": "loss",
                                                  "value": evals[best]}


@pytest.mark.parametrize("select,metric,match", [
    ("nope", "", "train.select='nope': use last or best"),
    ("best", "accuracy", "train.select_metric='accuracy': this stage validates loss, perplexity"),
])
def test_select_is_validated(select, metric, match, mesh):
  from rlaif_jax.config import ConfigError, load_config_file
  from rlaif_jax.learners import sft
  c = load_config_file(TOY)
  c.train.update(select=select, select_metric=metric)
  with pytest.raises(ConfigError, match=match) as e:
    sft.validate(c, mesh)
  assert "\n" not in str(e.value)
  c.train.update(select="best", select_metric="perplexity")
  sft.validate(c, mesh)


@pytest.mark.parametrize("select,warned", [("last", False), ("best", True)])
def test_an_evaluation_without_the_ranked_metric_warns_only_under_select_best(
    select, warned, tmp_path, mesh, caplog):
  """An RM's held-out pairs without labels give loss_labels = nan: under
  select=last nothing is kept by it (no warning); under select=best the user is
  told that nothing could be ranked."""
  model = init_sharded(lambda r: Transformer(CFG, r), mesh)
  c = train_config(4, eval_every=2, checkpoint_every=1000, select=select)
  trainer = Trainer(c, str(tmp_path), mesh, model, sft_loss)
  with caplog.at_level("WARNING"):
    result = trainer.fit(ListIterator([make_batch()]),
                         lambda: {"loss_labels": float("nan"), "loss": 1.0},
                         best_by=("loss_labels", "min"))
  warnings = [r for r in caplog.records if "no finite eval/loss_labels" in r.getMessage()]
  assert bool(warnings) is warned, [r.getMessage() for r in caplog.records]
  assert "best_step" not in result


@pytest.mark.parametrize("chunk", [1, 4, 5, 11, 64])
def test_chunked_logits_give_the_same_loss_and_gradients(chunk, mesh):
  """model.logits_chunk: the LM head and cross-entropy over `chunk` positions at
  a time (11 predicting positions: 4 and 5 leave a padded last piece, 11 and 64
  are one piece) equal the whole (B, T-1, V) computation and the numpy
  reference, and so do the gradients (float32), padding rows included."""
  model = init_sharded(lambda r: Transformer(CFG, r), mesh)
  batch = make_batch(seed=5)
  graphdef, params = nnx.split(model)
  grad = lambda c: jax.jit(jax.value_and_grad(
      lambda p: sft_loss(nnx.merge(graphdef, p), batch, chunk=c)[0]))(params)
  with jax.set_mesh(mesh):
    (whole, g0), (chunked, g1) = grad(0), grad(chunk)
    logits, _ = nnx.jit(lambda m, t, k: m(t, k))(model, batch["tokens"], batch["mask"])
  np.testing.assert_allclose(float(chunked), reference_nll(np.asarray(logits, np.float64), batch),
                             rtol=1e-5)
  np.testing.assert_allclose(float(chunked), float(whole), rtol=1e-6)
  for (path, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(g0),
                               jax.tree_util.tree_leaves_with_path(g1)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6, rtol=1e-5,
                               err_msg=str(path))


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_negative_logits_chunk_is_refused(stage, mesh):
  import importlib
  from rlaif_jax.errors import ConfigError
  from rlaif_jax.config import load_config_file
  c = load_config_file(TOY.replace("sft.py", f"{stage}.py"))
  c.model.logits_chunk = -1
  with pytest.raises(ConfigError, match="model.logits_chunk=-1"):
    importlib.import_module(f"rlaif_jax.learners.{stage}").validate(c, mesh)
