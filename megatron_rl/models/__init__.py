"""Megatron GPT models in their RL roles (docs/models.md).

    builder     the actor / reference / critic / reward models from ModelConfig + ParallelConfig
    role        MegatronRole: one model in one role, ready to score and to train
    forward     forward passes through Megatron's pipeline schedules: scoring and training steps
    hf_mapping  Hugging Face Llama / Qwen2 / Qwen3 names and layouts <-> Megatron parameters
    hf_io       Hugging Face safetensors in and out of TP/PP shards

Nothing is imported here: megatron-core is heavy, and each caller imports the module it uses.
"""
