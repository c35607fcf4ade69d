"""A small end-to-end GRPO run on CPU: the algorithm library driving a tiny pure-torch policy.

Until the Megatron trainer lands this is the README's main job. It reads the algorithm settings
(estimator, clip bounds, KL, entropy, aggregation, n samples, temperature) from a run config
(configs/demo.yaml by default) and trains a small GRU language model from scratch on a
verifiable task: given two digits `a b`, answer `b a` followed by EOS. The reward is the share of
answer tokens in the right place, so a random policy scores ~0.1 and learning is visible within a
minute. (Addition, tried first, stalls at the easy partial credit - tens digit and EOS - once the
policy's entropy collapses; reversal does not, from scratch and without SFT.) The model section of the config is not used here: the policy is the
toy GRU, so this exercises config -> rollout -> reward -> advantages -> clipped loss -> update.
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

from . import algorithms as A
from .config import ConfigError, load_config, save_resolved
from .config.schema import RunConfig

DIGITS, SEP, EOS = 10, 10, 10  # token ids 0..9 are digits; 10 is both separator and end of answer
VOCAB = 11
MAX_ANSWER = 3  # two digits + EOS


def target_tokens(a: int, b: int) -> list[int]:
    return [b, a, EOS]


def score(response: list[int], target: list[int]) -> float:
    """Share of target positions the response gets right (the response is cut after its EOS)."""
    return sum(r == t for r, t in zip(response, target)) / len(target)


class GRUPolicy(nn.Module):
    def __init__(self, hidden: int = 128):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, hidden)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, VOCAB)

    def forward(self, tokens: torch.Tensor, state=None):
        out, state = self.gru(self.embed(tokens), state)
        return self.head(out), state

    @torch.no_grad()
    def generate(self, prompts: torch.Tensor, temperature: float, gen: torch.Generator):
        """Sample MAX_ANSWER tokens per prompt; returns (responses [B, L], mask [B, L])."""
        logits, state = self(prompts)
        step_logits = logits[:, -1]
        out, alive = [], torch.ones(prompts.shape[0], dtype=torch.bool)
        mask = []
        for _ in range(MAX_ANSWER):
            if temperature > 0:
                tok = torch.multinomial((step_logits / temperature).softmax(-1), 1, generator=gen).squeeze(1)
            else:
                tok = step_logits.argmax(-1)
            out.append(torch.where(alive, tok, EOS))
            mask.append(alive.clone())
            alive = alive & (tok != EOS)
            step_logits, state = self(tok[:, None], state)
            step_logits = step_logits[:, -1]
        return torch.stack(out, 1), torch.stack(mask, 1).float()

    def logprobs(self, prompts: torch.Tensor, responses: torch.Tensor, temperature: float = 1.0):
        """Teacher-forced log p(response token) and entropy at every response position."""
        inputs = torch.cat([prompts, responses[:, :-1]], 1)
        logits = self(inputs)[0][:, prompts.shape[1] - 1:] / max(temperature, 1e-6)
        logp = torch.log_softmax(logits, -1).gather(-1, responses[:, :, None]).squeeze(-1)
        return logp, A.entropy_from_logits(logits)


def _batch(prompts: list[tuple[int, int]]) -> torch.Tensor:
    return torch.tensor([[a, b, SEP] for a, b in prompts])


def _evaluate(policy: GRUPolicy) -> float:
    """Greedy exact-match accuracy over all 100 prompts."""
    prompts = [(a, b) for a in range(10) for b in range(10)]
    responses, _ = policy.generate(_batch(prompts), temperature=0.0, gen=torch.Generator())
    hits = [score(r[: len(target_tokens(a, b))], target_tokens(a, b)) == 1.0
            for r, (a, b) in zip(responses.tolist(), prompts)]
    return sum(hits) / len(hits)


def run(cfg: RunConfig, output_dir: Path, lr: float = 3e-3, show_progress: bool = True) -> list[dict]:
    alg, n = cfg.algorithm, cfg.rollout.n_samples_per_prompt
    if alg.advantage in ("gae", "grpo_process"):
        raise ConfigError(f"algorithm.advantage={alg.advantage!r}: the toy demo has no critic and no step "
                          "rewards; use grpo, rloo, reinforce_plus_plus or reinforce_plus_plus_baseline")
    torch.manual_seed(cfg.run.seed)
    gen = torch.Generator().manual_seed(cfg.run.seed)
    policy = GRUPolicy()
    reference = copy.deepcopy(policy).requires_grad_(False)
    optim = torch.optim.Adam(policy.parameters(), lr=lr)
    kl_ctl = (A.AdaptiveKLController(alg.kl.coef, alg.kl.target, alg.kl.horizon) if alg.kl.controller == "adaptive"
              else A.FixedKLController(alg.kl.coef))
    temperature = cfg.rollout.sampling.temperature
    output_dir.mkdir(parents=True, exist_ok=True)
    save_resolved(cfg, output_dir / "config.yaml")
    history = []
    bar = tqdm(range(cfg.trainer.total_steps), desc="toy GRPO", disable=not show_progress, mininterval=1.0)
    with open(output_dir / "metrics.jsonl", "w") as log:
        for step in bar:
            t0 = time.perf_counter()
            # 1-2. prompts and rollout: n samples per prompt, grouped
            picks = torch.randint(0, 10, (alg.prompts_per_step, 2), generator=gen).tolist()
            prompts = _batch([tuple(p) for p in picks for _ in range(n)])
            group = torch.arange(alg.prompts_per_step).repeat_interleave(n)
            responses, mask = policy.generate(prompts, temperature, gen)
            # 3. rewards on the last valid token; optional DAPO dynamic-sampling filter
            targets = [target_tokens(a, b) for a, b in picks for _ in range(n)]
            scores = torch.tensor([score(r, t) for r, t in zip(responses.tolist(), targets)])
            if alg.dynamic_sampling.enabled:
                mask = mask * A.informative_group_mask(scores, group)[:, None]
            token_rewards = torch.zeros_like(mask)
            last = mask.sum(1).long().clamp(min=1) - 1
            token_rewards[torch.arange(len(scores)), last] = scores
            # 4. old and reference logprobs
            with torch.no_grad():
                old_logp, _ = policy.logprobs(prompts, responses, temperature)
                ref_logp, _ = reference.logprobs(prompts, responses, temperature)
            if alg.kl.placement == "reward":
                token_rewards, batch_kl = A.kl_penalty_rewards(token_rewards, old_logp, ref_logp, mask,
                                                               kl_ctl.value, alg.kl.estimator)
                kl_ctl.update(batch_kl.item(), n_steps=len(scores))
            # 5. advantages
            adv, _ = A.ADVANTAGE_ESTIMATORS[alg.advantage](
                token_rewards=token_rewards, response_mask=mask, group_index=group, gamma=alg.gamma,
                norm_by_std=alg.norm_adv_by_std)
            # 6. epochs x mini-batches of clipped-ratio updates
            seqs_per_mini = alg.mini_batch_prompts * n
            for _ in range(alg.epochs):
                order = torch.randperm(len(scores), generator=gen)
                for lo in range(0, len(scores), seqs_per_mini):
                    idx = order[lo: lo + seqs_per_mini]
                    logp, entropy = policy.logprobs(prompts[idx], responses[idx], temperature)
                    m = mask[idx]
                    pl = alg.policy_loss
                    loss, metrics = A.policy_loss(logp, old_logp[idx], adv[idx], m, clip_low=pl.clip_low,
                                                  clip_high=pl.clip_high, dual_clip=pl.dual_clip, ratio=pl.ratio,
                                                  agg=alg.loss_agg, log_ratio_clamp=pl.log_ratio_clamp)
                    kl = A.aggregate(A.kl_estimate(logp, ref_logp[idx], alg.kl.estimator), m, alg.loss_agg)
                    if alg.kl.placement == "loss":
                        loss = loss + kl_ctl.value * kl
                    ent = A.aggregate(entropy, m, alg.loss_agg)
                    loss = loss - alg.entropy_coef * ent
                    optim.zero_grad()
                    loss.backward()
                    grad_norm = nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
                    optim.step()
            # 8. metrics
            record = {"step": step, "reward_mean": scores.mean().item(), "reward_std": scores.std().item(),
                      "accuracy": (scores == 1.0).float().mean().item(),
                      "response_len": mask.sum(1).mean().item(), "kl": kl.item(), "entropy": ent.item(),
                      "pg_clipfrac": metrics["pg_clipfrac"].item(), "grad_norm": float(grad_norm),
                      "step_s": time.perf_counter() - t0}
            if step % 10 == 0 or step == cfg.trainer.total_steps - 1:
                record["greedy_accuracy"] = _evaluate(policy)
            history.append(record)
            log.write(json.dumps(record) + "\n")
            log.flush()
            bar.set_postfix(reward=f"{record['reward_mean']:.2f}", acc=f"{record['accuracy']:.2f}", refresh=False)
    return history


def plot(history: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(steps, [h["reward_mean"] for h in history], label="reward (sampled)")
    axes[0].plot(steps, [h["accuracy"] for h in history], label="exact match (sampled)")
    evals = [h for h in history if "greedy_accuracy" in h]
    axes[0].plot([h["step"] for h in evals], [h["greedy_accuracy"] for h in evals], "o-", label="greedy accuracy")
    axes[0].set_title("reward")
    axes[0].legend(fontsize=8)
    axes[1].plot(steps, [h["entropy"] for h in history])
    axes[1].set_title("entropy")
    axes[2].plot(steps, [h["kl"] for h in history])
    axes[2].set_title("KL to reference")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(config: str, overrides: list[str], steps: int | None, output_dir: str | None, lr: float) -> int:
    if steps is not None:
        overrides = [*overrides, f"trainer.total_steps={steps}"]
    cfg = load_config(config, overrides)
    out = Path(output_dir or cfg.run.output_dir)
    history = run(cfg, out, lr=lr)
    plot(history, out / "reward_curve.png")
    first, last = history[:5], history[-5:]
    start = sum(h["reward_mean"] for h in first) / len(first)
    end = sum(h["reward_mean"] for h in last) / len(last)
    print(f"reward: {start:.3f} (first {len(first)} steps) -> {end:.3f} (last {len(last)} steps); "
          f"greedy accuracy {history[-1]['greedy_accuracy']:.2f}")
    print(f"metrics: {out / 'metrics.jsonl'}  plot: {out / 'reward_curve.png'}")
    return 0
