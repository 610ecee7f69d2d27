"""The forward-process interface: what the train step and the one sampler loop ask of a process.

Three protocols (structural: any object with these members qualifies; nothing needs to inherit):

* :class:`NoiseModel` — a Gaussian noise N(0, Σ): ``sample(key, shape)`` and the diagonal of Σ in Π space.
* :class:`Schedule` — t ∈ [0, 1] → (α_t, σ_t).
* :class:`ForwardProcess` — a degradation of data over time t ∈ [0, 1] (0 clean, 1 most degraded) that a
  network learns to undo. Implementations: :class:`~cloudjax.GaussianDiffusion` (white or cloud noise) and
  :class:`~cloudjax.ColdDiffusion` (deterministic degradations).

Time. The sampler and the network always see t as float32 in [0, 1], shape ``(B,)``; a process with discrete
steps (cold: t = i / T) maps it to its own index. How the sampler uses a process (:func:`cloudjax.sample`)::

    stages = process.stages(steps, t_start, t_end)        # the grid t_0 > t_1 > … > t_steps, split in stages
    coef = process.coefficients(concat(stages))           # what the steps need at each time (a pytree)
    x = process.prior(key, shape, coef[0], init)          # the state at t_0
    for each step t → s:                                  # one loop per stage, see below
        x0, aux = process.predict(denoise_fn(x, t), x, t) # the network output → x̂0 (+ what the step needs)
        step = Step(x, x0, aux, coef[t], coef[s], memory, last, state_shape(shape, stage of s))
        x, memory = METHODS[method].step(process, step, key, eta, stochasticity)
    return process.output(x, x̂0 at t_steps, coef[t_steps])

Stages (for processes whose state changes shape, e.g. scale-space diffusion at its resolution changes): ``stages``
returns the grid cut into consecutive runs of times; all states at the times of run k have the static shape
``state_shape(shape, k)``. The loop runs one ``lax.fori_loop`` over the steps inside each run (its bounds traced:
one compile whatever the step count) and, between runs k and k + 1, the single step from the last time of run k to
the first of run k + 1, unrolled: that step may change the shape. A sampler's multistep memory restarts at every
stage. Gaussian and cold processes have one stage. Which samplers drive which process is ``registry.SAMPLERS`` (by
``process.kind``); a process that needs its own update rule adds a step function to ``samplers.METHODS`` and its
name to the registry. A Gaussian process whose α is an operator (blurring diffusion: a gain per DCT or Π mode) can
reuse the Gaussian rules, which are elementwise in α and σ, by returning per-mode (α, σ) from ``coefficients``
and predicting in its own basis.

Optional capabilities are declared, not probed: a process inherits the classes below that apply to it (as optax
declares ``GradientTransformationExtraArgs``), and the train step and the sampler loop check ``isinstance``.

* :class:`LossBranches` — the loss holds several programs of different shapes (scale space: one per level and
  per change step); their probabilities are ``loss_branches`` and ``loss(..., branch=k)`` runs one. The train step
  draws k on the host with :func:`loss_branch` and runs one compiled program per branch: XLA gets each program's
  convolutions whole (inside a ``lax.switch`` XLA:CPU compiles them several times slower). Without ``branch`` the
  loss draws the branch itself on device (one program), with the same distribution.
* :class:`OwnGaussianStep` — the ``"ddim"``/``"ddpm"`` update is the process's own (α an operator, a changing
  shape): ``gaussian_step(step, key, eta, stochasticity)``, None where the elementwise rule applies.
* :class:`NetworkUpsampling` — at a step into a larger state the sampler calls ``denoise_fn(x, t, upsample=True)``.
* :class:`Degradation` — a deterministic ``degrade(x0, i)`` at integer steps, what Cold Diffusion's samplers use.

A process is configured through its spec (:class:`ProcessSpec`): the frozen dataclass of its settings, which
also builds the process and its network, measures what the process needs from the data, and names its default
sampler. Training, sampling and the command line talk to specs only; ``registry.PROCESS_SPECS`` names them. A spec
that reads the flat run.json of older versions declares :class:`OlderSettings`.
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import chex
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "NoiseModel",
    "Schedule",
    "ForwardProcess",
    "LossBranches",
    "OwnGaussianStep",
    "NetworkUpsampling",
    "Degradation",
    "ProcessSpec",
    "OlderSettings",
    "loss_branch",
    "check_output",
    "check_times",
]


@runtime_checkable
class NoiseModel(Protocol):
    """Zero-mean Gaussian noise N(0, Σ) on images ``(..., H, W, C)``, a frozen pytree (``WhiteNoise``,
    ``PowerLawNoise``). It must stay one fixed Σ (sums of draws are N(0, cΣ): the jump trick)."""

    def sample(self, key: jax.Array, shape: Sequence[int]) -> jax.Array:
        """A float32 draw of ``shape`` ``(..., H, W, C)``."""

    def fourier_variance(self, H: int, W: int) -> np.ndarray:
        """The ``(H, W)`` diagonal of Σ in Π space (per channel), every entry > 0."""


@runtime_checkable
class Schedule(Protocol):
    """A noise schedule: ``x_t = α_t x0 + σ_t ε`` for t ∈ [0, 1], λ_t = log(α_t² / σ_t²) decreasing."""

    def alpha_sigma(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(α_t, σ_t), each float32 of t's shape."""

    def log_snr(self, t: jax.Array) -> jax.Array:
        """λ_t of t's shape."""


@runtime_checkable
class ForwardProcess(Protocol):
    """A forward process: a frozen pytree (its static settings are not nodes) that the train step and the
    samplers drive through these members only.

    Attributes:
      kind: the process family (``"gaussian"``, ``"cold"``, …) that ``registry.SAMPLERS`` lists per sampler.
    """

    kind: str

    def loss(self, apply_fn: Callable, key: jax.Array, x0: jax.Array, labels: jax.Array | None = None) -> jax.Array:
        """Scalar training loss on clean images x0 ``(B, H, W, C)``: draws t ``(B,)`` in [0, 1] (and noise) with
        ``key``, degrades x0 to x_t and compares ``apply_fn(x_t, t)`` with the process's target; with class
        ``labels (B,)`` (int, −1: no class) the network is called as ``apply_fn(x_t, t, labels=labels)``
        (:func:`with_labels`)."""

    def stages(self, steps: int, t_start: float, t_end: float) -> tuple[np.ndarray, ...]:
        """The sampler's time grid: ``steps + 1`` float32 times from t_start down to t_end, cut into stages of
        constant state shape (see the module docstring); ``ValueError`` naming the argument when the process
        cannot take ``steps`` steps over that span."""

    def state_shape(self, shape: tuple[int, ...], stage: int) -> tuple[int, ...]:
        """The state's shape in ``stage`` (an index into :meth:`stages`) for images of ``shape``; a static tuple.
        One-stage processes return ``shape``."""

    def coefficients(self, ts: jax.Array) -> Any:
        """A pytree of arrays with leading axis ``len(ts)``: what the steps need at each time (Gaussian:
        (α, σ); cold: the integer step t·T). Computed once per grid, sliced per step."""

    def prior(self, key: jax.Array, shape: tuple[int, ...], at_start: Any, init: jax.Array | None) -> jax.Array:
        """The state at the first time of the grid (of shape ``state_shape(shape, 0)``) for samples of image
        ``shape`` ``(B, H, W, C)``:
        ``at_start`` is that time's coefficients; ``init`` the caller's start input (Gaussian: ε, the state is
        σ ε; cold: the degraded images themselves) or None to draw it."""

    def predict(self, out: jax.Array, x_t: jax.Array, t: jax.Array) -> tuple[jax.Array, Any]:
        """``(x̂0, aux)`` from the network output ``out`` at (x_t, t ``(B,)``): the prediction → x̂0 map, and
        whatever else the process's steps use (Gaussian: ε̂; cold: None)."""

    def output(self, x: jax.Array, x0: jax.Array, at_end: Any) -> jax.Array:
        """The samples after the last step, from the final state x and the x̂0 predicted there."""


class LossBranches(abc.ABC):
    """Capability: a loss of several programs of different shapes (module docstring)."""

    @property
    @abc.abstractmethod
    def loss_branches(self) -> np.ndarray:
        """The probabilities ``(K,)`` of the loss's K branches."""

    @abc.abstractmethod
    def loss(self, apply_fn: Callable, key: jax.Array, x0: jax.Array, labels=None, branch: int | None = None):
        """:meth:`ForwardProcess.loss`, of branch ``branch`` only (None: drawn on device)."""


class OwnGaussianStep(abc.ABC):
    """Capability: the process's own DDIM/DDPM update (module docstring)."""

    @abc.abstractmethod
    def gaussian_step(self, step, key: jax.Array | None, eta, stochasticity) -> jax.Array | None:
        """x_s from a sampler ``Step`` (:mod:`cloudjax.samplers`), or None for the elementwise Gaussian rule."""


class NetworkUpsampling:
    """Capability: the network makes the larger state at a resolution change (``denoise_fn(..., upsample=True)``)."""


class Degradation(abc.ABC):
    """Capability: a deterministic degradation at integer steps 0 … ``steps`` (T), what Cold Diffusion's samplers
    undo."""

    steps: int

    @abc.abstractmethod
    def degrade(self, x0: jax.Array, i: jax.Array) -> jax.Array:
        """D(x0, i) for integer steps i ``(B,)`` (0: the identity)."""


@runtime_checkable
class ProcessSpec(Protocol):
    """A process's settings and what training and sampling ask of it: a frozen, hashable dataclass of JSON values
    (checked, and the defaults that need nothing else filled, when it is made) registered under ``kind``.
    run.json stores it as ``{"kind": kind, **fields}`` and :func:`cloudjax.registry.process_spec` rebuilds it.

    Attributes:
      kind: its name in ``registry.PROCESS_SPECS`` (not the sampler family ``ForwardProcess.kind``).
      generates: whether sampling makes new images (else it restores degraded ones: a :class:`Degradation`).
      sampler, sampler_steps: the default sampler's name and step count.
    """

    kind: ClassVar[str]

    @property
    def generates(self) -> bool: ...

    @property
    def sampler(self) -> str: ...

    @property
    def sampler_steps(self) -> int: ...

    def resolve(self, image_size: int, channels: int, unet) -> ProcessSpec:
        """These settings for ``image_size``² × ``channels`` images and the network settings ``unet`` (a
        :class:`~cloudjax.models.UNetConfig`): the defaults that depend on them filled and the rules across parts
        checked; ``ValueError`` naming the setting."""

    def measure(self, images: np.ndarray, std: np.ndarray, seed: int) -> dict[str, Any]:
        """What the process needs from the data (JSON values by name, stored in run.json), measured on the
        normalised sample ``images`` float32 ``(n, H, W, C)``; ``std`` ``(C,)``: the normaliser's, for sizes in
        data units."""

    def build(self, measurements: Mapping[str, Any], image_shape: tuple[int, int, int]) -> ForwardProcess:
        """The process for images ``(H, W, C)`` with ``measurements`` (as :meth:`measure` made them, or read back
        from run.json); ``ValueError`` naming a measurement that is missing, unexpected or out of range."""

    def network(self, unet, image_size: int, rngs) -> Any:
        """The network (an ``nnx.Module``: UNet, Flexi-UNet, ...) with settings ``unet`` for ``image_size`` px."""


class OlderSettings(abc.ABC):
    """Capability of a spec: its settings in the one flat config of run.json files written before specs."""

    @classmethod
    @abc.abstractmethod
    def upgrade(cls, settings: dict[str, Any]) -> dict[str, Any]:
        """The fields of this spec for the older flat ``settings`` that apply to it (None values dropped)."""


def loss_branch(weights: np.ndarray, key: jax.Array) -> int:
    """The loss branch (see the module docstring) that the step with ``key`` trains, drawn on the host from the key's
    bits with probabilities ``weights`` (a process's ``loss_branches``, read once by the caller). Deterministic in
    the key (a resumed run draws the same branches); every process of a multi-host run draws the same one."""
    bits = jax.random.key_data(key)
    bits = np.asarray(bits.addressable_data(0) if isinstance(bits, jax.Array) else bits).ravel()
    return int(np.random.default_rng(bits.astype(np.uint64)).choice(len(weights), p=weights))


def with_labels(apply_fn: Callable, labels: jax.Array | None, batch: int) -> Callable:
    """``apply_fn`` with the class labels ``(batch,)`` bound as its ``labels`` keyword (unchanged for None): how
    every process's loss conditions the network on the batch's classes. Labels of another shape would broadcast
    against the batch (or be cut) in the network: ``ValueError`` at trace time."""
    if labels is None:
        return apply_fn
    chex.assert_shape(labels, (batch,), custom_message="labels must be (batch,)", exception_type=ValueError)
    return functools.partial(apply_fn, labels=labels)


def per_example(t, x: jax.Array) -> jax.Array:
    """A per-example value ``t`` (a scalar, ``(1,)`` or ``(B,)``: times, α_t, σ_t) as float32 of rank ``x.ndim``,
    to broadcast against ``x (B, H, W, C)``; any other shape would broadcast silently against the images:
    ``ValueError`` at trace time."""
    t = jnp.asarray(t, jnp.float32)
    message = f"t must be a scalar or ({x.shape[0]},) for a batch of {x.shape[0]}"
    chex.assert_rank(t, {0, 1}, custom_message=message, exception_type=ValueError)
    if t.ndim:
        chex.assert_shape(t, ({1, x.shape[0]},), custom_message=message, exception_type=ValueError)
    return t.reshape(t.shape + (1,) * (x.ndim - 1))


def check_noise(noise: jax.Array, x0: jax.Array) -> None:
    """``ValueError`` at trace time unless the given noise ε has the shape of the images ``x0`` it is added to."""
    chex.assert_equal_shape([noise, x0], custom_message="noise must have x0's shape", exception_type=ValueError)


def check_output(out, shape, name: str = "denoise_fn") -> jax.Array:
    """The network output ``out`` as float32 after checking, at trace time, that it is a real floating-point array
    of ``shape`` (a wrong shape would broadcast or truncate silently); ``ValueError`` naming ``name``. Every
    process's ``loss`` (``name="apply_fn"``) and the sampler loop check the network's output with it."""
    if jnp.shape(out) != tuple(shape):
        raise ValueError(f"{name} must return an array of shape {tuple(shape)} (x_t's), got {jnp.shape(out)}")
    if not jnp.issubdtype(jnp.result_type(out), jnp.floating):
        raise ValueError(f"{name} must return real floating-point values, got dtype {jnp.result_type(out)}")
    return jnp.asarray(out).astype(jnp.float32)


def check_times(t) -> None:
    """``ValueError`` if a concrete t (not traced under jit) leaves [0, 1] (or is NaN)."""
    try:
        t = np.asarray(t)
    except jax.errors.TracerArrayConversionError:
        return
    if not np.all((t >= 0) & (t <= 1)):
        raise ValueError(f"t must be in [0, 1], got {t}")
