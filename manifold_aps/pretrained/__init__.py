"""Trained models shipped with the package: cpu-scale priors and APS samplers, with model cards.

Each task ``name`` (``"bunny_mnist"``, ``"era5_proxy"``) has, in this folder,

- ``<name>_prior.pt``: the diffusion prior (a :func:`~manifold_aps.diffusion.save_prior` file),
- ``<name>_aps.pt`` and, where trained, ``<name>_blind_aps.pt``: APS samplers saved without their
  prior (they share ``<name>_prior.pt``),
- ``<name>.md``: the model card (data, steps, wall time, metrics, the commands that made it).

A prior may also ship under its own name, alone or with samplers trained against it
(``bunny_mnist_guided``: the guided Gaussian-residual Bunny-MNIST prior and known-mask and blind
APS samplers distilled against it — an 8 × 64 RealNVP with a per-entry map on an 8-component
mixture base, trained with the forward-KL term, and the same sampler reading the mask off ``y``
(``as_blind``) — the best shipped Bunny-MNIST samplers; ``era5_proxy_guided``: the sphere's
guided prior and known-operator and blind samplers with a rank-256 Gaussian base — the best shipped
sphere samplers), loaded with :func:`load_prior` / :func:`load_sampler`;
:func:`priors` lists every shipped prior.

Large weight tensors are stored as float16 to keep the package small, and the samplers' largest
matrices (a RealNVP's first layers, which read the whole condition) as int8 with one scale per
row; all are loaded back as float32, and the model cards report metrics measured with the stored
(rounded) weights.

Example:
    >>> from manifold_aps import pretrained
    >>> "bunny_mnist" in pretrained.available()           # doctest: +SKIP
    True
    >>> sampler = pretrained.load_sampler("bunny_mnist")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import torch

from manifold_aps.aps import AmortizedPosteriorSampler
from manifold_aps.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from manifold_aps.diffusion.prior import DiffusionPrior
from manifold_aps.diffusion.saving import load_prior as _load_prior_file
from manifold_aps.diffusion.saving import prior_record
from manifold_aps.signals import MinMaxNormalizer

__all__ = ["FOLDER", "available", "priors", "load_prior", "load_sampler", "model_card", "export"]

FOLDER = Path(__file__).resolve().parent
HALF_PRECISION_MIN_SIZE = 4096
"""Floating tensors with at least this many entries are stored as float16."""
ROW_QUANTISED_MIN_SIZE = 2**19
"""Sampler matrices with at least this many entries are stored as int8 with one float32 scale per
row: ``w ≈ q · s``, ``s = max_j |w_ij| / 127``, ``|w − q s| ≤ s / 2``."""


def _files(name: str, folder: Path) -> dict:
    return {"prior": folder / f"{name}_prior.pt", "aps": folder / f"{name}_aps.pt",
            "blind": folder / f"{name}_blind_aps.pt", "card": folder / f"{name}.md"}


def available(folder=FOLDER) -> list[str]:
    """Names of the shipped samplers: ``<task>`` for known-mask APS, ``<task>_blind`` for blind APS."""
    folder = Path(folder)
    names = []
    for prior_file in sorted(folder.glob("*_prior.pt")):
        task = prior_file.name[: -len("_prior.pt")]
        files = _files(task, folder)
        names += [task] * files["aps"].exists() + [f"{task}_blind"] * files["blind"].exists()
    return names


def priors(folder=FOLDER) -> list[str]:
    """Names of every shipped prior (with or without samplers), for :func:`load_prior`."""
    return sorted(path.name[: -len("_prior.pt")] for path in Path(folder).glob("*_prior.pt"))


def _require(path: Path, name: str, folder: Path) -> Path:
    if not path.exists():
        shipped = ", ".join(available(folder)) or "none"
        raise FileNotFoundError(f"no shipped model {name!r}: {path} is missing (shipped: {shipped})")
    return path


def load_prior(task: str, folder=FOLDER) -> DiffusionPrior:
    """The shipped diffusion prior of ``task`` (eval mode, float32, ``.normalizer`` set)."""
    folder = Path(folder)
    return _load_prior_file(_require(_files(task, folder)["prior"], task, folder))


def load_sampler(task: str, blind: bool = False, device="cpu", folder=FOLDER) -> AmortizedPosteriorSampler:
    """The shipped APS sampler of ``task`` (blind: trained for unknown masks), with its prior."""
    folder = Path(folder)
    files = _files(task, folder)
    path = _require(files["blind" if blind else "aps"], task + "_blind" * blind, folder)
    prior = load_prior(task, folder)
    payload = load_checkpoint(path, kind="aps_model", map_location="cpu")
    payload["flow_state"] = _expand(payload["flow_state"])
    try:
        model = AmortizedPosteriorSampler.from_payload(payload, prior=prior)
    except (KeyError, TypeError, ValueError, RuntimeError, StopIteration) as error:
        raise CheckpointError(f"{path} does not fit {files['prior'].name} ({type(error).__name__}: {error})") from None
    return model.to(device).eval()


def model_card(task: str, folder=FOLDER) -> str:
    """The model card (Markdown) of ``task``."""
    folder = Path(folder)
    return _require(_files(task, folder)["card"], task, folder).read_text()


def _compact(state: dict) -> dict:
    """Large floating tensors as float16 (``load_state_dict`` casts them back), except the exact
    Gaussian of a Gaussian-residual prior (``gaussian.*``: its directions must stay orthonormal to
    ~1e-7, so float32)."""
    def stored(key: str, value: torch.Tensor) -> torch.Tensor:
        value = value.detach().cpu()
        if not value.is_floating_point():
            return value
        if key.startswith("gaussian.") or ".gaussian." in key:
            return value.float()
        return value.half() if value.numel() >= HALF_PRECISION_MIN_SIZE else value

    return {key: stored(key, value) for key, value in state.items()}


def _quantise_rows(state: dict) -> dict:
    """:func:`_compact`, with matrices of at least :data:`ROW_QUANTISED_MIN_SIZE` entries as
    ``{"int8": q, "scale": s}`` (undone by :func:`_expand`)."""
    def stored(value: torch.Tensor):
        scale = value.abs().amax(dim=1).float().clamp_min(torch.finfo(torch.float32).tiny) / 127
        return {"int8": torch.round(value.float() / scale[:, None]).to(torch.int8), "scale": scale}

    compact = _compact(state)
    return {key: stored(value.detach().cpu()) if value.is_floating_point() and value.dim() == 2
            and value.numel() >= ROW_QUANTISED_MIN_SIZE else compact[key] for key, value in state.items()}


def _expand(state: dict) -> dict:
    """A stored state with its row-quantised matrices back as float32 ``q · s``."""
    return {key: value["int8"].float() * value["scale"][:, None] if isinstance(value, dict) else value
            for key, value in state.items()}


def _float32(record):
    """Every floating tensor in a (nested) dict / list record as float32."""
    if isinstance(record, dict):
        return {key: _float32(value) for key, value in record.items()}
    if isinstance(record, list):
        return [_float32(value) for value in record]
    return record.float() if isinstance(record, torch.Tensor) and record.is_floating_point() else record


def export(task: str, prior: DiffusionPrior, samplers: dict, card: str, normalizer: MinMaxNormalizer | None = None,
           folder=FOLDER) -> list[Path]:
    """Write ``prior``, the ``samplers`` (``{"aps": model}`` and/or ``{"blind": model}``) and ``card``.

    The samplers must have been trained against ``prior``; they are stored without it.
    """
    folder = Path(folder)
    files = _files(task, folder)
    unknown = set(samplers) - {"aps", "blind"}
    if unknown:
        raise ValueError(f"samplers keys must be 'aps' and/or 'blind', got {sorted(unknown)}")
    normalizer = normalizer or getattr(prior, "normalizer", None)
    written = [save_checkpoint(files["prior"], prior_record(prior, normalizer, compact=_compact), kind="diffusion_prior")]
    for key, model in samplers.items():
        if model.prior is not prior and any(not torch.equal(a, b) for a, b in
                                            zip(model.prior.state_dict().values(), prior.state_dict().values())):
            raise ValueError(f"the {key!r} sampler was trained against a different prior")
        payload = model.state_payload(include_prior=False)
        payload["flow_state"] = _quantise_rows(payload["flow_state"])
        if payload.get("base") is not None:  # the base in float32 (it is computed in float64 on load)
            payload["base"] = _float32(payload["base"])
        written.append(save_checkpoint(files[key], payload, kind="aps_model"))
    files["card"].write_text(card)
    written.append(files["card"])
    return written
