"""benchmarks/pareto_jax.py: the JAX trainer repeats the TF trainer's run on exported arrays.

Both start from the same initial weights (the TF trainer's, as exported) and train on the same
masked packed batches in float32; the JAX side runs in a subprocess with KERAS_BACKEND=jax
(jax[cpu] is in requirements-dev.txt) with TensorFlow blocked, as on a GPU machine without it.

Tolerance: the backends compute the same float32 math in different orders (XLA:CPU fusions
vs TF graph / oneDNN kernels, grouped conv included). Measured here: the training losses of 4
steps agree to <= 1e-7 relative, the validation MLM losses to <= 1e-7. At LR 0.05 each LAMB
step moves the validation loss by >= 5e-4 relative; 1e-5 is 100x the measured difference and
still catches e.g. a JAX run without the global clipnorm (4e-4 off by step 3). A 10% change of
the weight decay rate stays below it over 4 steps: this checks the run, not every knob.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB, PAD, CLS, SEP, MASK = 97, 0, 2, 3, 4
TINY = dict(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=128,
            max_position_embeddings=32, conv_group_size=16)
STEPS, BATCH, SEQ, PACK, PREDICTIONS = 4, 8, 32, 2, 5
RTOL = 1e-5


def _pairs(rng, count):
    """[CLS] a [SEP] b [SEP] pairs of random lengths, padded to SEQ // PACK."""
    length = SEQ // PACK
    arrays = {k: np.zeros((count, length), np.int32)
              for k in ("token_ids", "segment_ids", "padding_mask")}
    for i in range(count):
        a, b = rng.integers(2, 6, size=2)
        tokens = [CLS, *rng.integers(5, VOCAB, a), SEP, *rng.integers(5, VOCAB, b), SEP]
        arrays["token_ids"][i, :len(tokens)] = tokens
        arrays["segment_ids"][i, a + 2:len(tokens)] = 1
        arrays["padding_mask"][i, :len(tokens)] = 1
    arrays["next_sentence_labels"] = rng.integers(0, 2, count).astype(np.int32)
    return arrays


def _masked_batches(count, seed):
    import tensorflow as tf
    from training.data import masking, packing

    rows, _ = packing.pack_examples(_pairs(np.random.default_rng(seed), 3 * count * BATCH),
                                    SEQ, PACK, seed=0, per_sequence=("next_sentence_labels",))
    masker = masking.MlmMasker(VOCAB, MASK, [PAD, 1, CLS, SEP, MASK],
                               max_predictions_per_seq=PREDICTIONS, seed=seed)
    dataset = tf.data.Dataset.from_tensor_slices(rows).batch(BATCH, drop_remainder=True)
    return [tuple({k: v.numpy() for k, v in part.items()} for part in masker(batch))
            for batch in dataset.take(count)]


def _jax_train(arrays, results, state):
    """pareto_jax train in a KERAS_BACKEND=jax subprocess where TensorFlow cannot be imported,
    as on a machine without it (Keras then skips seeding TensorFlow, as it does there)."""
    code = ("import importlib.abc, runpy, sys\n"
            "class NoTensorFlow(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'tensorflow':\n"
            "            raise ModuleNotFoundError(f'No module named {name!r} (blocked)')\n"
            "sys.meta_path.insert(0, NoTensorFlow())\n"
            "sys.argv = ['pareto_jax'] + sys.argv[1:]\n"
            "runpy.run_module('benchmarks.pareto_jax', run_name='__main__')\n")
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", code, "train", "--arrays", arrays,
                           "--results", results, "--state", state],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("family, compile_mode, overrides", [
    ("groupbert", "graph", {}),  # Pre-norm, grouped FFN, conv module (oneDNN grouped conv).
    ("bert", "xla", dict(hidden_dropout=0.0, attention_dropout=0.0)),  # Post-norm, dense FFN.
])
def test_jax_trainer_matches_tf_trainer(tmp_path, family, compile_mode, overrides):
    from benchmarks import pareto, pareto_jax

    args = pareto.parse_args(["train", "--root", str(tmp_path), "--batch_size", str(BATCH),
                              "--seq_length", str(SEQ), "--pack", str(PACK),
                              "--max_predictions", str(PREDICTIONS), "--precision", "float32",
                              "--compile_mode", compile_mode])
    run = pareto._run("main", family, "4x256", 0.05, 0, overrides={**TINY, **overrides})
    model, settings = pareto_jax.initial_model(args, run, STEPS)
    record = {"train": {"packing_efficiency": 0.9}}
    definition = pareto_jax.run_definition(args, run, settings, model, record, STEPS)
    assert definition["curve_steps"] == [1, 2, 3, 4]
    batches = _masked_batches(STEPS, seed=1)
    validation = _masked_batches(2, seed=2)
    validation = tuple({k: np.concatenate([b[part][k] for b in validation]) for k in keys}
                       for part, keys in enumerate(validation[0]))
    arrays = str(tmp_path / "run.npz")
    pareto_jax.write_arrays(arrays, definition, batches, validation, model.get_weights())

    # The TF trainer's model (training.trainer.build_model: LAMB, schedule, clipping) on the
    # same batches, scored after each step as pareto's ValidationCurve scores it.
    curve = pareto.ValidationCurve(str(tmp_path / "curve.json"), validation, [], BATCH)
    curve.set_model(model)
    tf_losses, tf_validation = [], []
    for features, labels in batches:
        tf_losses.append(float(model.train_on_batch(features, labels, return_dict=True)["loss"]))
        tf_validation.append(curve._score()["mlm_loss"])
    # Every step moves the loss far more than the tolerance: the comparison is not of constants.
    assert np.min(np.abs(np.diff(tf_validation))) > 10 * RTOL * np.mean(tf_validation)

    results, state = str(tmp_path / "results"), str(tmp_path / "state")
    _jax_train(arrays, results, state)
    path = os.path.join(results, f"{run.name}.json")
    with open(path) as f:
        result = json.load(f)
    assert result["name"] == f"jax/{run.name}" and result["backend"] == "jax"
    assert result["device"]["platform"] == "cpu" and result["precision"] == "float32"
    np.testing.assert_allclose(result["train_loss"], tf_losses, rtol=RTOL)
    np.testing.assert_allclose([p["mlm_loss"] for p in result["curve"]], tf_validation,
                               rtol=RTOL)
    assert result["final"]["step"] == STEPS and result["training_flops"] > 0

    # Resume: without the last state file the run restarts from step 3 and ends the same.
    os.remove(os.path.join(state, f"state-{STEPS}.npz"))
    os.remove(path)
    out = _jax_train(arrays, results, state)
    assert f"state-{STEPS - 1}.npz at step {STEPS - 1}" in out
    with open(path) as f:
        resumed = json.load(f)
    np.testing.assert_allclose(resumed["train_loss"], result["train_loss"], rtol=1e-6)
    assert resumed["curve"][-1]["mlm_loss"] == pytest.approx(result["curve"][-1]["mlm_loss"],
                                                             rel=1e-6)
