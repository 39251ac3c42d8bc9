"""`prune_vocabulary`: keep only the word-embedding rows the task's text uses.

A fine-tuned encoder carries its pre-training vocabulary (30,527 rows × 768 in MPNet-base:
23.4M parameters, a fifth of the teacher and half of a 4-layer student), most of which a
task's text never reaches. The stage counts the token ids of the train split as the model's
own tokenizer encodes it, keeps those seen `min_count` times (plus the special tokens and,
with `characters`, every one-character piece), and writes the model with only those rows and
a tokenizer whose vocabulary holds only those tokens, renumbered.

Why the train split's text is tokenized exactly as before: WordPiece takes the longest piece
in the vocabulary at each step and Unigram the most probable segmentation; both pick from a
subset the same pieces they picked from the whole when those pieces are all kept. A text with
a word made of pieces that were dropped is split into shorter pieces (or characters) instead:
its outputs change. The stage records how much of the eval split that touches.

BPE vocabularies (GPT-2, RoBERTa) are refused: a BPE token is built by merges through
intermediate tokens that the counted text never shows. So are models with a head over the
vocabulary (causal and masked LMs)."""

from __future__ import annotations

import json
import logging
from collections import Counter
from typing import Literal

from pydantic import Field

from compress.artifacts import Artifact, TorchModel
from compress.errors import StageError
from compress.stages.base import StageConfig

log = logging.getLogger(__name__)
PRUNABLE = ("WordPiece", "Unigram")
CONFIG_TOKEN_IDS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id",
                    "decoder_start_token_id")


class PruneVocabularyStage(StageConfig):
    kind: Literal["prune_vocabulary"]
    min_count: int = Field(1, ge=1, description="Keep a token the train split's text uses at least this many times "
                                                "(as the model's tokenizer encodes it, truncation included).")
    characters: bool = Field(True, description="Also keep every one-character piece, so that a word made of "
                                               "dropped pieces still splits into characters, never into the "
                                               "unknown token.")

    def check_task(self, task) -> None:
        if task.name == "causal-lm":
            raise ValueError("prune_vocabulary: a causal LM predicts over its whole vocabulary; the stage is for "
                             "encoders (classification, token classification, question answering)")

    def run(self, model: Artifact, ctx) -> TorchModel:
        from compress.models import load_tokenizer

        tokenizer = load_tokenizer(model.path, ctx.recipe.trust_remote_code)
        spec = _tokenizer_json(tokenizer)
        net = ctx.task.load_model(model.path, ctx.splits.label_names, ctx.recipe.trust_remote_code)
        if net.get_output_embeddings() is not None:
            raise StageError(f"prune_vocabulary: {type(net).__name__} has a head over its vocabulary; only the input "
                             "embedding of an encoder can be pruned")
        rows = net.get_input_embeddings().num_embeddings
        if len(tokenizer) > rows:  # ids past the table would have no row to keep
            raise StageError(f"prune_vocabulary: the tokenizer in {model.path} has {len(tokenizer)} tokens but the "
                             f"model's word embedding only {rows} rows")
        max_length = ctx.recipe.data.max_length
        counts = _id_counts(ctx.task.encode(tokenizer, ctx.splits.train, max_length))
        seen = {i for i, c in counts.items() if c >= self.min_count}
        special = set(tokenizer.all_special_ids) | {t["id"] for t in spec["added_tokens"]}
        single = _one_character_ids(spec) if self.characters else set()
        keep = sorted(seen | special | single)
        new_id = {old: new for new, old in enumerate(keep)}

        coverage = _coverage(ctx.encoded_eval(model), new_id)  # the eval features the run measures the input on
        log.info("prune_vocabulary: %d of %d embedding rows kept (%d seen in train); the eval split keeps %.1f%% "
                 "of its tokens, %.1f%% of its examples every token", len(keep), rows, len(seen),
                 100 * coverage["tokens_kept"], 100 * coverage["examples_unchanged"])
        ctx.record(input=ctx.input_summary(), vocabulary={
            "tokenizer_model": spec["model"]["type"], "rows_before": rows, "rows_after": len(keep),
            "kept_seen_in_train": len(seen), "kept_special": len(special), "kept_one_character": len(single),
            "min_count": self.min_count, "eval_coverage": coverage,
        })
        _prune_embedding_(net, keep, new_id)
        pruned = _pruned_tokenizer(tokenizer, spec, new_id)
        if ctx.main_process:
            net.save_pretrained(ctx.artifact_dir)
            pruned.save_pretrained(ctx.artifact_dir)
            saved = load_tokenizer(ctx.artifact_dir, ctx.recipe.trust_remote_code)
            _check_same_tokens(ctx.task, saved, tokenizer, ctx.splits.train, max_length, new_id)
        return TorchModel(ctx.artifact_dir)


# ---------------------------------------------------------------------------- counting


def _tokenizer_json(tokenizer) -> dict:
    if not getattr(tokenizer, "is_fast", False):
        raise StageError(f"prune_vocabulary: {type(tokenizer).__name__} is a slow tokenizer; the stage rewrites a "
                         "fast tokenizer's tokenizer.json")
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    kind = spec["model"]["type"]
    if kind not in PRUNABLE:
        raise StageError(f"prune_vocabulary: the tokenizer's model is {kind}; only {' and '.join(PRUNABLE)} "
                         "vocabularies can be pruned (a BPE token is built through merges of tokens the text "
                         "never shows)")
    return spec


def _id_counts(features: list[dict]) -> Counter:
    counts = Counter()
    for f in features:
        counts.update(f["input_ids"])
    return counts


def _one_character_ids(spec: dict) -> set[int]:
    """WordPiece: 'a' and '##a'; Unigram: 'a' and '▁a' (the word-start marker plus one character)."""
    model = spec["model"]
    if model["type"] == "WordPiece":
        prefix = model["continuing_subword_prefix"]
        return {i for t, i in model["vocab"].items() if len(t) == 1 or (t.startswith(prefix)
                                                                         and len(t) == len(prefix) + 1)}
    return {i for i, (piece, _) in enumerate(model["vocab"]) if len(piece.lstrip("▁")) <= 1}


def _coverage(features: list[dict], new_id: dict[int, int]) -> dict:
    """How much of the eval split's text keeps its tokens: the share of its token ids that are
    kept, and of its examples whose every token is kept (tokenized as before, same outputs)."""
    tokens = sum(len(f["input_ids"]) for f in features)
    kept = sum(i in new_id for f in features for i in f["input_ids"])
    whole = sum(all(i in new_id for i in f["input_ids"]) for f in features)
    return {"tokens_kept": round(kept / max(tokens, 1), 4),
            "examples_unchanged": round(whole / max(len(features), 1), 4)}


# ---------------------------------------------------------------------------- rewriting


def _prune_embedding_(net, keep: list[int], new_id: dict[int, int]) -> None:
    """Keep the rows `keep` of the word embedding (in place) and renumber the config's token ids."""
    import torch

    old = net.get_input_embeddings()
    cfg = net.config
    pad = new_id.get(cfg.pad_token_id) if getattr(cfg, "pad_token_id", None) is not None else None
    emb = torch.nn.Embedding(len(keep), old.embedding_dim, padding_idx=pad, dtype=old.weight.dtype)
    with torch.no_grad():
        emb.weight.copy_(old.weight[torch.tensor(keep)])
    net.set_input_embeddings(emb)
    embeddings = getattr(net.base_model, "embeddings", None)
    if embeddings is not None and getattr(embeddings, "padding_idx", None) is not None:
        embeddings.padding_idx = pad  # MPNet and RoBERTa number positions from it
    for name in CONFIG_TOKEN_IDS:
        value = getattr(cfg, name, None)
        if isinstance(value, int):
            if value not in new_id:
                raise StageError(f"prune_vocabulary: the config's {name} ({value}) is not a token the tokenizer "
                                 "keeps")
            setattr(cfg, name, new_id[value])
    cfg.vocab_size = len(keep)


def _pruned_tokenizer(tokenizer, spec: dict, new_id: dict[int, int]):
    """The same tokenizer class with its vocabulary cut to `new_id` and every id it stores
    (added tokens, post-processor, padding, Unigram's unk_id) renumbered."""
    import copy

    from tokenizers import Tokenizer

    spec = json.loads(json.dumps(spec))  # a copy to rewrite
    model = spec["model"]
    if model["type"] == "WordPiece":
        model["vocab"] = {t: new_id[i] for t, i in sorted(model["vocab"].items(), key=lambda kv: kv[1])
                          if i in new_id}
    else:
        model["vocab"] = [entry for i, entry in enumerate(model["vocab"]) if i in new_id]
        if model.get("unk_id") is not None:
            model["unk_id"] = new_id[model["unk_id"]]
    for token in spec["added_tokens"]:
        token["id"] = new_id[token["id"]]
    _renumber_post_processor_(spec.get("post_processor"), new_id)
    if spec.get("padding"):
        spec["padding"]["pad_id"] = new_id[spec["padding"]["pad_id"]]
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer._tokenizer = Tokenizer.from_str(json.dumps(spec))  # no public setter for the backend
    tokenizer.vocab_file = None  # the slow tokenizer's file holds the whole vocabulary: never save it
    return tokenizer


def _renumber_post_processor_(processor: dict | None, new_id: dict[int, int]) -> None:
    if not processor:
        return
    kind = processor.get("type")
    if kind == "Sequence":
        for inner in processor["processors"]:
            _renumber_post_processor_(inner, new_id)
    elif kind == "TemplateProcessing":
        for special in processor["special_tokens"].values():
            special["ids"] = [new_id[i] for i in special["ids"]]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        for key in ("sep", "cls"):
            processor[key] = [processor[key][0], new_id[processor[key][1]]]


def _check_same_tokens(task, pruned, original, train, max_length: int, new_id: dict[int, int], n: int = 512) -> None:
    """The saved tokenizer must encode the train text whose tokens are all kept as the original
    did, renumbered (see the module's docstring); a difference is a bug in the rewrite."""
    subset = train.subset(list(range(min(n, len(train)))))
    before, after = task.encode(original, subset, max_length), task.encode(pruned, subset, max_length)
    for row, (a, b) in enumerate(zip(before, after)):
        if all(i in new_id for i in a["input_ids"]) and b["input_ids"] != [new_id[i] for i in a["input_ids"]]:
            raise StageError(f"prune_vocabulary: the pruned tokenizer encodes train row {row} differently "
                             f"({b['input_ids'][:12]}... vs {[new_id[i] for i in a['input_ids'][:12]]}...)")
