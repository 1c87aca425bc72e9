"""The serving model: a verified bundle, a warmed scorer and per-slice thresholds as arrays.

A `ServingModel` is immutable once built. Reload builds a new one off to the side (load,
verify, warm) and the daemon swaps one reference between batches, so a batch always sees one
model from start to finish.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slidr.contract import SLICE_BY_CODE, SLICES
from slidr.featurespec import N_FEATURES, SPEC_HASH


class ModelLoadError(RuntimeError):
    """The bundle cannot serve: the message says why (checksums, spec hash, model, thresholds)."""


def select_scorer(model_path: str, backend: str, max_batch: int) -> Any:
    """The scorer of a bundle: slidr.engines.select_scorer (ONNX Runtime or TensorRT)."""
    from slidr.engines import select_scorer as engines_select
    return engines_select(model_path, backend=backend, max_batch=max(max_batch, 1))


def threshold_table(thresholds: dict[str, Any]) -> tuple[np.ndarray, str]:
    """thresholds.json -> float64 array indexed like contract.SLICE_BY_CODE
    (device * 2 + logged_in)."""
    if not isinstance(thresholds, dict):
        raise ModelLoadError("thresholds must be a JSON object")
    default = thresholds.get("default")
    slices = thresholds.get("slices") or {}
    if not isinstance(slices, dict):
        raise ModelLoadError("thresholds 'slices' must be an object")
    unknown = sorted(set(slices) - set(SLICES))
    if unknown:
        raise ModelLoadError(f"thresholds name unknown slices: {', '.join(unknown)}")
    table = np.empty(len(SLICE_BY_CODE), dtype=np.float64)
    for code, name in enumerate(SLICE_BY_CODE):
        v = slices.get(name, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ModelLoadError(f"no usable threshold for slice {name} (got {v!r}, "
                                 f"default {default!r})")
        if not 0.0 <= float(v) <= 1.0:
            raise ModelLoadError(f"threshold for slice {name} = {v} is outside [0, 1]")
        table[code] = float(v)
    return table, str(thresholds.get("method", "slice"))


@dataclass(frozen=True)
class ServingModel:
    version: str
    path: str
    scorer: Any
    thresholds: np.ndarray  # float64, index device * 2 + logged_in
    method: str
    loaded_at: float
    warmup_ms: float
    manifest: dict[str, Any] = field(default_factory=dict)

    def info(self) -> dict[str, Any]:
        return {"version": self.version, "path": self.path, "scorer": self.scorer.name,
                "threshold_method": self.method, "loaded_at": self.loaded_at,
                "warmup_ms": round(self.warmup_ms, 3),
                "thresholds": {name: float(self.thresholds[SLICE_BY_CODE.index(name)])
                               for name in SLICES}}


def load_bundle(bundle: Any, backend: str, max_batch: int,
                key: bytes | None = None) -> ServingModel:
    """Verify a registry Bundle (and its signature, given a key) and build a warmed
    ServingModel, or raise ModelLoadError."""
    try:
        bundle.verify()
        if key is not None:
            bundle.verify_signature(key)
    except Exception as e:  # BundleError and I/O errors alike: refuse with the reason
        raise ModelLoadError(f"bundle {getattr(bundle, 'version', '?')} failed verification: "
                             f"{e}") from e
    manifest = dict(bundle.manifest)
    spec = manifest.get("feature_spec_hash")
    if spec != SPEC_HASH:
        raise ModelLoadError(f"bundle {bundle.version} was built for feature spec {spec!r}, "
                             f"this daemon computes {SPEC_HASH!r}")
    table, method = threshold_table(bundle.thresholds)
    model_path = str(bundle.model_path)
    if not Path(model_path).is_file():
        raise ModelLoadError(f"bundle {bundle.version}: model file missing: {model_path}")
    try:
        scorer = select_scorer(model_path, backend, max_batch)
        t0 = time.perf_counter()
        scorer.warmup(max_batch)
        probe = scorer.infer(np.zeros((2, N_FEATURES), dtype=np.float32))
    except ModelLoadError:
        raise
    except Exception as e:
        raise ModelLoadError(f"bundle {bundle.version}: model does not load or run: "
                             f"{type(e).__name__}: {e}") from e
    if probe.shape != (2,) or not np.all(np.isfinite(probe)):
        raise ModelLoadError(f"bundle {bundle.version}: model output has shape {probe.shape} "
                             "or non-finite values; expected one robot probability per row")
    return ServingModel(version=str(bundle.version), path=str(bundle.path), scorer=scorer,
                        thresholds=table, method=method, loaded_at=time.time(),
                        warmup_ms=(time.perf_counter() - t0) * 1000.0, manifest=manifest)


def load_current(registry_dir: str, backend: str, max_batch: int,
                 key_file: str = "") -> ServingModel:
    """The registry's current bundle, verified (signed under the key in `key_file`, when
    given) and warmed."""
    from slidr.registry import Registry, load_key

    key = None
    if key_file:
        try:
            key = load_key(key_file)
        except Exception as e:
            raise ModelLoadError(str(e)) from e

    reg = Registry(registry_dir)
    try:
        bundle = reg.current()
    except Exception as e:
        raise ModelLoadError(f"registry {registry_dir}: cannot read the current bundle: {e}") from e
    if bundle is None:
        raise ModelLoadError(f"registry {registry_dir} has no current bundle; publish or promote one")
    return load_bundle(bundle, backend, max_batch, key)


def rollback(registry_dir: str, reason: str | None = None,
             expected_current: str | None = None, **details: Any) -> str:
    """Registry.rollback: the new current version. With `expected_current`, the pointer moves
    only if that version is still current (a second daemon only confirms the rejection)."""
    from slidr.registry import Registry

    return Registry(registry_dir).rollback(reason=reason, expected_current=expected_current,
                                           **details)


def rejected_versions(registry_dir: str) -> dict[str, dict[str, Any]]:
    """{version: {"reason", "at", ...}} of the registry's rejected bundles ({} if unreadable)."""
    from slidr.registry import Registry, RegistryError

    try:
        return Registry(registry_dir).rejected()
    except (OSError, RegistryError):
        return {}
