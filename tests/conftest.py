"""Shared fixtures: a tiny locally-built model and data for the trainer tests."""

import json

import pytest
import torch

from agro.tasks.arithmetic import ArithmeticTask, build_model, build_tokenizer, generate_problems, solve


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and two threads crawl when another process holds a core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def assets(tmp_path_factory):
    """A 1-layer Llama with the arithmetic tokenizer, 12 problems, and 4 offline records per problem
    (with behaviour log-probs, so is_pg can train on them)."""
    root = tmp_path_factory.mktemp("assets")
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    model = build_model(ArithmeticTask(hidden_size=32, num_layers=1, num_heads=2), tokenizer)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    problems = generate_problems(12, seed=0, split="train")
    with open(root / "train.jsonl", "w") as f:
        for p in problems:
            f.write(json.dumps({"prompt": p.prompt, "answer": p.answer}) + "\n")
    with open(root / "two.jsonl", "w") as f:  # a prompt set that repeats every step, for replay
        for p in problems[:2]:
            f.write(json.dumps({"prompt": p.prompt, "answer": p.answer}) + "\n")
    with open(root / "offline.jsonl", "w") as f:
        for p in problems:
            right = solve(p)
            for k in range(4):  # exactly 4 distinct records per prompt: equal group sizes
                completion = right if k == 0 else right.replace("A=", "A=" + str(k))
                f.write(json.dumps({"prompt": p.prompt, "completion": completion, "answer": p.answer,
                                    "reward": 1.0 if k == 0 else 0.0,
                                    "behavior_logprobs": [-1.0] * len(completion)}) + "\n")
    return root


@pytest.fixture(scope="module")  # seeded where a module first asks for it, as when each module built its own
def chain_sum_model(tmp_path_factory):
    """A 1-layer, 16-wide Llama with the arithmetic task's character tokenizer and room for chain_sum's prompts."""
    import dataclasses

    from agro.tasks.arithmetic import ArithmeticTask, build_model

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    settings = dataclasses.replace(ArithmeticTask(hidden_size=16, num_layers=1, num_heads=2), max_positions=256)
    path = tmp_path_factory.mktemp("tiny") / "model"
    build_model(settings, tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
