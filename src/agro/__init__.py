"""agro: RL fine-tuning of LLMs from on- and off-policy data with AGRO."""

__version__ = "0.1.0"
