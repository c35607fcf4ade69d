"""A Megatron model in one role, ready to score and (actor, critic, reward) to train.

    actor = MegatronRole.build("actor", cfg.model, cfg.parallel, cfg.actor.optim, total_steps=N,
                               hf_path=cfg.model.hf_path)
    out = actor.score(batch, micro_batch_size=4, kind="logprobs")
    metrics = actor.train_step(micro_batches, loss_fn)

Training uses Megatron's DDP (gradients reduced in fp32) and its optimizer (distributed by default:
Adam states sharded over DP), global-norm gradient clipping, and Megatron's LR scheduler (warmup,
then constant / linear / cosine decay).

Loss normalisation. `loss_fn(output, micro_batch) -> (loss, metrics)` returns this micro-batch's
share of the mini-batch loss: its numerator divided by the *global* normaliser (tokens or sequences
over every micro-batch and DP rank, see algorithms.aggregation.global_normalizer), so the shares sum
to the mini-batch loss. Megatron's schedule divides each micro-batch loss by the number of
micro-batches and DDP averages gradients over DP; train_step multiplies both back, so the gradient
is exactly that of the summed shares whatever the split. The loss_fn's metrics are shares in the
same sense and are summed; names ending in `_max` / `_min` are extremes, reduced by max / min.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.distributed as dist

from ..config.schema import ModelConfig, OptimConfig, ParallelConfig
from .builder import build_model, unwrap
from .forward import run_pipeline, score


@dataclass
class MegatronRole:
    role: str
    model: ModelConfig
    parallel: ParallelConfig
    chunks: list
    optimizer: Optional[object] = None
    scheduler: Optional[object] = None
    step: int = 0
    kernels: str = "auto"
    extra: dict = field(default_factory=dict)

    @property
    def value_head(self) -> bool:
        return self.role in ("critic", "reward")

    @classmethod
    def build(cls, role: str, model: ModelConfig, parallel: ParallelConfig, optim: Optional[OptimConfig] = None, *,
              total_steps: int = 1, hf_path: Optional[str] = None, recompute: str = "none") -> "MegatronRole":
        """Build this rank's shards; load `hf_path` when given; wrap for training when `optim` is given."""
        from .hf_io import load_hf_weights

        chunks = build_model(role, model, parallel, recompute=recompute, perform_initialization=hf_path is None)
        if hf_path is not None:
            allow = ("score.weight",) if role == "critic" else ()
            load_hf_weights(chunks, hf_path, model, value_head=role in ("critic", "reward"), allow_missing=allow)
        self = cls(role, model, parallel, chunks, kernels=model.kernels)
        if optim is not None:
            self._setup_training(optim, total_steps)
        return self

    def _setup_training(self, optim: OptimConfig, total_steps: int) -> None:
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
        from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

        config = unwrap(self.chunks[0]).config
        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True, overlap_grad_reduce=False,
            use_distributed_optimizer=optim.use_distributed_optimizer,
        )
        self.chunks = [
            DistributedDataParallel(config=config, ddp_config=ddp_config, module=chunk,
                                    disable_bucketing=i > 0)  # VPP: later chunks reduce as one bucket
            for i, chunk in enumerate(self.chunks)
        ]
        # the schedules call these: DP gradient reduction, tied-embedding sync across PP stages
        config.finalize_model_grads_func = finalize_model_grads
        config.no_sync_func = [c.no_sync for c in self.chunks] if len(self.chunks) > 1 else self.chunks[0].no_sync
        self.optimizer = get_megatron_optimizer(
            OptimizerConfig(
                optimizer="adam", lr=optim.lr, min_lr=optim.min_lr, weight_decay=optim.weight_decay,
                adam_beta1=optim.adam_beta1, adam_beta2=optim.adam_beta2, adam_eps=optim.adam_eps,
                clip_grad=optim.grad_clip or 0.0, bf16=config.bf16, fp16=config.fp16,
                params_dtype=config.params_dtype, use_distributed_optimizer=optim.use_distributed_optimizer,
            ),
            self.chunks,
        )
        if config.fp16:
            config.grad_scale_func = self.optimizer.scale_loss
        self.scheduler = OptimizerParamScheduler(
            self.optimizer, init_lr=0.0 if optim.warmup_steps else optim.lr, max_lr=optim.lr,
            min_lr=optim.min_lr, lr_warmup_steps=optim.warmup_steps,
            lr_decay_steps=max(total_steps, optim.warmup_steps + 1), lr_decay_style=optim.lr_decay,
            start_wd=optim.weight_decay, end_wd=optim.weight_decay, wd_incr_steps=max(total_steps, 1),
            wd_incr_style="constant",
        )

    @torch.no_grad()
    def copy_weights_from(self, other: "MegatronRole") -> None:
        """Make this model's weights equal `other`'s (same layout): resetting the reference to the
        current actor, as R1 did periodically. Local copies only, no communication."""
        mine = [dict(unwrap(c).named_parameters()) for c in self.chunks]
        theirs = [dict(unwrap(c).named_parameters()) for c in other.chunks]
        for dst, src in zip(mine, theirs):
            if dst.keys() != src.keys():
                raise ValueError(f"cannot copy {other.role} weights into {self.role}: the models differ")
            for name, param in dst.items():
                param.copy_(src[name])

    # ---------------------------------------------------------------- scoring
    def score(self, batch: dict, *, micro_batch_size: int, temperature: float = 1.0, with_entropy: bool = False):
        kind = {"actor": "logprobs", "reference": "logprobs", "critic": "values", "reward": "reward"}[self.role]
        return score(self.chunks, batch, micro_batch_size=micro_batch_size, kind=kind,
                     vocab_size=self.model.vocab_size, temperature=temperature,
                     with_entropy=with_entropy, backend=self.kernels)

    # ---------------------------------------------------------------- training
    def train_step(self, micro_batches: list[dict], loss_fn: Callable, *, skip_nonfinite: bool = True) -> dict:
        """One optimizer step over `micro_batches` (this DP rank's share of the mini-batch).

        A non-finite mini-batch loss skips the optimizer step on every rank (`update_skipped`,
        `nonfinite_loss` in the result) unless skip_nonfinite is False.

        Returns {"loss": mini-batch loss (the summed shares), "grad_norm", "lr", **the loss_fn metrics
        summed over micro-batches and DP ranks (max / min for `_max` / `_min` names)}, identical on
        every rank.
        """
        from megatron.core import parallel_state as ps

        if self.optimizer is None:
            raise RuntimeError(f"the {self.role} model was built without an optimizer")
        for c in self.chunks:
            c.train()
            c.zero_grad_buffer()
        self.optimizer.zero_grad()
        num_mb, dp = len(micro_batches), ps.get_data_parallel_world_size()

        def output_fn(out, mb):
            loss, metrics = loss_fn(out, mb)
            metrics = {k: v.detach().float() for k, v in metrics.items()}
            metrics["loss"] = loss.detach().float()
            return loss * (num_mb * dp), metrics  # undo the schedule's 1/num_mb and DDP's 1/dp

        per_mb = run_pipeline(self.chunks, micro_batches, output_fn, forward_only=False)
        out = reduce_metrics(per_mb, group=ps.get_data_parallel_group())

        # every rank sees the same loss (broadcast from the last stage, summed over DP), so all
        # agree on skipping: a non-finite loss would write NaN into the weights and Adam's moments
        finite = bool(torch.isfinite(torch.tensor(out["loss"])))
        if finite or not skip_nonfinite:
            ok, grad_norm, _ = self.optimizer.step()
        else:
            ok, grad_norm = False, None
            self.optimizer.zero_grad()
        if ok:
            self.scheduler.step(increment=1)
        self.step += 1
        out.update(grad_norm=float(grad_norm) if grad_norm is not None else float("nan"),
                   lr=self.optimizer.param_groups[0]["lr"], update_skipped=not ok, nonfinite_loss=not finite)
        return out


def reduce_metrics(per_micro_batch: list[dict], group=None) -> dict[str, float]:
    """Micro-batch metrics -> mini-batch values over the micro-batches and the ranks of `group`:
    shares are summed, `_max` / `_min` names take the max / min. Three collectives at most."""
    names = sorted(per_micro_batch[0])
    kinds = {"max": [k for k in names if k.endswith("_max")], "min": [k for k in names if k.endswith("_min")]}
    kinds["sum"] = [k for k in names if k not in kinds["max"] and k not in kinds["min"]]
    out = {}
    for kind, keys in kinds.items():
        if not keys:
            continue
        stacked = torch.stack([torch.stack([m[k] for m in per_micro_batch]) for k in keys])  # [metrics, mb]
        if kind == "sum":
            local, op = stacked.sum(1), dist.ReduceOp.SUM
        elif kind == "max":
            local, op = stacked.amax(1), dist.ReduceOp.MAX
        else:  # min as max of the negation: one op type fewer to trust on every backend
            local, op = -stacked.amin(1), dist.ReduceOp.MAX
        dist.all_reduce(local, op=op, group=group)
        values = -local if kind == "min" else local
        out.update({k: values[i].item() for i, k in enumerate(keys)})
    return out
