"""Run agro's Trainer under whatever accelerate launched, print how the policy was wrapped, and the losses."""
import sys

from agro.config import load_config
from agro.trainer import Trainer

if __name__ == "__main__":  # reward workers are spawned and re-import this file
    resume = "--resume" in sys.argv
    trainer = Trainer(load_config(None, [a for a in sys.argv[1:] if a != "--resume"]), resume=resume)
    metrics = trainer.train()
    if trainer.accelerator.is_main_process:
        print("WRAP", trainer.accelerator.distributed_type, type(trainer.model).__name__,
              "step", metrics["step"], "loss", metrics["loss"], "reward", metrics.get("reward/on_policy"))
