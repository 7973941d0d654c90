"""headless-megatron: a Megatron-Core trainer for headless language models (Contrastive Weight Tying)."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "headless_megatron/__init__.py").read_text()).group(1)

setup(
    name="headless-megatron",
    version=VERSION,
    description="Megatron-Core 3D-parallel trainer for headless language models (Contrastive Weight Tying)",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["headless_megatron", "headless_megatron.*"]),
    install_requires=[
        # On machines without a GPU, `make install` puts the CPU build torch==2.13.0 in first.
        "torch>=2.6",
        # The newest release that supports Python 3.10-3.11, and the one the suite runs against.
        "megatron-core==0.16.1",
        "numpy",
        "pyyaml",
        # Megatron's torch_dist checkpoint writer imports psutil but does not declare it.
        "psutil",
        "tqdm",
        # Data preparation (headless_megatron/data): reading corpora, tokenizers and their training.
        "datasets>=5",
        "tokenizers>=0.22",
        # Compiled tokenizer engines (headless_megatron/data/engines.py): byte-level BPE many times faster
        # than tokenizers, used only after they give its ids on the run's own sample.
        "fastokens>=0.3.5",
        "gigatoken>=0.10",
        "transformers>=5",
        "sentencepiece>=0.2",
        "protobuf",  # transformers reads sentencepiece .model files through their protobuf schema
        "wandb",  # experiment tracking (wandb_project / wandb_mode), imported only when enabled
        "tensorboard>=2.16",  # tensorboard_dir: torch.utils.tensorboard's SummaryWriter needs it
        # Evaluation (headless_megatron/evaluate): the LM Evaluation Harness and its HF backend, GLUE
        # metrics (MCC, Spearman), report plots.
        "lm-eval>=0.4.13,<0.5",
        "accelerate",
        "scikit-learn",
        "scipy",
        "matplotlib",
    ],
    extras_require={
        # Fused attention, fused LayerNorm-linear and FP8. apex is optional: build it from source
        # (https://github.com/NVIDIA/apex) for its fused Adam and norms; it is picked up when importable.
        "gpu": ["transformer-engine[pytorch]"],
        # pytest 9.2 stores node ids where pytest-xdist 3.8 cannot tag them with their --dist loadgroup
        # group, so the SLURM tests would run on both workers at once (tests/conftest.py checks it).
        "test": ["pytest>=8,<9.2", "pytest-timeout", "pytest-xdist", "ruff"],
        "dev": ["pytest>=8,<9.2", "pytest-timeout", "pytest-xdist", "ruff"],
    },
    entry_points={"console_scripts": ["headless-megatron=headless_megatron.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
