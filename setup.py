"""Packaging for megatron-rl.

`kernels/` lives at the top level of the repository (the product layout fixes it) but is installed
as `megatron_rl.kernels`: a top-level `kernels` package name belongs to another PyPI project.
"""
from setuptools import find_packages, setup

packages = find_packages(include=["megatron_rl", "megatron_rl.*"])
packages += ["megatron_rl.kernels"] + [f"megatron_rl.kernels.{p}" for p in find_packages("kernels")]

setup(
    name="megatron-rl",
    version="0.1.0",
    description="Megatron-core based RL post-training (PPO, GRPO, DAPO, GSPO, ...) for LLMs",
    python_requires=">=3.10",
    packages=packages,
    package_dir={"megatron_rl.kernels": "kernels"},
    install_requires=[
        # torch is not pinned here: the CPU dev environment pins the CPU build (launch/dev.sh),
        # the Docker image brings its CUDA build.
        "torch>=2.6",
        "numpy",
        "pyyaml>=6",
        "omegaconf>=2.3",
        "pydantic>=2.6",
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        # Training stack; installed by the dev environment and the Docker image.
        # psutil: megatron-core's distributed-checkpoint writer needs it and does not declare it
        "train": ["megatron-core>=0.16.1", "transformers>=4.51", "safetensors", "triton", "psutil",
                  # prompts from JSONL / Parquet, and rule-based math answer checking
                  "datasets>=3", "math-verify>=0.8"],
        "test": ["pytest>=8", "hypothesis>=6", "pytest-timeout"],
        # Talking to SGLang servers: our HTTP client, and what sglang's client-side modules (the
        # weight-update serializer and tensor buckets) import. sglang itself is installed with
        # --no-deps where no server runs (launch/dev.sh): its full install pins its own torch and
        # pulls the CUDA stack; the Docker image has the real one.
        "sglang-client": ["httpx", "orjson", "pybase64", "requests", "starlette", "msgspec", "pyzmq",
                          "ipython", "aiohttp"],
    },
    entry_points={"console_scripts": ["megatron-rl=megatron_rl.cli:main"]},
)
