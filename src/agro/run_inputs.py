"""What a run trains on: given as Python objects (`agro.AGROTrainer`), else named by the config's keys.

`Trainer` reads every input from here, so `agro train CONFIG` and the Python API share one path: the
config names files and specs, and `resolve` loads whatever was not given as an object. Reward functions
become scorers here: a reward model (a `PreTrainedModel` for sequence classification, or a spec naming its
directory or hub id) a `RewardModelScorer` on the trainer's device, anything else a `RewardScorer`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import agro.data as data
from agro.config import TrainConfig
from agro.errors import AgroError
from agro.evaluate import load_eval_problems
from agro.models import load_tokenizer
from agro.rewards.functions import RewardModelSpec, function_name, is_model_spec
from agro.rewards.reward_models import RewardModelScorer, check_reward_model, is_reward_model
from agro.rewards.scoring import WeightedRewards
from agro.rewards.workers import RewardScorer


@dataclass
class RunInputs:
    """A run's inputs; None: from the config (model_name_or_path, train_data, offline_data, eval_data,
    reward_function and reward_weights)."""

    model: object | None = None  # a loaded causal LM (PreTrainedModel)
    tokenizer: object | None = None
    problems: tuple[list[data.Problem], data.DataReport] | None = None
    offline: tuple[list[data.OfflineRecord], data.DataReport] | None = None
    eval_problems: list[data.Problem] | None = None
    reward_funcs: list | None = None  # spec strings, callables and reward models
    callbacks: list = field(default_factory=list)  # transformers.TrainerCallback instances or classes
    rewards: WeightedRewards | None = None  # the reward functions' scorers (`resolve`)
    # TRL's: a tokenizer, or one for each reward function (used for reward models; None: the model's own)
    reward_processing_classes: object | None = None
    device: object | None = None  # where reward models score (the trainer's device; `resolve`)
    _reward_models: dict = field(default_factory=dict, repr=False)  # loaded ones, by position: (model, tokenizer)

    def __post_init__(self):
        """Reward models and their tokenizers checked now, before any model or worker starts."""
        count = 1 if self.reward_funcs is None else len(self.reward_funcs)
        classes = self.reward_processing_classes
        if isinstance(classes, list | tuple) and len(classes) != count:
            raise AgroError(f"reward_processing_classes: {len(classes)} for {count} reward function"
                            f"{'s' if count != 1 else ''} (give one for each, None where a function needs none)")
        for i, fn in enumerate(self.reward_funcs or []):
            if is_reward_model(fn) and not isinstance(fn, RewardModelSpec):
                try:
                    check_reward_model(fn)
                except ValueError as err:
                    raise AgroError(f"reward_funcs[{i}]: {err}") from None

    def resolve(self, config: TrainConfig, device=None) -> RunInputs:
        """Every input but the model and data (loaded by `Learner` and `PromptPool`): the tokenizer, the held-out
        problems (at most eval_max_problems) and the reward functions, which start their worker processes
        (reward models move to `device`, kept for later `reward_functions`)."""
        c = config
        self.device = device if device is not None else self.device
        tokenizer = self.tokenizer or load_tokenizer(c.tokenizer_name_or_path or c.model_name_or_path,
                                                     c.trust_remote_code)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        eval_problems = load_eval_problems(c) if self.eval_problems is None else self.eval_problems
        if self.eval_problems is not None and c.eval_max_problems:
            eval_problems = eval_problems[: c.eval_max_problems]
        return RunInputs(self.model, tokenizer, self.problems, self.offline, eval_problems, self.reward_funcs,
                         self.callbacks, self.reward_functions(c), self.reward_processing_classes, self.device,
                         self._reward_models)

    def reward_functions(self, config: TrainConfig) -> WeightedRewards:
        """Scorers of reward_funcs (default: the config's reward_function), weighted by reward_weights; their
        worker processes start now, and reward models load (once) onto `device`."""
        c = config
        funcs = [c.reward_function] if self.reward_funcs is None else self.reward_funcs
        where = [reward_source(fn, self.reward_funcs is not None) for fn in funcs]
        classes = self.reward_processing_classes
        classes = list(classes) if isinstance(classes, list | tuple) else [classes] * len(funcs)
        scorers = []
        try:
            for i, (fn, named) in enumerate(zip(funcs, where)):
                try:
                    if is_reward_model(fn) or (isinstance(fn, str) and is_model_spec(fn)):
                        scorers.append(self._reward_model(i, fn, classes[i], c))
                    else:
                        scorers.append(RewardScorer(fn, timeout=c.reward_timeout, num_workers=c.reward_workers))
                except ValueError as err:
                    raise AgroError(f"{named}: {err}") from None
            return WeightedRewards(scorers, c.reward_weights, where)
        except AgroError:
            for scorer in scorers:
                scorer.close()
            raise

    def _reward_model(self, i: int, fn, tokenizer, config: TrainConfig) -> RewardModelScorer:
        """The scorer of reward model `fn` (position i): loaded and moved to `device` the first time."""
        if i not in self._reward_models:
            source = RewardModelSpec(fn) if isinstance(fn, str) else fn
            scorer = RewardModelScorer(source, tokenizer, self.device, config.mini_batch_size, config.trust_remote_code)
            self._reward_models[i] = (scorer.model, scorer.tokenizer)
            return scorer
        model, tokenizer = self._reward_models[i]
        return RewardModelScorer(model, tokenizer, None, config.mini_batch_size)


def reward_source(fn, given: bool) -> str:
    """What an error of reward function `fn` names: the config key, or (given in Python) the function."""
    if not given:
        return "config: key 'reward_function'"
    if isinstance(fn, str):
        return f"reward function {fn!r}"
    return f"reward model {type(fn).__name__}" if is_reward_model(fn) else f"reward function {function_name(fn)}"
