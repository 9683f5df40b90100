"""Batch assembly: pure functions from generations (on-policy, offline, replayed) to the groups a step trains
on and the tensors an objective reads.

Nothing here changes a `Generation`: a stage that learns something about one (its reward, its π_ref
log-probs, its behaviour log-probs) returns new records (`with_values`). A prompt drawn twice in one step
(the epoch wrapped) puts the same record in the batch twice; both places get the same new record, carrying
the value computed at the later place.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from agro.records import SOURCES, Generation, with_values
from agro.replay import ReplayBuffer
from agro.tokens import pad


def group_rng(seed: int, step: int, rank: int) -> torch.Generator:
    """The generator that picks a step's offline and replayed members on process `rank`."""
    return torch.Generator().manual_seed(seed * 7919 + step * 104_729 + rank)


def assemble(keys: list[str], on_policy: list[Generation], offline_by_group: dict[str, list[Generation]],
             replay: ReplayBuffer, step: int, offline_per_group: int, replay_per_group: int,
             rng: torch.Generator) -> list[Generation]:
    """Groups in key order: each prompt's on-policy samples + `offline_per_group` of its offline records (a
    random subset) + up to `replay_per_group` of its earlier samples, drawn from `rng` in that order."""
    by_key = defaultdict(list)
    for g in on_policy:
        by_key[g.group].append(g)
    out = []
    for key in keys:
        offline = offline_by_group.get(key, [])
        if offline and offline_per_group:
            pick = torch.randperm(len(offline), generator=rng)[:offline_per_group].tolist()
            by_key[key] += [offline[i] for i in pick]
        by_key[key] += replay.sample(key, step, replay_per_group, rng)
        out += by_key[key]
    return out



def with_behavior(gens: list[Generation], logprobs: list[torch.Tensor]) -> list[Generation]:
    """On-policy samples without behaviour log-probs get `logprobs` (the learner's before its first update
    on them: the sampling policy's, when the actor is synchronous)."""
    todo = [i for i, g in enumerate(gens) if g.source == "on_policy" and g.behavior_logprobs is None]
    return with_values(gens, "behavior_logprobs", todo, [logprobs[i] for i in todo])


def sampling_logprobs(gens: list[Generation], logprobs: list[torch.Tensor]) -> list[torch.Tensor]:
    """GRPO's π_old at a batch's first update: an on-policy sample's behaviour log-probs (the actor's policy,
    up to max_staleness updates old), every other record's `logprobs` (the learner's, before the update)."""
    return [g.behavior_logprobs if g.source == "on_policy" else lp for g, lp in zip(gens, logprobs)]


def staleness_metrics(gens: list[Generation], version: int) -> dict[str, float]:
    """How many updates the policy trained at `version` is ahead of the one that sampled its on-policy records."""
    lags = [version - g.step for g in gens if g.source == "on_policy"]
    return {"staleness/mean": sum(lags) / len(lags), "staleness/max": float(max(lags))} if lags else {}


def latest(records: list[Generation], before: list[Generation], after: list[Generation]) -> list[Generation]:
    """The new versions of `records` (members of `before`), where `after` is `before` after `with_values`."""
    position = {id(g): i for i, g in enumerate(before)}
    return [after[position[id(g)]] for g in records]


def tensors(gens: list[Generation], keys: list[str], logprobs_now: list[torch.Tensor],
            old_logprobs: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """[B, T] / [B] float32 tensors of a batch (T: its longest completion; padding 0, masked).

    old_logprobs (GRPO's π_old): the log-probs before the batch's first update (`sampling_logprobs`);
    None: logprobs_now itself (ratio 1). Behaviour log-probs: a record's own, else
    logprobs_now.
    """
    width = max(len(g.completion_ids) for g in gens)
    group_index = {k: i for i, k in enumerate(keys)}

    def padded(rows):
        return pad([r[:width] for r in rows], dtype=torch.float32, width=width)

    now = padded(logprobs_now)
    behavior = [g.behavior_logprobs if g.behavior_logprobs is not None else lp for g, lp in zip(gens, logprobs_now)]
    return {
        "ref_logprobs": padded([g.ref_logprobs for g in gens]),
        "mask": padded([torch.ones(len(g.completion_ids)) for g in gens]),
        "rewards": torch.tensor([g.reward for g in gens], dtype=torch.float32),
        "group_ids": torch.tensor([group_index[g.group] for g in gens]),
        "weights": torch.tensor([g.weight for g in gens], dtype=torch.float32),
        "fresh": torch.tensor([g.source == "on_policy" for g in gens]),
        "old_logprobs": now if old_logprobs is None else padded(old_logprobs),
        "behavior_logprobs": padded(behavior),
        "logprobs_now": now,
    }


def source_metrics(gens: list[Generation], t: dict[str, torch.Tensor]) -> dict[str, float]:
    """Reward mean, generation length and count per source; KL to π_ref from on-policy samples."""
    delta = ((t["logprobs_now"] - t["ref_logprobs"]) * t["mask"]).sum(-1).cpu()
    metrics = {"log_ratio_mean": float(delta.mean())}
    for source in SOURCES:
        idx = [i for i, g in enumerate(gens) if g.source == source]
        if idx:
            metrics[f"reward/{source}"] = sum(gens[i].reward for i in idx) / len(idx)
            metrics[f"length/{source}"] = sum(len(gens[i].completion_ids) for i in idx) / len(idx)
            metrics[f"count/{source}"] = float(len(idx))
            if source == "on_policy":
                metrics["kl"] = float(delta[idx].mean())  # E_π[log π/π_ref], unbiased on-policy
    return metrics
