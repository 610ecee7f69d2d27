"""Classifier-free guidance on class-conditional Fashion-MNIST, white and cloud noise: how often a sample is of the
class it was asked for, and how far the samples are from the data, against the guidance weight w and the NFE.

    python benchmarks/guidance.py                       # train (or load) both models, score, write results
    python benchmarks/guidance.py --train-only          # train (or resume) the models, then exit
    python benchmarks/guidance.py --quick --out /tmp/g  # seconds: tiny data, model and counts

Each model is the processes study's DDPM (``tiny`` UNet, v-prediction, 16 px, its budget rule; ``cloudjax.study``)
made class-conditional (labels dropped to "no class" with probability 0.1 in training). Every row draws
``--num-samples`` samples with DDIM, the labels every class in turn, and scores them with the study's feature
classifier: ``accuracy`` (the classifier's class is the requested one) and ``frechet_classifier`` (classifier
Fréchet distance to held-out images), each with a 95 % bootstrap interval; one row per model samples with no class
(``w = null``): the unconditional baseline of the same network. ``floor``: two held-out sets against each other,
and the classifier's accuracy on held-out images. Writes ``guidance.json``, ``guidance.png`` and, beside the
trainings in ``--workdir``, each model's bf16 EMA weights.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from cloudjax import metrics
from cloudjax.evaluation import interval
from cloudjax.generate import generate
from cloudjax.models.classifier import classifier_features
from cloudjax.plots import new_figure
from cloudjax.study import (
    add_model_arguments,
    device_name,
    get_classifier,
    load_dataset,
    model_config,
    train_stages,
)

VARIANTS = {"white": {"noise": "white"}, "cloud": {"noise": "cloud"}}
QUICK = dict(  # with a small labelled --data
    image_size=8,
    train_steps=8,
    num_samples=20,
    num_ref=40,
    guidance=[0.0, 2.0],
    nfe=[3],
    bootstrap=5,
    classifier_steps=5,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a seconds-long check: tiny data, model and counts")
    add_model_arguments(p)  # --data: a labelled spec
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--label-dropout", type=float, default=0.1)
    p.add_argument("--guidance", nargs="+", type=float, default=[0.0, 0.5, 1.0, 2.0, 4.0], help="the weights w")
    p.add_argument("--nfe", nargs="+", type=int, default=[10, 25, 50], help="DDIM steps")
    p.add_argument("--num-samples", type=int, default=512)
    p.add_argument("--num-ref", type=int, default=1024, help="held-out images scored against")
    p.add_argument("--sample-batch", type=int, default=512)
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamplings for the 95%% intervals")
    p.add_argument("--classifier", default=None, help="feature classifier .npz (trained and saved if missing)")
    p.add_argument("--classifier-steps", type=int, default=2000)
    p.add_argument("--workdir", default="benchmarks/results/guidance_cpu/runs", help="training runs go here")
    p.add_argument("--out", default="benchmarks/results/guidance_cpu")
    p.add_argument("--train-only", action="store_true", help="train (or resume) the models, then exit")
    args = p.parse_args(argv)
    if args.quick:
        p.set_defaults(**QUICK)
        args = p.parse_args(argv)
    return args


def scores(classifier, reference: np.ndarray, images: np.ndarray, labels, bootstrap: int, seed: int) -> dict:
    """``accuracy`` of the classifier's class against ``labels`` (None: not scored) and ``frechet_classifier`` of
    ``images`` to the ``reference`` features, each with its 95 % bootstrap interval (rows of both sets resampled;
    the Fréchet replicates shifted by their bias, as in :func:`cloudjax.evaluation.score`)."""
    features = classifier_features(classifier, images)
    rng = np.random.default_rng(seed)
    out = {"frechet_classifier": metrics.frechet_distance(reference, features)}
    draws = []
    for _ in range(bootstrap):
        ix, iy = rng.integers(0, len(reference), len(reference)), rng.integers(0, len(images), len(images))
        draws.append(metrics.frechet_distance(reference[ix], features[iy]))
    draws = np.array(draws)
    out["frechet_classifier_ci95"] = interval(draws - (draws.mean() - out["frechet_classifier"])) if bootstrap else None
    if labels is not None:
        hits = _predict(classifier, images) == labels
        out["accuracy"] = float(hits.mean())
        picks = [hits[rng.integers(0, len(hits), len(hits))].mean() for _ in range(bootstrap)]
        out["accuracy_ci95"] = interval(np.array(picks)) if bootstrap else None
    return out


def draw(run, graphdef, params, num: int, batch: int, nfe: int, labels, guidance: float, seed: int) -> np.ndarray:
    """``num`` DDIM samples clipped to [0, 1], batch i from ``fold_in(key(seed), i)`` (the same starts for every
    row of a model), sample j of class ``labels[j]``."""
    out = []
    for i, start in enumerate(range(0, num, batch)):
        key = jax.random.fold_in(jax.random.key(seed), i)
        kw = dict(labels=labels[start : start + batch], guidance=guidance)
        out.append(generate(run, graphdef, params, key, len(kw["labels"]), steps=nfe, method="ddim", **kw))
    return np.clip(np.concatenate(out), 0, 1)


def plot(result: dict, path: Path) -> None:
    """Accuracy and classifier Fréchet distance against w, one line per (variant, NFE), intervals shaded."""
    fig = new_figure(figsize=(10, 3.8))
    axes = fig.subplots(1, 2)
    for (variant, nfe), rows in _curves(result["rows"]).items():
        w = [r["guidance"] for r in rows]
        for ax, metric in zip(axes, ("accuracy", "frechet_classifier"), strict=True):
            low, high = np.array([r[f"{metric}_ci95"] or [r[metric]] * 2 for r in rows]).T
            line = ax.plot(w, [r[metric] for r in rows], "o-", label=f"{variant}, NFE {nfe}")[0]
            ax.fill_between(w, low, high, color=line.get_color(), alpha=0.2)
    floor = result["floor"]
    axes[0].axhline(floor["accuracy"], color="k", ls=":", label="held-out images")
    axes[1].axhline(floor["frechet_classifier"], color="k", ls=":", label="held-out vs held-out")
    axes[0].set(xlabel="guidance w", ylabel="accuracy for the requested class", ylim=(0, 1))
    axes[1].set(xlabel="guidance w", ylabel="classifier Fréchet distance", yscale="log")
    axes[1].legend(fontsize=7)
    fig.suptitle(f"Classifier-free guidance, {result['config']['data']} {result['config']['image_size']} px")
    fig.savefig(path, dpi=120, bbox_inches="tight")


def _curves(rows: list[dict]) -> dict:
    curves: dict = {}
    for r in rows:
        if r["guidance"] is not None:
            curves.setdefault((r["variant"], r["nfe"]), []).append(r)
    return curves


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out, workdir = Path(args.out), Path(args.workdir)
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset(args.data, args.image_size, args.num_ref, 10**9, args.data_dir, args.seed)
    if data.labels is None:
        raise SystemExit(f"error: {args.data} has no labels")
    models = {}
    for name in args.variants:
        config = model_config(
            args,
            process="gaussian",
            prediction="v",
            class_conditional=True,
            label_dropout=args.label_dropout,
            **VARIANTS[name],
        )
        models[name] = train_stages(config, workdir / name, data.train, labels=data.labels)
    if args.train_only:
        return {}

    classifier = get_classifier(data, args.classifier or out / f"classifier_{data.name}_{args.image_size}.npz",
                                args.classifier_steps, args.seed)  # fmt: skip
    reference = classifier_features(classifier, data.ref)
    floor = scores(classifier, reference, data.ref2[: args.num_samples], None, args.bootstrap, args.seed)
    floor["accuracy"] = float(np.mean(_predict(classifier, data.ref2) == _held_out_labels(args)))
    config = {k: v for k, v in vars(args).items() if k not in ("quick", "train_only")}
    result = {"config": config, "device": device_name(), "floor": floor, "rows": []}
    batch = min(args.sample_batch, args.num_samples)
    requested = np.resize(np.arange(int(data.labels.max()) + 1, dtype=np.int32), args.num_samples)
    for name, (run, graphdef, params) in models.items():
        for nfe in args.nfe:
            settings = [(None, np.full(args.num_samples, -1, np.int32))]  # no class: the unconditional baseline
            settings += [(w, requested) for w in args.guidance]
            for w, labels in settings:
                samples = draw(run, graphdef, params, args.num_samples, batch, nfe, labels, w or 0.0, args.seed)
                scored = scores(classifier, reference, samples, None if w is None else labels, args.bootstrap, 1)
                row = {"variant": name, "nfe": nfe, "guidance": w, **scored}
                result["rows"].append(row)
                print(json.dumps(row), flush=True)
    (out / "guidance.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, out / "guidance.png")
    return result


def _predict(classifier, images: np.ndarray) -> np.ndarray:
    """The classifier's class of each image ``(N,)``."""
    return np.asarray(classifier.head(jnp.asarray(classifier_features(classifier, images))).argmax(axis=1))


def _held_out_labels(args: argparse.Namespace) -> np.ndarray:
    """The labels of ``Dataset.ref2``: the source's last ``num_ref`` examples."""
    from cloudjax.data.pipeline import open_source

    source = open_source(args.data, args.image_size, channels=1, data_dir=args.data_dir, seed=args.seed)
    return source.get_labels(np.arange(source.num_examples - args.num_ref, source.num_examples))


if __name__ == "__main__":
    main()
