"""One pareto run (benchmarks/pareto.py) on the JAX backend, from arrays exported by TensorFlow.

The pareto runs train on TensorFlow on this CPU machine; a GPU machine that has JAX but no
TensorFlow can repeat a run (or run it at a larger token count) from prepared arrays:

  export (TensorFlow venv): the run's first N masked training batches, exactly as
      `pareto.train_dataset_fn` yields them to the TF run (its seed, start step 0; N larger
      than the TF run continues the same dataset), the fixed validation rows, and the initial
      weights the TF run starts from (same seeding and construction as `pareto.train_one`),
      in one compressed .npz; beside it a .json with the run definition: model config, the
      LAMB optimizer's config as the TF trainer builds it (schedule, weight decay, global
      clipnorm 1.0), batch, steps, curve steps.
  train (KERAS_BACKEND=jax, no TensorFlow): `GroupBertPretrainer` with the same optimizer
      rebuilt from that config (groupbert_tf/optimizers.py: the TF trainer's LAMB rule minus
      the cross-replica clipping, which one device does not need), one `jax.jit` step over
      `stateless_call` + `stateless_apply`, the validation MLM loss at the curve steps,
      resumable from the newest state .npz. The result has pareto's schema under the name
      `jax/<run>` (group `jax`: outside pareto's sweep, claims and figures), plus `backend`,
      `device` and `precision`.

    python -m benchmarks.pareto_jax export --run bert-8x512-lr0.01-seed0 [--steps N]
    KERAS_BACKEND=jax .venv-jax/bin/python -m benchmarks.pareto_jax train \\
        --arrays runs/pareto_at_scale/jax/bert-8x512-lr0.01-seed0.npz

With `--steps N` other than the TF run's step count, the schedule (10% warmup) and the curve
steps stretch over N steps and the run is named `<run>-steps<N>`.
"""

import argparse
import dataclasses
import datetime
import json
import os
import platform
import re
import sys
import time
import zipfile

import keras
import numpy as np

from benchmarks import pareto

JAX_DIR = pareto.JAX_DIR  # Under pareto's --root (arrays, state) and --results (results).


# ------------------------------------------------------------------------------------------
# Export (TensorFlow)
# ------------------------------------------------------------------------------------------

def find_run(args, name):
    """The pareto run called `name`: from the queue, else a main run parsed from the name
    (its LR is in the name, so it need not have been picked by the sweep yet)."""
    for run in pareto.all_runs(args):
        if run.name == name:
            return run
    match = re.fullmatch(r"(bert|groupbert)-(\d+x\d+)-lr([0-9.e+-]+)-seed(\d+)", name)
    if not match or match[2] not in pareto.SIZES:
        raise SystemExit(f"pareto_jax: error: no pareto run {name!r} (`python -m "
                         "benchmarks.pareto list` shows the queue)")
    return pareto._run("main", match[1], match[2], float(match[3]), int(match[4]))


def initial_model(args, run, steps):
    """The TF trainer's model and optimizer for `run` over `steps`, seeded and built as
    `pareto.train_one` builds them, so its weights are the TF run's initial weights."""
    from training import performance, trainer
    keras.backend.clear_session()
    keras.utils.set_random_seed(run.seed)
    settings = pareto.settings_for(args, run, steps, os.path.join(args.root, run.name))
    with performance.dtype_policy(args.precision):
        model = trainer.build_model(run.config(), settings)
    return model, settings


def run_definition(args, run, settings, model, record, tf_train_steps):
    """Everything `train` needs besides arrays (JSON)."""
    steps = settings.train_steps
    name = run.name if steps == tf_train_steps else f"{run.name}-steps{steps}"
    optimizer = model.optimizer.get_config()
    return {
        "name": f"{JAX_DIR}/{name}", "tf_run": run.name, "tf_group": run.group,
        **{k: v for k, v in dataclasses.asdict(run).items() if k not in ("name", "group")},
        "overrides": dict(run.overrides), "config": run.config().to_dict(),
        "train_steps": steps, "tf_train_steps": tf_train_steps,
        "batch_size": args.batch_size, "seq_length": args.seq_length, "pack": args.pack,
        "max_predictions_per_seq": args.max_predictions,
        "tokens_per_step": args.batch_size * args.seq_length
        * record["train"]["packing_efficiency"],
        "warmup_steps": settings.warmup_steps, "curve_steps": pareto.curve_steps(steps),
        "checkpoint_every": settings.checkpoint_every, "log_every": settings.log_every,
        "optimizer": {"class_name": type(model.optimizer).__name__, "config": optimizer},
        "weights": [v.path for v in model.weights],
        "tf_precision": args.precision, "tf_compile_mode": args.compile_mode,
    }


def masked_batches(dataset_fn, steps):
    """The first `steps` (features, labels) batches of `dataset_fn(0)` as numpy.

    The rows and their order are the TF run's (seeded shuffle). The masker draws from a
    stateful RNG inside a parallel map, so which batch gets which draw depends on thread
    timing (in the TF run too); one tf.data thread makes the export reproducible."""
    import tensorflow as tf
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    return [tuple({k: v.numpy() for k, v in part.items()} for part in batch)
            for batch in dataset_fn(0).with_options(options).take(steps)]


def write_arrays(path, definition, batches, validation, weights):
    """`path` (.npz: train_<key> [N, B, ...], val_<key>, init_<i>) and its .json sidecar."""
    features, labels = batches[0]
    arrays = {f"train_{k}": np.stack([b[part][k] for b in batches])
              for part, keys in ((0, features), (1, labels)) for k in keys}
    arrays.update({f"val_{k}": v for part in validation for k, v in part.items()})
    arrays.update({f"init_{i}": np.asarray(w) for i, w in enumerate(weights)})
    definition = {**definition, "features": sorted(features), "labels": sorted(labels),
                  "exported": datetime.datetime.now().isoformat(timespec="seconds")}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez_compressed(path + ".tmp.npz", **arrays)
    os.replace(path + ".tmp.npz", path)
    pareto._write_json(sidecar_path(path), definition)


def sidecar_path(path):
    return os.path.splitext(path)[0] + ".json"


def export(opts, args):
    run = find_run(args, opts.run)
    train_set, validation, record = pareto.load_data(args)
    tf_train_steps = pareto.train_steps(args, record)
    steps = opts.steps or tf_train_steps
    model, settings = initial_model(args, run, steps)
    definition = run_definition(args, run, settings, model, record, tf_train_steps)
    out = opts.out or os.path.join(args.root, JAX_DIR,
                                   definition["name"][len(JAX_DIR) + 1:] + ".npz")
    start = time.time()
    batches = masked_batches(pareto.train_dataset_fn(args, train_set, run.seed), steps)
    write_arrays(out, definition, batches, validation, model.get_weights())
    print(f"wrote {out} ({os.path.getsize(out) / 1e6:.0f} MB, {steps} batches, "
          f"{time.time() - start:.0f}s) and {sidecar_path(out)}")


# ------------------------------------------------------------------------------------------
# Train (JAX)
# ------------------------------------------------------------------------------------------

class JaxRun:
    """The model, optimizer and jitted step/eval functions of one exported run; the
    training state is the (trainable, non-trainable, optimizer) value lists."""

    def __init__(self, definition, init_weights, precision):
        import jax
        from groupbert_tf.config import GroupBertConfig
        from groupbert_tf.models.pretrainer import GroupBertPretrainer
        from groupbert_tf import optimizers

        self.jax = jax
        keras.mixed_precision.set_global_policy(precision)
        keras.utils.set_random_seed(definition["seed"])  # Dropout masks (the weights are set).
        self.model = GroupBertPretrainer(config=GroupBertConfig.from_dict(definition["config"]))
        self.model.build()  # Its layers are built; this marks the model built for stateless_call.
        paths = [v.path for v in self.model.weights]
        if paths != definition["weights"]:
            raise ValueError(f"the exported weights {definition['weights']} are not this "
                             f"model's variables {paths}")
        for variable, value in zip(self.model.weights, init_weights):
            variable.assign(value)
        optimizer = definition["optimizer"]
        if optimizer["class_name"] != "Lamb":
            raise ValueError(f"only LAMB runs are supported, got {optimizer['class_name']}")
        self.optimizer = optimizers.Lamb.from_config(dict(optimizer["config"]))
        self.optimizer.build(self.model.trainable_variables)
        self.state = ([v.value for v in self.model.trainable_variables],
                      [v.value for v in self.model.non_trainable_variables],
                      [v.value for v in self.optimizer.variables])
        self.train_step = jax.jit(self._train_step, donate_argnums=(0,))
        self.eval_sums = jax.jit(self._eval_sums)

    def _train_step(self, state, x, y):
        trainable, non_trainable, optimizer_values = state

        def loss_fn(trainable, non_trainable):
            y_pred, non_trainable = self.model.stateless_call(trainable, non_trainable, x,
                                                              training=True)
            means = {k: mean for k, (mean, _) in self.model.mean_losses(y, y_pred).items()}
            return sum(means.values()), (non_trainable, means)

        (loss, (non_trainable, means)), grads = self.jax.value_and_grad(
            loss_fn, has_aux=True)(trainable, non_trainable)
        trainable, optimizer_values = self.optimizer.stateless_apply(optimizer_values, grads,
                                                                     trainable)
        return (trainable, non_trainable, optimizer_values), loss, means

    def _eval_sums(self, state, x, y):
        trainable, non_trainable, _ = state
        y_pred, _ = self.model.stateless_call(trainable, non_trainable, x, training=False)
        return self.model.loss_sums(y, y_pred), self.model.loss_counts(y)

    def validation_losses(self, validation, batch_size):
        """pareto.ValidationCurve's numbers: summed losses over all rows / summed counts."""
        features, labels = validation
        totals = {}
        for start in range(0, len(features["token_ids"]), batch_size):
            batch = [{k: v[start:start + batch_size] for k, v in d.items()}
                     for d in (features, labels)]
            sums, counts = self.eval_sums(self.state, *batch)
            for key in sums:
                s, c = totals.get(key, (0.0, 0.0))
                totals[key] = (s + float(sums[key]), c + float(counts[key]))
        return {f"{k}_loss": s / max(c, 1.0) for k, (s, c) in totals.items()}

    def save(self, path, step, extra):
        values = {f"{part}{i}": np.asarray(v) for part, values in zip("tno", self.state)
                  for i, v in enumerate(values)}
        np.savez(path + ".tmp.npz", step=step, extra=json.dumps(extra), **values)
        os.replace(path + ".tmp.npz", path)

    def restore(self, path):
        """Sets the state from `path`; returns (step, extra)."""
        with np.load(path) as saved:
            self.state = tuple([self.jax.numpy.asarray(saved[f"{part}{i}"])
                                for i in range(len(values))]
                               for part, values in zip("tno", self.state))
            return int(saved["step"]), json.loads(str(saved["extra"]))


def checkpoints(state_dir):
    """(step, path) of the state files in `state_dir`, newest first."""
    found = []
    for name in os.listdir(state_dir) if os.path.isdir(state_dir) else []:
        match = re.fullmatch(r"state-(\d+)\.npz", name)
        if match:
            found.append((int(match[1]), os.path.join(state_dir, name)))
    return sorted(found, reverse=True)


def resume(jax_run, state_dir):
    """Restores the newest readable state; (step, curve points, train losses)."""
    for _, path in checkpoints(state_dir):
        try:
            saved_step, extra = jax_run.restore(path)
        except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as error:
            # A torn or foreign file: the one before it will do.
            print(f"skipping unreadable {path}: {error}", flush=True)
            continue
        print(f"resumed from {path} at step {saved_step}", flush=True)
        return saved_step, {p["step"]: p for p in extra["curve"]}, extra["train_loss"]
    return 0, {}, []


def device_description():
    import jax
    device = jax.devices()[0]
    return {"platform": device.platform, "kind": device.device_kind,
            "count": jax.device_count()}


def train(opts):
    import jax
    from groupbert_tf import flops

    if keras.config.backend() != "jax":
        raise SystemExit("pareto_jax train: set KERAS_BACKEND=jax")
    with open(sidecar_path(opts.arrays)) as f:
        definition = json.load(f)
    steps = definition["train_steps"]
    arrays = np.load(opts.arrays)
    train_set = {k: arrays[f"train_{k}"] for k in definition["features"] + definition["labels"]}
    validation = tuple({k: arrays[f"val_{k}"] for k in definition[part]}
                       for part in ("features", "labels"))
    init_weights = [arrays[f"init_{i}"] for i in range(len(definition["weights"]))]
    jax_run = JaxRun(definition, init_weights, opts.precision)
    name = definition["name"]
    state_dir = opts.state or os.path.join(os.path.dirname(os.path.abspath(opts.arrays)),
                                           os.path.basename(name) + f"-{opts.precision}")
    os.makedirs(state_dir, exist_ok=True)
    step, points, train_loss = resume(jax_run, state_dir)
    checkpoint_every = opts.checkpoint_every or definition["checkpoint_every"]
    log_every = definition["log_every"]
    curve_steps = set(definition["curve_steps"])
    print(f"=== {name} on {device_description()}, {opts.precision}: step {step} of {steps}",
          flush=True)

    def batch(k):
        return tuple({key: train_set[key][k] for key in definition[part]}
                     for part in ("features", "labels"))

    # One host sync per step (the loss): exact step times and a NaN check for ~1 ms a step.
    start, step_seconds, diverged = time.time(), [], None
    while step < steps:
        tick = time.perf_counter()
        jax_run.state, loss, means = jax_run.train_step(jax_run.state, *batch(step))
        train_loss.append(float(loss))
        step_seconds.append(time.perf_counter() - tick)
        step += 1
        if not np.isfinite(train_loss[-1]):
            diverged = f"non-finite training loss at step {step}"
            print(f"  {diverged}", flush=True)
            break
        if step % log_every == 0 or step == steps:
            recent = step_seconds[1:][-log_every:] or step_seconds
            print(f"  step {step}: loss {train_loss[-1]:.4f} (mlm {float(means['mlm']):.4f}), "
                  f"{np.median(recent) * 1e3:.0f} ms/step", flush=True)
        if step in curve_steps and step not in points:
            tick = time.time()
            points[step] = {"step": step,
                            **jax_run.validation_losses(validation, definition["batch_size"]),
                            "eval_seconds": time.time() - tick,
                            "time": datetime.datetime.now().isoformat("T", "seconds")}
            print(f"  step {step}: validation {points[step]}", flush=True)
        if step % checkpoint_every == 0 or step == steps:
            path = os.path.join(state_dir, f"state-{step}.npz")
            jax_run.save(path, step, {"curve": sorted(points.values(), key=lambda p: p["step"]),
                                      "train_loss": train_loss})
            for _, old in checkpoints(state_dir)[2:]:
                os.remove(old)
    flops_per_step = flops.training_flops(
        jax_run.model.config, definition["seq_length"],
        definition["max_predictions_per_seq"]) * definition["batch_size"]
    curve = [dict(p, flops=p["step"] * flops_per_step,
                  tokens=p["step"] * definition["tokens_per_step"])
             for p in sorted(points.values(), key=lambda p: p["step"])]
    keep = ("tf_run", "tf_group", "family", "size", "overrides", "preset_family",
            "learning_rate", "seed", "config", "batch_size", "seq_length", "pack",
            "max_predictions_per_seq", "warmup_steps", "tf_train_steps", "tf_precision",
            "tf_compile_mode")
    result = {
        "name": name, "group": JAX_DIR, **{k: definition[k] for k in keep},
        "params_with_heads": flops.count_params(jax_run.model.config, True),
        "params_encoder": flops.count_params(jax_run.model.config),
        "train_steps": steps, "step": None if diverged else step, "optimizer": "lamb",
        "precision": opts.precision, "compile_mode": "jax.jit",
        "real_tokens": steps * definition["tokens_per_step"],
        "training_flops_per_step": flops_per_step, "training_flops": flops_per_step * steps,
        "curve": curve, "final": curve[-1] if curve and curve[-1]["step"] == steps else None,
        "train_loss": train_loss,
        "step_seconds_median_this_process": (float(np.median(step_seconds[1:]))
                                             if len(step_seconds) > 1 else None),
        "first_step_seconds_this_process": step_seconds[0] if step_seconds else None,
        "wall_seconds_this_process": time.time() - start, "diverged": diverged,
        "backend": "jax", "device": device_description(), "jax_version": jax.__version__,
        "keras_version": keras.__version__, "arrays": opts.arrays,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "host": platform.node(), "cpu": pareto._cpu(), "cpus": os.cpu_count(),
    }
    path = os.path.join(opts.results, os.path.basename(name) + ".json")
    pareto._write_json(path, result)
    final = result["final"] or {}
    print(f"=== {name}: validation MLM loss {final.get('mlm_loss')}"
          f"{' DIVERGED' if diverged else ''}; wrote {path}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["export", "train"])
    parser.add_argument("--run", help="export: the pareto run name")
    parser.add_argument("--steps", type=int, default=None,
                        help="export: batches = steps of the run (default: the TF run's)")
    parser.add_argument("--out", default=None,
                        help="export: .npz path (default <root>/jax/<run>.npz)")
    parser.add_argument("--arrays", help="train: the exported .npz")
    parser.add_argument("--precision", default="float32",
                        choices=["float32", "mixed_bfloat16"], help="train")
    parser.add_argument("--results", default=os.path.join("docs/results/pareto", JAX_DIR),
                        help="train: folder of the results JSON")
    parser.add_argument("--state", default=None,
                        help="train: state folder (default: beside the arrays)")
    parser.add_argument("--checkpoint_every", type=int, default=None,
                        help="train: steps between state files (default: the TF run's)")
    opts, rest = parser.parse_known_args(argv)
    if opts.command == "export":
        if not opts.run:
            parser.error("export needs --run")
        export(opts, pareto.parse_args(["train", *rest]))
    else:
        if not opts.arrays or rest:
            parser.error(f"train needs --arrays and takes no pareto flags (got {rest})")
        train(opts)


if __name__ == "__main__":
    main(sys.argv[1:])
