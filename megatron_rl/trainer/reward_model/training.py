"""Reward models: Bradley-Terry training (`megatron-rl rm CONFIG`) and its retraining inside RL
(`rm.iterative`, DeepSeekMath's iterative RL).

Data: JSONL / Parquet rows with `data.prompt_key` (a string or chat messages, templated like RL
prompts), `rm.chosen_key` and `rm.rejected_key` (strings). Each side becomes one row
prompt + response + EOS; a batch interleaves them, [c0, r0, c1, r1, ...], so a micro-batch always
holds whole pairs. The reward is the scalar head read at each row's last token (the EOS).

Loss: mean over pairs of -log sigmoid(r_chosen - r_rejected - rm.margin), the mean taken over the
whole global batch (each micro-batch's share is its sum over the global pair count, as in SFT).
Accuracy counts r_chosen > r_rejected (a tie is wrong); margin is the mean r_chosen - r_rejected.

The model is the Megatron `reward` role (TP/PP/DP from `parallel`), initialised from
`model.hf_path` (a causal LM: the trunk is loaded, the score head starts at zero; a reward model:
the head is loaded too) or at random, and exported as an HF *ForSequenceClassification checkpoint
with the tokenizer in `rm.output_dir/hf`, which a `reward_model` reward source loads.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ...config.errors import ConfigError
from ...config.schema import RunConfig
from ..batch import data_parallel_shard

Pair = tuple[list[int], list[int]]  # (prompt + chosen + EOS, prompt + rejected + EOS) token ids


# ================================================================== the loss (pure tensors)
def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, *, margin: float = 0.0,
                       normalizer: Optional[float] = None) -> tuple[torch.Tensor, dict]:
    """sum over pairs of -log sigmoid(chosen - rejected - margin) / normalizer (default: the pair
    count, i.e. the mean), and the metrics accuracy, margin, chosen, rejected: sums over these pairs
    / normalizer as well (means by default; with the global pair count, shares that sum to the
    batch's means, as MegatronRole.train_step sums them)."""
    diff = chosen - rejected
    n = diff.numel() if normalizer is None else normalizer
    loss = -F.logsigmoid(diff - margin).sum() / n
    return loss, {"accuracy": (diff > 0).to(diff.dtype).sum() / n, "margin": diff.sum() / n,
                  "chosen": chosen.sum() / n, "rejected": rejected.sum() / n}


def last_token_rewards(output: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The head's output [b, s, 1] read at each row's last token -> [b] (fp32)."""
    return output[..., 0].float().gather(1, (lengths - 1).clamp(min=0)[:, None])[:, 0]


# ================================================================== data
def load_pairs(path: str, tokenizer, data_cfg, rm_cfg, key: str) -> list[Pair]:
    """Token rows of every preference pair in `path`; DataError (one line) for a bad row."""
    from ...data.prompts import DataError, iter_rows, render_prompt

    keys = ((data_cfg.prompt_key, "data.prompt_key"), (rm_cfg.chosen_key, "rm.chosen_key"),
            (rm_cfg.rejected_key, "rm.rejected_key"))
    prompts, chosen, rejected = [], [], []
    for row in iter_rows(path, key):
        for field, setting in keys:
            if field not in row.values:
                have = ", ".join(map(repr, list(row.values)[:12])) or "no keys"
                raise DataError(f"{row.where}: no '{field}' key (the row has {have}): set {setting} to the "
                                "field that holds it")
        prompt = row.values[data_cfg.prompt_key]
        messages = isinstance(prompt, list) and prompt and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in prompt)
        if not (isinstance(prompt, str) and prompt) and not messages:
            raise DataError(f"{row.where}: '{data_cfg.prompt_key}' must be a non-empty string or a list of "
                            "{\"role\": str, \"content\": str} messages")
        if messages and not data_cfg.apply_chat_template:
            raise DataError(f"{row.where}: '{data_cfg.prompt_key}' holds chat messages but data.apply_chat_template "
                            "is false: set it to true (or store plain strings)")
        for field, _ in keys[1:]:
            if not isinstance(row.values[field], str):
                raise DataError(f"{row.where}: '{field}' is a {type(row.values[field]).__name__}: it must be the "
                                "response text (a string)")
        prompts.append(prompt)
        chosen.append(row.values[rm_cfg.chosen_key])
        rejected.append(row.values[rm_cfg.rejected_key])
    if not prompts:
        raise DataError(f"{key}: '{path}' holds no rows: point it at a file of prompt/chosen/rejected rows")
    template = data_cfg.apply_chat_template
    if template and getattr(tokenizer, "chat_template", None) is None:
        raise DataError("data.apply_chat_template is true but the tokenizer has no chat template: set "
                        "data.apply_chat_template=false or use a tokenizer with one")
    texts = [render_prompt(tokenizer, p, template) for p in prompts]
    prompt_ids = tokenizer(texts, add_special_tokens=not template)["input_ids"]
    chosen_ids = tokenizer(chosen, add_special_tokens=False)["input_ids"]
    rejected_ids = tokenizer(rejected, add_special_tokens=False)["input_ids"]
    eos = [tokenizer.eos_token_id]
    pairs = [(list(p) + list(c) + eos, list(p) + list(r) + eos)
             for p, c, r in zip(prompt_ids, chosen_ids, rejected_ids)]
    kept = [pr for pr in pairs if max(len(pr[0]), len(pr[1])) <= rm_cfg.max_length]
    if not kept:
        raise DataError(f"{key}: every pair in '{path}' is longer than rm.max_length={rm_cfg.max_length} tokens: "
                        "raise rm.max_length")
    if len(kept) < len(pairs) and (not dist.is_initialized() or dist.get_rank() == 0):
        print(f"{key}: dropped {len(pairs) - len(kept)} of {len(pairs)} pairs longer than rm.max_length="
              f"{rm_cfg.max_length} tokens")
    return kept


def pair_batch(pairs: list[Pair], pad_id: int) -> dict:
    """Right-padded rows [2P, S], chosen and rejected interleaved, and their lengths."""
    rows = [row for pair in pairs for row in pair]
    ids = torch.full((len(rows), max(map(len, rows))), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
    return {"input_ids": ids, "lengths": torch.tensor([len(r) for r in rows])}


def check_batch_layout(rm_cfg, dp: int) -> None:
    """Every optimizer step splits into equal micro-batches of whole pairs on every DP rank."""
    if rm_cfg.batch_size % (dp * rm_cfg.micro_batch_size):
        raise ConfigError(f"rm.batch_size {rm_cfg.batch_size} pairs is not divisible by the data-parallel size "
                          f"{dp} * rm.micro_batch_size {rm_cfg.micro_batch_size}: pick sizes that divide")


# ================================================================== Megatron steps
def build_reward_role(model, parallel, optim, *, total_steps: int, hf_path: Optional[str], recompute: str = "none"):
    """A trainable reward role from a causal LM or reward model checkpoint (a missing score head
    stays at zero), or at random without `hf_path`."""
    from ...models.hf_io import load_hf_weights
    from ...models.role import MegatronRole

    role = MegatronRole.build("reward", model, parallel, recompute=recompute)
    if hf_path is not None:
        load_hf_weights(role.chunks, hf_path, model, value_head=True, allow_missing=("score.weight",))
    # MegatronRole.build loads a reward role only with its head; the head is new here, so the
    # training wrapper is added after loading
    role._setup_training(optim, total_steps)
    return role


def train_pairs_step(role, pairs: list[Pair], *, margin: float, micro_batch_size: int, pad_id: int,
                     dp_rank: int, dp: int) -> dict:
    """One optimizer step on `pairs` (the global batch, identical on every rank); returns
    loss, accuracy, margin, chosen, rejected, grad_norm, lr (global means, on every rank)."""
    from ...models.forward import split_micro_batches

    total = len(pairs)

    def loss_fn(output, mb):
        rewards = last_token_rewards(output, mb["lengths"])
        return bradley_terry_loss(rewards[0::2], rewards[1::2], margin=margin, normalizer=total)

    shard = data_parallel_shard(pair_batch(pairs, pad_id), dp_rank, dp)
    return role.train_step(split_micro_batches(shard, 2 * micro_batch_size), loss_fn)


@torch.no_grad()
def score_pairs(role, pairs: list[Pair], *, micro_batch_size: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards of every pair's chosen and rejected rows, DP-sharded then gathered: ([P], [P]) on every rank."""
    from megatron.core import parallel_state as ps

    from ...models.forward import select_rows

    dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    batch = pair_batch(pairs, pad_id)
    rows, multiple = batch["input_ids"].shape[0], dp * 2 * micro_batch_size
    padded = select_rows(batch, torch.arange(rows + (-rows % multiple)) % rows)  # repeat rows: equal shards
    local = role.score(data_parallel_shard(padded, dp_rank, dp), micro_batch_size=2 * micro_batch_size)["rewards"]
    parts = [torch.empty_like(local) for _ in range(dp)]
    dist.all_gather(parts, local.contiguous(), group=ps.get_data_parallel_group())
    rewards = torch.cat(parts)[:rows].float()
    return rewards[0::2], rewards[1::2]


def evaluate_pairs(role, pairs: list[Pair], rm_cfg, pad_id: int) -> tuple[dict, torch.Tensor, torch.Tensor]:
    chosen, rejected = score_pairs(role, pairs, micro_batch_size=rm_cfg.micro_batch_size, pad_id=pad_id)
    loss, m = bradley_terry_loss(chosen.double(), rejected.double(), margin=rm_cfg.margin)
    metrics = {"eval/loss": loss.item(), "eval/accuracy": m["accuracy"].item(), "eval/margin": m["margin"].item(),
               "eval/chosen_mean": m["chosen"].item(), "eval/rejected_mean": m["rejected"].item()}
    return metrics, chosen, rejected


def export_reward_model(role, out_dir: str, model, tokenizer, tokenizer_source=None) -> None:
    """HF *ForSequenceClassification + tokenizer (the files of `tokenizer_source`, copied); collective.
    config.json gets the tokenizer's pad id, which transformers needs to find each row's last token in
    a padded batch."""
    from ...data.prompts import export_tokenizer
    from ...models.hf_io import save_hf

    save_hf(role.chunks, out_dir, model, role="reward")
    if dist.get_rank() == 0:
        export_tokenizer(tokenizer, tokenizer_source, out_dir)
        config_json = Path(out_dir) / "config.json"
        config = json.loads(config_json.read_text())
        config.update(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        tmp = config_json.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(config, indent=2))
        os.replace(tmp, config_json)
    dist.barrier()


# ================================================================== `megatron-rl rm`
def run_rm(cfg: RunConfig) -> dict:
    from megatron.core import parallel_state as ps

    from ...data import DataError, PromptSampler
    from ...parallel import init_parallel
    from ..setup import run_tokenizer, stage_tracker

    r = cfg.rm
    if not r.train_path:
        raise DataError("rm.train_path is not set: point it at a JSONL or Parquet file of prompt/chosen/rejected rows")
    check_batch_layout(r, cfg.parallel.data_parallel_size(int(os.environ.get("WORLD_SIZE", "1"))))
    init_parallel(cfg.parallel, seed=cfg.run.seed)
    rank0, dp, dp_rank = dist.get_rank() == 0, ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    tokenizer, pad_id = run_tokenizer(cfg)
    train = load_pairs(r.train_path, tokenizer, cfg.data, r, "rm.train_path")
    held_out = load_pairs(r.eval_path, tokenizer, cfg.data, r, "rm.eval_path") if r.eval_path else None
    sampler = PromptSampler(len(train), shuffle=True, seed=cfg.run.seed)  # the same order on every rank
    role = build_reward_role(cfg.model, cfg.parallel, r.optim, total_steps=r.steps, hf_path=cfg.model.hf_path,
                             recompute=cfg.actor.recompute)
    out_dir = Path(r.output_dir)
    tracker = stage_tracker(cfg, r.output_dir, steps=r.steps, log_every=r.log_every, stage="rm", rank0=rank0)

    def evaluate(step: int):
        metrics, chosen, rejected = evaluate_pairs(role, held_out, r, pad_id)
        if rank0:
            tracker.log(step, metrics, kind="eval")
        return metrics, chosen, rejected

    if held_out is not None:
        evaluate(0)
    for step in range(1, r.steps + 1):
        pairs = [train[i] for i in sampler.next_indices(r.batch_size)]
        out = train_pairs_step(role, pairs, margin=r.margin, micro_batch_size=r.micro_batch_size, pad_id=pad_id,
                               dp_rank=dp_rank, dp=dp)
        if rank0:
            tracker.log(step, {"rm/loss": out["loss"], "rm/accuracy": out["accuracy"], "rm/margin": out["margin"],
                               "rm/chosen_mean": out["chosen"], "rm/rejected_mean": out["rejected"],
                               "rm/grad_norm": out["grad_norm"], "rm/lr": out["lr"]})
        if held_out is not None and r.eval_every and step % r.eval_every == 0 and step < r.steps:
            evaluate(step)
    result = {"final_loss": out["loss"]}
    if held_out is not None:
        metrics, chosen, rejected = evaluate(r.steps)
        result["eval_accuracy"] = metrics["eval/accuracy"]
        if rank0:  # per held-out pair, in file order: for inspection and for the export check
            (out_dir / "eval_scores.jsonl").write_text("".join(
                json.dumps({"chosen": c, "rejected": j}) + "\n" for c, j in zip(chosen.tolist(), rejected.tolist())))
    hf_dir = out_dir / "hf"
    export_reward_model(role, str(hf_dir), cfg.model, tokenizer, cfg.data.tokenizer or cfg.model.hf_path)
    if rank0:
        tracker.write(f"rm: exported {hf_dir} (use it as reward.sources: [{{type: reward_model, path: {hf_dir}}}])")
        tracker.close()
    result["hf_dir"] = str(hf_dir)
    return result


# ================================================================== iterative RL (rm.iterative)
def policy_pairs(input_ids: torch.Tensor, lengths: torch.Tensor, scores: list[float],
                 group_index: torch.Tensor) -> list[Pair]:
    """Preference pairs from one step's samples: within each prompt group, sorted by rule-based
    score, the best is paired with the worst, the second best with the second worst, ..., while
    their scores differ (the higher score is chosen). Each sample is used at most once."""
    pairs = []
    for g in torch.unique(group_index).tolist():
        rows = (group_index == g).nonzero()[:, 0].tolist()
        ranked = sorted(rows, key=lambda r: (-scores[r], r))
        for i in range(len(ranked) // 2):
            hi, lo = ranked[i], ranked[-1 - i]
            if scores[hi] <= scores[lo]:
                break  # the rest of the group ties
            pairs.append((input_ids[hi, :lengths[hi]].tolist(), input_ids[lo, :lengths[lo]].tolist()))
    return pairs


class IterativeRewardModel:
    """Retrains the run's reward model every `rm.iterative.every` RL steps on pairs from the
    policy's samples of those steps, mixed with a replay share of older pairs.

    A retrain's mix: all fresh pairs plus R older ones drawn from the buffer without replacement,
    R = round(fresh * f / (1 - f)) so that older pairs make `replay_fraction` f of it (fewer while
    the buffer is short). `steps` optimizer steps of `rm.batch_size` pairs each walk through the mix
    in seeded random order (again from the start when it runs out). The fresh pairs then join the
    buffer, which keeps the newest `buffer_size`. Every rank holds the same pairs and generator, so
    all ranks draw the same batches.
    """

    def __init__(self, scorer, rm_cfg, *, seed: int, pad_id: int, dp_rank: int, dp: int):
        self.scorer, self.cfg, self.pad_id, self.dp_rank, self.dp = scorer, rm_cfg, pad_id, dp_rank, dp
        self.recent: list[Pair] = []
        self.buffer: list[Pair] = []
        self.generator = torch.Generator().manual_seed(seed)

    def collect(self, batch: dict, rule_scores: list[float]) -> None:
        self.recent += policy_pairs(batch["input_ids"], batch["lengths"], rule_scores, batch["group_index"])

    def retrain(self) -> dict:
        it, r = self.cfg.iterative, self.cfg
        fresh, self.recent = self.recent, []
        metrics = {"rm/pairs_fresh": float(len(fresh))}
        if not fresh:
            return metrics
        n_replay = min(len(self.buffer), round(len(fresh) * it.replay_fraction / (1 - it.replay_fraction)))
        order = torch.randperm(len(self.buffer), generator=self.generator)[:n_replay].tolist()
        replay = [self.buffer[i] for i in order]
        mix = fresh + replay
        picks: list[int] = []
        while len(picks) < it.steps * r.batch_size:
            picks += torch.randperm(len(mix), generator=self.generator).tolist()
        outs = []
        for k in range(it.steps):
            pairs = [mix[i] for i in picks[k * r.batch_size:(k + 1) * r.batch_size]]
            outs.append(train_pairs_step(self.scorer.role, pairs, margin=r.margin, micro_batch_size=r.micro_batch_size,
                                         pad_id=self.pad_id, dp_rank=self.dp_rank, dp=self.dp))
        self.buffer = (self.buffer + fresh)[-it.buffer_size:]
        self.scorer.reset_normalization()  # the retrained model's scores have another scale
        metrics.update({
            "rm/pairs_replay": float(len(replay)), "rm/buffer_pairs": float(len(self.buffer)),
            "rm/accuracy_before": outs[0]["accuracy"],  # the old model on the new pairs (before any update)
            **{f"rm/{k}": sum(o[k] for o in outs) / len(outs) for k in ("loss", "accuracy", "margin", "grad_norm")},
        })
        return metrics

    def state_dict(self) -> dict:
        return {"recent": self.recent, "buffer": self.buffer, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.recent, self.buffer = state["recent"], state["buffer"]
        self.generator.set_state(state["generator"])


# ================================================================== demo data (configs/rm_demo.yaml)
def make_arithmetic_preferences(root: str, *, wrong_per_problem: tuple[int, int] = (4, 2), seed: int = 0,
                                max_value: int = 19, n_train: int = 300, n_eval: int = 100) -> dict:
    """Preference pairs on the demo's addition task (data.synthetic): chosen = the correct sum,
    rejected = a different number in [0, 2 * max_value]. Writes the tokenizer, `pairs_train.jsonl`
    (`wrong_per_problem[0]` pairs per train problem) and `pairs_eval.jsonl` (`[1]` per held-out
    problem, never a train problem) under `root`; returns their paths."""
    import random

    from ...data.synthetic import prepare_demo_data

    paths = prepare_demo_data(root, max_value=max_value, n_train=n_train, n_eval=n_eval, seed=seed)
    rng = random.Random(seed)
    out = {"tokenizer": paths["tokenizer"]}
    for split, copies in zip(("train", "eval"), wrong_per_problem):
        rows = [json.loads(line) for line in Path(paths[split]).read_text().splitlines() if line.strip()]
        lines = []
        for _ in range(copies):
            for row in rows:
                wrong = rng.choice([v for v in range(2 * max_value + 1) if str(v) != row["answer"]])
                lines.append(json.dumps({"prompt": row["prompt"], "chosen": row["answer"], "rejected": str(wrong)}))
        out[split] = str(Path(root) / f"pairs_{split}.jsonl")
        tmp = Path(out[split] + ".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, out[split])
    return out
