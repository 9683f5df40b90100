"""Rewards: what a completion answers, what a right answer is, how reward functions are called, where their
calls run, and how a batch is scored.

    answers.py        what a completion states as its answer, and whether the length limit cut it
    verifiers.py      gold answers, answer equivalence, the built-in per-sample rewards
    functions.py      reward functions by spec or as callables, their two calling conventions, TRL's keywords
                      (trainer_state, log_metric, log_extra, truncated), async functions, Samples, RewardResult
    in_process.py     calls in the trainer's process (as TRL makes them), with a time limit where one can be kept
    workers.py        RewardScorer: one function's calls, in process or in worker processes (specs, `isolated`)
    reward_models.py  RewardModelScorer: a sequence-classification model as a reward, as TRL scores one
    scoring.py        a batch's rewards: WeightedRewards (several functions summed with weights), failures, cut
                      completions, and the warnings of a run without reward signal
"""
