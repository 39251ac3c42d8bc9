"""compress.label_agreement and compress.bench.compare: agreement and McNemar's exact test between two models' labels."""

from __future__ import annotations

import math

import pytest

from compress.bench.compare import compare_predictions, comparison_table
from compress.label_agreement import mcnemar_p


@pytest.mark.parametrize("only_a, only_b, expected", [
    (0, 0, 1.0),            # nothing to tell them apart
    (5, 5, 1.0),            # equal split: no evidence either way
    (0, 5, 2 / 32),         # all five to one side: 2 * (1/2)^5
    (3, 8, 2 * (1 + 11 + 55 + 165) / 2**11),
    (0, 20, 2 / 2**20),
])
def test_mcnemar_exact_p(only_a, only_b, expected):
    assert mcnemar_p(only_a, only_b) == pytest.approx(expected)
    assert mcnemar_p(only_b, only_a) == pytest.approx(expected)  # two-sided: symmetric


def test_mcnemar_matches_the_continuity_corrected_chi_square_for_many_discordant_examples():
    only_a, only_b = 40, 70  # exact 0.00545, the textbook approximation 0.00569
    z = (abs(only_b - only_a) - 1) / math.sqrt(only_a + only_b)
    assert mcnemar_p(only_a, only_b) == pytest.approx(math.erfc(z / math.sqrt(2)), rel=0.05)


def row(model, predictions, references, **refs):
    return {"model": model, "target": "ort-cpu", "predictions": predictions, "references": references, **refs}


def test_compare_counts_the_examples_only_one_model_gets_right():
    truth = [0, 1, 1, 0, 2, 2]
    ref = row("fp32", [0, 1, 0, 0, 1, 2], truth)
    int8 = row("int8", [0, 1, 1, 1, 0, 2], truth)
    found = compare_predictions(ref, int8)
    assert found["agreement"] == pytest.approx(3 / 6)  # examples 0, 1, 5
    assert found["only_model_right"] == 1 and found["only_reference_right"] == 1  # examples 2 and 3
    assert found["mcnemar_p"] == 1.0


def test_no_comparison_across_different_examples_or_without_predictions():
    assert compare_predictions(row("a", [0, 1], [0, 1]), row("b", [0, 1], [1, 1])) is None
    assert compare_predictions(row("a", [0, 1], [0, 1]), {"model": "b"}) is None


def test_table_compares_each_model_with_its_named_reference_and_the_export_with_the_baseline():
    truth = [1] * 10
    rows = [row("torch", [1] * 10, truth),
            row("export", [1] * 10, truth, ort_fp32_reference="export", baseline_reference="torch"),
            row("int8", [0] * 3 + [1] * 7, truth, ort_fp32_reference="export", baseline_reference="torch")]
    lines = comparison_table(rows).splitlines()
    assert lines[2] == "| export | ort-cpu | torch | 1.0000 | +0 | 0 / 0 | 1.000 |"
    assert lines[3] == "| int8 | ort-cpu | export | 0.7000 | -3 | 0 / 3 | 0.250 |"
    assert comparison_table([row("torch", [1], [1])]) == ""


def test_table_against_a_named_model():
    truth = [1] * 10
    rows = [row("peer", [0] * 2 + [1] * 8, truth), row("ours", [0] * 3 + [1] * 7, truth)]
    lines = comparison_table(rows, against="peer").splitlines()
    assert lines[0].startswith("| model | target | reference | agreement")
    assert lines[2:] == ["| ours | ort-cpu | peer | 0.9000 | -1 | 0 / 1 | 1.000 |"]
