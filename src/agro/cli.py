"""The `agro` command line: `agro tabular | train | eval | generate | demo`.

User errors (bad flags, config, data) are printed as one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from agro.config import CHOICES, FIELDS, out_of_bounds
from agro.errors import AgroError
from agro.tasks import TASK_NAMES


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (no usage dump) with exit code 2."""

    def error(self, message: str):
        raise AgroError(f"{self.prog}: {message}")


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


TABULAR_HELP = "exact tabular lab: convergence to π* from on- and off-policy data"


def _add_tabular(sub) -> None:
    # imports torch: built only when tabular runs (build_parser)
    from agro.tabular import METHODS, TabularConfig

    d = TabularConfig()
    p = sub.add_parser(
        "tabular",
        help=TABULAR_HELP,
        description="One prompt, K actions, softmax policy started at π_ref. Plots KL(π_t‖π*)/KL(π_ref‖π*).",
    )
    p.add_argument("--actions", type=int, default=d.actions, help="number of actions K (≥ 2)")
    p.add_argument("--beta", type=float, default=d.beta, help="KL coefficient β (> 0)")
    p.add_argument("--data", default=d.data, help="on-policy | reference | mixed | fixed | lagged")
    p.add_argument("--lag", type=int, default=d.lag, help="lagged: the data is π of `lag` updates before")
    p.add_argument("--epsilon", type=float, default=d.epsilon, help="grpo, and agro with taper clip: clip range")
    p.add_argument("--alpha", type=float, default=d.alpha, help="mixed: fraction of data from π_ref")
    p.add_argument("--mu", type=_floats, default=None, help="fixed: data distribution, K comma-separated probabilities")
    p.add_argument("--mode", default=d.mode, help="exact (expected gradients) | sampled (M draws per step)")
    p.add_argument("--samples", type=int, default=d.samples, help="sampled: draws per step M")
    p.add_argument("--steps", type=int, default=d.steps, help="gradient steps")
    p.add_argument("--lr", type=float, default=d.lr, help="step size on the logits")
    p.add_argument("--optimizer", default=d.optimizer, help="sgd (plain steps) | adam")
    p.add_argument("--max-grad-norm", type=float, default=None, help="clip the gradient's norm to this first (default: no clipping)")
    p.add_argument("--lr-decay", default=d.lr_decay, help="none | inverse_sqrt | inverse (lr/(1+t/τ))")
    p.add_argument("--lr-decay-steps", type=float, default=d.lr_decay_steps, help="τ of the decay")
    p.add_argument("--seed", type=int, default=d.seed, help="draws r ~ U(0,1) and π_ref logits ~ N(0,1)")
    p.add_argument("--reward", type=_floats, default=None, help="K comma-separated rewards instead of random")
    p.add_argument("--ref-policy", type=_floats, default=None, help="K comma-separated π_ref probabilities")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--taper", default=d.taper, help="agro: none | ref (negative records weighted by min(1, π/π_ref) "
                   "when no sample is fresh) | behavior (also by min(1, π/μ)) | clip (lagged: a trust region on π/μ)")
    p.add_argument("--asymre-delta", type=float, default=d.asymre_delta, help="asymre: baseline shift δ below V̂^μ")
    p.add_argument("--out", type=Path, default=Path("runs/tabular"), help="output directory")
    p.set_defaults(func=_run_tabular)


def _run_tabular(args) -> int:
    from rich.console import Console
    from rich.table import Table

    import agro.tabular as tabular

    config = tabular.TabularConfig(
        actions=args.actions, beta=args.beta, data=args.data, alpha=args.alpha, mode=args.mode,
        samples=args.samples, steps=args.steps, lr=args.lr, lr_decay=args.lr_decay,
        lr_decay_steps=args.lr_decay_steps, seed=args.seed,
        methods=[m.strip() for m in args.methods.split(",") if m.strip()],
        mu=args.mu, reward=args.reward, ref_policy=args.ref_policy, taper=args.taper,
        asymre_delta=args.asymre_delta, lag=args.lag, epsilon=args.epsilon,
        optimizer=args.optimizer, max_grad_norm=args.max_grad_norm,
    )
    config.validate()
    results = tabular.run(config)
    json_path, png_path = tabular.write_outputs(results, args.out)
    table = Table(title=f"normalised KL(π‖π*) — data={config.data}, mode={config.mode}, β={config.beta}")
    table.add_column("method")
    table.add_column("final", justify="right")
    table.add_column("min over run", justify="right")
    for name, res in results["methods"].items():
        table.add_row(name, f"{res['normalized_kl'][-1]:.3e}", f"{min(res['normalized_kl']):.3e}")
    console = Console()
    console.print(table)
    console.print(f"wrote {json_path} and {png_path}")
    return 0


def _add_train(sub) -> None:
    from agro.config import describe_keys

    p = sub.add_parser(
        "train",
        help="RL fine-tuning of a causal LM from on-policy, replayed and offline data",
        description="Train with a YAML config. Every key (also settable with --set key=value):\n\n" + describe_keys()
        + "\n\nExample configs: configs/demo.yaml (CPU), configs/*.yaml (GPU).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", type=Path, nargs="?", help="YAML config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (value parsed as YAML); repeatable")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in output_dir")
    p.set_defaults(func=_run_train)


def _run_train(args) -> int:
    from agro.config import load_config

    config = load_config(args.config, args.overrides)  # before the heavy imports: a typo is reported at once
    from agro.api import AGROTrainer

    trainer = AGROTrainer(config.model_name_or_path, args=config)  # the Python API's trainer: one code path
    metrics = trainer.train(resume_from_checkpoint=args.resume).metrics
    trainer = trainer.engine
    if trainer.interrupted is not None:  # stopped by SIGTERM/SIGINT after saving: 128 + the signal, as a shell says
        if trainer.accelerator.is_main_process:
            then = (f"continue with --resume (outputs in {config.output_dir})" if trainer.step
                    else "no step had finished; nothing was kept")
            print(f"agro: interrupted by {signal.Signals(trainer.interrupted).name} at step {trainer.step}; {then}",
                  file=sys.stderr)
        return 128 + trainer.interrupted
    if trainer.accelerator.is_main_process:
        import agro.report as report

        summary = {k: v for k, v in metrics.items() if k in ("step", "loss", "kl", "reward/on_policy", "eval/accuracy")}
        print(f"agro: done; {summary}; outputs in {config.output_dir}")
        rows = report.read_rows(Path(config.output_dir))
        if line := report.accuracy_line(rows):
            print(f"agro: {line}")
        curves = Path(config.output_dir) / "curves.png"
        if report.plot_curves(rows, curves, f"{config.model_name_or_path} on {config.eval_data}, {config.objective}"):
            print(f"agro: wrote {curves}")
    return 0


def _add_eval(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="accuracy (greedy) or pass@k / mean@k (sampling) of a model on a problem set",
        description="Evaluate a model on problems (MATH-, GSM8K-style or generic prompt/answer records). "
        "Writes JSON with overall and per-category accuracy and every completion.",
    )
    _add_problem_flags(p, "problem set (jsonl/json/parquet, datasets name, or reasoning_gym:NAME: its held-out "
                       "split)", "reasoning_gym:NAME: create_dataset's arguments, e.g. '{\"size\": 200, \"seed\": 1}'")
    _add_prompt_flags(p, split="test", helps=EVAL_HELP)
    p.add_argument("--reward", default=None, help="exact | math | reasoning_gym | module:function | file.py:function "
                   "(default: " + TRAINED_DEFAULT + "reasoning_gym for reasoning_gym: data, else math)")
    p.add_argument("--num-samples", type=int, default=1, help="k samples per problem (k > 1: pass@k with sampling)")
    _add_sampling_flags(p, when=" (k > 1)", helps=EVAL_HELP)
    p.add_argument("--truncated-completions", default=None, choices=CHOICES["truncated_completions"],
                   help=TRUNCATED_HELP)
    p.add_argument("--max-problems", type=int, default=0, help="evaluate the first N problems (0: all)")
    p.add_argument("--batch-size", type=int, default=64, help="sequences per generate call")
    p.add_argument("--backend", default="hf", choices=CHOICES["generation_backend"], help="hf | vllm")
    p.add_argument("--dtype", default="float32", choices=CHOICES["torch_dtype"], help="model dtype")
    p.add_argument("--device", default="auto", help="auto (cuda when available) | cpu | cuda | cuda:N")
    p.add_argument("--reward-timeout", type=float, default=None, help=REWARD_TIMEOUT_HELP)
    p.add_argument("--trust-remote-code", action="store_true", help="allow custom model code")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--out", type=Path, default=Path("eval.json"), help="output JSON")
    p.set_defaults(func=_run_eval)


TRAINED_DEFAULT = "what the model was trained with, from MODEL/agro.json, else "
MODEL_HELP = "smollm2-135m-instruct (built in), a .gguf file, a model directory or a hub id"
TRUNCATED_HELP = ("keep: score a completion cut at the length limit as it is; zero, mask: it scores 0 (default: "
                  + TRAINED_DEFAULT + "zero)")
REWARD_TIMEOUT_HELP = "seconds per reward call (default: " + TRAINED_DEFAULT + "10)"
DEFAULTS = {"prompt_template": "plain", "instruction": None, "system_prompt": None, "reward": None,
            "max_completion_length": 512, "truncated_completions": "zero", "reward_timeout": 10.0}
# agro eval of a model agro did not train: the chat template when its tokenizer has one (prompt_template None:
# decided in _problems_from_flags), and the training config's length
EVAL_DEFAULTS = {**DEFAULTS, "prompt_template": None,
                 "max_completion_length": FIELDS["max_completion_length"].default}
EVAL_HELP = {
    "prompt_template": "plain | chat | raw (default: " + TRAINED_DEFAULT + "chat when the model's tokenizer has a "
                       "chat template, else plain)",
    "instruction": "plain, chat: the line after each problem ('' for none; default: " + TRAINED_DEFAULT
                   + "none with the tokenizer's chat template, the \\boxed{} instruction with plain)",
    "max_completion_length": "maximum generated tokens (default: " + TRAINED_DEFAULT
                             + f"{FIELDS['max_completion_length'].default}, the training config's)",
}
FROM_TRAINING = {"prompt_template": "prompt_template", "instruction": "instruction", "system_prompt": "system_prompt",
                 "reward": "reward_function", "max_completion_length": "max_completion_length",
                 "truncated_completions": "truncated_completions", "reward_timeout": "reward_timeout"}
PROMPT_KEYS = ("prompt_template", "instruction", "system_prompt")


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}: {err}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _add_problem_flags(p, data_help: str, kwargs_help: str) -> None:
    """`agro eval`'s and `agro generate`'s model and problem set."""
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--data", required=True, help=data_help)
    p.add_argument("--data-kwargs", type=_json_object, default=None, metavar="JSON", help=kwargs_help)


def _add_prompt_flags(p, split: str, helps: dict | None = None) -> None:
    """The problem set's format and split, and how its prompts are written; `helps`: flags' own help texts."""
    helps = helps or {}
    p.add_argument("--format", default="auto", help="auto | math | gsm8k | generic")
    p.add_argument("--split", default=split, help="split, for datasets hub names")
    p.add_argument("--prompt-template", default=None, help=helps.get("prompt_template", "plain | chat | raw "
                   "(default: " + TRAINED_DEFAULT + "plain)"))
    p.add_argument("--instruction", default=None, help=helps.get("instruction", "plain, chat: the line after each "
                   "problem ('' for none; default: " + TRAINED_DEFAULT + "the \\boxed{} instruction)"))
    p.add_argument("--system-prompt", default=None, help="chat: a system message (default: " + TRAINED_DEFAULT
                   + "the model's own)")


def _add_sampling_flags(p, when: str, helps: dict | None = None) -> None:
    """How completions are sampled; `when`: the help's note on when sampling applies; `helps`: flags' own help
    texts."""
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature" + when)
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold" + when)
    p.add_argument("--max-completion-length", type=int, default=None, help=(helps or {}).get(
        "max_completion_length", "maximum generated tokens (default: " + TRAINED_DEFAULT + "512)"))


def _trained_defaults(args, keys: tuple[str, ...], defaults: dict = DEFAULTS) -> tuple[dict, list[str]]:
    """Unset flags take what the model was trained with (`agro.json`, written by `agro train` into final/
    and checkpoints), else `defaults`. A trained system prompt goes with the chat template
    only; the reasoning_gym reward with reasoning_gym: data only (else the data's default reward); a model
    trained before truncated_completions existed scored its cut completions (keep). Returns agro.json's
    values ({} without one) and the settings it took ("key=value")."""
    from agro.config import default_reward

    path = Path(args.model) / "agro.json"
    trained = {}
    if path.is_file():
        try:
            trained = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise AgroError(f"{path}: cannot read: {err}") from None
        if not isinstance(trained, dict):
            raise AgroError(f"{path}: expected a JSON object")
        trained.setdefault("truncated_completions", "keep")
        if trained.get("reward_function") == "reasoning_gym" and default_reward(args.data) != "reasoning_gym":
            trained.pop("reward_function")
    taken = []
    for key in keys:
        if key == "system_prompt" and args.prompt_template != "chat":
            continue
        if getattr(args, key) is None:
            value = trained.get(FROM_TRAINING[key])
            if value is not None:
                taken.append(f"{key}={value}")
            setattr(args, key, defaults[key] if value is None else value)
    return trained, taken


def _python_rewards(trained: dict) -> bool:
    """The model was trained with reward functions given in Python (agro.json: reward_function null)."""
    return "reward_function" in trained and trained["reward_function"] is None


def _problems_from_flags(args):
    """Check the flags `agro eval` and `agro generate` share, then load the problem set they name. Unlike a
    training run's held-out set (`agro.evaluate.load_eval_problems`), --split is taken as given (reasoning_gym:
    "train" is its training split, which `agro generate` reads) and a bad record is always an error."""
    import agro.data as data

    for flag in ("num_samples", "num_generations", "max_completion_length", "batch_size"):
        if getattr(args, flag, 1) < 1:
            raise AgroError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if args.max_problems < 0:
        raise AgroError(f"--max-problems must be ≥ 0 (0: all), got {args.max_problems}")
    for flag, key in (("temperature", "temperature"), ("top_p", "top_p"), ("format", "train_data_format"),
                      ("prompt_template", "prompt_template")):  # the config's bounds and choices
        if getattr(args, flag) is None:
            continue
        problem = out_of_bounds(key, getattr(args, flag))
        if problem:
            raise AgroError(f"--{flag.replace('_', '-')} {problem}")
    model_error = None
    if args.prompt_template is None:  # agro eval, neither flag nor agro.json: what the model's tokenizer takes
        try:
            _model_template(args)
        except AgroError as err:  # reported after the data's own errors, as when the template is given
            model_error, args.prompt_template = err, "plain"
    if args.system_prompt is not None and args.prompt_template != "chat":
        raise AgroError(f"--system-prompt applies to --prompt-template chat only, got {args.prompt_template}")
    problems, _ = data.load_problems(args.data, format=args.format, template=args.prompt_template,
                                     require_answer=True, split=args.split, kwargs=args.data_kwargs,
                                     instruction=args.instruction, system_prompt=args.system_prompt)
    if model_error is not None:
        raise model_error
    return problems[: args.max_problems] if args.max_problems else problems


def _model_template(args) -> None:
    """The chat template, with no added instruction, for a model whose tokenizer has one; else plain."""
    from agro.models import has_chat_template

    args.prompt_template = "chat" if has_chat_template(args.model, args.trust_remote_code) else "plain"
    if args.prompt_template == "chat" and args.instruction is None:
        args.instruction = ""


def _eval_settings(args, taken: list[str]) -> str:
    """The one line `agro eval` prints before it starts: how prompts are written, the length, reward and k, and
    which of them agro.json gave."""
    from agro.data import INSTRUCTION

    instruction = (None if args.prompt_template == "raw" else "none" if args.instruction == ""
                   else "\\boxed{} (default)" if args.instruction in (None, INSTRUCTION) else repr(args.instruction))
    k = args.num_samples
    parts = [f"prompt_template={args.prompt_template}", instruction and f"instruction={instruction}",
             args.system_prompt is not None and f"system_prompt={args.system_prompt!r}",
             f"max_completion_length={args.max_completion_length}", f"reward={args.reward}",
             f"truncated_completions={args.truncated_completions}",
             "k=1 (greedy)" if k == 1 else f"k={k} (temperature={args.temperature}, top_p={args.top_p})"]
    line = "agro: eval with " + ", ".join(p for p in parts if p)
    if taken:
        line += f"; as the model was trained ({Path(args.model) / 'agro.json'}): " + ", ".join(
            t.split("=", 1)[0] for t in taken)
    return line


def _run_eval(args) -> int:
    from agro.config import default_reward

    trained, taken = _trained_defaults(args, (*PROMPT_KEYS, "reward", "max_completion_length",
                                              "truncated_completions", "reward_timeout"), EVAL_DEFAULTS)
    if args.reward is None and _python_rewards(trained):
        raise AgroError(f"{args.model}: trained with reward functions given in Python, which agro.json cannot name; "
                        "give --reward")
    args.reward = args.reward or default_reward(args.data)
    problems = _problems_from_flags(args)  # before the heavy imports (unless the template is the model's to say)
    import torch
    from rich.console import Console
    from rich.table import Table

    from agro.evaluate import evaluate
    from agro.generators import make_generator
    from agro.models import load_for_inference
    from agro.rewards.workers import open_scorer

    with open_scorer(args.reward, args.reward_timeout) as scorer:  # a bad reward spec fails before the model loads
        tokenizer, model = load_for_inference(args.model, args.dtype, args.device, args.trust_remote_code)
        print(_eval_settings(args, taken), file=sys.stderr)  # once nothing is left to refuse
        torch.manual_seed(args.seed)
        generator = make_generator(args.backend, tokenizer, args.max_completion_length, args.temperature,
                                   args.top_p, args.batch_size, model_name_or_path=args.model)
        result = evaluate(model, tokenizer, problems, scorer, args.max_completion_length,
                          num_samples=args.num_samples, generator=generator, progress=True,
                          truncated_completions=args.truncated_completions)
    result["model"], result["data"] = args.model, args.data
    result["args"] = {k: v for k, v in vars(args).items() if k not in ("func", "out", "command")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    k = result["num_samples"]
    table = Table(title=f"{args.model} on {args.data} ({len(problems)} problems)")
    table.add_column("category")
    table.add_column("greedy accuracy" if k == 1 else f"pass@{k}", justify="right")
    for cat, acc in result["by_category"].items():
        table.add_row(cat, f"{acc:.3f}")
    table.add_row("all", f"{result[f'pass@{k}']:.3f}")
    console = Console()
    console.print(table)
    if k > 1:
        console.print(f"mean@{k} = {result[f'mean@{k}']:.3f}")
    if result["reward_failures"]:
        console.print(f"{result['reward_failures']} reward calls failed and scored 0 (an error, a time-out or a "
                      f"non-finite value; reward {args.reward})")
    console.print(f"wrote {args.out}")
    return 0


def _add_generate(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="write an offline JSONL of a model's generations (the format agro train reads)",
        description="Sample completions of any model for a problem set and write offline records "
        "(prompt, completion, answer, reward, source, behavior_logprobs) to train on later.",
    )
    _add_problem_flags(p, "problem set (reasoning_gym:NAME: its training split)",
                       "reasoning_gym:NAME: create_dataset's arguments")
    p.add_argument("--out", type=Path, required=True, help="output JSONL (must not exist)")
    _add_prompt_flags(p, split="train")
    p.add_argument("--num-generations", type=int, default=4, help="completions per problem")
    _add_sampling_flags(p, when="")
    p.add_argument("--max-problems", type=int, default=0, help="use the first N problems (0: all)")
    p.add_argument("--reward", default=None, help="also score with exact | math | reasoning_gym | module:function "
                   "(default: the reward the model was trained with, from MODEL/agro.json, else none)")
    p.add_argument("--no-reward", action="store_true", help="do not score, even with the trained reward")
    p.add_argument("--truncated-completions", default=None, choices=CHOICES["truncated_completions"],
                   help=TRUNCATED_HELP)
    p.add_argument("--reward-timeout", type=float, default=None, help=REWARD_TIMEOUT_HELP)
    p.add_argument("--source", default=None, help="source tag (default: the model path)")
    p.add_argument("--batch-size", type=int, default=64, help="sequences per generate call")
    p.add_argument("--dtype", default="float32", choices=CHOICES["torch_dtype"], help="model dtype")
    p.add_argument("--device", default="auto", help="auto (cuda when available) | cpu | cuda | cuda:N")
    p.add_argument("--trust-remote-code", action="store_true", help="allow custom model code")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.set_defaults(func=_run_generate)


def _run_generate(args) -> int:
    from agro.sample_records import write_generations

    if args.out.exists():
        raise AgroError(f"{args.out}: already exists; choose another --out (nothing is overwritten)")
    if args.no_reward and args.reward:
        raise AgroError("--reward and --no-reward: choose one")
    keys = (*PROMPT_KEYS, "max_completion_length", "truncated_completions", "reward_timeout") + (
        () if args.no_reward else ("reward",))
    trained, taken = _trained_defaults(args, keys)  # without a trained reward: no scoring
    if taken:
        print(f"agro: as the model was trained ({Path(args.model) / 'agro.json'}): {', '.join(taken)}",
              file=sys.stderr)
    if args.reward is None and not args.no_reward and _python_rewards(trained):
        print(f"agro: {args.model} was trained with reward functions given in Python: records are not scored "
              "(give --reward to score them)", file=sys.stderr)
    problems = _problems_from_flags(args)
    count = write_generations(args, problems)
    print(f"agro: wrote {count} records to {args.out}")
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="train a tiny reasoning model on a CPU with AGRO from on- and off-policy data",
        description="Builds π_ref (cached), writes its generations as offline data, trains with AGRO on mixed "
        "on-policy + offline data (configs/demo.yaml), and compares held-out accuracy.",
    )
    p.add_argument("--quick", action="store_true", help="a short run (for tests): fewer steps and problems")
    p.add_argument("--task", default="arithmetic", choices=TASK_NAMES, help="built-in task (default: arithmetic)")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output directory")
    p.add_argument("--seed", type=int, default=0, help="task and training seed")
    p.add_argument("--cache-dir", type=Path, default=None, help="where π_ref is cached (default ~/.cache/agro/demo)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of configs/demo.yaml")
    p.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
    from agro.demo import run_demo

    run_demo(args.out, quick=args.quick, seed=args.seed, cache_dir=args.cache_dir, overrides=args.overrides,
             task=args.task)
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `agro` parser. `command`: the subcommand about to run, when known. The tabular parser imports
    torch to build; for another command it is only named, so that a bad config or flag is reported
    before torch is imported (seconds)."""
    parser = _Parser(prog="agro", description="RL fine-tuning of LLMs from on- and off-policy data with AGRO.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_train(sub)
    _add_eval(sub)
    _add_generate(sub)
    if command in (None, "tabular"):
        _add_tabular(sub)
    else:
        sub.add_parser("tabular", help=TABULAR_HELP)
    _add_demo(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    try:
        args = build_parser(command).parse_args(argv)
        return args.func(args)
    except AgroError as err:
        print(f"agro: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("agro: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
