"""Reward models as TRL's GRPOTrainer scores them: a `PreTrainedModel` for sequence classification
(AutoModelForSequenceClassification), or one loaded from a directory or hub id (`RewardModelSpec`), with its
tokenizer (TRL's `reward_processing_classes`; default the model's own).

Each sample's text is the prompt and its completion: ``prompt + completion`` for a text prompt (the prompt
as the policy saw it), and for chat messages the reward tokenizer's chat template over the messages and the
assistant's completion. Texts are tokenized without special tokens, padded on the right, and scored in
batches of `batch_size` on the model's device (the trainer's: `RunInputs` moves it there); the reward is
``logits[:, 0]``. A batch whose forward pass raises fails each of its samples (an "error"), a non-finite
logit is "non_finite", as for reward functions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from agro.rewards.functions import (
    RewardContext,
    RewardModelSpec,
    RewardResult,
    Samples,
    failed,
    one_line,
    outcomes,
)
from agro.rewards.workers import ScoringInterrupted


def check_reward_model(model) -> None:
    """ValueError unless `model` is a model for sequence classification (its class, or PEFT's wrapper of it)."""
    name = type(model).__name__
    if not name.endswith("ForSequenceClassification"):
        raise ValueError(f"a reward model must be for sequence classification (AutoModelForSequenceClassification, "
                         f"num_labels=1), got a {name}")


def is_reward_model(fn) -> bool:
    """`fn` is a reward model: a torch module, or a spec naming one (`RewardModelSpec`)."""
    return isinstance(fn, torch.nn.Module | RewardModelSpec)


def load_reward_model(source: str, trust_remote_code: bool = False):
    """AutoModelForSequenceClassification of a directory or hub id, with num_labels=1 (TRL's); ValueError in
    one line when it cannot be loaded."""
    from transformers import AutoModelForSequenceClassification

    try:
        return AutoModelForSequenceClassification.from_pretrained(source, num_labels=1,
                                                                  trust_remote_code=trust_remote_code)
    except Exception as error:
        raise ValueError(f"cannot load reward model {source!r} (a directory or hub id): {one_line(error)}") from None


def model_tokenizer(model, trust_remote_code: bool = False):
    """The tokenizer of the model's name or path (TRL's default); ValueError where it has none."""
    from transformers import AutoTokenizer

    source = getattr(model.config, "_name_or_path", "") or getattr(model, "name_or_path", "")
    if not source:
        raise ValueError(f"{type(model).__name__} was not loaded from a name or path: give its tokenizer in "
                         "reward_processing_classes")
    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except Exception as error:
        raise ValueError(f"cannot load the tokenizer of reward model {source!r}: {one_line(error)}; give it in "
                         "reward_processing_classes") from None


class RewardModelScorer:
    """Scores batches with a sequence-classification model, in the calling process (no time limit: a forward
    pass cannot hang). The interface of `agro.rewards.workers.RewardScorer` (`score_samples`, `name`,
    `should_stop`, `close`); a "call" is one batch of texts."""

    batched = True
    in_process = True

    def __init__(self, model, tokenizer=None, device=None, batch_size: int = 32, trust_remote_code: bool = False):
        """`model`: a PreTrainedModel or a `RewardModelSpec`; `tokenizer`: its tokenizer (default: loaded from
        the model's name or path); `device`: where it scores (default: where it is)."""
        if isinstance(model, RewardModelSpec):
            model = load_reward_model(model.name_or_path, trust_remote_code)
        check_reward_model(model)
        tokenizer = tokenizer if tokenizer is not None else model_tokenizer(model, trust_remote_code)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        # the model scores the last token that is not padding, found by this id (TRL sets it too)
        model.config.pad_token_id = tokenizer.pad_token_id
        self.model = model.eval() if device is None else model.to(device).eval()
        self.tokenizer, self.batch_size = tokenizer, batch_size
        source = getattr(model.config, "_name_or_path", "")
        self.name = self.spec = source.rstrip("/").split("/")[-1] if source else type(model).__name__
        self.should_stop: Callable[[], bool] | None = None
        self._closed = False

    def texts(self, samples: Samples) -> list[str]:
        """Each sample's prompt and completion as the reward model reads them."""
        out = []
        for i, prompt in enumerate(samples.prompts):
            if isinstance(prompt, list):
                if not getattr(self.tokenizer, "chat_template", None):
                    raise ValueError(f"reward model {self.name}: the prompts are chat messages and its tokenizer "
                                     "has no chat template; give one with a template in reward_processing_classes")
                messages = [*prompt, {"role": "assistant", "content": samples.completions[i]}]
                out.append(self.tokenizer.apply_chat_template(messages, tokenize=False))
            else:
                out.append((samples.prompt_texts or samples.prompts)[i] + samples.completions[i])
        return out

    @torch.inference_mode()
    def rewards(self, texts: list[str]) -> list[float]:
        """logits[:, 0] of each text, batch by batch."""
        device = next(self.model.parameters()).device
        scores = []
        for start in range(0, len(texts), self.batch_size):
            inputs = self.tokenizer(texts[start : start + self.batch_size], return_tensors="pt", padding=True,
                                    padding_side="right", add_special_tokens=False).to(device)
            scores += self.model(**inputs).logits[:, 0].float().tolist()
        return scores

    def score_samples(self, samples: Samples, max_failure_fraction: float | None = None,
                      on_result: Callable[[int, str, str | None], None] | None = None,
                      context: RewardContext | None = None) -> RewardResult:
        """Rewards of `samples` (`max_failure_fraction` and `context` are RewardScorer's: a reward model logs
        nothing, and stops nothing early)."""
        if self._closed:
            raise RuntimeError("RewardModelScorer is closed")
        count = len(samples.completions)
        result = RewardResult(rewards=[0.0] * count)
        texts = self.texts(samples)
        for start in range(0, count, self.batch_size):
            if self.should_stop is not None and self.should_stop():
                raise ScoringInterrupted("reward scoring stopped on request")
            size = min(self.batch_size, count - start)
            try:
                settled = outcomes(self.rewards(texts[start : start + size]), True, size)
            except Exception as error:
                settled = failed("error", one_line(error), size)
            result.calls += 1
            for index, (status, reward, detail) in enumerate(settled, start):
                result.record(index, status, reward, detail)
                if on_result is not None:
                    on_result(index, status, detail)
        return result

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> RewardModelScorer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
