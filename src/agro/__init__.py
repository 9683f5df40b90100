"""agro: RL fine-tuning of LLMs from on- and off-policy data with AGRO.

`from agro import AGROConfig, AGROTrainer` (`agro.api`). Both are imported on first use, so `import agro`
stays cheap (no torch) for the command line.
"""

__version__ = "0.1.0"
__all__ = ["AGROConfig", "AGROTrainer"]


def __getattr__(name: str):
    if name == "AGROConfig":
        from agro.config import AGROConfig

        return AGROConfig
    if name == "AGROTrainer":
        from agro.api import AGROTrainer

        return AGROTrainer
    raise AttributeError(f"module 'agro' has no attribute {name!r}")
