"""Our NNX transformer against transformers' PyTorch models (the reference)."""
import json

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from rlaif_jax.models import hf
from rlaif_jax.models.transformer import positions_from_mask

TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            max_position_embeddings=128, rms_norm_eps=1e-6)
FAMILIES = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {}),
    "gemma": (transformers.GemmaConfig, transformers.GemmaForCausalLM, {}),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM,
              {"tie_word_embeddings": False}),
    # Llama 3 style: RoPE scaling, different theta.
    "llama3": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
               {"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0,
                                    "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0,
                                    "original_max_position_embeddings": 16}}),
}


def make_hf_model(name, tmp_path):
  cfg_cls, model_cls, extra = FAMILIES[name]
  torch.manual_seed(0)
  model = model_cls(cfg_cls(**TINY, **extra)).eval()
  with torch.no_grad():  # non-trivial norms and biases, so a missed one shows
    for n, p in model.named_parameters():
      if "norm" in n or "bias" in n:
        p.add_(0.1 * torch.randn_like(p))
  model.save_pretrained(tmp_path)
  return model


def padded_batch(seed=0, left=False):
  rng = np.random.default_rng(seed)
  lengths = np.array([12, 7, 12, 3])
  tokens = rng.integers(1, TINY["vocab_size"], size=(4, 12))
  idx = np.arange(12)
  mask = (idx[None] >= 12 - lengths[:, None]) if left else (idx[None] < lengths[:, None])
  return np.where(mask, tokens, 0), mask


def torch_logits(model, tokens, mask):
  pos = np.asarray(positions_from_mask(mask))
  with torch.no_grad():
    out = model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(np.int64)),
                position_ids=torch.tensor(pos))
  return out.logits.numpy()


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("left,scan", [(False, False), (True, False), (True, True)])
def test_logit_parity_sharded(family, left, scan, tmp_path, mesh):
  ref = make_hf_model(family, tmp_path)
  ours, cfg = hf.load_hf(str(tmp_path), mesh, scan_layers=scan)
  # parameters really are spread over the (2, 2, 2) mesh
  q = ours.layers.attn.q[...] if scan else ours.layers[0].attn.q[...]
  assert q.ndim == (4 if scan else 3)
  assert len(q.sharding.device_set) == 8 and not q.sharding.is_fully_replicated
  tokens, mask = padded_batch(left=left)
  with jax.set_mesh(mesh):
    logits, _ = nnx.jit(lambda m, t, k: m(t, k))(ours, tokens, mask)
  expected = torch_logits(ref, tokens, mask)
  diff = np.abs(np.asarray(logits) - expected)[mask]
  assert diff.max() <= 1e-4, (family, diff.max())


@pytest.mark.parametrize("family,scan", [("llama", False), ("gemma", False), ("qwen2", False),
                                         ("qwen2", True)])
def test_export_round_trip(family, scan, tmp_path, mesh):
  src, dst = tmp_path / "src", tmp_path / "dst"
  ref = make_hf_model(family, src)
  ours, _ = hf.load_hf(str(src), mesh, scan_layers=scan)
  hf.export_hf(ours, str(dst), max_shard_bytes=40_000)   # forces a sharded index
  assert (dst / "model.safetensors.index.json").exists()
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(dst)).eval()
  assert type(reloaded) is type(ref)
  tokens, mask = padded_batch(seed=1)
  np.testing.assert_allclose(torch_logits(reloaded, tokens, mask)[mask],
                             torch_logits(ref, tokens, mask)[mask], atol=1e-5)
  # and our own import of the export gives the same model
  again, _ = hf.load_hf(str(dst), mesh, scan_layers=scan)
  for (p, a), (_, b) in zip(nnx.to_flat_state(nnx.state(ours)), nnx.to_flat_state(nnx.state(again))):
    np.testing.assert_array_equal(np.asarray(a[...]), np.asarray(b[...]), err_msg=str(p))


def test_import_rejects_pickle_only_dir(tmp_path, mesh):
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
  (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
  with pytest.raises(FileNotFoundError, match="only safetensors"):
    hf.SafetensorsDir(str(tmp_path))


def test_import_rejects_unsupported_family(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
  with pytest.raises(ValueError, match="unsupported model_type 'gpt2'"):
    hf.read_hf_config(str(tmp_path))
