"""models.build: one resolver of "which ModelConfig" for every stage, and the builder.

References: the byte tokenizer's documented ids (pad 0, bos 1, eos 2; 259 ids),
transformers' own config.json for a Hugging Face directory, and a model saved
with models.store whose parameters the built model must hold exactly."""
import ml_collections
import numpy as np
import pytest
import transformers
from flax import nnx

from rlaif_jax import dryrun
from rlaif_jax.config import ConfigError, base_config
from rlaif_jax.labeler.config import labeler_config
from rlaif_jax.models import ModelConfig, Transformer, init_sharded, store
from rlaif_jax.models.build import build, check_model, resolve
from rlaif_jax.models.tokenizer import load_tokenizer

ARCH = dict(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, d_ff=64,
            max_seq_len=64)


def section(**kw):
  c = base_config().model
  c.arch.update(vocab_size=0, **ARCH)
  c.update(kw)
  return c


def test_from_scratch_takes_the_tokenizers_size_and_ids():
  cfg = resolve(section(), load_tokenizer("byte"))
  # 259 byte-tokenizer ids rounded up to a multiple of 64; its specials pad 0, bos 1, eos 2
  assert (cfg.vocab_size, cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id) == (320, 0, 1, 2)
  assert (cfg.d_model, cfg.n_layers, cfg.dtype, cfg.scan_layers) == (32, 2, "float32", False)
  # without a tokenizer the section's own is loaded, to the same result
  assert resolve(section()) == cfg
  assert resolve(section(dtype="bfloat16", scan_layers=True, remat="dots")).replace(
      dtype="float32", scan_layers=False, remat="none") == cfg


def test_a_vocabulary_smaller_than_the_tokenizer_is_a_config_error():
  s = section()
  s.arch.vocab_size = 200
  with pytest.raises(ConfigError, match=r"vocab_size=200 is smaller than the tokenizer's 259"):
    resolve(s, load_tokenizer("byte"))


def test_a_preset_keeps_its_vocabulary_and_takes_dtype_and_layout():
  cfg = resolve(section(preset="gemma-2b", dtype="bfloat16", scan_layers=True),
                load_tokenizer("byte"))
  # Gemma-2B's config.json: vocab 256000, hidden 2048, 18 layers, 8 heads, 1 KV head
  assert (cfg.vocab_size, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads) == (
      256000, 2048, 18, 8, 1)
  assert (cfg.family, cfg.dtype, cfg.scan_layers, cfg.eos_token_id) == (
      "gemma", "bfloat16", True, 2)


def test_a_hugging_face_directory_is_read_from_its_config_json(tmp_path):
  hf = transformers.Qwen2Config(vocab_size=96, hidden_size=32, intermediate_size=64,
                                num_hidden_layers=3, num_attention_heads=4,
                                num_key_value_heads=2, max_position_embeddings=128,
                                tie_word_embeddings=False, rope_theta=5000.0)
  hf.save_pretrained(tmp_path)
  cfg = resolve(section(checkpoint=str(tmp_path), remat="full"))
  assert (cfg.family, cfg.vocab_size, cfg.d_model, cfg.d_ff, cfg.n_layers) == ("qwen2", 96, 32, 64, 3)
  assert (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.rope_theta) == (4, 2, 8, 5000.0)
  assert (cfg.max_seq_len, cfg.remat) == (128, "full")


def test_our_checkpoint_builds_with_its_params_in_the_sections_layout(tmp_path, mesh):
  saved_cfg = ModelConfig(vocab_size=96, **ARCH)
  saved = init_sharded(lambda r: Transformer(saved_cfg, r), mesh, seed=3)
  store.save(saved, str(tmp_path / "m"))
  s = section(checkpoint=str(tmp_path / "m"), dtype="bfloat16", scan_layers=True)
  assert resolve(s) == saved_cfg.replace(dtype="bfloat16", scan_layers=True)
  model = build(s, mesh, "lm")
  assert model.cfg.scan_layers and model.cfg.dtype == "bfloat16"
  # the scanned model's layer i is the saved model's layer i
  want = nnx.to_pure_dict(nnx.state(saved))
  got = nnx.to_pure_dict(nnx.state(model))
  np.testing.assert_array_equal(np.asarray(got["embed"]), np.asarray(want["embed"]))
  for i in range(ARCH["n_layers"]):
    np.testing.assert_array_equal(np.asarray(got["layers"]["attn"]["q"][i]),
                                  np.asarray(want["layers"][i]["attn"]["q"]))
  # a reward model from the same LM directory: the trunk is the LM's
  rm = build(s, mesh, "scalar", seed=1)
  np.testing.assert_array_equal(np.asarray(rm.trunk.embed[...]), np.asarray(want["embed"]))


def test_from_scratch_build_is_seeded(mesh):
  tok = load_tokenizer("byte")
  a, b, c = (build(section(), mesh, "lm", tok, seed) for seed in (5, 5, 6))
  ea, eb, ec = (np.asarray(m.embed[...]) for m in (a, b, c))
  assert ea.shape == (320, 32)
  np.testing.assert_array_equal(ea, eb)
  assert not np.array_equal(ea, ec)


@pytest.mark.parametrize("where", ["model", "labeler"])
def test_a_missing_checkpoint_is_a_one_line_config_error(where, tmp_path):
  s = section() if where == "model" else labeler_config().model
  s.checkpoint = str(tmp_path / "nope")
  for call in (lambda: check_model(s, where), lambda: resolve(s)):
    with pytest.raises(ConfigError) as e:
      call()
    assert "\n" not in str(e.value) and str(tmp_path / "nope") in str(e.value)
  with pytest.raises(ConfigError, match=rf"^{where}.checkpoint=.* does not exist"):
    check_model(s, where)
  (tmp_path / "nope").mkdir()          # a directory without a model in it
  with pytest.raises(ConfigError, match="holds neither model_config.json"):
    check_model(s, where)


def test_check_model_names_the_bad_field(tmp_path):
  with pytest.raises(ConfigError, match=r"^model.preset='gemma-3b': use one of"):
    check_model(section(preset="gemma-3b"))
  with pytest.raises(ConfigError, match=r"^rl.labeler.model.tokenizer="):
    check_model(section(tokenizer=str(tmp_path / "tok")), "rl.labeler.model")
  check_model(section())


def test_the_dry_run_sizes_the_preset_when_the_checkpoint_is_elsewhere(tmp_path):
  """--dry_run on a laptop for a checkpoint that lives on the TPU hosts."""
  s = section(preset="llama-3-8b", checkpoint="/on/the/tpu/host/llama")
  assert dryrun.model_config_for(s) == resolve(section(preset="llama-3-8b"))
  with pytest.raises(ConfigError):    # a real run refuses it
    resolve(s)


def test_resolve_reads_sections_of_any_shape():
  """A labeler's section (layout keys beside arch, as the policy's), and a bare
  one with no layout keys at all."""
  lab = labeler_config().model
  assert "scan_layers" not in lab.arch and "remat" not in lab.arch   # one place each
  lab.arch.update(ARCH)
  lab.update(scan_layers=True, remat="dots", random_init=True)
  cfg = resolve(lab)
  assert cfg.scan_layers and cfg.remat == "dots" and cfg.vocab_size == 320
  bare = ml_collections.ConfigDict(dict(dtype="float32", arch=dict(vocab_size=64, **ARCH)))
  assert resolve(bare) == ModelConfig(vocab_size=64, **ARCH)
