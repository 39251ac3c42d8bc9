"""Task metrics and batch-1 latency on any runtime session, what the pipeline records
about every stage's artifact (measure_artifact), and MeasureSpec (a recipe's
`measure:` block), which says how every stage's artifact is measured.

numpy, rich and the sessions are imported inside the functions: recipe.py imports this
module for MeasureSpec, and `compress validate` must stay light."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from compress.bench.timing import latency_percentiles
from compress.data import iter_batches, pad_batch

if TYPE_CHECKING:
    import numpy as np

    from compress.sessions import Session


class MeasureSpec(BaseModel):
    """How every stage's artifact is measured after it is written."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threads: int = Field(2, ge=1, le=1024, description="Intra-op threads for torch and ONNX Runtime.")
    eval_batch_size: int = Field(64, ge=1, le=65536)
    latency_iterations: int = Field(50, ge=0, description="Batch-1 timed runs per stage (0: skip latency).")
    warmup: int = Field(5, ge=0)


def predict_outputs(session: Session, encoded: list[dict], batch_size: int, desc: str = "evaluating",
                    task=None) -> list[np.ndarray]:
    """The model's outputs for every feature, in the original order (batches are
    length-sorted); per-token outputs are trimmed to each feature's own tokens. With a task
    that has reduce_outputs, each batch is reduced to what its metrics need (raw outputs
    otherwise: what a parity check compares)."""
    from compress.progress import progress_bar
    from compress.tasks import per_example_outputs

    out: list[np.ndarray | None] = [None] * len(encoded)
    with progress_bar(desc, total=len(encoded)) as bar:
        for idx, batch in iter_batches(encoded, session.input_names, batch_size, session.pad_id):
            rows = per_example_outputs(task, session.run(batch), batch, [len(encoded[i]["input_ids"]) for i in idx])
            for i, row in zip(idx, rows):
                out[i] = row
            bar.advance(len(idx))
    return out


def evaluate_task(session: Session, encoded: list[dict], references: list, task, batch_size: int,
                  keep_predictions: bool = False) -> dict:
    """The task's metrics of the session's outputs, rounded for the record. keep_predictions:
    also each example's predicted label (`predictions`), where the task scores examples one by
    one (example_predictions), so two models compare example by example."""
    from compress.tasks import rounded

    outputs = predict_outputs(session, encoded, batch_size, task=task)
    result = rounded(task.metrics(outputs, encoded, references))
    if keep_predictions and hasattr(task, "example_predictions"):
        result["predictions"] = task.example_predictions(outputs, encoded)
    return result


class EvalSet:
    """The run's eval split: encoded once per tokenizer (artifacts of one run mostly share
    one), with the task's references. Every stage is measured on exactly these examples."""

    def __init__(self, task, dataset, max_length: int, trust_remote_code: bool = False):
        self.task, self.dataset, self.max_length = task, dataset, max_length
        self.trust_remote_code = trust_remote_code
        self.references = task.references(dataset)
        self._encoded: dict[int, list[dict]] = {}

    def encoded(self, artifact) -> list[dict]:
        """The eval split's features, made with the artifact's own tokenizer (cached per tokenizer files)."""
        from compress.models import load_tokenizer

        key = artifact.path / "tokenizer.json"
        key = key if key.exists() else artifact.path / "vocab.txt"
        sig = hash(key.read_bytes() if key.exists() else str(artifact.path).encode())
        if sig not in self._encoded:
            tokenizer = load_tokenizer(artifact.path, self.trust_remote_code)
            self._encoded[sig] = self.task.encode(tokenizer, self.dataset, self.max_length)
        return self._encoded[sig]

    def head(self, artifact, n: int | None) -> tuple[list[dict], list]:
        """Features and references of the first n eval examples (e.g. for a budget or parity slice)."""
        return first_examples(self.encoded(artifact), self.references, n)


def first_examples(features: list[dict], references: list, n: int | None) -> tuple[list[dict], list]:
    """The features and references of the first n examples (a long QA context has several
    features per example, all kept together)."""
    if n is None or n >= len(references):
        return features, references
    if features and "example" in features[0]:
        return [f for f in features if f["example"] < n], references[:n]
    return features[:n], references[:n]


def measure_latency(session: Session, encoded: list[dict], iterations: int, warmup: int, threads: int) -> dict:
    """Batch-1 latency over real eval examples (their own lengths, no padding), cycling
    through them in order; warm-up runs are excluded."""
    import numpy as np

    examples = [pad_batch([e], session.input_names, session.pad_id) for e in encoded[: max(iterations, 1)]]
    for i in range(warmup):
        session.run(examples[i % len(examples)])
    samples = []
    for i in range(iterations):
        batch = examples[i % len(examples)]
        start = time.perf_counter()
        session.run(batch)
        samples.append((time.perf_counter() - start) * 1000)
    lengths = [len(e["input_ids"]) for e in encoded[: len(examples)]]
    return {
        **latency_percentiles(samples, 3),
        "batch_size": 1,
        "iterations": iterations,
        "threads": threads,
        "median_tokens": int(np.median(lengths)),
    }


def count_artifact_parameters(artifact) -> dict:
    from compress.artifacts import ONNXModel

    if isinstance(artifact, ONNXModel):
        import numpy as np
        import onnx

        graph = onnx.load(str(artifact.onnx_path)).graph
        return {"parameters": int(sum(np.prod(t.dims) for t in graph.initializer))}
    from compress.models import count_parameters, load_model, model_structure

    model = load_model(artifact.path)
    structure = model_structure(model)
    return {**count_parameters(model), **({"structure": structure} if structure else {})}


def measure_artifact(artifact, eval_set: EvalSet, measure) -> dict:
    """What the pipeline records about every stage's artifact: size, parameters, the task's
    metrics on the eval split (with each example's label, where the task has them, so a stage
    is compared with its input example by example) and batch-1 latency, all with the same
    thread count."""
    from compress.artifacts import artifact_kind
    from compress.sessions import open_session

    encoded = eval_set.encoded(artifact)
    session = open_session(artifact, measure.threads)
    record = {
        "artifact": artifact_kind(artifact),
        "size_bytes": artifact.size_bytes(),
        **count_artifact_parameters(artifact),
        **evaluate_task(session, encoded, eval_set.references, eval_set.task, measure.eval_batch_size,
                        keep_predictions=True),
    }
    if measure.latency_iterations:
        record["latency"] = measure_latency(session, encoded, measure.latency_iterations, measure.warmup, measure.threads)
    return record
