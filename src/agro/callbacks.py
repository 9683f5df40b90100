"""`transformers.TrainerCallback` hooks around a run, as HF's Trainer calls them.

Each hook is called as `callback.on_X(args, state, control, **kwargs)`: `args` is the run's AGROConfig
(it has TrainingArguments' names: output_dir, max_steps, logging_steps, save_steps, eval_steps, seed...),
`state` a `transformers.TrainerState` (global_step = optimizer steps taken, max_steps, log_history: every
logged row), `control` a `transformers.TrainerControl`; kwargs are model, processing_class, optimizer and
lr_scheduler, plus `logs` (on_log) or `metrics` (on_evaluate).

Hooks called: on_init_end (once the run's parts are built, at the first train, evaluate or save_model),
on_train_begin, on_step_begin and on_step_end (around each optimizer step), on_log, on_evaluate, on_save,
and on_train_end (at the end of a finished run, and when SIGTERM/SIGINT stops it after its checkpoint; not
after an error). Not called: on_epoch_begin/end, on_substep_end, on_pre_optimizer_step, on_optimizer_step,
on_prediction_step.

Control flags: only `control.should_training_stop` is honoured: set by any hook, it ends the run after
the current step as a finished one (checkpoint, final evaluation, final/). should_save, should_evaluate
and should_log are ignored: checkpoints, evaluations and metric rows follow save_steps, eval_steps and
logging_steps. `state.log_history` holds the rows logged since the trainer was built (not those of the
run before a resume). Trackers (TensorBoard, wandb) stay accelerate's (`agro.tracking`): callbacks are for
the user's own code.
"""

from __future__ import annotations

from transformers import TrainerControl, TrainerState


class Callbacks:
    """The callbacks of `trainer` (an `agro.trainer.Trainer`) with one TrainerState and TrainerControl."""

    def __init__(self, callbacks: list, args, trainer):
        self.callbacks, self.args, self.trainer = [c() if isinstance(c, type) else c for c in callbacks], args, trainer
        main = trainer.accelerator.is_main_process
        self.state = TrainerState(max_steps=args.max_steps, logging_steps=args.logging_steps,
                                  eval_steps=args.eval_steps, save_steps=args.save_steps,
                                  is_local_process_zero=trainer.accelerator.is_local_main_process,
                                  is_world_process_zero=main)
        self.control = TrainerControl()
        self.call("init_end", 0)

    def call(self, event: str, step: int, **kwargs) -> None:
        """`on_<event>` of every callback, at `step` optimizer steps; a returned control replaces the run's."""
        self.state.global_step = step
        t = self.trainer
        objects = {"model": t.policy, "processing_class": t.tokenizer, "optimizer": t.learner.optimizer,
                   "lr_scheduler": t.learner.scheduler}
        for callback in self.callbacks:
            returned = getattr(callback, f"on_{event}")(self.args, self.state, self.control, **objects, **kwargs)
            self.control = returned if isinstance(returned, TrainerControl) else self.control

    def log(self, step: int, logs: dict) -> None:
        """A logged row: into state.log_history, then on_log."""
        self.state.log_history.append(dict(logs))
        self.call("log", step, logs=logs)

    @property
    def should_stop(self) -> bool:
        return self.control.should_training_stop
