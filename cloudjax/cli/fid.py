"""`cloudjax fid`, `fid-stats` and `fid-convert`: FID/KID from local Inception weights."""

from __future__ import annotations

import argparse
import functools
import os

from cloudjax.cli._common import DATA_FLAGS, UsageError, _add_config_flags, _open_data, _seed, _writable_folder


def _inception(args: argparse.Namespace):
    """The FID network of ``--inception-weights`` (:func:`cloudjax.fid.load_inception`); a bad file → UsageError."""
    from cloudjax.fid import load_inception

    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    try:
        return load_inception(args.inception_weights, args.dtype)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None


def _source_features(model, get, total: int, args: argparse.Namespace, desc: str):
    """Inception features ``(total, 2048)`` of images ``get(indices)``, ``--batch-size`` at a time."""
    import numpy as np

    from cloudjax._progress import Progress
    from cloudjax.fid import inception_features

    out = []
    with Progress(total, desc) as bar:
        for i in range(0, total, args.batch_size):
            out.append(inception_features(get(np.arange(i, min(i + args.batch_size, total))), model, args.batch_size))
            bar.update(len(out[-1]))
    return np.concatenate(out)


def _fid_operand(spec: str, model, args: argparse.Namespace):
    """``("stats", (mu, sigma))`` of a statistics .npz, else ``("features", (N, 2048))`` of a samples .npz
    (key ``images``, clipped to [0, 1]), a folder of images or a --data spec."""
    from pathlib import Path

    import numpy as np

    from cloudjax.fid import load_statistics

    if Path(spec).is_file() and spec.endswith(".npz"):
        try:
            with np.load(spec, allow_pickle=False) as z:
                if "mu" in z.files:
                    return "stats", load_statistics(spec)
                images = z["images"]
        except (OSError, ValueError, KeyError) as e:
            raise UsageError(f"{spec}: not a statistics (mu, sigma) or samples (images) .npz ({e})") from None
        images = images / 255 if images.dtype == np.uint8 else np.clip(images, 0, 1)
        images = images[:, :, :, None] if images.ndim == 3 else images
        get, total = (lambda idx: images[idx]), len(images)
    else:
        data = f"folder:{spec}" if Path(spec).is_dir() else spec
        source = _open_data(argparse.Namespace(**{**vars(args), "data": data}))
        get, total = source.get, source.num_examples
    total = total if args.num is None else min(args.num, total)
    if total < 2:
        raise UsageError(f"{spec}: FID needs at least 2 images, got {total}")
    return "features", _source_features(model, get, total, args, Path(spec).name)


def _cmd_fid(args: argparse.Namespace) -> int:
    """FID (and with --kid, KID) between A and B: samples .npz, image folders, --data specs or statistics .npz."""
    from cloudjax.fid import feature_statistics, frechet_from_statistics, kernel_inception_distance

    model = _inception(args)
    (kind_a, a), (kind_b, b) = (_fid_operand(spec, model, args) for spec in (args.a, args.b))
    stats = [x if kind == "stats" else feature_statistics(x) for kind, x in ((kind_a, a), (kind_b, b))]
    try:
        line = f"FID = {frechet_from_statistics(*stats[0], *stats[1]):.4f}"
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.kid:
        if "stats" in (kind_a, kind_b):
            raise UsageError("--kid needs images on both sides, not statistics")
        mean, std = kernel_inception_distance(a, b)
        line += f"  KID = {mean:.5f} ± {std:.5f}"
    print(line)
    return 0


def _cmd_fid_stats(args: argparse.Namespace) -> int:
    """Inception statistics (mu, sigma) of a data set → --out (.npz), the reference side of `cloudjax fid`."""
    from cloudjax.fid import save_statistics

    model = _inception(args)
    source = _open_data(args)
    total = source.num_examples if args.num is None else min(args.num, source.num_examples)
    if total < 2:
        raise UsageError(f"fid-stats needs at least 2 images, the data has {total}")
    _writable_folder(os.path.dirname(os.path.abspath(args.out)), "--out")
    path = save_statistics(args.out, _source_features(model, source.get, total, args, "fid-stats"))
    print(f"Inception statistics of {total} images of {args.data} → {path}")
    return 0


def _cmd_fid_convert(args: argparse.Namespace) -> int:
    """pytorch-fid's .pth state dict → an .npz with its keys, which cloudjax reads without torch."""
    from cloudjax.fid import convert_weights

    _writable_folder(os.path.dirname(os.path.abspath(args.dst)), "DST")
    try:
        path = convert_weights(args.src, args.dst)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None
    print(f"{args.src} → {path}")
    return 0


def _add_fid_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--inception-weights",
        required=True,
        help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth (needs torch) or its .npz from `fid-convert`",
    )
    p.add_argument("--num", type=int, default=None, help="use only the first NUM images of each set (default: all)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="Inception computation dtype")


def register(sub) -> None:
    """Add this module's subcommands to the ``cloudjax`` parser's subparsers ``sub``."""
    p = sub.add_parser("fid", help="FID between two image sets (samples .npz, folders, --data specs, statistics)")
    p.add_argument("a", help="samples .npz (key images), folder of images, --data spec or statistics .npz (mu, sigma)")
    p.add_argument("b", help="the same kinds as A")
    _add_fid_args(p)
    p.add_argument("--kid", action="store_true", help="also the kernel Inception distance (images on both sides)")
    p.add_argument("--image-size", type=int, default=32, help="folders and --data specs are read at this size")
    p.add_argument("--data-dir", default=None, help="where the --data specs' files are (as for train)")
    p.add_argument("--batch-size", type=int, default=50, help="images per Inception batch")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the patches data set")
    p.set_defaults(func=_cmd_fid, drop_letterbox=False)
    data_flags = functools.partial(_add_config_flags, names=DATA_FLAGS, defaults=True)  # added when parsed
    p = sub.add_parser(
        "fid-stats", help="Inception statistics of a data set (the cached reference side of fid)", flags=data_flags
    )
    _add_fid_args(p)
    p.add_argument("--out", required=True, help="statistics file (.npz with mu, sigma, num)")
    p.set_defaults(func=_cmd_fid_stats, batch_size=50)
    p = sub.add_parser("fid-convert", help="pytorch-fid's Inception .pth → .npz (read without torch)")
    p.add_argument("src", help="pt_inception-2015-12-05-6726825d.pth (needs torch to read)")
    p.add_argument("dst", help="output .npz")
    p.set_defaults(func=_cmd_fid_convert)
