"""Batch assembly: pure functions from generations (on-policy, offline, replayed) to the groups a step trains
on and the tensors an objective reads.

A step's groups are its fresh prompts' groups (on-policy samples, offline records, per-prompt replay), then
whole replayed groups of other prompts (`GroupReplay`).

Nothing here changes a `Generation`: a stage that learns something about one (its reward, its π_ref
log-probs, its behaviour log-probs) returns new records (`with_values`). A record sits at one place in a
batch: `PromptPool` never draws a prompt twice in a step, and a replayed group is never of one of the step's
fresh prompts on this process. `assemble` says where the on-policy samples and offline records sit, so that
their new versions are found by position once the step is done.
"""

from __future__ import annotations

from collections import defaultdict
from typing import NamedTuple

import torch

from agro.records import SOURCES, Generation, with_values
from agro.replay import GroupReplay, ReplayBuffer
from agro.tokens import pad


def group_rng(seed: int, step: int, rank: int) -> torch.Generator:
    """The generator that picks a step's offline and replayed members and replayed groups on process `rank`."""
    return torch.Generator().manual_seed(seed * 7919 + step * 104_729 + rank)


class Assembled(NamedTuple):
    """A step's groups, and where its on-policy samples and offline records sit in them: after the stages
    that make new records, `generations[i]` at these positions are those records' new versions."""

    generations: list[Generation]
    on_policy: list[int]  # the position of each on-policy sample, in the actor's order
    offline: list[tuple[int, int]]  # (position, index in its group's offline records) of each record drawn
    keys: list[str]  # the groups' prompts, in order: the step's, then those of the replayed groups


def assemble(keys: list[str], on_policy: list[Generation], offline_by_group: dict[str, list[Generation]],
             replay: ReplayBuffer, step: int, offline_per_group: int, replay_per_group: int,
             rng: torch.Generator, groups: GroupReplay | None = None) -> Assembled:
    """Groups in key order: each prompt's on-policy samples + `offline_per_group` of its offline records (a
    random subset) + up to `replay_per_group` of its earlier samples; then up to `groups.per_step` whole groups
    of `groups` (of prompts not in `keys`). All drawn from `rng` in that order."""
    by_key = defaultdict(list)  # key -> its members, each with where it came from: (record, source, index)
    for j, g in enumerate(on_policy):
        by_key[g.group].append((g, "on_policy", j))
    out, on_policy_at, offline_at = [], [0] * len(on_policy), []
    for key in keys:
        offline = offline_by_group.get(key, [])
        if offline and offline_per_group:
            pick = torch.randperm(len(offline), generator=rng)[:offline_per_group].tolist()
            by_key[key] += [(offline[i], "offline", i) for i in pick]
        by_key[key] += [(g, "replay", None) for g in replay.sample(key, step, replay_per_group, rng)]
        for g, source, i in by_key[key]:
            if source == "on_policy":
                on_policy_at[i] = len(out)
            elif source == "offline":
                offline_at.append((len(out), i))
            out.append(g)
    replayed = groups.sample(step, groups.per_step, set(keys), rng) if groups is not None and groups.per_step else []
    for members in replayed:
        out += members
    return Assembled(out, on_policy_at, offline_at, [*keys, *(members[0].group for members in replayed)])


def fresh_groups(gens: list[Generation], on_policy: list[int]) -> list[list[Generation]]:
    """The on-policy samples at positions `on_policy` of `gens`, as one list per prompt (in order of first
    appearance): the groups a new batch gives `GroupReplay` once trained on."""
    by_key: dict[str, list[Generation]] = {}
    for at in on_policy:
        by_key.setdefault(gens[at].group, []).append(gens[at])
    return list(by_key.values())


def with_behavior(gens: list[Generation], logprobs: list[torch.Tensor]) -> list[Generation]:
    """On-policy samples without behaviour log-probs get `logprobs` (the learner's before its first update
    on them: the sampling policy's, when the actor is synchronous)."""
    todo = [i for i, g in enumerate(gens) if g.source == "on_policy" and g.behavior_logprobs is None]
    return with_values(gens, "behavior_logprobs", todo, [logprobs[i] for i in todo])


def sampling_logprobs(gens: list[Generation], logprobs: list[torch.Tensor]) -> list[torch.Tensor]:
    """GRPO's π_old at a batch's first update: the sampler's log-probs of the run's own samples (on-policy: the
    actor's policy, up to max_staleness updates old; replayed: the policy that sampled them, kept with them), as
    TRL clips stale samples against their sampler; an offline record's `logprobs` (the learner's, before the
    update)."""
    return [g.behavior_logprobs if g.source in ("on_policy", "replay") else lp for g, lp in zip(gens, logprobs)]


def staleness_metrics(gens: list[Generation], version: int) -> dict[str, float]:
    """How many updates the policy trained at `version` is ahead of the one that sampled its on-policy records."""
    lags = [version - g.step for g in gens if g.source == "on_policy"]
    return {"staleness/mean": sum(lags) / len(lags), "staleness/max": float(max(lags))} if lags else {}


def replay_metrics(gens: list[Generation], version: int) -> dict[str, float]:
    """How many updates the policy trained at `version` is ahead of the ones that sampled its replayed records."""
    ages = [version - g.step for g in gens if g.source == "replay"]
    return {"replay/age_mean": sum(ages) / len(ages)} if ages else {}


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
        # no reference (grpo with beta 0): π_ref is π itself, so Δ = 0 and the KL term vanishes
        "ref_logprobs": padded([lp if g.ref_logprobs is None else g.ref_logprobs for g, lp in zip(gens, logprobs_now)]),
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
