"""The prompt pool: prompts and offline records loaded, checked against the token budgets, keyed, and
drawn each step.

Prompts come from train_data, or from the offline records when there is none. A prompt is keyed by its
text (`data.prompt_key`); offline records join the group of their prompt's key. Each epoch is a
permutation seeded by (seed, epoch); a step takes the next `prompts_per_step` keys (wrapping into the next
epoch), split evenly over processes. A step never holds a prompt twice, since each would bring its samples
twice: where it wraps into the next epoch, that epoch's first prompts not already in the step come first and
those skipped right after (the epoch stays a permutation, kept in `order` since the seed no longer gives it).
With fewer prompts than `prompts_per_step`, a step takes each prompt once (as many as split evenly over the
processes). An asynchronous actor draws the keys of batches ahead of the learner; they wait in `ahead`,
oldest first, until the learner consumes them. `PromptPool.state()` is the pool's state in checkpoints.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections import defaultdict

import torch

import agro.data as data
import agro.gym as gym
from agro.config import TrainConfig
from agro.errors import AgroError
from agro.objective_table import OBJECTIVES
from agro.records import Generation
from agro.tokens import completion_token_ids, encode_prompt, max_text_chars, prompt_text, text_chars


class PromptPool:
    """Prompt keys with their token ids, texts and answers; offline records by key; the epoch position."""

    def __init__(self, config: TrainConfig, tokenizer, problems: tuple[list[data.Problem], data.DataReport] | None = None,
                 offline: tuple[list[data.OfflineRecord], data.DataReport] | None = None):
        """`problems` and `offline` (loaded, with their reports) instead of train_data and offline_data."""
        self.config, self.tokenizer = config, tokenizer
        self.epoch, self.position = 0, 0
        self.order: list[int] | None = None  # this epoch's order when a wrap rearranged it, else its permutation
        self._warned_small = False
        self.truncated_prompts = 0  # train_data prompts cut to their last max_prompt_length tokens
        self._whole_length: dict[str, int] = {}  # a truncated prompt's key: its length in tokens before the cut
        self.ahead: list[list[str]] = []  # keys drawn for batches not yet trained on (agro.async_actor)
        c = config
        self.data_reports = []
        # texts longer than this cannot fit in the token budget: rejected before they are tokenised
        self._max_chars = {"prompt": max_text_chars(self.tokenizer, c.max_prompt_length),
                           "completion": max_text_chars(self.tokenizer, c.max_completion_length)}
        self.offline_by_group: dict[str, list[Generation]] = defaultdict(list)
        self.offline_scored: dict[str, dict[int, float]] = defaultdict(dict)  # key -> record index -> its reward
        if problems is None and c.train_data:
            problems = data.load_problems(c.train_data, format=c.train_data_format, template=c.prompt_template,
                                          require_answer=False, on_bad_record=c.on_bad_record,
                                          split="train" if gym.is_gym_source(c.train_data) else c.dataset_split,
                                          kwargs=c.train_data_kwargs, instruction=c.instruction,
                                          system_prompt=c.system_prompt)
        self.data_reports += [problems[1]] if problems else []
        self.prompt_ids: dict[str, list[int]] = {}
        self.prompt_texts: dict[str, str] = {}
        self.answers: dict[str, str | None] = {}
        self.raw_prompts: dict[str, data.Prompt] = {}  # the prompts as the data has them, for batched reward
        self.columns: dict[str, dict] = {}  # functions, and their data columns (`agro.rewards.functions`)
        self.problems: list[str] = []
        for p in problems[0] if problems else []:
            self._add_prompt(p.prompt, p.answer, f"{p.id}", "prompt", columns=p.columns,
                             truncate=c.truncate_prompts == "left")
        if offline is None and c.offline_data and c.offline_per_group > 0:
            offline = data.load_offline_records(c.offline_data, on_bad_record=c.on_bad_record, split=c.dataset_split)
        if offline is not None and c.offline_per_group > 0:
            self.data_reports.append(offline[1])
            self._add_offline(offline[0], take_prompts=problems is None, report=offline[1])
        if not self.problems:
            raise AgroError("no usable prompts: every record was skipped or the data is empty")
        self.skipped_records = sum(len(r.skipped) for r in self.data_reports)

    def notes(self) -> list[str]:
        """What a run says about its data at start: skipped, duplicated or unused records, truncated prompts."""
        notes = [r.summary() for r in self.data_reports if r.skipped or r.duplicates or r.unused]
        if self.truncated_prompts:
            notes.append(f"agro: {self.truncated_prompts} prompts longer than max_prompt_length were truncated from "
                         f"the left (to {self.config.max_prompt_length} tokens; truncate_prompts: error makes them "
                         "bad records)")
        return notes

    def _bad(self, where: str, field: str, reason: str, report: data.DataReport | None = None) -> None:
        """A bad record: raise it (on_bad_record: error) or count it as skipped."""
        file, _, line = where.rpartition(":")
        err = data.DataError(file, int(line) if line.isdigit() else None, field, reason)
        if self.config.on_bad_record == "error":
            raise err
        if report is not None:
            report.skipped.append(err)

    def _add_prompt(self, prompt, answer, where: str, field: str, report=None, columns=None,
                    truncate: bool = False) -> str | None:
        """Key a prompt, with its token ids, text and answer. Longer than max_prompt_length: with `truncate`
        (train_data prompts, truncate_prompts left) it keeps its last max_prompt_length tokens, as TRL does;
        else a bad record (an offline record's completion was written for the whole prompt)."""
        key = data.prompt_key(prompt)
        if key in self.prompt_ids:
            return key
        limit = self._max_chars["prompt"]
        if not truncate and limit is not None and text_chars(prompt) > limit:
            self._bad(where, field, f"prompt has {text_chars(prompt)} characters, more than max_prompt_length "
                      f"{self.config.max_prompt_length} tokens can hold ({limit} with this tokenizer)", report)
            return None
        ids = encode_prompt(self.tokenizer, prompt)
        if len(ids) > self.config.max_prompt_length:
            if not truncate:
                self._bad(where, field, f"prompt has {len(ids)} tokens, more than max_prompt_length "
                          f"{self.config.max_prompt_length}", report)
                return None
            self._whole_length[key] = len(ids)
            ids = ids[len(ids) - self.config.max_prompt_length:]
            self.truncated_prompts += 1
        self.prompt_ids[key] = ids
        self.prompt_texts[key] = prompt_text(self.tokenizer, prompt)
        self.answers[key] = answer
        self.raw_prompts[key], self.columns[key] = prompt, {"answer": answer, **(columns or {})}
        self.problems.append(key)
        return key

    def _add_offline(self, records: list[data.OfflineRecord], take_prompts: bool, report: data.DataReport) -> None:
        c = self.config
        needs_behavior = OBJECTIVES[c.objective].needs_behavior
        unused_prompts = set()
        for r in records:
            where = f"{r.file}:{r.line}"
            key = data.prompt_key(r.prompt)
            if key not in self.prompt_ids:
                if not take_prompts:
                    unused_prompts.add(key)  # prompts come from train_data; records of other prompts are not used
                    report.unused += 1
                    continue
                key = self._add_prompt(r.prompt, r.answer, where, "prompt", report)
                if key is None:
                    continue
            elif key in self._whole_length:  # a train_data prompt truncated: the record's is the whole prompt
                self._bad(where, "prompt", f"prompt has {self._whole_length[key]} tokens, more than max_prompt_length "
                          f"{c.max_prompt_length}", report)
                continue
            limit = self._max_chars["completion"]
            if limit is not None and len(r.completion) > limit:
                self._bad(where, "completion", f"completion has {len(r.completion)} characters, more than "
                          f"max_completion_length {c.max_completion_length} tokens can hold ({limit} with this "
                          "tokenizer)", report)
                continue
            sampled = self._sampled_ids(r)
            ids = sampled or completion_token_ids(self.tokenizer, r.completion, c.max_completion_length)
            if len(ids) > c.max_completion_length:
                self._bad(where, "completion_ids" if sampled else "completion", f"completion has {len(ids)} tokens, "
                          f"more than max_completion_length {c.max_completion_length}", report)
                continue
            behavior = None
            if r.behavior_logprobs is not None:  # checked for every objective; read by those that need them
                if r.completion_ids is not None and not sampled:
                    if needs_behavior:
                        self._bad(where, "completion_ids", "this tokenizer does not decode them to the completion "
                                  "(written with another tokenizer?): its behavior_logprobs, which count them, do "
                                  "not apply", report)
                        continue
                    allowed = (len(r.completion_ids),)  # another tokenizer's ids: the log-probs count them
                else:
                    # sampled ids count exactly; re-encoded text may lack the EOS the trainer appended (log μ 0 there)
                    allowed = (len(ids),) if sampled else (len(ids), len(ids) - 1)
                if len(r.behavior_logprobs) not in allowed:
                    self._bad(where, "behavior_logprobs", f"has {len(r.behavior_logprobs)} values for "
                              f"{allowed[-1]} completion tokens", report)
                    continue
                if needs_behavior:
                    behavior = torch.tensor(r.behavior_logprobs + [0.0] * (len(ids) - len(r.behavior_logprobs)))
            elif needs_behavior:
                self._bad(where, "behavior_logprobs", f"objective {c.objective} needs the generating policy's log-probs "
                          "for every offline record", report)
                continue
            self.offline_by_group[key].append(Generation(
                group=key, prompt_ids=self.prompt_ids[key], completion_ids=ids, source="offline",
                weight=c.offline_weight, reward=r.reward, answer=r.answer if r.answer is not None else self.answers[key],
                prompt=self.prompt_texts[key], completion=r.completion, behavior_logprobs=behavior,
            ))
        report.unused_prompts = len(unused_prompts)

    def _sampled_ids(self, record: data.OfflineRecord) -> list[int] | None:
        """A record's `completion_ids` when this tokenizer decodes them to its completion text, else None.

        They are the tokens that were sampled (`agro generate` keeps them): training on them trains on what
        the sampler produced, with behaviour log-probs that count the same tokens, and within the length
        limit that cut it. Re-encoding the text can give other tokens, and more of them."""
        ids = record.completion_ids
        if ids is None or max(ids) >= len(self.tokenizer):
            return None
        return ids if self.tokenizer.decode(ids, skip_special_tokens=True) == record.completion else None

    def next_keys(self, rank: int, world: int) -> list[str]:
        """This step's prompts for process `rank` of `world`: the next of the per-epoch permutations, none
        twice in a step, whole groups per process."""
        size = self._step_size(rank, world)
        drawn: list[int] = []
        while len(drawn) < size:
            order = self.order if self.order is not None else self._permutation()
            if drawn and self.position == 0:  # the step wraps into a new epoch
                moved = new_first(order, set(drawn), size - len(drawn))
                if moved != order:
                    order = self.order = moved
            take = min(size - len(drawn), len(order) - self.position)
            drawn += order[self.position : self.position + take]
            self.position += take
            if self.position >= len(order):
                self.epoch, self.position, self.order = self.epoch + 1, 0, None
        per_rank = len(drawn) // world
        return [self.problems[i] for i in drawn[rank * per_rank : (rank + 1) * per_rank]]

    def _permutation(self) -> list[int]:
        """The epoch's order as drawn from the seed."""
        seed = self.config.seed * 1_000_003 + self.epoch
        return torch.randperm(len(self.problems), generator=torch.Generator().manual_seed(seed)).tolist()

    def _step_size(self, rank: int, world: int) -> int:
        """prompts_per_step; with fewer prompts, each once (as many as split evenly over the processes), said once."""
        c, available = self.config, len(self.problems)
        if available >= c.prompts_per_step:
            return c.prompts_per_step
        size = available // world * world
        if size == 0:
            raise AgroError(f"config: key 'prompts_per_step': the data has {available} usable prompts, fewer than "
                            f"the {world} processes, each of which needs at least one a step")
        if rank == 0 and not self._warned_small:
            self._warned_small = True
            each = ("each of them once" if size == available
                    else f"{size} of them, none twice (split evenly over {world} processes)")
            warnings.warn(f"agro: the data has {available} usable prompts, fewer than prompts_per_step "
                          f"{c.prompts_per_step}: a step takes {each}", stacklevel=2)
        return size

    def state(self) -> dict:
        """The draw's place, for checkpoints: epoch, position, keys drawn ahead, `order` only where a wrap
        rearranged the epoch (else its seeded permutation is recomputed), and the offline records' rewards
        scored so far, where there are any."""
        kept = {"order": list(self.order)} if self.order is not None else {}
        if self.offline_scored:
            kept["offline_rewards"] = {k: [[i, r] for i, r in scored.items()] for k, scored in self.offline_scored.items()}
        return {"epoch": self.epoch, "position": self.position, "ahead": [list(k) for k in self.ahead], **kept}

    def load_state(self, state: dict) -> None:
        """A `state()`; one without "ahead", "order" or "offline_rewards" (an older checkpoint's) has none."""
        order = state.get("order")
        if order is not None and sorted(order) != list(range(len(self.problems))):
            raise AgroError(f"trainer_state.json: key 'order': an epoch of {len(order)} prompts, but the data has "
                            f"{len(self.problems)}: resume with the data the checkpoint was trained on")
        self.epoch, self.position, self.order = state["epoch"], state["position"], order
        self.ahead = [list(k) for k in state.get("ahead", [])]
        for key, scored in state.get("offline_rewards", {}).items():
            for i, reward in scored:
                self._keep_reward(key, i, reward)

    def take_keys(self, rank: int, world: int) -> list[str]:
        """The next batch's keys: the oldest drawn ahead (a resumed asynchronous run's), else new ones."""
        return self.ahead.pop(0) if self.ahead else self.next_keys(rank, world)

    def keep_offline(self, scored: list[tuple[Generation, int]]) -> None:
        """Keep the rewards of drawn offline records (each with its index in its group's records), so that a record
        drawn again later reuses its reward and is not scored twice (`state` saves them). Not their π_ref
        log-probs: a record's are computed in the batch it joins, whose padding moves their last bits, so a
        resumed run and a straight one compute the same ones."""
        for g, i in scored:
            self._keep_reward(g.group, i, g.reward)

    def _keep_reward(self, key: str, i: int, reward: float) -> None:
        self.offline_scored[key][i] = reward
        self.offline_by_group[key][i] = dataclasses.replace(self.offline_by_group[key][i], reward=reward)


def new_first(order: list[int], drawn: set[int], count: int) -> list[int]:
    """`order` with its first `count` entries not in `drawn` in front, and the ones they passed right after."""
    front: list[int] = []
    passed: list[int] = []
    for j, i in enumerate(order):
        if len(front) == count:
            return front + passed + order[j:]
        (passed if i in drawn else front).append(i)
    return front + passed
