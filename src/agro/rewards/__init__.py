"""Rewards: what a completion answers, what a right answer is, how reward functions are called, where their
calls run, and how a batch is scored.

    answers.py    what a completion states as its answer, and whether the length limit cut it
    verifiers.py  gold answers, answer equivalence, the built-in per-sample rewards
    functions.py  reward functions by spec or as callables, their two calling conventions, Samples, RewardResult
    workers.py    RewardScorer: one function's calls in worker processes, with a hard per-call time limit
    scoring.py    a batch's rewards: WeightedRewards (several functions summed with weights), failures, cut completions
"""
