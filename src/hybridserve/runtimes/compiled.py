"""Tree ensembles compiled by treelite: the library's scores at a fraction of its per-call cost.

A scikit-learn ``HistGradientBoosting*`` ``predict_proba`` on one row costs about a millisecond,
nearly all of it fixed per call (input validation, then one Cython call per tree); LightGBM's
and XGBoost's scikit-learn wrappers cost 0.3-0.6 ms. An online request scores one row or a
micro-batch of a few. treelite imports the fitted trees (``treelite.sklearn.import_model``,
``treelite.frontend.from_lightgbm`` / ``from_xgboost``), and either

- ``tl2cgen`` turns them into C, compiled by gcc into a shared library (built once per artifact
  and cached next to it, keyed by the artifact's sha256), or
- ``treelite`` walks them in its own C++ interpreter (GTIL), no compiler needed.

Measured single-threaded on the fraud example's model (100 trees, 30 features; see
``docs/benchmarks.md``): the compiled library answers in 0.12 ms for one row against
scikit-learn's 1.1 ms, and stays ahead at every batch size up to 1000 rows, so it serves every
batch. GTIL (0.28 ms for one row) is ahead up to 64 rows and behind from 256, so it serves
batches up to :data:`GTIL_MAX_ROWS` and the library's own predict the rest.

Which one runs is the ``compile`` option of a model (``models.<name>.compile``): ``treelite``
or ``tl2cgen`` (the ``compile`` extra must be installed), ``none``, or ``auto`` (the default):
GTIL when treelite is installed, else the library (an info line). ``auto`` does not build with
gcc: a build costs seconds on every new version's first load (an alias move waits for it),
and the library's answers must not depend on whether gcc is on the machine. tl2cgen's
generated code takes a float64 whose low 32 bits are all ones for a missing value (see
:func:`misread_rows`): such rows, rare in real data and a third of the probe rows, are scored
by GTIL, which made the tl2cgen library agree with the library's predict to 1e-15 where it
used to differ by up to 0.6. Whatever runs must agree with the library's predict on
probe rows at load time: a mismatch keeps the library's predict, with a warning naming the
model and the largest difference.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from hybridserve._optional import require
from hybridserve.errors import MissingExtra
from hybridserve.runtimes.base import Compile

log = logging.getLogger("hybridserve.runtimes")

Compiler = Literal["tl2cgen", "treelite"]
EXTRA = "compile"
GTIL_MAX_ROWS = 64
"""GTIL serves batches up to this many rows: faster than scikit-learn's, LightGBM's and
XGBoost's own predict up to 64 rows, slower from 256 (measured single-threaded)."""
RTOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-6}
"""Largest difference from the library's scores accepted at load, relative to 1 or to the
score, by the dtype the library computes in: XGBoost sums its trees in float32, and treelite
sums the same float32 leaves in another order (differences up to a few float32 ulps)."""


def for_batches(mode: Compile, rows: int) -> Compile:
    """The ``compile`` mode worth loading for calls of ``rows`` rows each (a batch job's
    chunks): ``auto`` and ``treelite`` would give GTIL, which serves no batch larger than
    :data:`GTIL_MAX_ROWS`, so for larger ones they load nothing (importing and checking the
    trees costs each worker a fixed share of a run); ``tl2cgen`` serves every size and stays."""
    if mode in ("auto", "treelite") and rows > GTIL_MAX_ROWS:
        return "none"
    return mode


Matrix = npt.NDArray[np.float64]
Output = Callable[[Matrix], npt.NDArray[Any]]


@dataclass(frozen=True, slots=True)
class CompiledTrees:
    """A compiled predictor, giving what the library's predict gives for batches it covers."""

    compiler: Compiler
    max_rows: int | None
    """Largest batch it serves (``None``: every batch); larger ones take the library's path."""
    raw: Output
    """``(n, k)`` transformed outputs: probabilities (k=1 for a binary classifier) or values."""
    classification: bool

    def covers(self, rows: int) -> bool:
        return self.max_rows is None or rows <= self.max_rows

    def predict(self, x: Matrix) -> npt.NDArray[np.float64]:
        """``predict_proba``'s ``(n, n_classes)`` matrix for a classifier, else ``(n,)``."""
        out = self.raw(x)
        if not self.classification:
            return out[:, 0]
        if out.shape[1] == 1:  # binary: the positive class; the libraries give 1 - p beside it
            return np.column_stack([1.0 - out[:, 0], out[:, 0]])
        return out


def compile_trees(
    model: Any,
    mode: Compile,
    *,
    reference: Output,
    classification: bool,
    who: str,
    artifact: Path | None = None,
    remember: dict[str, Any] | None = None,
) -> CompiledTrees | None:
    """The compiled form of a tree ensemble, checked against ``reference`` (the library's
    ``predict_proba`` or ``predict``) on probe rows; ``None`` (keep the library's predict) with
    a log line saying why. ``artifact`` is the pickle the model came from: the tl2cgen library
    is cached beside it, and once it passed the check, so are the trees and ``remember`` (what
    the runtime needs besides the trees, such as the classes), for :func:`verified_trees`.
    MissingExtra when ``mode`` names a compiler that is not installed."""
    compiled, tl_model = _compile(
        model, mode, classification=classification, who=who, artifact=artifact
    )
    if compiled is None:
        return None
    try:
        probe = probe_rows(thresholds(tl_model), int(tl_model.num_feature))
        expected = np.asarray(reference(probe))
        got = compiled.predict(probe)
        diff = float(np.max(np.abs(got - expected) / np.maximum(1.0, np.abs(expected))))
    except Exception as exc:
        log.warning(
            "%s: %s output cannot be checked (%s); using the library's predict",
            who,
            compiled.compiler,
            exc,
        )
        return None
    rtol = RTOL.get(expected.dtype, RTOL[np.dtype(np.float64)])
    if not diff <= rtol:  # NaN too
        log.warning(
            "%s: %s scores differ from the library's on probe rows (max relative "
            "difference %.3g > %g); using the library's predict",
            who,
            compiled.compiler,
            diff,
            rtol,
        )
        return None
    log.info(
        "%s: trees compiled by %s (max difference from the library on probe rows %.3g)",
        who,
        compiled.compiler,
        diff,
    )
    if compiled.compiler == "tl2cgen" and artifact is not None:
        _remember(artifact, tl_model, {**(remember or {}), "max_difference": diff}, who)
    return compiled


# -- the verified bundle: scoring without the library ----------------------------------------


def _bundle(artifact: Path) -> Path:
    """The path stem of ``artifact``'s compiled files: keyed by its sha256 and tl2cgen's
    version (``<stem>.so`` the library, ``.tl`` the trees, ``.json`` what the check found)."""
    tl2cgen = _import_tl2cgen()
    with artifact.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return artifact.with_name(f"{artifact.name}.{digest[:16]}.tl2cgen-{tl2cgen.__version__}")


def _beside(stem: Path, suffix: str) -> Path:
    return stem.with_name(stem.name + suffix)  # not with_suffix: the stem ends in a version


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _remember(artifact: Path, tl_model: Any, meta: dict[str, Any], who: str) -> None:
    """Keep the checked trees beside the library, the ``.json`` last: its presence says the
    three files passed the load-time check together. A read-only directory keeps nothing."""
    stem = _bundle(artifact)
    if not os.access(stem.parent, os.W_OK):
        return
    try:
        _write_atomic(_beside(stem, ".tl"), bytes(tl_model.serialize_bytes()))
        _write_atomic(_beside(stem, ".json"), json.dumps(meta).encode())
    except (OSError, TypeError, ValueError) as exc:  # TypeError: classes JSON cannot hold
        log.info("%s: compiled trees not kept for library-free loads (%s)", who, exc)


def verified_trees(
    artifact: Path, *, classification: bool, who: str
) -> tuple[CompiledTrees, dict[str, Any]] | None:
    """The tl2cgen library and trees an earlier load of ``artifact`` checked, and what it
    remembered (:func:`compile_trees`); ``None`` when there is no such bundle. Loading them
    imports neither the model's library nor unpickles the estimator: a batch worker that
    scores with them starts in a fraction of the time (``docs/benchmarks.md``)."""
    stem = _bundle(artifact)
    library, trees, meta = (_beside(stem, x) for x in (".so", ".tl", ".json"))
    if not (library.is_file() and trees.is_file() and meta.is_file()):
        return None
    try:
        remembered = json.loads(meta.read_bytes())
        treelite = require("treelite", EXTRA)
        tl_model = treelite.Model.deserialize_bytes(trees.read_bytes())
        predictor = _import_tl2cgen().Predictor(str(library), nthread=1)
    except Exception as exc:
        log.warning("%s: cannot load its compiled trees (%s); loading the estimator", who, exc)
        return None
    raw = _tl2cgen_predict(predictor, _gtil(treelite, tl_model))
    log.info("%s: scored by the compiled trees checked at an earlier load", who)
    return CompiledTrees("tl2cgen", None, raw, classification), remembered


def _compile(
    model: Any, mode: Compile, *, classification: bool, who: str, artifact: Path | None
) -> tuple[CompiledTrees | None, Any]:
    if mode == "none":
        return None, None
    frontend = _frontend(model)
    if frontend is None:
        if mode != "auto":
            log.warning("%s: compile=%s applies to tree ensembles only; not compiled", who, mode)
        return None, None
    if mode == "auto":
        try:
            treelite = require("treelite", EXTRA)
        except MissingExtra:
            log.info(
                "%s: treelite is not installed (extra %r); using the library's predict", who, EXTRA
            )
            return None, None
    else:
        treelite = require("treelite", EXTRA)
    try:
        tl_model = frontend(treelite, model)
    except Exception as exc:
        level = logging.INFO if mode == "auto" else logging.WARNING
        log.log(
            level,
            "%s: treelite cannot import %s (%s); using the library's predict",
            who,
            type(model).__name__,
            exc,
        )
        return None, None
    if mode == "tl2cgen":
        raw = _tl2cgen(tl_model, _gtil(treelite, tl_model), who=who, artifact=artifact)
        if raw is None:
            return None, None
        return CompiledTrees("tl2cgen", None, raw, classification), tl_model
    return CompiledTrees(
        "treelite", GTIL_MAX_ROWS, _gtil(treelite, tl_model), classification
    ), tl_model


def _frontend(model: Any) -> Callable[[Any, Any], Any] | None:
    """How treelite imports ``model``, or ``None`` for a model that is not a tree ensemble."""
    module = type(model).__module__
    if module.startswith("lightgbm") and hasattr(model, "booster_"):
        return lambda tl, m: tl.frontend.from_lightgbm(m.booster_)
    if module.startswith("xgboost") and hasattr(model, "get_booster"):
        return lambda tl, m: tl.frontend.from_xgboost(m.get_booster())
    # Only histogram gradient boosting of scikit-learn's ensembles: its forests split on float32
    # inputs, which treelite compares as float64 (they fail the probe rows by far).
    if module.startswith("sklearn.ensemble._hist_gradient_boosting"):
        return lambda tl, m: tl.sklearn.import_model(m)
    return None


def _gtil(treelite: Any, tl_model: Any) -> Output:
    def predict(x: Matrix) -> npt.NDArray[np.float64]:
        out = treelite.gtil.predict(tl_model, x, nthread=1)
        return np.asarray(out, dtype=np.float64).reshape(len(x), -1)

    return predict


def misread_rows(x: npt.NDArray[Any]) -> npt.NDArray[np.bool_] | None:
    """Rows holding a float64 that tl2cgen's generated code takes for a missing value.

    Its input is ``union Entry { int missing; double fvalue; }`` and a cell is missing when
    ``missing == -1``, which on a little-endian machine reads the low 32 bits of the double:
    every value whose low mantissa bits are all ones (1.5 minus one ulp is
    ``0x3FF7FFFFFFFFFFFF``) goes down the missing-value branch. Such values come out of
    ordinary arithmetic, and they are what made the compiled library fail the probe rows.
    ``None`` when no row has one (float32 input cannot: that bit pattern is a NaN).
    """
    if x.dtype != np.float64 or not x.size:
        return None
    low = np.ascontiguousarray(x).view(np.uint64) & np.uint64(0xFFFFFFFF)
    bad = (low == np.uint64(0xFFFFFFFF)) & ~np.isnan(x)
    if not bad.any():
        return None
    return np.asarray(bad.any(axis=1))


def _tl2cgen(
    tl_model: Any, interpreted: Output, *, who: str, artifact: Path | None
) -> Output | None:
    """The compiled library's outputs; rows it would misread (:func:`misread_rows`) are
    scored by ``interpreted`` (GTIL, the same trees) instead."""
    tl2cgen = _import_tl2cgen()
    if shutil.which("gcc") is None:
        log.warning(
            "%s: gcc not found, cannot build the tl2cgen library; using the library's predict", who
        )
        return None
    try:
        predictor = _predictor(tl2cgen, tl_model, who=who, artifact=artifact)
    except Exception as exc:
        log.warning("%s: tl2cgen build failed (%s); using the library's predict", who, exc)
        return None
    return _tl2cgen_predict(predictor, interpreted)


def _tl2cgen_predict(predictor: Any, interpreted: Output) -> Output:
    """Outputs of the library ``predictor`` loaded; misread rows scored by ``interpreted``."""
    tl2cgen = _import_tl2cgen()
    # tl2cgen's Predictor "may be called by only one thread at a time".
    lock = threading.Lock()
    # The library's input type (float32 for XGBoost); DMatrix's own cast fails on numpy 2.
    dtype = np.float32 if predictor.threshold_type == "float32" else np.float64

    def predict(x: Matrix) -> npt.NDArray[np.float64]:
        data = np.ascontiguousarray(x, dtype=dtype)
        with lock:
            out = predictor.predict(tl2cgen.DMatrix(data))
        out = np.asarray(out, dtype=np.float64).reshape(len(x), -1)
        misread = misread_rows(data)
        if misread is not None:
            out[misread] = interpreted(x[misread])
        return out

    return predict


def _predictor(tl2cgen: Any, tl_model: Any, *, who: str, artifact: Path | None) -> Any:
    """A Predictor on the compiled shared library: the cached one beside the artifact, or
    built now.

    The key is the artifact's sha256 and the tl2cgen version; the build goes to a temporary
    name in the same directory and is renamed into place, so a server starting alongside never
    loads half a file. Without an artifact (a model built in process) or with a read-only
    artifact directory, the library is built in a temporary directory, loaded, and deleted
    (the loaded copy stays mapped).
    """
    if artifact is not None:
        target = _beside(_bundle(artifact), ".so")
        if target.is_file():
            return tl2cgen.Predictor(str(target), nthread=1)
        if os.access(target.parent, os.W_OK):
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".so")
            os.close(fd)
            try:
                _build(tl2cgen, tl_model, Path(tmp), who)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            return tl2cgen.Predictor(str(target), nthread=1)
    with tempfile.TemporaryDirectory(prefix="hybridserve-tl2cgen-") as tmp_dir:
        out = Path(tmp_dir) / "model.so"
        _build(tl2cgen, tl_model, out, who)
        return tl2cgen.Predictor(str(out), nthread=1)


def _build(tl2cgen: Any, tl_model: Any, path: Path, who: str) -> None:
    log.info("%s: compiling its trees with tl2cgen and gcc (once per artifact)", who)
    tl2cgen.export_lib(
        tl_model, toolchain="gcc", libpath=str(path), params={"parallel_comp": os.cpu_count() or 1}
    )


def _native_log(msg: bytes) -> None:
    log.debug("tl2cgen: %s", msg.decode("utf-8", "replace").strip())


_NATIVE_LOG = ctypes.CFUNCTYPE(None, ctypes.c_char_p)(_native_log)
"""Kept alive here: the C side holds a pointer to it."""


@functools.cache
def _import_tl2cgen() -> Any:
    """tl2cgen, with its native log lines (which it prints to stdout) sent to our logger."""
    tl2cgen = require("tl2cgen", EXTRA)
    try:
        from tl2cgen.libloader import _LIB

        _LIB.TL2cgenRegisterLogCallback(_NATIVE_LOG)
    except (ImportError, AttributeError):  # pragma: no cover - tl2cgen moved it
        pass
    return tl2cgen


def probe_rows(
    tl_thresholds: dict[int, npt.NDArray[np.float64]], n_features: int, n: int = 256
) -> Matrix:
    """Rows that reach both sides of many splits: each feature at one of its thresholds,
    one ulp below or above it, and NaN in a tenth of the cells."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, n_features))
    for j, thr in tl_thresholds.items():
        if j < n_features and len(thr):
            base = thr[rng.integers(0, len(thr), size=n)]
            step = rng.choice([-np.inf, 0.0, np.inf], size=n)
            x[:, j] = np.where(step == 0, base, np.nextafter(base, step))
    x[rng.random(size=x.shape) < 0.1] = np.nan
    return x


def thresholds(tl_model: Any) -> dict[int, npt.NDArray[np.float64]]:
    """Every numerical split threshold of the model, by feature."""
    found: dict[int, list[float]] = {}
    for tree in json.loads(tl_model.dump_as_json())["trees"]:
        for node in tree["nodes"]:
            if "threshold" in node and "split_feature_id" in node:
                found.setdefault(int(node["split_feature_id"]), []).append(float(node["threshold"]))
    return {j: np.unique(np.asarray(v, dtype=np.float64)) for j, v in found.items()}
