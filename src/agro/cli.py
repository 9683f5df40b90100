"""The `agro` command line: `agro tabular | train | eval | generate | demo`.

User errors (bad flags, config, data) are printed as one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agro.errors import AgroError


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (no usage dump) with exit code 2."""

    def error(self, message: str):
        raise AgroError(f"{self.prog}: {message}")


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _add_tabular(sub) -> None:
    from agro.tabular import METHODS, TabularConfig

    d = TabularConfig()
    p = sub.add_parser(
        "tabular",
        help="exact tabular lab: convergence to π* from on- and off-policy data",
        description="One prompt, K actions, softmax policy started at π_ref. Plots KL(π_t‖π*)/KL(π_ref‖π*).",
    )
    p.add_argument("--actions", type=int, default=d.actions, help="number of actions K (≥ 2)")
    p.add_argument("--beta", type=float, default=d.beta, help="KL coefficient β (> 0)")
    p.add_argument("--data", default=d.data, help="on-policy | reference | mixed | fixed")
    p.add_argument("--alpha", type=float, default=d.alpha, help="mixed: fraction of data from π_ref")
    p.add_argument("--mu", type=_floats, default=None, help="fixed: data distribution, K comma-separated probabilities")
    p.add_argument("--mode", default=d.mode, help="exact (expected gradients) | sampled (M draws per step)")
    p.add_argument("--samples", type=int, default=d.samples, help="sampled: draws per step M")
    p.add_argument("--steps", type=int, default=d.steps, help="gradient steps")
    p.add_argument("--lr", type=float, default=d.lr, help="step size on the logits")
    p.add_argument("--lr-decay", default=d.lr_decay, help="none | inverse_sqrt | inverse (lr/(1+t/τ))")
    p.add_argument("--lr-decay-steps", type=float, default=d.lr_decay_steps, help="τ of the decay")
    p.add_argument("--seed", type=int, default=d.seed, help="draws r ~ U(0,1) and π_ref logits ~ N(0,1)")
    p.add_argument("--reward", type=_floats, default=None, help="K comma-separated rewards instead of random")
    p.add_argument("--ref-policy", type=_floats, default=None, help="K comma-separated π_ref probabilities")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--out", type=Path, default=Path("runs/tabular"), help="output directory")
    p.set_defaults(func=_run_tabular)


def _run_tabular(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from agro import tabular

    config = tabular.TabularConfig(
        actions=args.actions, beta=args.beta, data=args.data, alpha=args.alpha, mode=args.mode,
        samples=args.samples, steps=args.steps, lr=args.lr, lr_decay=args.lr_decay,
        lr_decay_steps=args.lr_decay_steps, seed=args.seed,
        methods=[m.strip() for m in args.methods.split(",") if m.strip()],
        mu=args.mu, reward=args.reward, ref_policy=args.ref_policy,
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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="agro", description="RL fine-tuning of LLMs from on- and off-policy data with AGRO.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_tabular(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except AgroError as err:
        print(f"agro: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("agro: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
