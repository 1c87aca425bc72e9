"""The model registry: immutable, checksummed bundles and a current / previous pointer pair.

Layout (docs/calibration.md, "Registry")::

    DIR/.lock                      fcntl lock: publishers and pointer moves never interleave
    DIR/pointers.json              {"current": v|null, "previous": v|null, "history": [...],
                                    "rolled_back": [...], "rejected": {v: {"reason", "at", ...}}}
    DIR/bundles/<version>/         manifest.json + model.onnx + thresholds.json + feature_spec.json
                                   + metrics / report / guardrail files, all read-only

Crash safety: a bundle is built under a dot-named temp directory and renamed into place only
when every file and the manifest are written and fsynced, so a killed publisher leaves either
nothing or a complete bundle (stale temp directories are swept by the next publisher). The
pointers file is replaced with one atomic rename. A bundle that fails `verify` is never promoted
and never handed out by `current_verified`.

Rejected bundles: a rollback with a reason (slidrd's deviation monitor, or an operator) marks the
bundle it leaves `rejected` with that reason and the time. A rejected bundle is never made
current again by `promote` or by `publish(promote=True)` (`slidr daily`) unless forced, and a
daemon serving a version that becomes rejected reloads the current one.

Importable by the daemon: standard library only (slidr.featurespec, imported lazily by `verify`
for the expected spec hash, is the one exception).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from slidr.util import atomic_open, fsync_dir

MANIFEST = "manifest.json"
# Optional: HMAC-SHA256 of manifest.json's bytes under a key shared by the publisher (`slidr
# daily --sign-key`) and the daemons (`bundle_key`). The manifest holds the sha256 of every
# file, so the signature covers the whole bundle.
SIGNATURE = "manifest.sig"
MIN_KEY_BYTES = 32
MODEL_FILE = "model.onnx"
THRESHOLDS_FILE = "thresholds.json"
FEATURE_SPEC_FILE = "feature_spec.json"
POINTERS = "pointers.json"
LOCK = ".lock"

# What publish copies from a training / daily work directory (top level only). Scores and
# feature dumps stay behind: a bundle carries what serving, audit and drift checks need.
_COPY_SUFFIXES = (".onnx", ".json", ".html", ".png", ".svg", ".md", ".txt", ".csv")
_REQUIRED = (MODEL_FILE, THRESHOLDS_FILE)
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_MANIFEST_TYPES: dict[str, type | tuple[type, ...]] = {
    "version": str, "created": str, "feature_spec_hash": str, "feature_names": list,
    "model_file": str, "thresholds_file": str, "files": dict, "metrics": dict, "guardrails": dict,
}


class BundleError(Exception):
    """A bundle is not servable. `reason` says exactly why (first problem found)."""

    def __init__(self, version: str | None, reason: str) -> None:
        self.version = version
        self.reason = reason
        super().__init__(f"bundle {version or '?'}: {reason}")


class RegistryError(RuntimeError):
    """A registry operation was refused (no previous model, unknown version, ...)."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def spec_hash_of(spec: Mapping[str, Any]) -> str:
    """Hash of a feature_spec.json: the canonical hash slidr.featurespec.spec_hash() computes
    for the spec fields (a stored "spec_hash" field is not part of what is hashed; note that the
    spec's own "hash" field names the key-hash algorithm). The content wins over a stored
    "spec_hash", so an edited spec file can never pass as the spec it claims to be."""
    body = {k: v for k, v in spec.items() if k != "spec_hash"}
    blob = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def check_thresholds(th: Any) -> None:
    """Schema of thresholds.json (docs/calibration.md, "Registry"); raises ValueError naming the problem."""
    if not isinstance(th, dict):
        raise ValueError("thresholds must be a JSON object")
    if th.get("method") not in ("slice", "global"):
        raise ValueError(f"thresholds.method must be 'slice' or 'global', got {th.get('method')!r}")
    d = th.get("default")
    if not isinstance(d, int | float) or isinstance(d, bool) or not 0.0 <= float(d) <= 1.0:
        raise ValueError(f"thresholds.default must be a number in [0, 1], got {d!r}")
    slices = th.get("slices", {})
    if not isinstance(slices, dict):
        raise ValueError("thresholds.slices must be an object")
    for k, v in slices.items():
        if not isinstance(v, int | float) or isinstance(v, bool) or not 0.0 <= float(v) <= 1.0:
            raise ValueError(f"thresholds.slices[{k!r}] must be a number in [0, 1], got {v!r}")


class Bundle:
    """One published model version (read-only view of DIR/bundles/<version>)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.version = self.path.name
        try:
            with open(self.path / MANIFEST) as f:
                self.manifest: dict[str, Any] = json.load(f)
        except FileNotFoundError:
            raise BundleError(self.version, f"{MANIFEST} is missing") from None
        except (OSError, ValueError) as e:
            raise BundleError(self.version, f"{MANIFEST} is unreadable: {e}") from None
        if not isinstance(self.manifest, dict):
            raise BundleError(self.version, f"{MANIFEST} is not a JSON object")
        self._thresholds: dict[str, Any] | None = None

    @property
    def model_path(self) -> Path:
        return self.path / str(self.manifest.get("model_file", MODEL_FILE))

    @property
    def thresholds(self) -> dict[str, Any]:
        if self._thresholds is None:
            name = str(self.manifest.get("thresholds_file", THRESHOLDS_FILE))
            try:
                with open(self.path / name) as f:
                    self._thresholds = json.load(f)
            except (OSError, ValueError) as e:
                raise BundleError(self.version, f"{name} is unreadable: {e}") from None
        return self._thresholds  # type: ignore[return-value]

    @property
    def feature_spec_hash(self) -> str:
        return str(self.manifest.get("feature_spec_hash", ""))

    def verify(self, expected_spec_hash: str | None = None) -> None:
        """Raise BundleError with the first problem found, or return None if servable.
        `expected_spec_hash` defaults to the running kernel's slidr.featurespec.SPEC_HASH."""
        v, m = self.version, self.manifest
        for key, typ in _MANIFEST_TYPES.items():
            if key not in m:
                raise BundleError(v, f"manifest has no '{key}'")
            if not isinstance(m[key], typ):
                raise BundleError(v, f"manifest '{key}' has the wrong type "
                                     f"({type(m[key]).__name__})")
        if m["version"] != v:
            raise BundleError(v, f"manifest names version {m['version']!r} but the directory "
                                 f"is {v!r}")
        files: dict[str, Any] = m["files"]
        for req in (m["model_file"], m["thresholds_file"], FEATURE_SPEC_FILE):
            if req not in files:
                raise BundleError(v, f"manifest lists no checksum for {req}")
        for rel, digest in sorted(files.items()):
            if not isinstance(digest, str) or not _SHA_RE.match(digest):
                raise BundleError(v, f"manifest checksum of {rel} is not a sha256 hex digest")
            p = self.path / rel
            if Path(rel).is_absolute() or ".." in Path(rel).parts:
                raise BundleError(v, f"manifest file path {rel!r} escapes the bundle")
            if not p.is_file():
                raise BundleError(v, f"{rel} is missing")
            got = sha256_file(p)
            if got != digest:
                raise BundleError(v, f"checksum mismatch for {rel}: manifest {digest[:12]}..., "
                                     f"file {got[:12]}...")
        extra = sorted(p.name for p in self.path.iterdir()
                       if p.name not in (MANIFEST, SIGNATURE) and p.name not in files)
        if extra:
            raise BundleError(v, f"files not in the manifest: {', '.join(extra)}")
        if self.model_path.stat().st_size == 0:
            raise BundleError(v, f"{m['model_file']} is empty")
        try:
            with open(self.path / FEATURE_SPEC_FILE) as f:
                spec = json.load(f)
            file_hash = spec_hash_of(spec)
        except (OSError, ValueError, AttributeError) as e:
            raise BundleError(v, f"{FEATURE_SPEC_FILE} is unreadable: {e}") from None
        if file_hash != m["feature_spec_hash"]:
            raise BundleError(v, f"{FEATURE_SPEC_FILE} hash {file_hash} != manifest "
                                 f"feature_spec_hash {m['feature_spec_hash']}")
        from slidr.featurespec import SPEC_HASH, SPEC_VERSION
        if expected_spec_hash is None:
            expected_spec_hash = SPEC_HASH
        if m["feature_spec_hash"] != expected_spec_hash:
            theirs = spec.get("version") if isinstance(spec, dict) else None
            ours = f" (spec version {SPEC_VERSION})" if expected_spec_hash == SPEC_HASH else ""
            raise BundleError(v, f"feature spec hash {m['feature_spec_hash']} (spec version "
                                 f"{theirs}) does not match this kernel's {expected_spec_hash}"
                                 f"{ours}: the model was trained on different features; "
                                 "retrain it on this kernel's features")
        try:
            check_thresholds(self.thresholds)
        except ValueError as e:
            raise BundleError(v, f"{m['thresholds_file']}: {e}") from None

    def verify_signature(self, key: bytes) -> None:
        """Raise BundleError unless manifest.sig is the HMAC-SHA256 of manifest.json under
        `key` (an unsigned bundle, another key, or an altered manifest are refused)."""
        v = self.version
        try:
            sig = (self.path / SIGNATURE).read_text().strip()
        except FileNotFoundError:
            raise BundleError(v, f"is not signed ({SIGNATURE} is missing) and a bundle key "
                                 "is set") from None
        except OSError as e:
            raise BundleError(v, f"{SIGNATURE} is unreadable: {e}") from None
        want = sign_bytes((self.path / MANIFEST).read_bytes(), key)
        if not hmac.compare_digest(sig, want):
            raise BundleError(v, f"{SIGNATURE} does not match: the bundle was altered or "
                                 "signed with another key")

    def summary(self) -> dict[str, Any]:
        m = self.manifest
        th = {}
        with contextlib.suppress(BundleError):
            th = self.thresholds
        return {"version": self.version, "created": m.get("created"),
                "feature_spec_hash": m.get("feature_spec_hash"),
                "threshold_method": th.get("method"), "default_threshold": th.get("default"),
                "slices": th.get("slices", {}), "metrics": m.get("metrics", {}),
                "guardrails_passed": (m.get("guardrails") or {}).get("passed"),
                "path": str(self.path)}

    def __repr__(self) -> str:
        return f"Bundle({self.version!r})"


class Registry:
    """DIR with bundles/ and pointers.json. Readers never lock; writers hold DIR/.lock."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.bundles_dir = self.path / "bundles"
        self.pointers_path = self.path / POINTERS

    # ---------------------------------------------------------------- locking and pointers

    @contextlib.contextmanager
    def lock(self, timeout: float | None = 60.0) -> Iterator[None]:
        """Exclusive writer lock (fcntl.flock on DIR/.lock; released by the kernel if we die)."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if deadline is not None and time.monotonic() > deadline:
                        raise RegistryError(f"registry {self.path} is locked by another "
                                            f"writer for more than {timeout:.0f}s") from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)  # closing drops the flock

    def pointers(self) -> dict[str, Any]:
        try:
            with open(self.pointers_path) as f:
                p = json.load(f)
        except FileNotFoundError:
            return {"current": None, "previous": None, "history": [], "rolled_back": [],
                    "rejected": {}}
        except ValueError as e:
            raise RegistryError(f"{self.pointers_path} is corrupt: {e}") from None
        p.setdefault("current", None)
        p.setdefault("previous", None)
        p.setdefault("history", [p["previous"]] if p["previous"] else [])
        p.setdefault("rolled_back", [])
        p.setdefault("rejected", {})
        return p

    def rejected(self) -> dict[str, dict[str, Any]]:
        """{version: {"reason", "at", ...}} of every rejected bundle."""
        r = self.pointers().get("rejected") or {}
        return dict(r) if isinstance(r, dict) else {}

    def _write_pointers(self, p: Mapping[str, Any]) -> None:
        with atomic_open(self.pointers_path, "w") as f:  # temp + fsync + rename + dir fsync
            json.dump(dict(p), f, indent=2, sort_keys=True)
            f.write("\n")

    # ---------------------------------------------------------------- reading

    def bundle(self, version: str) -> Bundle:
        if not _VERSION_RE.match(version or ""):
            raise RegistryError(f"invalid version name {version!r}")
        p = self.bundles_dir / version
        if not p.is_dir():
            raise RegistryError(f"no bundle {version!r} in {self.bundles_dir}")
        return Bundle(p)

    def list(self) -> list[str]:
        if not self.bundles_dir.is_dir():
            return []
        return sorted(p.name for p in self.bundles_dir.iterdir()
                      if p.is_dir() and not p.name.startswith("."))

    def current(self) -> Bundle | None:
        v = self.pointers()["current"]
        return self.bundle(v) if v else None

    def previous(self) -> Bundle | None:
        v = self.pointers()["previous"]
        return self.bundle(v) if v else None

    def current_verified(self, expected_spec_hash: str | None = None) -> Bundle | None:
        """The current bundle, verified; None when nothing is promoted. Raises BundleError when
        the current bundle is not servable (never returns one that failed verification)."""
        b = self.current()
        if b is None:
            return None
        b.verify(expected_spec_hash)
        return b

    def show(self, version: str) -> dict[str, Any]:
        b = self.bundle(version)
        out = b.summary()
        p = self.pointers()
        out["is_current"] = p["current"] == version
        out["is_previous"] = p["previous"] == version
        out["rejected"] = (p.get("rejected") or {}).get(version)
        out["files"] = b.manifest.get("files", {})
        return out

    def verify(self, version: str, expected_spec_hash: str | None = None) -> Bundle:
        try:
            b = self.bundle(version)
        except RegistryError as e:
            raise BundleError(version, str(e)) from None
        b.verify(expected_spec_hash)
        return b

    def verify_all(self, expected_spec_hash: str | None = None) -> dict[str, str | None]:
        """{version: None if good else the reason}, plus a check that pointers name bundles."""
        out: dict[str, str | None] = {}
        for v in self.list():
            try:
                self.verify(v, expected_spec_hash)
                out[v] = None
            except BundleError as e:
                out[v] = e.reason
        return out

    # ---------------------------------------------------------------- writing

    def _new_version(self, model: Path) -> str:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        base = f"{stamp}-{sha256_file(model)[:8]}"
        v, n = base, 1
        while (self.bundles_dir / v).exists():
            n += 1
            v = f"{base}.{n}"
        return v

    def _sweep_partials(self) -> None:
        """Remove temp dirs left by a publisher that died (called under the lock)."""
        if not self.bundles_dir.is_dir():
            return
        for p in self.bundles_dir.iterdir():
            if p.name.startswith(".") and p.name.endswith(".partial"):
                _rmtree_ro(p)

    def publish(self, src_dir: str | Path, version: str | None = None,
                metrics: Mapping[str, Any] | None = None,
                guardrails: Mapping[str, Any] | None = None,
                promote: bool = False, expected_spec_hash: str | None = None,
                force: bool = False, sign_key: bytes | None = None) -> str:
        """Copy a training/daily output directory into a new immutable bundle; return its
        version. The bundle is verified before it becomes visible; with promote=True it then
        becomes current (under the same lock; a rejected version only with force=True). With
        sign_key the manifest is signed (manifest.sig, HMAC-SHA256)."""
        src = Path(src_dir)
        for req in _REQUIRED:
            if not (src / req).is_file():
                raise RegistryError(f"cannot publish {src}: {req} is missing")
        with open(src / THRESHOLDS_FILE) as f:
            try:
                check_thresholds(json.load(f))
            except ValueError as e:
                raise RegistryError(f"cannot publish {src}: {THRESHOLDS_FILE}: {e}") from None
        if version is not None and not _VERSION_RE.match(version):
            raise RegistryError(f"invalid version name {version!r}")
        with self.lock():
            self.bundles_dir.mkdir(parents=True, exist_ok=True)
            self._sweep_partials()
            if version is None:
                version = self._new_version(src / MODEL_FILE)
            final = self.bundles_dir / version
            if final.exists():
                raise RegistryError(f"bundle {version!r} already exists (bundles are immutable)")
            tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", suffix=".partial",
                                        dir=self.bundles_dir))
            try:
                self._fill(tmp, src, version, metrics, guardrails)
                if sign_key is not None:
                    (tmp / SIGNATURE).write_text(
                        sign_bytes((tmp / MANIFEST).read_bytes(), sign_key) + "\n")
                _check_built(tmp, version, expected_spec_hash)
                for p in tmp.iterdir():
                    os.chmod(p, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
                os.chmod(tmp, 0o555)
                os.rename(tmp, final)
                fsync_dir(self.bundles_dir)
            except BaseException:
                _rmtree_ro(tmp)
                raise
            if promote:
                self._promote_locked(version, expected_spec_hash, force)
        return version

    def _fill(self, tmp: Path, src: Path, version: str, metrics: Mapping[str, Any] | None,
              guardrails: Mapping[str, Any] | None) -> None:
        for p in sorted(src.iterdir()):
            if (p.is_file() and not p.name.startswith(".") and p.name != MANIFEST
                    and p.suffix in _COPY_SUFFIXES):
                shutil.copyfile(p, tmp / p.name)
        if not (tmp / FEATURE_SPEC_FILE).exists():
            # Training output without a spec: it was made by this kernel's spec.
            from slidr.featurespec import SPEC_HASH, spec_dict
            spec = {**spec_dict(), "spec_hash": SPEC_HASH}
            with open(tmp / FEATURE_SPEC_FILE, "w") as f:
                json.dump(spec, f, indent=2, sort_keys=True)
        with open(tmp / FEATURE_SPEC_FILE) as f:
            spec = json.load(f)
        names = spec.get("feature_names") or [x["name"] for x in spec.get("features", [])
                                              if isinstance(x, dict) and "name" in x]
        if metrics is None and (src / "metrics.json").is_file():
            with open(src / "metrics.json") as f:
                metrics = json.load(f)
        for p in tmp.iterdir():
            with open(p, "rb+") as f:
                os.fsync(f.fileno())
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        manifest = {
            "version": version,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "feature_spec_hash": spec_hash_of(spec),
            "feature_names": list(names),
            "model_file": MODEL_FILE,
            "thresholds_file": THRESHOLDS_FILE,
            "files": files,
            "metrics": _jsonable(metrics or {}),
            "guardrails": _jsonable(guardrails or {}),
            "source": str(src.resolve()),
        }
        with open(tmp / MANIFEST, "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(tmp)

    def promote(self, version: str, expected_spec_hash: str | None = None,
                force: bool = False) -> None:
        """Make `version` current (the old current becomes previous). Refuses a bundle that
        fails verification, and a rejected one unless `force` (which clears the mark)."""
        with self.lock():
            self._promote_locked(version, expected_spec_hash, force)

    def _promote_locked(self, version: str, expected_spec_hash: str | None,
                        force: bool = False) -> None:
        self.verify(version, expected_spec_hash)  # raises BundleError: never promote a bad one
        p = self.pointers()
        rejected = dict(p["rejected"])
        if version in rejected:
            if not force:
                why = rejected[version]
                raise RegistryError(
                    f"bundle {version} was rejected ({why.get('reason', '?')}, at "
                    f"{why.get('at', '?')}); promote it again only with --force")
            del rejected[version]
        if p["current"] == version:
            if rejected != p["rejected"]:
                self._write_pointers({**p, "rejected": rejected, "updated": _now()})
            return
        hist = [v for v in p["history"] if v != version]
        if p["current"]:
            hist.append(p["current"])
        self._write_pointers({"current": version, "previous": _stable(hist[-20:], rejected),
                              "history": hist[-20:], "updated": _now(),
                              "rolled_back": p.get("rolled_back", []), "rejected": rejected})

    def reject(self, version: str, reason: str, **details: Any) -> None:
        """Mark `version` rejected (kept: the first reason recorded) without moving a pointer."""
        with self.lock():
            p = self.pointers()
            if version in p["rejected"]:
                return
            rejected = {**p["rejected"], version: {"reason": reason, "at": _now(), **details}}
            self._write_pointers({**p, "rejected": rejected, "updated": _now()})

    def rollback(self, expected_spec_hash: str | None = None, reason: str | None = None,
                 expected_current: str | None = None, **details: Any) -> str:
        """The previous stable bundle becomes current; the one rolled back is remembered and
        not offered again as 'previous'. Returns the new current version.

        With a `reason`, the bundle rolled back is marked rejected (`details` are kept with
        the reason). With `expected_current`, the pointer moves only if that version is still
        current: a second daemon that saw the same bad model marks it rejected (if nobody
        has) and gets the current version back, and never rolls back a second time."""
        with self.lock():
            p = self.pointers()
            if expected_current is not None and p["current"] != expected_current:
                if reason is not None and expected_current not in p["rejected"]:
                    rejected = {**p["rejected"],
                                expected_current: {"reason": reason, "at": _now(), **details}}
                    self._write_pointers({**p, "rejected": rejected, "updated": _now()})
                return str(p["current"])
            bad = p["current"]
            # The previous stable bundle: the newest of the history that is not rejected.
            stable = [v for v in p["history"] if v not in p["rejected"] and v != bad]
            if not stable:
                raise RegistryError(f"cannot roll back: registry {self.path} has no previous "
                                    f"model (current is {p['current']!r})")
            target = stable[-1]
            self.verify(target, expected_spec_hash)
            hist = [v for v in p["history"] if v != target]
            rolled = list(p.get("rolled_back", []))
            if bad:
                rolled.append(bad)
                hist = [v for v in hist if v != bad]
            rejected = dict(p["rejected"])
            if bad and reason is not None and bad not in rejected:
                rejected[bad] = {"reason": reason, "at": _now(), **details}
            self._write_pointers({"current": target, "previous": _stable(hist, rejected),
                                  "history": hist, "updated": _now(),
                                  "rolled_back": rolled[-20:], "rejected": rejected})
            return target


def _stable(history: list[str], rejected: Mapping[str, Any]) -> str | None:
    """The newest version of a history that is not rejected (the 'previous' pointer)."""
    for v in reversed(history):
        if v not in rejected:
            return v
    return None


def sign_bytes(data: bytes, key: bytes) -> str:
    """The bundle signature of a manifest: HMAC-SHA256, hex."""
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def load_key(path: str | Path) -> bytes:
    """A signing key from a file (its bytes, surrounding whitespace removed); at least
    MIN_KEY_BYTES long, e.g. `head -c 32 /dev/urandom | base64 > key`."""
    try:
        key = Path(path).read_bytes().strip()
    except OSError as e:
        raise RegistryError(f"bundle key {path}: {e.strerror or e}") from None
    if len(key) < MIN_KEY_BYTES:
        raise RegistryError(f"bundle key {path} is {len(key)} bytes; at least {MIN_KEY_BYTES} "
                            "are needed")
    return key


def _check_built(tmp: Path, version: str, expected_spec_hash: str | None) -> None:
    # Verify the temp dir as if it were the final bundle (directory name differs).
    b = Bundle(tmp)
    b.version = version
    b.verify(expected_spec_hash)


def _rmtree_ro(p: Path) -> None:
    """rmtree that first makes read-only directories writable (bundles are chmod 0555)."""
    if not p.exists():
        return
    for root, dirs, _files in os.walk(p):
        for d in dirs:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(root, d), 0o755)
    with contextlib.suppress(OSError):
        os.chmod(p, 0o755)
    shutil.rmtree(p, ignore_errors=True)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _jsonable(o: Any) -> Any:
    return json.loads(json.dumps(o, default=_default))


def _default(o: Any) -> Any:
    for attr in ("item", "tolist"):  # numpy scalars / arrays without importing numpy
        if hasattr(o, attr):
            return getattr(o, attr)()
    if isinstance(o, Path):
        return str(o)
    return str(o)
