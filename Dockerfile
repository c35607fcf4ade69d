# H100 cluster image (draft). The cluster-readiness issue chooses the final SGLang base tag, adds
# TransformerEngine and a non-root user, and tests that these pins agree with setup.py.
# No Docker engine runs on the development machines: this file has not been built yet.
FROM lmsysorg/sglang:v0.5.19-cu129

WORKDIR /opt/megatron-rl
COPY setup.py README.md ./
COPY megatron_rl ./megatron_rl
COPY kernels ./kernels
COPY configs ./configs
COPY launch ./launch
RUN pip install --no-cache-dir -e ".[train]"

ENTRYPOINT ["megatron-rl"]
