"""RL math on hand tensors: GAE and returns against naive loops, KL estimators,
the adaptive controller, PPO and value-clip losses, EOS handling, reward shaping."""
import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlaif_jax.learners import rl
from rlaif_jax.learners import rl_losses as L
from rlaif_jax.learners.rl_rewards import shape_scores
from rlaif_jax.models.config import ModelConfig
from rlaif_jax.models.transformer import Transformer


def _episode_arrays(seed=0, b=4, n=7):
  rng = np.random.default_rng(seed)
  lengths = np.array([7, 3, 1, 5])[:b]
  mask = np.arange(n)[None] < lengths[:, None]
  rewards = np.where(mask, rng.normal(size=(b, n)), 0.0).astype(np.float32)
  values = rng.normal(size=(b, n)).astype(np.float32)   # garbage after the end on purpose
  return rewards, values, mask, lengths


def naive_gae(rewards, values, lengths, gamma, lam):
  adv, ret = np.zeros_like(rewards), np.zeros_like(rewards)
  for b, n in enumerate(lengths):
    for t in range(n):
      a = 0.0
      for k in range(t, n):       # A_t = Σ (γλ)^{k−t} δ_k, V_n = 0
        v_next = values[b, k + 1] if k + 1 < n else 0.0
        delta = rewards[b, k] + gamma * v_next - values[b, k]
        a += (gamma * lam) ** (k - t) * delta
      adv[b, t], ret[b, t] = a, a + values[b, t]
  return adv, ret


@pytest.mark.parametrize("gamma,lam", [(0.9, 0.8), (1.0, 0.95), (0.99, 0.0)])
def test_gae_matches_naive_loop_with_masks(gamma, lam):
  rewards, values, mask, lengths = _episode_arrays()
  adv, ret = L.gae(rewards, values, mask, gamma, lam)
  want_adv, want_ret = naive_gae(rewards, values, lengths, gamma, lam)
  np.testing.assert_allclose(adv, want_adv, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ret, want_ret, rtol=1e-5, atol=1e-6)
  assert not np.any(np.asarray(adv)[~mask]) and not np.any(np.asarray(ret)[~mask])


def test_gae_hand_case():
  # One row, two tokens: r = (0, 1), V = (0.5, 0.25), γ = 0.5, λ = 0.5.
  # δ_1 = 1 − 0.25 = 0.75; δ_0 = 0 + 0.5·0.25 − 0.5 = −0.375
  # A_1 = 0.75; A_0 = −0.375 + 0.25·0.75 = −0.1875
  adv, ret = L.gae(jnp.array([[0.0, 1.0, 0.0]]), jnp.array([[0.5, 0.25, 9.0]]),
                   jnp.array([[True, True, False]]), 0.5, 0.5)
  np.testing.assert_allclose(adv, [[-0.1875, 0.75, 0.0]], atol=1e-7)
  np.testing.assert_allclose(ret, [[0.3125, 1.0, 0.0]], atol=1e-7)


def test_gae_with_gamma_lambda_one_is_return_minus_value():
  rewards, values, mask, _ = _episode_arrays(1)
  adv, _ = L.gae(rewards, values, mask, 1.0, 1.0)
  z = L.discounted_returns(rewards, mask, 1.0)
  np.testing.assert_allclose(adv, np.where(mask, z - values, 0.0), rtol=1e-5, atol=1e-5)


def test_reinforce_returns_are_final_reward_with_kl_folded_in():
  """γ = 1: Z_t = (1−β)·r − β·Σ_{s≥t} KL_s at every real token; A_t = Z_t − V_t."""
  b, n, beta = 3, 6, 0.05
  rng = np.random.default_rng(2)
  lengths = np.array([6, 2, 4])
  mask = np.arange(n)[None] < lengths[:, None]
  logp, ref = rng.normal(size=(2, b, n)).astype(np.float32)
  values = rng.normal(size=(b, n)).astype(np.float32)
  score = np.array([1.0, -2.0, 0.5], np.float32)
  kl, rewards, adv, ret = rl.advantages("reinforce_baseline", "k1", 1.0, 1.0, False, logp, ref,
                                        values, mask, score, np.float32(beta))
  for i in range(b):
    for t in range(n):
      if t < lengths[i]:
        want = (1 - beta) * score[i] - beta * np.sum((logp - ref)[i, t:lengths[i]])
        assert ret[i, t] == pytest.approx(want, rel=1e-5, abs=1e-5)
        assert adv[i, t] == pytest.approx(want - values[i, t], rel=1e-5, abs=1e-5)
      else:
        assert ret[i, t] == 0 and adv[i, t] == 0 and rewards[i, t] == 0 and kl[i, t] == 0


def test_reward_lands_on_last_real_token():
  mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)   # ended at t=2 | never ended
  kl = np.full((2, 5), 0.1, np.float32)
  r = np.asarray(L.token_rewards(jnp.array([2.0, 3.0]), kl, mask, 0.5, score_coef=1.0))
  np.testing.assert_allclose(r, [[-0.05, -0.05, 1.95, 0, 0], [-0.05] * 4 + [2.95]], atol=1e-6)


def test_kl_estimators_closed_forms():
  logp, ref = jnp.log(jnp.array([0.5, 0.25])), jnp.log(jnp.array([0.25, 0.5]))
  d = np.array([math.log(2), -math.log(2)])
  np.testing.assert_allclose(L.kl_estimate(logp, ref, "k1"), d, rtol=1e-6)
  np.testing.assert_allclose(L.kl_estimate(logp, ref, "k2"), d**2 / 2, rtol=1e-6)
  np.testing.assert_allclose(L.kl_estimate(logp, ref, "k3"), [0.5 - 1 + d[0], 2 - 1 + d[1]],
                             rtol=1e-6)
  # k1 and k3 are unbiased: their expectation under π is KL(π ‖ π_ref) exactly.
  pi, pr = np.array([0.6, 0.3, 0.1]), np.array([0.2, 0.5, 0.3])
  true_kl = np.sum(pi * np.log(pi / pr))
  for est in ("k1", "k3"):
    k = np.asarray(L.kl_estimate(jnp.log(pi), jnp.log(pr), est))
    assert np.sum(pi * k) == pytest.approx(true_kl, rel=1e-5)
  assert np.all(np.asarray(L.kl_estimate(jnp.log(pi), jnp.log(pr), "k3")) >= 0)


def test_adaptive_kl_controller_moves_beta_toward_target():
  assert L.adaptive_kl_coef(0.1, kl=9.0, target=6.0, horizon=100, n=10) == pytest.approx(
      0.1 * (1 + 0.2 * 0.1))      # above the target: β grows (error clipped at 0.2)
  assert L.adaptive_kl_coef(0.1, kl=5.4, target=6.0, horizon=100, n=10) == pytest.approx(
      0.1 * (1 - 0.1 * 0.1))      # below: β shrinks proportionally
  assert L.adaptive_kl_coef(0.1, kl=6.0, target=6.0, horizon=100, n=10) == pytest.approx(0.1)


def test_ppo_clipped_loss_hand_case():
  logp_old = jnp.zeros(5)
  ratio = jnp.array([1.5, 0.5, 1.1, 0.7, 40.0])
  adv = jnp.array([1.0, -1.0, 1.0, 1.0, 1.0])
  mask = jnp.array([True, True, True, True, False])     # the last token is past EOS
  loss, clip_frac = L.ppo_policy_loss(jnp.log(ratio), logp_old, adv, mask, 0.2)
  # per token max(−Aρ, −A·clip(ρ)): (−1.2 clipped, 0.8 clipped, −1.1, −0.7)
  assert float(loss) == pytest.approx((-1.2 + 0.8 - 1.1 - 0.7) / 4, rel=1e-6)
  assert float(clip_frac) == pytest.approx(0.5)
  grad = jax.grad(lambda lp: L.ppo_policy_loss(lp, logp_old, adv, mask, 0.2)[0])(jnp.log(ratio))
  np.testing.assert_allclose(grad, [0, 0, -1.1 / 4, -0.7 / 4, 0], rtol=1e-6, atol=1e-7)


def test_value_losses_hand_case():
  v, old, ret = jnp.array([0.5, -0.1, 7.0]), jnp.zeros(3), jnp.array([1.0, 0.3, 0.0])
  mask = jnp.array([True, True, False])
  # clipped values (0.2, −0.1): errors max(0.25, 0.64) and max(0.16, 0.16)
  assert float(L.clipped_value_loss(v, old, ret, mask, 0.2)) == pytest.approx(0.4, rel=1e-6)
  assert float(L.value_loss(v, ret, mask)) == pytest.approx((0.25 + 0.16) / 2, rel=1e-6)
  assert float(L.explained_variance(ret, ret, mask)) == pytest.approx(1.0)


def _shaping(**kw):
  d = dict(reward_norm="none", reward_clip=0.0, missing_eos_penalty=0.0)
  return types.SimpleNamespace(**{**d, **kw})


def test_missing_eos_penalty_clip_and_running_norm():
  raw, ended = np.array([3.0, -1.0, 0.5]), np.array([True, False, True])
  s, _ = shape_scores(raw, ended, _shaping(missing_eos_penalty=0.5, reward_clip=2.0), [0, 0, 0])
  np.testing.assert_allclose(s, [2.0, -1.5, 0.5])
  seen, stats = [], [0, 0.0, 0.0]
  for batch in (np.array([1.0, 2.0]), np.array([5.0, -3.0, 0.0])):
    seen.extend(batch)
    s, stats = shape_scores(batch, np.ones(len(batch), bool), _shaping(reward_norm="running"),
                            stats)
    np.testing.assert_allclose(s, (batch - np.mean(seen)) / np.std(seen), rtol=1e-5)


def _tiny_actor_critic():
  cfg = ModelConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=8,
                    d_ff=32)
  return rl.ActorCritic(Transformer(cfg, nnx.Rngs(0)), None)


def _loss_config(algorithm, kl_penalty="reward", kl_estimator="k1", temperature=0.7):
  return types.SimpleNamespace(algorithm=algorithm, clip_eps=0.2, value_clip=0.2, vf_coef=0.5,
                               entropy_coef=0.01, temperature=temperature, kl_penalty=kl_penalty,
                               kl_estimator=kl_estimator)


def _train_batch(p=4, n=5, seed=0):
  rng = np.random.default_rng(seed)
  resp = np.arange(n)[None] < np.array([[2], [5]])           # row 0 ended at its 2nd token
  return dict(tokens=rng.integers(3, 32, (2, p + n)).astype(np.int32),
              mask=np.concatenate([np.ones((2, p), bool), resp], 1), response_mask=resp,
              old_logp=rng.normal(size=(2, n)).astype(np.float32) - 3,
              old_values=rng.normal(size=(2, n)).astype(np.float32),
              advantages=rng.normal(size=(2, n)).astype(np.float32),
              returns=rng.normal(size=(2, n)).astype(np.float32),
              ref_logp=rng.normal(size=(2, n)).astype(np.float32) - 3,
              kl_coef=np.full(2, 0.1, np.float32))


@pytest.mark.parametrize("algorithm,kl_penalty,estimator", [
    ("reinforce_baseline", "reward", "k1"), ("ppo", "reward", "k1"), ("ppo", "loss", "k3"),
    ("reinforce_baseline", "loss", "k2")])
@pytest.mark.parametrize("shift", [100.0, -100.0, 1e4, -1e4])
def test_adversarial_padding_changes_nothing(algorithm, kl_penalty, estimator, shift):
  """Anything at positions after EOS – tokens, and the old and reference
  log-probs, values, advantages and returns shifted by ±100 or ±1e4 (exp of the
  log-ratio overflows float32: 0·inf would be NaN) – leaves the loss, its
  gradient and every metric finite and unchanged."""
  model = _tiny_actor_critic()
  p, n = 4, 5
  batch = _train_batch(p, n)
  other = {k: v.copy() for k, v in batch.items()}
  other["tokens"][0, p + 2:] = 7
  for k in ("old_logp", "ref_logp", "old_values", "advantages", "returns"):
    other[k][0, 2:] += shift
  loss_fn = rl.make_loss_fn(_loss_config(algorithm, kl_penalty, estimator), n)
  graphdef, params = nnx.split(model)

  def f(params, b):
    return loss_fn(nnx.merge(graphdef, params), b)
  vg = jax.jit(jax.value_and_grad(f, has_aux=True))
  ((l1, m1), g1), ((l2, m2), g2) = (vg(params, b) for b in (batch, other))
  assert np.isfinite(float(l1)) and float(l1) == pytest.approx(float(l2), rel=1e-6)
  assert set(m1) == set(m2) and ("kl_loss" in m1) == (kl_penalty == "loss")
  for k in m1:
    assert np.isfinite(float(m2[k])) and float(m2[k]) == pytest.approx(float(m1[k]), rel=1e-5,
                                                                         abs=1e-7), k
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    assert np.all(np.isfinite(np.asarray(b)))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  # the rollout side: KL, rewards, advantages, returns from shifted log-probs and values
  args = [np.float32(v) for v in (batch["old_logp"], batch["ref_logp"], batch["old_values"])]
  shifted = [np.float32(v) for v in (other["old_logp"], other["ref_logp"], other["old_values"])]
  score, m = np.array([0.5, -1.0], np.float32), batch["response_mask"]
  for est in ("k1", "k2", "k3"):
    outs = [rl.advantages(algorithm, est, 1.0, 0.95, algorithm == "ppo", *a, m, score,
                          np.float32(0.1)) for a in (args, shifted)]
    for x, y in zip(*outs):
      assert np.all(np.isfinite(np.asarray(y)))
      np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_masked_functions_select_rather_than_multiply():
  x = jnp.array([1.0, 3.0, jnp.inf, jnp.nan])
  mask = jnp.array([True, True, False, False])
  assert float(L.masked_mean(x, mask)) == 2.0
  assert float(L.masked_var(x, mask)) == 1.0
  np.testing.assert_allclose(L.whiten(x, mask), [-1.0, 1.0, 0, 0], rtol=1e-6)
  g = jax.grad(lambda lp: L.ppo_policy_loss(lp, jnp.array([0.0, 0, -1e4, -100]),
                                            jnp.ones(4), mask, 0.2)[0])(jnp.zeros(4))
  np.testing.assert_allclose(g, [-0.5, -0.5, 0, 0])


# ------------------------------------------------------------ numpy references

def np_kl(logp, ref, est):
  d = logp.astype(np.float64) - ref
  return {"k1": d, "k2": d * d / 2, "k3": np.exp(-d) - 1 + d}[est]


def np_whiten(x, mask):
  v = x[mask].astype(np.float64)
  return np.where(mask, (x - v.mean()) / np.sqrt(v.var() + 1e-8), 0.0)


def _rollout_arrays(seed=3, b=4, n=7):
  """Log-probs, values and rewards with junk (large, varied) after each end."""
  rng = np.random.default_rng(seed)
  lengths = np.array([7, 3, 1, 5])[:b]
  mask = np.arange(n)[None] < lengths[:, None]
  junk = lambda x: np.where(mask, x, rng.normal(size=x.shape) * 50).astype(np.float32)
  logp = junk(-rng.uniform(0.1, 3, (b, n)))
  ref = junk(-rng.uniform(0.1, 3, (b, n)))
  values = junk(rng.normal(size=(b, n)))
  return logp, ref, values, mask, lengths


def test_gae_ignores_rewards_after_the_end():
  rewards, values, mask, lengths = _episode_arrays()
  junk = np.where(mask, rewards, 1e3 * np.random.default_rng(5).normal(size=rewards.shape))
  adv, ret = L.gae(junk.astype(np.float32), values, mask, 0.9, 0.8)
  want_adv, want_ret = naive_gae(rewards, values, lengths, 0.9, 0.8)
  np.testing.assert_allclose(adv, want_adv, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ret, want_ret, rtol=1e-5, atol=1e-5)


def test_whiten_matches_numpy():
  logp, _, _, mask, _ = _rollout_arrays()
  x = logp * 3 + 1
  np.testing.assert_allclose(L.whiten(x, mask), np_whiten(x, mask), rtol=1e-5, atol=1e-6)
  w = np.asarray(L.whiten(x, mask))
  assert abs(w[mask].mean()) < 1e-6 and abs(w[mask].std() - 1) < 1e-5 and not w[~mask].any()


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
@pytest.mark.parametrize("kl_in_reward", [True, False])
def test_ppo_advantages_against_numpy(estimator, kl_in_reward):
  """The PPO branch of `advantages`: per-token KL by the estimator, the score on
  the last real token, GAE with γ, λ, then whitening over the batch's real
  tokens – against a numpy reference that reads nothing past each end."""
  logp, ref, values, mask, lengths = _rollout_arrays()
  score, beta, gamma, lam = np.array([1.0, -0.5, 2.0, 0.3], np.float32), 0.2, 0.95, 0.9
  kl, rewards, adv, ret = rl.advantages("ppo", estimator, gamma, lam, True, logp, ref, values,
                                        mask, score, np.float32(beta), kl_in_reward=kl_in_reward)
  want_kl = np.where(mask, np_kl(logp, ref, estimator), 0.0)
  want_r = np.where(mask, -beta * want_kl if kl_in_reward else 0.0, 0.0)
  for i, n in enumerate(lengths):
    want_r[i, n - 1] += score[i]
  want_adv, want_ret = naive_gae(want_r, values, lengths, gamma, lam)
  np.testing.assert_allclose(kl, want_kl, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(rewards, want_r, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ret, want_ret, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(adv, np_whiten(want_adv, mask), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("estimator", ["k2", "k3"])
def test_reinforce_advantages_with_k2_k3(estimator):
  """The paper's branch with k2 / k3 in the reward: Z_t = (1−β)·r − β·Σ_{s≥t} k_s."""
  logp, ref, values, mask, lengths = _rollout_arrays(4)
  score, beta = np.array([1.0, -0.5, 2.0, 0.3], np.float32), 0.1
  _, _, adv, ret = rl.advantages("reinforce_baseline", estimator, 1.0, 1.0, False, logp, ref,
                                 values, mask, score, np.float32(beta))
  k = np_kl(logp, ref, estimator)
  for i, n in enumerate(lengths):
    for t in range(n):
      want = (1 - beta) * score[i] - beta * k[i, t:n].sum()
      assert ret[i, t] == pytest.approx(want, rel=1e-5, abs=1e-5)
      assert adv[i, t] == pytest.approx(want - values[i, t], rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("estimator", ["k2", "k3"])
def test_kl_loss_term_value_and_gradient(estimator):
  """rl.kl_penalty='loss': the loss gains β·mean k; its gradient per token is
  d/N (k2) or (1 − exp(−d))/N (k3), d = log π − log π_ref, N real tokens."""
  logp, ref, _, mask, _ = _rollout_arrays(6)
  n = mask.sum()
  val, grad = jax.value_and_grad(lambda lp: L.kl_loss(lp, ref, mask, estimator))(logp)
  assert float(val) == pytest.approx(np_kl(logp, ref, estimator)[mask].sum() / n, rel=1e-5)
  d = logp.astype(np.float64) - ref
  want = np.where(mask, d if estimator == "k2" else 1 - np.exp(-d), 0.0) / n
  np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-7)
  # inside the learner's loss: the difference to the reward-mode loss is β·that term
  model = _tiny_actor_critic()
  batch = _train_batch()
  batch["kl_coef"][:] = 0.3
  graphdef, params = nnx.split(model)
  losses = {}
  for mode in ("reward", "loss"):
    fn = rl.make_loss_fn(_loss_config("ppo", mode, estimator), 5)
    losses[mode] = jax.jit(lambda p, b: fn(nnx.merge(graphdef, p), b))(params, batch)
  (l_r, _), (l_l, m_l) = losses["reward"], losses["loss"]
  # the policy's log-probs at T = 0.7 from the whole sequence's logits, in numpy
  # (the learner's LM head sees only the response-predicting rows: an off-by-one
  # there shows here)
  h, _ = model.policy.hidden(batch["tokens"], batch["mask"])
  logits = np.asarray(model.policy.logits(h), np.float64)[:, 3:-1] / 0.7
  lsm = logits - logits.max(-1, keepdims=True)
  lsm -= np.log(np.exp(lsm).sum(-1, keepdims=True))
  lp = np.take_along_axis(lsm, batch["tokens"][:, 4:, None], -1)[..., 0]
  m = batch["response_mask"]
  want = np_kl(lp, batch["ref_logp"], estimator)[m].mean()
  assert float(m_l["kl_loss"]) == pytest.approx(want, rel=1e-4)
  assert float(l_l) - float(l_r) == pytest.approx(0.3 * want, rel=1e-3)


def test_reward_norm_batch():
  raw, ended = np.array([3.0, -1.0, 0.5, 2.0]), np.array([True, False, True, True])
  s, stats = shape_scores(raw, ended, _shaping(reward_norm="batch", missing_eos_penalty=0.5,
                                               reward_clip=1.2), [0, 0.0, 0.0])
  z = (raw - raw.mean()) / raw.std()
  np.testing.assert_allclose(s, np.clip(z, -1.2, 1.2) - 0.5 * ~ended, rtol=1e-5)
  assert stats == [0, 0.0, 0.0]            # batch norm keeps no running statistics


def test_adaptive_kl_controller_cap():
  assert L.adaptive_kl_coef(0.98, kl=100.0, target=1.0, horizon=10, n=10,
                            max_beta=0.99) == 0.99
  assert L.adaptive_kl_coef(0.5, kl=100.0, target=1.0, horizon=10, n=10,
                            max_beta=0.99) == pytest.approx(0.6)


# ------------------------------------------------------------ GRPO and RLOO

def _group_rollout():
  """Two prompts x 3 responses; log π − log π_ref = 0.5 on every real token."""
  lengths = np.array([2, 1, 3, 3, 2, 1])
  mask = np.arange(4)[None] < lengths[:, None]
  ref = np.full((6, 4), -2.0, np.float32)
  logp = np.where(mask, ref + 0.5, 40.0).astype(np.float32)      # junk after the end
  values = np.full((6, 4), 7.0, np.float32)                      # no value model: ignored
  return logp, ref, values, mask, lengths


def test_grpo_group_advantages_hand_case():
  """Â_i = (r_i − mean) / (std + 1e-4) per group of 3, std with Bessel's correction:
  group (1, 2, 3): mean 2, std 1; group (0, 0, 6): mean 2, std √12."""
  logp, ref, values, mask, lengths = _group_rollout()
  score = np.array([1.0, 2.0, 3.0, 0.0, 0.0, 6.0], np.float32)
  kl, rewards, adv, ret = rl.advantages("grpo", "k3", 1.0, 1.0, False, logp, ref, values, mask,
                                        score, np.float32(0.3), kl_in_reward=False, group_size=3)
  s12 = math.sqrt(12.0)
  want = np.array([-1 / (1 + 1e-4), 0, 1 / (1 + 1e-4), -2 / (s12 + 1e-4), -2 / (s12 + 1e-4),
                   4 / (s12 + 1e-4)])
  np.testing.assert_allclose(adv, np.where(mask, want[:, None], 0.0), rtol=1e-5, atol=1e-7)
  assert not np.any(ret)
  # the KL is GRPO's k3 (logged; the penalty is a loss term, not in the rewards)
  k3 = math.exp(-0.5) - 1 + 0.5
  np.testing.assert_allclose(kl, np.where(mask, k3, 0.0), rtol=1e-5)
  want_r = np.zeros((6, 4))
  want_r[np.arange(6), lengths - 1] = score
  np.testing.assert_allclose(rewards, want_r, atol=1e-6)


def test_rloo_leave_one_out_hand_case():
  """A_i = R_i − mean of the other two, R_i = score_i − β·Σ_t KL_t:
  Σ KL = 0.5·length, β = 0.2 → group 1: R = (0.8, 1.9, 2.7),
  A = (0.8 − 2.3, 1.9 − 1.75, 2.7 − 1.35) = (−1.5, 0.15, 1.35);
  group 2: scores (4, 4, 4) → R = (3.7, 3.8, 3.9), A = (−0.15, 0, 0.15)."""
  logp, ref, values, mask, lengths = _group_rollout()
  score = np.array([1.0, 2.0, 3.0, 4.0, 4.0, 4.0], np.float32)
  _, _, adv, ret = rl.advantages("rloo", "k1", 1.0, 1.0, False, logp, ref, values, mask, score,
                                 np.float32(0.2), group_size=3)
  want = np.array([-1.5, 0.15, 1.35, -0.15, 0.0, 0.15])
  np.testing.assert_allclose(adv, np.where(mask, want[:, None], 0.0), rtol=1e-5, atol=1e-5)
  assert not np.any(ret)
  # KL as a loss term instead: R_i = score_i, so group 2 has no signal at all
  _, _, adv, _ = rl.advantages("rloo", "k1", 1.0, 1.0, False, logp, ref, values, mask, score,
                               np.float32(0.2), kl_in_reward=False, group_size=3)
  want = np.array([-1.5, 0.0, 1.5, 0, 0, 0])
  np.testing.assert_allclose(adv, np.where(mask, want[:, None], 0.0), atol=1e-6)


def test_grpo_and_rloo_losses_have_no_value_term():
  """Clipped surrogate only: the loss equals ppo's policy term on the same batch."""
  model = _tiny_actor_critic()
  batch = _train_batch()
  graphdef, params = nnx.split(model)
  out = {}
  for alg in ("ppo", "rloo"):
    fn = rl.make_loss_fn(_loss_config(alg), 5)
    out[alg] = jax.jit(lambda p, b: fn(nnx.merge(graphdef, p), b))(params, batch)
  (l_ppo, m_ppo), (l_rloo, m_rloo) = out["ppo"], out["rloo"]
  assert "value_loss" not in m_rloo
  assert float(m_rloo["policy_loss"]) == pytest.approx(float(m_ppo["policy_loss"]), rel=1e-6)
  assert float(l_ppo) - float(l_rloo) == pytest.approx(0.5 * float(m_ppo["value_loss"]), rel=1e-5)
