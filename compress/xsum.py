"""ROUGE-1/2/L of a causal LM's one-sentence summaries of XSum news articles.

The data: XSum's test slice in BIG-bench (1,001 BBC articles with their one-sentence
summaries), `bigbench/benchmark_tasks/gem/xsum/task.json` inside the bigbench 1.0.0 source
archive on PyPI. BIG-bench asks that its files never go into training corpora: the file is
extracted into the user's cache ($XDG_CACHE_HOME/compress/data/xsum/task.json), never into
the repository, and nothing here trains on it.

The protocol (fixed, so numbers compare across artifacts): the first `documents` articles in
file order, each cut to its first `document_tokens` tokens; the prompt is the chat template
applied to one user message "Summarize in one sentence:\n\n<article>"; greedy decoding, at most
`max_new_tokens` new tokens, ending at the model's eos; the summary is the generated text,
stripped. ROUGE F-measures (0-1) from Google's rouge-score package with the Porter stemmer
(rougeL: the longest common subsequence over the whole summary), averaged over articles."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from compress.errors import DataError

log = logging.getLogger(__name__)

MEMBER = "bigbench/benchmark_tasks/gem/xsum/task.json"
INSTRUCTION = "Summarize in one sentence:"
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def xsum_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "compress" / "data" / "xsum" / "task.json"


def _install(found: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".partial")
    shutil.copyfile(found, tmp)
    os.replace(tmp, dest)
    return dest


def extract_from_archive(archive: Path, dest: Path) -> Path:
    """Stream the bigbench source archive (a .tar.gz) and write only the XSum task file."""
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(MEMBER):
                with tempfile.TemporaryDirectory() as tmp:
                    tar.extract(member, tmp, filter="data")
                    return _install(Path(tmp) / member.name, dest)
    raise DataError(f"{archive}: no {MEMBER} in this archive (expected the bigbench 1.0.0 source archive)")


def download_and_extract(dest: Path) -> Path:
    """pip downloads the bigbench 1.0.0 source archive (358 MB) and unpacks it in a temporary
    directory; pip then refuses the package (it declares a file:// dependency), but --no-clean
    keeps the unpacked tree, from which the one file is copied. The tree is deleted after."""
    with tempfile.TemporaryDirectory(prefix="compress-xsum-") as tmp:
        env = {**os.environ, "TMPDIR": tmp}
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-clean", "bigbench==1.0.0",
               "-d", str(Path(tmp) / "dl")]
        log.info("downloading the bigbench 1.0.0 source archive (358 MB) for %s", MEMBER)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        archives = list((Path(tmp) / "dl").glob("bigbench-*.tar.gz"))
        if archives:  # a pip that saved the archive
            return extract_from_archive(archives[0], dest)
        found = [p for p in Path(tmp).rglob("task.json") if p.as_posix().endswith(MEMBER)]
        if not found:
            last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise DataError(f"pip download bigbench==1.0.0 gave no {MEMBER} ({last[0]})")
        return _install(found[0], dest)


def fetch_xsum(archive: Path | None = None, dest: Path | None = None) -> Path:
    """The XSum task file in the cache: already there, extracted from `archive`, or downloaded."""
    dest = dest or xsum_cache()
    if dest.is_file():
        return dest
    if archive is not None:
        return extract_from_archive(archive, dest)
    return download_and_extract(dest)


def load_xsum(path: Path, documents: int) -> list[tuple[str, str]]:
    """(article, reference summary) for the first `documents` examples, in file order."""
    try:
        examples = json.loads(path.read_text(encoding="utf-8"))["examples"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not BIG-bench's XSum task file ({type(e).__name__}: {e})") from None
    pairs = []
    for i, ex in enumerate(examples[:documents]):
        if not isinstance(ex.get("input"), str) or not isinstance(ex.get("target"), str):
            raise DataError(f"{path}: examples[{i}] has no input/target text")
        pairs.append((ex["input"], ex["target"]))
    return pairs


def cut_to_tokens(text: str, tokenizer, tokens: int) -> str:
    """The text up to the end of its `tokens`-th token (a tokenizers.Tokenizer)."""
    offsets = tokenizer.encode(text, add_special_tokens=False).offsets
    return text if len(offsets) <= tokens else text[: offsets[tokens - 1][1]]


def summary_messages(article: str) -> list[dict]:
    return [{"role": "user", "content": f"{INSTRUCTION}\n\n{article.strip()}"}]


def rouge(predictions: list[str], references: list[str]) -> dict:
    """Mean ROUGE-1/2/L F-measures (0-1) with stemming, and per-example scores."""
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise DataError("ROUGE needs the rouge-score package: pip install rouge-score "
                        "(it is in the 'train' extra)") from None
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    scores = [scorer.score(ref, pred) for pred, ref in zip(predictions, references)]
    means = {t: round(sum(s[t].fmeasure for s in scores) / len(scores), 5) for t in ROUGE_TYPES}
    return {**means, "per_example": [{t: round(s[t].fmeasure, 5) for t in ROUGE_TYPES} for s in scores]}


def evaluate_xsum(summarize: Callable[[list[list[dict]]], list[str]], tokenizer, path: Path, documents: int = 50,
                  document_tokens: int = 400) -> dict:
    """ROUGE of `summarize` (chat messages per article -> summary text) on the XSum subset;
    tokenizer (a tokenizers.Tokenizer) cuts the articles. Per example: its index in the file,
    a hash of the generated summary (two models wrote the same text or not) and its scores;
    no text: summaries quote their articles, and BIG-bench's text is not to be redistributed."""
    import hashlib

    pairs = load_xsum(path, documents)
    articles = [cut_to_tokens(a, tokenizer, document_tokens) for a, _ in pairs]
    predictions = [p.strip() for p in summarize([summary_messages(a) for a in articles])]
    scores = rouge(predictions, [ref for _, ref in pairs])
    return {**{t: scores[t] for t in ROUGE_TYPES}, "documents": len(pairs), "document_tokens": document_tokens,
            # the references stay out: BIG-bench's text is not to be redistributed with results
            "examples": [{"document": i, "summary_sha256": hashlib.sha256(pred.encode()).hexdigest(), **s}
                         for i, (pred, s) in enumerate(zip(predictions, scores["per_example"]))]}


def predictor_summarizer(predictor, max_new_tokens: int = 48, batch_size: int = 4) -> Callable:
    """Greedy chat summaries from a packaged model (compress.runtime.Predictor)."""
    def summarize(conversations: list[list[dict]]) -> list[str]:
        return [r["text"] for r in predictor.generate(conversations, max_new_tokens=max_new_tokens, chat=True,
                                                      batch_size=batch_size)]
    return summarize


def torch_summarizer(model_dir: Path, max_new_tokens: int = 48, threads: int = 2) -> Callable:
    """The same greedy chat summaries from a transformers checkpoint (generate, do_sample=False),
    one article at a time: the float reference for the packaged models."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def summarize(conversations: list[list[dict]]) -> list[str]:
        out = []
        for messages in conversations:
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
            with torch.inference_mode():
                new = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                     do_sample=False)[0, ids.shape[1]:]
            out.append(tokenizer.decode(new, skip_special_tokens=True))
        return out
    return summarize
