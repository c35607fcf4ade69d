# syntax=docker/dockerfile:1
# megatron-rl for H100 clusters: SGLang's image (CUDA, torch, sglang, its router) with
# TransformerEngine, megatron-core and this project on top. Not built yet: the development machines
# have no Docker engine (docs/launch.md lists what was and was not checked).
#
#   docker build -t megatron-rl .
#   docker run --gpus all --ipc=host megatron-rl validate configs/demo.yaml
#
# Base: the CUDA 13 line, lmsysorg/sglang:v0.5.23, the sglang release the rollout code is written and
# tested against (launch/constraints-cpu.txt pins the same version for the client pieces CI runs:
# the weight-update session /begin_weight_update../end_weight_update of 0.5.21+, the request fields
# our fake server checks). CUDA 13 needs an R580 or newer driver (R580 is NVIDIA's current long-term
# branch); H100 nodes still on R535/R550/R570 can run it with NVIDIA's forward-compatibility package
# (data-center GPUs only), or use the last CUDA 12 image instead, which the rollout client also
# supports (it picks the weight-update protocol by server version):
#   docker build --build-arg SGLANG_VERSION=0.5.19 --build-arg SGLANG_IMAGE=lmsysorg/sglang:v0.5.19-cu129 \
#                --build-arg TRANSFORMER_ENGINE_CUDA=cu12 -t megatron-rl:cu12 .
#
# The versions are ARGs so that tests/unit/launch/test_dockerfile_pins.py can check them against
# setup.py and launch/constraints-cpu.txt.
ARG SGLANG_VERSION=0.5.23
ARG SGLANG_IMAGE=lmsysorg/sglang:v${SGLANG_VERSION}
FROM ${SGLANG_IMAGE}

ARG SGLANG_VERSION
# the base image's Python; megatron-core 0.17+ would need >= 3.12
ARG PYTHON_VERSION=3.12
# megatron-core: the release CI runs (setup.py: megatron-core>=0.16.1; 0.17+ is untested here)
ARG MEGATRON_CORE_VERSION=0.16.1
# TransformerEngine: the newest release inside megatron-core 0.16.1's own range (>=2.9,<2.12)
ARG TRANSFORMER_ENGINE_VERSION=2.11.0
# TE's prebuilt core library: cu13 on the CUDA 13 base, cu12 on a CUDA 12 one
ARG TRANSFORMER_ENGINE_CUDA=cu13
# compile jobs for TE's PyTorch extension
ARG MAX_JOBS=8

# A distribution's system Python may refuse pip installs (PEP 668) unless told; the image installs into it.
ENV PIP_BREAK_SYSTEM_PACKAGES=1 PIP_NO_CACHE_DIR=1

# The pins above assume this base: stop the build here, not a job at run time, if it is another.
RUN python3 - <<'EOF'
import os, sys
from importlib.metadata import version
python = "%d.%d" % sys.version_info[:2]
if python != os.environ["PYTHON_VERSION"]:
    sys.exit(f"the base image has Python {python}, the Dockerfile pins PYTHON_VERSION={os.environ['PYTHON_VERSION']}")
sglang = version("sglang")
if sglang != os.environ["SGLANG_VERSION"]:
    # a source build may report 0.0.0.dev0; anything else is the wrong base
    if not sglang.startswith("0.0.0"):
        sys.exit(f"the base image has sglang {sglang}, the Dockerfile pins SGLANG_VERSION={os.environ['SGLANG_VERSION']}")
    print(f"warning: sglang reports {sglang}; taken as the {os.environ['SGLANG_VERSION']} of the tag")
EOF

# Keep the image's CUDA builds: every install below is constrained to the torch (and the rest of the
# serving stack) already here, so a dependency can never pull another torch from PyPI.
RUN python3 -m pip list --format=freeze \
      | grep -iE '^(torch|torchvision|torchaudio|triton|sglang|sglang-router|sgl-kernel|sglang-kernel|flashinfer-python|transformers|nvidia-nccl-cu1[23])==' \
      > /opt/image-pins.txt \
 && grep -q '^torch==' /opt/image-pins.txt \
 && cat /opt/image-pins.txt

# TransformerEngine: the core library (GPU kernels) is a prebuilt wheel; its PyTorch extension, a C++
# extension, is compiled here against the image's torch and CUDA headers (hence --no-build-isolation).
RUN MAX_JOBS=${MAX_JOBS} python3 -m pip install --no-build-isolation -c /opt/image-pins.txt \
      "transformer_engine[pytorch,core_${TRANSFORMER_ENGINE_CUDA}]==${TRANSFORMER_ENGINE_VERSION}" \
 && python3 -m pip install -c /opt/image-pins.txt "megatron-core==${MEGATRON_CORE_VERSION}" \
 && echo "megatron-core==${MEGATRON_CORE_VERSION}" >> /opt/image-pins.txt \
 && echo "transformer-engine==${TRANSFORMER_ENGINE_VERSION}" >> /opt/image-pins.txt

# sglang_router is what `launch/sglang_servers.sh --router` and rollout.sglang.router start
RUN python3 -c "import sglang_router" 2>/dev/null \
 || echo "warning: the base image has no sglang_router: --router / rollout.sglang.router need pip install sglang-router"

# This project, editable, with the training stack, what the SGLang client imports, and pytest for
# tests/gpu; nothing already pinned above moves. The CPU lock (launch/requirements-cpu.lock) takes
# sglang 0.5.23's own pins (transformers, tokenizers, kernels, ...), so where the two environments
# share a library they agree; the image keeps its CUDA torch.
WORKDIR /opt/megatron-rl
COPY setup.py README.md ./
COPY megatron_rl ./megatron_rl
COPY kernels ./kernels
COPY configs ./configs
COPY launch ./launch
COPY tests ./tests
COPY docs ./docs
RUN python3 -m pip install -c /opt/image-pins.txt -e ".[train,sglang-client,test]" \
 && python3 -c "import megatron.core, megatron_rl.cli, megatron_rl.rollout.sglang_client" \
 && megatron-rl validate configs/demo.yaml > /dev/null

# Run as a user, not root; runs write under the working directory (outputs/) unless told otherwise.
RUN useradd --create-home --shell /bin/bash megatron && chown -R megatron /opt/megatron-rl
USER megatron
ENV HOME=/home/megatron

ENTRYPOINT ["megatron-rl"]
CMD ["--help"]
