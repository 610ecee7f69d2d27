"""Every list of names in cloudjax, in one place: the CLI's choices and every config check read these.

This module imports nothing from cloudjax (and no JAX), so the command line can build its parser cheaply and
every layer can check a name against it. Processes are named by their spec (:class:`cloudjax.process.ProcessSpec`,
the class of a process's settings and behaviour) as a lazy import string, imported on first use by
:func:`process_spec`; :func:`register_process` adds one at run time. The objects behind the names live where they belong
(``schedules.SCHEDULES``, ``models.PRESETS``, ``samplers.METHODS``, ...); tests check that both agree.

Losses are a norm, optionally with a time weighting: ``"l2"``, ``"mahalanobis"``, ``"l2+min_snr"``, ``"l1"``
... (see :func:`parse_loss`; which a process takes is ``LOSSES[kind]``); ``"pixel"`` and ``"min_snr"`` are the
older names of ``"l2"`` and ``"l2+min_snr"``.
"""

from __future__ import annotations

__all__ = [
    "NOISES",
    "SCHEDULES",
    "PREDICTIONS",
    "NORMS",
    "TIME_WEIGHTINGS",
    "LOSS_ALIASES",
    "LOSSES",
    "PROCESS_SPECS",
    "PROCESSES",
    "SAMPLERS",
    "DEGRADATIONS",
    "BLUR_ROUTINES",
    "BLUR_BASES",
    "BLUR_SCHEDULES",
    "MODELS",
    "check",
    "process_spec",
    "register_process",
    "parse_loss",
    "samplers_for",
]

NOISES = ("white", "cloud")
SCHEDULES = ("cosine", "offset_cosine", "linear", "calibrated")  # "calibrated" needs data (see schedules)
PREDICTIONS = ("eps", "x0", "v")
NORMS = ("l2", "mahalanobis", "l1")
TIME_WEIGHTINGS = ("none", "min_snr")
LOSS_ALIASES = {"pixel": "l2", "min_snr": "l2+min_snr"}
# process kind → its loss names: Gaussian losses come from its ELBO (a squared norm, any time weighting);
# Cold Diffusion regresses x0 with L1 (or L2), unweighted
LOSSES = {
    "gaussian": (*LOSS_ALIASES, *(n if w == "none" else f"{n}+{w}" for n in NORMS[:2] for w in TIME_WEIGHTINGS)),
    "cold": ("l1", "l2"),
}
LOSSES["scale_space"] = LOSSES["blurring"] = LOSSES["gaussian"]  # x0 regression, Gaussian norms and weights
# process name → "module:Class" of its spec (imported by ``process_spec``)
PROCESS_SPECS = {
    "gaussian": "cloudjax.diffusion:GaussianSpec",
    "cold": "cloudjax.cold:ColdSpec",
    "scale_space": "cloudjax.scale_space:ScaleSpaceSpec",
    "blurring": "cloudjax.blurring:BlurringSpec",
}
PROCESSES = PROCESS_SPECS.keys()  # a live view: it holds the processes registered at run time too
# sampler name → the process kinds (``process.kind``) it drives; a kind's samplers in order of effort
SAMPLERS = {
    "ddim": ("gaussian", "scale_space", "blurring"),
    "ddpm": ("gaussian", "scale_space", "blurring"),
    "dpm++2m": ("gaussian",),
    "direct": ("cold",),  # one-shot x̂0 = R(x_T, T)
    "cold_naive": ("cold",),  # Cold Diffusion's Algorithm 1
    "cold": ("cold",),  # Algorithm 2
}
DEGRADATIONS = ("blur", "mask", "downsample", "decolor")
BLUR_ROUTINES = ("constant", "incremental", "exponential")
# blurring diffusion: the basis its blur is diagonal in ("dct": the paper's, reflecting boundaries; "fourier":
# periodic, cloudjax's own, for cloud noise) and σ_B(t)/σ_B,max ("sin2": the paper's sin²(πt/2); "sin": older runs)
BLUR_BASES = ("dct", "fourier")
BLUR_SCHEDULES = ("sin2", "sin")
MODELS = ("tiny", "small", "base")


def check(what: str, value, names) -> None:
    """``ValueError`` naming ``what`` unless ``value`` is one of ``names``."""
    if value not in names:
        raise ValueError(f"{what} must be one of {list(names)}, got {value!r}")


def process_spec(name: str) -> type:
    """The spec class of process ``name`` (imported now if it is an import string); ``ValueError`` naming
    ``process`` if no process has that name."""
    check("process", name, PROCESS_SPECS)
    spec = PROCESS_SPECS[name]
    if isinstance(spec, str):
        import importlib

        module, _, attr = spec.partition(":")
        spec = getattr(importlib.import_module(module), attr)
    return spec


def register_process(name: str, spec: type | str) -> None:
    """Make process ``name`` known (to configs, run.json and the command line): ``spec`` is its spec class or a
    ``"module:Class"`` string. The spec's ``kind`` must be ``name``."""
    PROCESS_SPECS[name] = spec


def parse_loss(name: str, kind: str = "gaussian") -> tuple[str, str]:
    """``(norm, time_weighting)`` of a loss name ``NORM`` or ``NORM+WEIGHTING`` (or an alias in LOSS_ALIASES)
    for processes of ``kind``."""
    check("loss", name, LOSSES[kind])
    norm, _, weighting = LOSS_ALIASES.get(name, name).partition("+")
    return norm, weighting or "none"


def samplers_for(kind: str) -> tuple[str, ...]:
    """The sampler names that drive processes of ``kind``."""
    return tuple(name for name, kinds in SAMPLERS.items() if kind in kinds)
