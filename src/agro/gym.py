"""reasoning-gym tasks as agro problem sets: `train_data: reasoning_gym:NAME` with `train_data_kwargs`.

    problems = reasoning_gym.create_dataset(NAME, size=…, seed=…, **kwargs), entry i = its i-th item

Training and held-out problems never share a question: a question belongs to the held-out split when
the hash of its text falls below HELDOUT_FRACTION (the same for every seed and size), and each split
keeps only its own questions, the first `size` distinct ones. The two splits also draw from different
seeds by default (DEFAULT_SEED). Training prompts always come from the training split and evaluation
from the held-out one, whatever `dataset_split` / `eval_split` say (they name splits of hub datasets).

The gold answer travels as JSON of the whole entry (task, answer, metadata), so that the task's own
verifier, `dataset.score_answer(answer, entry)`, can score a completion in a reward worker process:
that is the reward `reasoning_gym` (`agro.rewards.answers.final_answer` of the completion, then the verifier).
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any

from agro.errors import AgroError
from agro.rewards.answers import final_answer

PREFIX = "reasoning_gym:"
HELDOUT_FRACTION = 0.25
DEFAULT_SIZE = {"train": 1000, "heldout": 200}
DEFAULT_SEED = {"train": 0, "heldout": 1}
SCAN_FACTOR = 20  # items generated per problem wanted, at most, before a split settles for fewer


def is_gym_source(source: object) -> bool:
    return isinstance(source, str) and source.startswith(PREFIX)


def split_of(question: str) -> str:
    """"heldout" for a HELDOUT_FRACTION share of questions by the hash of their text, else "train"."""
    h = int.from_bytes(hashlib.sha256(question.encode()).digest()[:8], "big") / 2**64
    return "heldout" if h < HELDOUT_FRACTION else "train"


def _module():
    try:
        import reasoning_gym
    except ImportError:
        raise AgroError("reasoning_gym: data needs the package reasoning-gym: pip install reasoning-gym") from None
    return reasoning_gym


def task_names() -> list[str]:
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


def load_entries(source: str, kwargs: dict[str, Any] | None, split: str) -> list[dict[str, Any]]:
    """The first `size` distinct questions of `split` ("train" or "heldout") of task `reasoning_gym:NAME`."""
    name = source[len(PREFIX):]
    rg = _module()
    if name not in task_names():
        close = [t for t in task_names() if name and t.startswith(name[:3])][:5]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise AgroError(f"{source}: unknown reasoning-gym task {name!r}{hint}")
    kwargs = dict(kwargs or {})
    size, seed = kwargs.pop("size", DEFAULT_SIZE[split]), kwargs.pop("seed", DEFAULT_SEED[split])
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise AgroError(f"{source}: size must be a positive integer, got {size!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise AgroError(f"{source}: seed must be an integer, got {seed!r}")
    try:
        dataset = rg.create_dataset(name, size=SCAN_FACTOR * size + 100, seed=seed, **kwargs)
    except (TypeError, ValueError, AssertionError) as err:
        raise AgroError(f"{source}: cannot create the task with {kwargs}: {str(err).splitlines()[0]}") from None
    entries: dict[str, dict] = {}
    for i in range(len(dataset)):
        try:
            entry = dataset[i]
        except (TypeError, ValueError, AssertionError) as err:
            raise AgroError(f"{source}: cannot generate a problem with {kwargs}: {str(err).splitlines()[0]}") from None
        if split_of(entry["question"]) == split:
            entries.setdefault(entry["question"], entry)
            if len(entries) == size:
                break
    if not entries:
        raise AgroError(f"{source}: no {split} problems among {len(dataset)} generated")
    return list(entries.values())


def encode_answer(entry: dict[str, Any]) -> str:
    """The entry as the gold answer string: JSON of task name, question, answer and metadata."""
    return json.dumps({"reasoning_gym": entry["metadata"]["source_dataset"], "question": entry["question"],
                       "answer": entry["answer"], "metadata": entry["metadata"]}, default=str)


def decode_answer(answer: str | None) -> dict[str, Any] | None:
    """The entry an encoded gold answer carries, with its task name, or None for any other answer."""
    if not isinstance(answer, str) or not answer.startswith('{"reasoning_gym":'):
        return None
    try:
        value = json.loads(answer)
    except ValueError:
        return None
    return {"question": value["question"], "answer": value["answer"], "metadata": value["metadata"],
            "task": value["reasoning_gym"]}


@functools.cache
def _score_fn(task: str):
    return _module().get_score_answer_fn(task)


def reward(prompt: str, completion: str, answer: str | None) -> float:
    """The task's own verifier on the completion's final answer; 0 when it states none."""
    entry = decode_answer(answer)
    if entry is None:
        raise ValueError("reward 'reasoning_gym' needs reasoning_gym: data (its gold answers carry the task entry)")
    prediction = final_answer(completion)
    if prediction is None:
        return 0.0
    return float(_score_fn(entry["task"])(prediction, entry))
