"""Loading models and tokenizers: safetensors weights only, the checkpointed policy, LoRA merged for saving.

A built-in name or a `.gguf` file is converted once into a model folder first (`agro.model_sources`).

Pickled `.bin` weights are refused (`use_safetensors=True`): loading them runs arbitrary code.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from agro.errors import AgroError
from agro.model_sources import resolve_model

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def native_bf16(device_type: str) -> bool:
    """Whether the device computes bf16 matmuls natively: a GPU, or a CPU with avx512_bf16 or AMX (oneDNN's check;
    a torch build without it counts as no)."""
    if device_type == "cuda":
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def bf16_autocast(device_type: str, enabled: bool = True):
    """The `bf16` precision: bfloat16 autocast on `device_type` when enabled, else a no-op context (not
    autocast(enabled=False), which would switch off an enclosing autocast, such as accelerate's)."""
    return torch.autocast(device_type, dtype=torch.bfloat16) if enabled else nullcontext()


def load_model(path: str, dtype: str, trust_remote_code: bool):
    """A causal LM from safetensors weights only (pickled `.bin` weights are refused)."""
    path = resolve_model(path)
    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code,
                                                    use_safetensors=True)
    except (OSError, ValueError, KeyError) as err:
        raise AgroError(f"{path}: cannot load a causal LM: {str(err).splitlines()[0]}") from None


def load_tokenizer(path: str, trust_remote_code: bool):
    path = resolve_model(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as err:
        raise AgroError(f"{path}: cannot load a tokenizer: {str(err).splitlines()[0]}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_for_inference(path: str, dtype: str = "float32", device: str = "auto", trust_remote_code: bool = False):
    """(tokenizer, eval-mode model on `device`) for `agro eval` and `agro generate`; "auto" picks cuda if any."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        target = torch.device(device)
    except RuntimeError as err:
        raise AgroError(f"--device {device!r}: {err}") from None
    if target.type == "cuda" and not torch.cuda.is_available():
        raise AgroError(f"--device {device!r}: no CUDA device is available")
    tokenizer = load_tokenizer(path, trust_remote_code)
    model = load_model(path, dtype, trust_remote_code)
    return tokenizer, model.to(target).eval()


def disable_dropout(model) -> None:
    """Zero every dropout probability: nn.Dropout modules and the config fields attention layers read."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    for config in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        for name, value in vars(config).items():
            if ("dropout" in name or "pdrop" in name) and isinstance(value, float):
                setattr(config, name, 0.0)


def load_weights(model, path: Path, use_peft: bool) -> None:
    """The policy weights (or LoRA adapter) saved in checkpoint `path`, into `model` in place."""
    from safetensors.torch import load_file

    if use_peft:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(path / "adapter_model.safetensors"))
        return
    state = {}
    for f in sorted(path.glob("model*.safetensors")):
        state.update(load_file(f))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if "lm_head" not in m]:
        raise AgroError(f"{path}: checkpoint does not match the model ({len(missing)} missing, "
                        f"{len(unexpected)} unexpected tensors)")
    model.tie_weights()


def merged_copy(peft_model):
    """The base model with LoRA merged in, leaving the training model untouched."""
    import copy

    return copy.deepcopy(peft_model).merge_and_unload()
