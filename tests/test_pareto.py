"""benchmarks/pareto.py: the experiment's design constraints, the LR sweep's grid, the
loss-to-FLOPs interpolation behind every claim, and one real run end to end."""

import argparse
import json
import math
import os
import subprocess
import sys

import pytest

from benchmarks import pareto
from groupbert_tf import flops

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _args(tmp_path, **overrides):
    args = pareto.parse_args(["list", "--results", str(tmp_path)])
    return argparse.Namespace(**{**vars(args), **overrides})


def _result(run, final_loss, curve=None, training_flops=1.0):
    curve = curve or [(1, 1.0, final_loss)]
    points = [{"step": s, "flops": f, "mlm_loss": loss} for s, f, loss in curve]
    return {"name": run.name, "group": run.group, "family": run.family, "size": run.size,
            "preset_family": run.preset_family, "learning_rate": run.learning_rate,
            "seed": run.seed, "training_flops": training_flops, "curve": points,
            "final": points[-1]}


def _write(tmp_path, result):
    path = tmp_path / f"{result['name']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))


def test_sizes_meet_the_issue_constraints():
    """Adjacent BERT sizes >= 2x apart in training FLOPs; MLM decoder < 30% of them."""
    bert = [pareto.size_config("bert", size) for size in pareto.SIZE_ORDER]
    costs = [flops.training_flops(c, 128, 20) for c in bert]
    assert all(b >= 2 * a for a, b in zip(costs, costs[1:]))
    for family in ("bert", "groupbert"):
        for size in pareto.SIZE_ORDER:
            parts = flops.forward_flops_breakdown(pareto.size_config(family, size), 128, 20)
            assert parts["mlm_decoder"] < 0.3 * sum(parts.values())


def test_flops_to_reach_interpolates_log_linearly_and_takes_the_cheapest_curve():
    # Loss falls 4 -> 2 while FLOPs go 1e12 -> 1e14: loss 3 is at the geometric mean, 1e13.
    slow = [(1e12, 4.0), (1e14, 2.0)]
    assert pareto._flops_to_reach([slow], 3.0) == pytest.approx(1e13)
    fast = [(1e12, 3.5), (1e13, 2.5)]  # Reaches 3.0 at 10^12.5.
    assert pareto._flops_to_reach([slow, fast], 3.0) == pytest.approx(10 ** 12.5)
    assert pareto._flops_to_reach([slow, fast], 1.0) is None


def test_sweep_grid_extends_past_the_end_that_holds_the_best(tmp_path):
    def done(losses):
        return {pareto._run("sweep", "bert", pareto.SMALLEST, lr, 0).name:
                _result(pareto._run("sweep", "bert", pareto.SMALLEST, lr, 0), loss)
                for lr, loss in losses.items()}

    low, mid, high = pareto.SWEEP["bert"]
    assert pareto.sweep_grid("bert", {}) == [low, mid, high]
    assert pareto.sweep_grid("bert", done({low: 3.0, mid: 2.0, high: 2.5})) == [low, mid, high]
    assert pareto.sweep_grid("bert", done({low: 3.0, mid: 2.5, high: 2.0})) == [
        low, mid, high, 2 * high]
    # The extension is best again: one more, then the limit.
    extended = done({low: 3.0, mid: 2.5, high: 2.0, 2 * high: 1.9, 4 * high: 1.8})
    assert pareto.sweep_grid("bert", extended) == [low, mid, high, 2 * high, 4 * high]


def test_main_runs_wait_for_the_sweep_and_use_its_best_lr(tmp_path):
    args = _args(tmp_path)
    assert {r.group for r in pareto.all_runs(args)} == {"sweep"}
    losses = {"bert": {5e-3: 3.0, 1e-2: 2.8, 2e-2: 2.9},
              "groupbert": {1e-2: 2.9, 2e-2: 2.6, 4e-2: 2.7}}
    for family, by_lr in losses.items():
        for lr, loss in by_lr.items():
            _write(tmp_path, _result(pareto._run("sweep", family, pareto.SMALLEST, lr, 0), loss))
    assert pareto.picked_learning_rates(args) == {"bert": 1e-2, "groupbert": 2e-2}
    runs = pareto.all_runs(args)
    main = [r for r in runs if r.group == "main"]
    # Seed 0 of the smallest size is the sweep run itself; both seeds at every other size.
    assert len(main) == 2 * len(pareto.SIZE_ORDER) * 2 - 2
    assert {(r.family, r.learning_rate) for r in main} == {("bert", 1e-2), ("groupbert", 2e-2)}
    ablation = {r.family: r.learning_rate for r in runs if r.group == "ablation"}
    assert ablation == {"bert+gffn": 1e-2, "bert+conv": 1e-2, "bert+prenorm": 2e-2,
                        "bert+nodropout": 1e-2}
    assert len({r.name for r in runs}) == len(runs)


def test_claim_ratio_is_groupbert_flops_to_the_larger_berts_loss_over_its_flops(tmp_path):
    args = _args(tmp_path, bert_lr=1e-2, groupbert_lr=2e-2)
    small, large = pareto.SIZE_ORDER[:2]
    gb = _result(pareto._run("main", "groupbert", small, 2e-2, 0), 2.0,
                 curve=[(10, 1e12, 4.0), (100, 1e14, 2.0)], training_flops=1e14)
    bert = _result(pareto._run("main", "bert", large, 1e-2, 0), 3.0,
                   curve=[(10, 1e13, 5.0), (100, 4e13, 3.0)], training_flops=4e13)
    rows = pareto.claims([gb, bert], args)
    assert len(rows) == 1
    assert rows[0]["groupbert_flops_to_match"] == pytest.approx(1e13)
    assert rows[0]["flops_ratio"] == pytest.approx(0.25)


def test_wall_clock_is_steps_times_the_interleaved_step_time():
    run = pareto._run("main", "bert", pareto.SMALLEST, 1e-2, 0)
    result = _result(run, 2.0, curve=[(10, 1.0, 3.0), (40, 4.0, 2.0)])
    pareto.with_wall_clock([result], {f"bert-{pareto.SMALLEST}": 0.5})
    assert [p["seconds"] for p in result["curve"]] == [5.0, 20.0]


def test_curve_steps_end_at_the_last_step():
    steps = pareto.curve_steps(1337)
    assert steps[-1] == 1337 and steps == sorted(set(steps)) and steps[0] == round(1337 / 16)


@pytest.mark.slow
def test_one_run_end_to_end_writes_its_curve_and_skips_when_done(tmp_path):
    """Prepare + one real (tiny-budget) run on the default corpus; a second `train` finds it
    done."""
    from training.data import download
    download.fetch()
    command = [sys.executable, "-m", "benchmarks.pareto", "train", "--root", str(tmp_path),
               "--results", str(tmp_path / "results"), "--corpus", download.default_corpus_path(),
               "--tokens", "12000", "--val_rows", "32", "--batch_size", "16",
               "--compile_mode", "graph", "--precision", "float32",
               "--only", "bert-4x256-lr0.01-seed0"]
    subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True, timeout=600)
    with open(tmp_path / "results" / "bert-4x256-lr0.01-seed0.json") as f:
        result = json.load(f)
    assert result["step"] == result["train_steps"] == math.ceil(
        12000 / (16 * 128 * json.loads((tmp_path / "results" / "data.json").read_text())
                 ["train"]["packing_efficiency"]))
    assert [p["step"] for p in result["curve"]] == pareto.curve_steps(result["train_steps"])
    assert result["final"]["mlm_loss"] < result["curve"][0]["mlm_loss"] < 10.5
    again = subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True,
                           timeout=600)
    assert "no pending runs" in again.stdout


def test_attention_inputs_put_the_masked_tokens_back():
    """attention_maps reads the masked validation rows: `unmasked` must restore the text."""
    import numpy as np
    import tensorflow as tf
    from benchmarks import attention_maps
    from training.data import masking

    rng = np.random.default_rng(0)
    token_ids = rng.integers(1000, 2000, size=(4, 32)).astype(np.int32)
    token_ids[:, 0], token_ids[:, -1] = 101, 102
    rows = {"token_ids": token_ids, "segment_ids": np.zeros_like(token_ids),
            "padding_mask": np.ones_like(token_ids), "next_sentence_labels": np.zeros(4, np.int32)}
    masker = masking.MlmMasker(30522, 103, (0, 100, 101, 102, 103), max_predictions_per_seq=8,
                               seed=1)
    features, labels = masker({k: tf.constant(v) for k, v in rows.items()})
    features = {k: v.numpy() for k, v in features.items()}
    labels = {k: v.numpy() for k, v in labels.items()}
    assert (features["token_ids"] != token_ids).any()  # Something was masked.
    restored = attention_maps.unmasked(features, labels, 3)
    np.testing.assert_array_equal(restored["token_ids"], token_ids[:3])
