"""Studies: a held-out split, training to a plateau with bfloat16 EMA snapshots, and the feature classifier.

What the converged studies (``benchmarks/white_vs_cloud.py``, ``experiments/processes.py``) share:

* :func:`load_dataset` — training images and two disjoint held-out sets of ``num`` images: ``ref`` to score
  against and ``ref2`` for the real-vs-real floor (differences below it are sampling noise).
* :func:`train_stages` — one run of :func:`cloudjax.train.train` cut at 25 %, 50 % and 100 % of its steps
  (:data:`EMA_AT`), its EMA saved at each in bfloat16 (:func:`save_ema`, a few hundred kB for ``tiny``, no
  pickle), so a study re-samples from committed weights without a checkpoint; :func:`loss_summary` and its
  plateau rule (the EMA-smoothed loss fell by less than 2 % over the last 20 % of the steps).

Their samples are drawn, scored with intervals and plotted by :mod:`cloudjax.evaluation`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from cloudjax import metrics
from cloudjax.spectral import rfft_real
from cloudjax.stats import fit_power_law

__all__ = [
    "Dataset",
    "load_dataset",
    "EMA_AT",
    "ema_path",
    "save_ema",
    "load_ema",
    "as_bf16",
    "study_config",
    "train_stages",
    "loss_summary",
    "get_classifier",
    "device_name",
]


# --- data ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Dataset:
    """Training images, two disjoint held-out sets of ``num`` images (``ref`` for scores, ``ref2`` for the floor),
    the training labels (or None), the per-pixel mean and the scalar std, the Π-space variance of the normalised
    training data ``(x − mean) / std`` and its fitted Δ."""

    name: str
    train: np.ndarray
    labels: np.ndarray | None
    ref: np.ndarray
    ref2: np.ndarray
    mean: np.ndarray  # (H, W, C) per-pixel mean of the training images
    std: float
    fourier_variance: np.ndarray
    delta: float


def load_dataset(spec: str, image_size: int, num: int, max_train: int, data_dir: str | None, seed: int) -> Dataset:
    """Open the ``--data`` spec ``spec`` (grey); its last ``2 · num`` examples are held out."""
    from cloudjax.data.pipeline import open_source

    source = open_source(spec, image_size, channels=1, data_dir=data_dir, seed=seed)
    kind, _, arg = spec.partition(":")
    n = source.num_examples
    if n < 2 * num + 2:
        raise SystemExit(f"error: {spec} has {n} images, needs more than 2 × {num} held out")
    train_idx = np.arange(min(n - 2 * num, max_train))
    try:
        labels = source.get_labels(train_idx)
    except ValueError:
        labels = None
    train = source.get(train_idx)
    mean, std = train.mean(axis=0), float(train.std())
    pi = np.asarray(rfft_real((train[:4096] - mean) / std))
    return Dataset(
        name=Path(arg).stem if kind in ("npz", "folder") else spec.replace(":", "_"),
        train=train,
        labels=labels,
        ref=source.get(np.arange(n - 2 * num, n - num)),
        ref2=source.get(np.arange(n - num, n)),
        mean=mean,
        std=std,
        fourier_variance=pi.var(axis=0).mean(axis=-1),
        delta=float(fit_power_law(train[:4096]).delta),
    )


# --- training in stages -------------------------------------------------------------------------------------------

EMA_AT = (0.25, 0.5, 1.0)  # fractions of the steps whose EMA is kept: scoring them shows the metrics settled


def ema_path(workdir: Path, fraction: float) -> Path:
    """``ema_bf16.npz`` for the finished run, ``ema_bf16_25pct.npz`` etc. for the earlier stages."""
    return Path(workdir) / ("ema_bf16.npz" if fraction == 1 else f"ema_bf16_{round(100 * fraction)}pct.npz")


def save_ema(path: Path, ema, step: int) -> None:
    """The EMA parameters rounded to bfloat16 (stored as their uint16 bit patterns, no pickle) and the step."""
    leaves = jax.tree_util.tree_flatten_with_path(ema)[0]
    arrays = {jax.tree_util.keystr(k): np.asarray(v, jnp.bfloat16).view(np.uint16) for k, v in leaves}
    np.savez(path, __step__=step, **arrays)


def load_ema(path: Path, config) -> tuple:
    """``(graphdef, params, step)``: the network of ``config`` with the float32 parameters saved by
    :func:`save_ema`."""
    from cloudjax.train.state import network_shapes

    graphdef, abstract = network_shapes(config)
    paths, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    with np.load(path) as stored:
        shapes = {jax.tree_util.keystr(k): tuple(v.shape) for k, v in paths}
        if {k: stored[k].shape for k in stored.files if k != "__step__"} != shapes:
            raise ValueError(f"{path} does not hold the parameters of this {config.model} network")
        leaves = [stored[name].view(jnp.bfloat16).astype(np.float32) for name in shapes]
        step = int(stored["__step__"])
    return graphdef, jax.tree.unflatten(treedef, leaves), step


def as_bf16(params):
    """``params`` rounded to bfloat16 and back (on the host): what a saved EMA holds, so fresh and reloaded runs
    sample alike."""
    return jax.tree.map(lambda p: np.asarray(p).astype(jnp.bfloat16).astype(np.float32), params)


def study_config(data: str, image_size: int, steps: int, batch_size: int, **settings):
    """The :class:`cloudjax.train.TrainConfig` of one study model (grey images): ``steps`` of ``batch_size`` with the
    lr horizon the whole run, warm-up ``min(500, steps / 10)``, a checkpoint every ``min(steps, 1000)`` steps and a
    log record every ``min(steps, 50)``; ``settings`` are the other flat fields (model, lr, process, ...)."""
    from cloudjax.train import TrainConfig

    return TrainConfig.from_flat(
        dict(
            data=data,
            image_size=image_size,
            channels=1,
            batch_size=batch_size,
            steps=steps,
            decay_steps=steps,
            warmup_steps=min(500, steps // 10),
            checkpoint_every=min(steps, 1000),
            log_every=min(steps, 50),
            **settings,
        )
    )


def add_model_arguments(p) -> None:
    """The flags of a study model's data, network and budget on the argparse parser ``p`` (Fashion-MNIST 16 px, the
    ``tiny`` UNet, 8,000 steps of 64, lr 1e-3, EMA 0.999: the studies' defaults); :func:`model_config` reads them."""
    p.add_argument("--data", default="fashion_mnist", help="a --data spec (grey)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--model", default="tiny", help="UNet preset (scale space: its Flexi-UNet)")
    p.add_argument("--train-steps", type=int, default=8000)
    p.add_argument("--train-batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (cosine decay to 10 %%)")
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)


def model_config(args, data: str | None = None, budget: int = 1, **settings):
    """:func:`study_config` of the flags of :func:`add_model_arguments` (``data``: another spec than ``--data``,
    ``budget``: a multiple of ``--train-steps``) and the model's own ``settings``."""
    return study_config(
        data or args.data,
        args.image_size,
        budget * args.train_steps,
        args.train_batch,
        data_dir=args.data_dir,
        model=args.model,
        lr=args.lr,
        ema_decay=args.ema_decay,
        seed=args.seed,
        **settings,
    )


def train_stages(config, workdir: Path, images: np.ndarray, fraction: float = 1.0, labels=None) -> tuple:
    """``(run, graphdef, bf16 EMA params)`` of ``config`` trained on ``images`` (and their ``labels``, for a
    class-conditional config) for ``fraction`` of its steps.

    A stage whose ``ema_bf16*.npz`` exists is loaded; otherwise the stages of :data:`EMA_AT` up to ``fraction``
    are trained or resumed in turn (``config.decay_steps`` is the whole run, so the stages are one run cut in
    three) and each EMA saved; ``training.json`` beside them summarises the loss curve (:func:`loss_summary`).
    A stage stopped by SIGTERM (its checkpoint saved) raises ``InterruptedError``: run again to resume.
    """
    from cloudjax.data.sources import ArraySource
    from cloudjax.train import check_workdir, load_run, train

    workdir = Path(workdir)
    run = check_workdir(config, workdir)  # refuses a folder that holds a different run
    config = config if run is None else run.config  # with what the run measured (e.g. its number of classes)

    def saved(stage: float):
        path = ema_path(workdir, stage)
        if run is None or not path.is_file():
            return None
        graphdef, params, step = load_ema(path, config)
        return (graphdef, params) if step == round(stage * config.steps) else None

    stages = [f for f in EMA_AT if f <= fraction]
    done = saved(stages[-1])
    for stage in [] if done else stages:
        done = saved(stage)
        if done is None:
            steps = round(stage * config.steps)
            source = ArraySource(images, config.image_size, config.channels, labels=labels)
            summary = train(dataclasses.replace(config, steps=steps), workdir, source=source)
            if summary["preempted"] or summary["timed_out"]:  # saved and resumable: no stage after it
                raise InterruptedError(f"{workdir}: stopped at step {summary['step']}; run again to resume")
            run, graphdef, state = load_run(workdir)
            save_ema(ema_path(workdir, stage), state.ema, int(state.step))
            done = graphdef, as_bf16(state.ema)
    if (workdir / "metrics.jsonl").is_file():
        summary = loss_summary(workdir / "metrics.jsonl", config.batch_size)
        (workdir / "training.json").write_text(json.dumps(summary, indent=1))
    return run, *done


def loss_summary(path: Path, batch_size: int, smoothing: float = 0.9, tolerance: float = 0.02) -> dict:
    """The loss curve of ``metrics.jsonl`` (one record per ``log_every`` steps, each the mean loss since the last)
    in a few numbers: first, at 80 % of the steps and final, EMA-smoothed (decay ``smoothing`` per record),
    ``plateau``: the smoothed loss fell by less than ``tolerance`` (relative) over the last 20 % of the steps, and
    ``seconds_per_image``: the median over records of the training time per image."""
    records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    steps = np.array([r["step"] for r in records])
    smoothed, value = [], records[0]["loss"]
    for r in records:
        value = smoothing * value + (1 - smoothing) * r["loss"]
        smoothed.append(value)
    at80 = smoothed[int(np.searchsorted(steps, 0.8 * steps[-1]))]
    rates = [r["images_per_s"] for r in records[1:] if r.get("images_per_s")]  # the first record compiles
    return dict(
        steps=int(steps[-1]),
        batch_size=batch_size,
        images=int(steps[-1]) * batch_size,
        loss_first=records[0]["loss"],
        loss_at_80pct=at80,
        loss_final=smoothed[-1],
        plateau=bool(at80 - smoothed[-1] < tolerance * at80),
        seconds_per_image=1 / float(np.median(rates)) if rates else None,
    )


def get_classifier(data: Dataset, path: Path, steps: int, seed: int) -> metrics.Classifier | None:
    """The feature classifier of labelled ``data``: loaded from ``path``, or trained ``steps`` steps and saved
    there; None for unlabelled data."""
    if data.labels is None:
        return None
    path = Path(path)
    if path.is_file():
        return metrics.load_classifier(path)
    model = metrics.train_classifier(data.train, data.labels, steps=steps, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    metrics.save_classifier(model, path)
    return model


def device_name() -> str:
    """The accelerator's kind, or the CPU's model name and core count: what the timings ran on."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        return device.device_kind
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)
    return f"{name or platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"
