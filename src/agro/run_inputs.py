"""What a run trains on: given as Python objects (`agro.AGROTrainer`), else named by the config's keys.

`Trainer` reads every input from here, so `agro train CONFIG` and the Python API share one path: the
config names files and specs, and `resolve` loads whatever was not given as an object.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import agro.data as data
from agro.config import TrainConfig
from agro.errors import AgroError
from agro.evaluate import load_eval_problems
from agro.models import load_tokenizer
from agro.rewards.functions import function_name
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
    reward_funcs: list | None = None  # spec strings and callables
    callbacks: list = field(default_factory=list)  # transformers.TrainerCallback instances or classes
    rewards: WeightedRewards | None = None  # the reward functions' scorers (`resolve`)

    def resolve(self, config: TrainConfig) -> RunInputs:
        """Every input but the model and data (loaded by `Learner` and `PromptPool`): the tokenizer, the held-out
        problems (at most eval_max_problems) and the reward functions, which start their worker processes."""
        c = config
        tokenizer = self.tokenizer or load_tokenizer(c.tokenizer_name_or_path or c.model_name_or_path,
                                                     c.trust_remote_code)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        eval_problems = load_eval_problems(c) if self.eval_problems is None else self.eval_problems
        if self.eval_problems is not None and c.eval_max_problems:
            eval_problems = eval_problems[: c.eval_max_problems]
        return RunInputs(self.model, tokenizer, self.problems, self.offline, eval_problems, self.reward_funcs,
                         self.callbacks, self.reward_functions(c))

    def reward_functions(self, config: TrainConfig) -> WeightedRewards:
        """Scorers of reward_funcs (default: the config's reward_function), weighted by reward_weights; their
        worker processes start now."""
        c = config
        funcs = [c.reward_function] if self.reward_funcs is None else self.reward_funcs
        where = [reward_source(fn, self.reward_funcs is not None) for fn in funcs]
        scorers = []
        try:
            for fn, named in zip(funcs, where):
                try:
                    scorers.append(RewardScorer(fn, timeout=c.reward_timeout, num_workers=c.reward_workers))
                except ValueError as err:
                    raise AgroError(f"{named}: {err}") from None
            return WeightedRewards(scorers, c.reward_weights, where)
        except AgroError:
            for scorer in scorers:
                scorer.close()
            raise


def reward_source(fn, given: bool) -> str:
    """What an error of reward function `fn` names: the config key, or (given in Python) the function."""
    if not given:
        return "config: key 'reward_function'"
    return f"reward function {fn!r}" if isinstance(fn, str) else f"reward function {function_name(fn)}"
