"""Packaging for megatron-rl.

Two top-level folders are installed inside the package, so that an installed megatron-rl needs no
checkout:
- kernels/ (fixed by the product layout) holds the package `megatron_rl.kernels` in
  kernels/megatron_rl_kernels/. kernels/ itself has no __init__.py: with the repository root on
  sys.path (python -m, torchrun -m, pytest) `import kernels` must find the Hugging Face kernel hub
  distribution of that name, never our folder (tests/unit/test_import_hygiene.py).
- configs/ (YAML presets, no code) ships as package data under megatron_rl/configs/; the config
  loader finds it through the import system (megatron_rl.config.loader.CONFIGS_DIR).
"""
from setuptools import find_packages, setup

packages = find_packages(include=["megatron_rl", "megatron_rl.*"])
packages += ["megatron_rl.kernels"] + [f"megatron_rl.kernels.{p}" for p in find_packages("kernels/megatron_rl_kernels")]
packages += ["megatron_rl.configs"]  # data only: the presets, mapped from configs/

setup(
    name="megatron-rl",
    version="0.1.0",
    description="Megatron-core based RL post-training (PPO, GRPO, DAPO, GSPO, ...) for LLMs",
    python_requires=">=3.10",
    packages=packages,
    package_dir={"megatron_rl.kernels": "kernels/megatron_rl_kernels", "megatron_rl.configs": "configs"},
    package_data={"megatron_rl.configs": ["*.yaml", "*/*.yaml", "*/*/*.yaml"]},
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
        # transformers: 5.19 is the lock's (and SGLang 0.5.23's) release, 5.25 the newest one tested
        # (tests/integration/test_transformers_newest.py); older releases are not tested here.
        "train": ["megatron-core>=0.16.1", "transformers>=5.19", "safetensors", "triton", "psutil",
                  # prompts from JSONL / Parquet, and rule-based math answer checking
                  "datasets>=3", "math-verify>=0.8"],
        # kernels: the Hugging Face kernel hub package (SGLang's server requires it); the packaging
        # tests check that our kernels/ folder never shadows it.
        "test": ["pytest>=8", "hypothesis>=6", "pytest-timeout", "kernels>=0.14.1"],
        # Talking to SGLang servers: our HTTP client, and what sglang's client-side modules (the
        # weight-update serializer and tensor buckets) import. sglang itself is installed with
        # --no-deps where no server runs (launch/dev.sh): its full install pins its own torch and
        # pulls the CUDA stack; the Docker image has the real one.
        "sglang-client": ["httpx", "orjson", "pybase64", "requests", "starlette", "msgspec", "pyzmq",
                          "ipython", "aiohttp"],
    },
    entry_points={"console_scripts": ["megatron-rl=megatron_rl.cli:main"]},
)
