"""Every test runs on a mesh of 8 fake CPU devices, offline.

The environment must be set before JAX is imported: XLA's host platform reads
the device count once, and NPROC >= 2 x devices keeps multi-device loops on a
2-core machine from deadlocking in XLA's CPU rendezvous.
"""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("NPROC", "16")
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One persistent compilation cache for the session, inherited by the entry-point
# subprocesses: tests that compile the same programs (resume runs, meshes,
# repeated tiny models) pay for XLA once on this 2-core machine.
import tempfile  # noqa: E402
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="rlaif_jax_xla_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pathlib  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"
if not SHARED.exists():  # CI clones elsewhere; allow an explicit location
  SHARED = pathlib.Path(os.environ.get("RLAIF_SHARED", "/work/shared"))


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  path = SHARED / "data"
  if not path.exists():
    pytest.fail(f"shared test data not found at {path}; set RLAIF_SHARED")
  return path


def make_mesh(data=2, fsdp=2, tensor=2):
  from jax.sharding import AxisType
  return jax.make_mesh((data, fsdp, tensor), ("data", "fsdp", "tensor"),
                       axis_types=(AxisType.Auto,) * 3)


@pytest.fixture
def mesh():
  assert jax.device_count() == 8, "conftest must run before JAX is imported"
  return make_mesh()
