"""Resolving, downloading and loading ZipSplat network weights.

Weight sources accepted by :func:`resolve_weights` / :func:`load_state_dict_from_source`:

* a released name (see :data:`RELEASED_WEIGHTS`), fetched through the Hugging Face hub cache
  (``HF_HUB_CACHE`` / ``HF_HOME``, ``HF_HUB_OFFLINE`` and ``HF_TOKEN`` are honoured);
* an ``http://`` or ``https://`` URL, downloaded once into ``torch.hub.get_dir()/zipsplat/``;
* a local file path (``.safetensors``, or a torch pickle: ``.tar``, ``.pth``, ``.pt``, ``.ckpt``), including a
  checkpoint of ``ns-train zipsplat*`` (``nerfstudio_models/step-*.ckpt``: its ``_model.net.*`` weights).

Licence note: the released ZipSplat weights (``veichta/zipsplat``) are distributed under
**CC BY-NC 4.0** (non-commercial use only); only the code is Apache-2.0. Using them means accepting
that licence.

Torch pickles are loaded with ``weights_only=True``. A checkpoint that needs full unpickling (it
references arbitrary Python classes, which can run code while loading) is refused unless the caller
opts in with ``allow_pickle=True`` (``--allow-pickle`` on the command line).

:func:`convert_da3_state_dict` turns a Depth-Anything-3 ``model.safetensors`` state dict into the
backbone initialisation used for training (``backbone.backbone.*`` and ``backbone.cam_enc.*`` keys).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pickle
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple, Union

import torch

from zipsplat_ns.utils.download import DownloadError, filename_from_url
from zipsplat_ns.utils.download import download_url as _download_url

__all__ = [
    "RELEASED_WEIGHTS",
    "WEIGHTS_REF_KEY",
    "url_cache_path",
    "DA3_EMBED_DIMS",
    "TORCH_PICKLE_SUFFIXES",
    "WeightsDownloadError",
    "UnsafeCheckpointError",
    "CheckpointFormatError",
    "Da3Conversion",
    "resolve_weights",
    "download_url",
    "load_state_dict_from_source",
    "convert_da3_state_dict",
    "convert_da3_state_dict_with_report",
]

logger = logging.getLogger(__name__)

WeightsSource = Union[str, os.PathLike]

#: Released checkpoints: name -> (Hugging Face repo id, file name). Licence: CC BY-NC 4.0.
RELEASED_WEIGHTS: dict[str, tuple[str, str]] = {
    "zipsplat": ("veichta/zipsplat", "zipsplat-da3g-252p.tar"),
}

#: Expected ViT embedding width of each DA3 backbone variant.
DA3_EMBED_DIMS: dict[str, int] = {"small": 384, "base": 768, "large": 1024, "giant": 1536}

#: File suffixes loaded with ``torch.load``.
TORCH_PICKLE_SUFFIXES: tuple[str, ...] = (".tar", ".pth", ".pt", ".ckpt")
SAFETENSORS_SUFFIX = ".safetensors"

_ALLOW_PICKLE_CLI_FLAG = "--allow-pickle (zipsplat-ns reconstruct / eval) or --pipeline.model.allow-pickle True (ns-train)"


class WeightsDownloadError(DownloadError):
    """Weights could not be fetched (Hugging Face hub or URL). A ``RuntimeError`` (through ``DownloadError``)."""


class UnsafeCheckpointError(RuntimeError):
    """A torch checkpoint needs full (unsafe) unpickling and the caller did not opt in."""


class CheckpointFormatError(ValueError):
    """A weights file is empty, corrupt, or does not contain a usable state dict."""


# --------------------------------------------------------------------------------------------
# Resolving sources
# --------------------------------------------------------------------------------------------


def _accepted_forms() -> str:
    names = ", ".join(repr(n) for n in sorted(RELEASED_WEIGHTS))
    suffixes = ", ".join((SAFETENSORS_SUFFIX, *TORCH_PICKLE_SUFFIXES))
    return (
        f"accepted weight sources are: a released name ({names}); an http:// or https:// URL; "
        f"or a path to an existing local file ({suffixes})"
    )


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on", "y", "t"}


def _hf_cache_dir() -> str | None:
    """Hub cache directory from the environment *at call time* (huggingface_hub reads it at import)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        value = os.environ.get(var)
        if value:
            return os.path.expanduser(value)
    hf_home = os.environ.get("HF_HOME")
    if hf_home:
        return os.path.join(os.path.expanduser(hf_home), "hub")
    return None  # huggingface_hub's own default


def _hf_offline() -> bool:
    if _env_flag("HF_HUB_OFFLINE") or _env_flag("TRANSFORMERS_OFFLINE"):
        return True
    try:
        from huggingface_hub import constants

        return bool(getattr(constants, "HF_HUB_OFFLINE", False))
    except ImportError:
        return False


def reference_cache_path(name: str) -> Path:
    """Where the reference package caches released weights: ``$TORCH_HOME/hub/zipsplat/<file>`` (torch.hub's
    ``load_state_dict_from_url`` with ``model_dir=<hub dir>/zipsplat``)."""
    return Path(torch.hub.get_dir()) / "zipsplat" / RELEASED_WEIGHTS[name][1]


def _resolve_released(name: str) -> Path:
    repo_id, filename = RELEASED_WEIGHTS[name]
    url = f"https://huggingface.co/{repo_id}/resolve/main/{filename}"
    ref_copy = reference_cache_path(name)
    if ref_copy.is_file() and ref_copy.stat().st_size > 0:  # fetched by the reference package: no second download
        logger.info("Using the released weights %r cached by the reference package: %s", name, ref_copy)
        return ref_copy
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        logger.warning("huggingface_hub is not installed; downloading %s directly", url)
        return download_url(url, ref_copy.parent)  # where the reference package would cache it

    cache_dir = _hf_cache_dir()
    offline = _hf_offline()
    token = os.environ.get("HF_TOKEN") or None
    logger.info("Resolving weights %r: %s from Hugging Face repo %s", name, filename, repo_id)
    try:
        path = hf_hub_download(
            repo_id=repo_id,
            filename=filename,
            cache_dir=cache_dir,
            local_files_only=offline,
            token=token,
        )
    except Exception as err:  # noqa: BLE001 - rewrapped with a clear message below
        where = cache_dir
        if where is None:
            try:
                from huggingface_hub import constants

                where = str(constants.HF_HUB_CACHE)
            except (ImportError, AttributeError):  # pragma: no cover
                where = "the default Hugging Face cache"
        hints = [
            "check your network connection and that https://huggingface.co is reachable",
            f"pre-download it: `huggingface-cli download {repo_id} {filename}`",
            "if the repo needs authentication, set HF_TOKEN (or run `huggingface-cli login`)",
            f"or download {url} manually and pass the local file path instead of {name!r}",
        ]
        if offline:
            hints.insert(0, "HF_HUB_OFFLINE is set, so only the local cache was searched: unset it "
                            "to allow downloading, or point HF_HUB_CACHE at a cache that has the file")
        raise WeightsDownloadError(
            f"Could not obtain the released weights {name!r} (file {filename!r} from Hugging Face repo "
            f"{repo_id!r}, cache dir {where}, offline={offline}): {type(err).__name__}: {err}\n"
            "To fix:\n" + "\n".join(f"  - {h}" for h in hints)
        ) from err
    return Path(path)


def _looks_like_path(text: str) -> bool:
    if text.startswith(("~", ".", "/")) or os.sep in text or (os.altsep and os.altsep in text):
        return True
    suffix = Path(text).suffix.lower()
    return suffix in (SAFETENSORS_SUFFIX, *TORCH_PICKLE_SUFFIXES, ".safetensor", ".bin")


def resolve_weights(source: WeightsSource) -> Path:
    """Turn a weights source into a local file path, downloading it if needed.

    ``source`` is a released name (:data:`RELEASED_WEIGHTS`), an http(s) URL, or a local path.
    Raises ``FileNotFoundError`` for a missing local path, ``ValueError`` for an unrecognised
    source and :class:`WeightsDownloadError` when fetching fails.
    """
    if isinstance(source, os.PathLike):
        text = os.fspath(source)
        is_pathlike_obj = True
    elif isinstance(source, str):
        text = source.strip()
        is_pathlike_obj = False
    else:
        raise ValueError(f"Weights source must be a string or path, got {type(source).__name__}; "
                         + _accepted_forms())
    if not text:
        raise ValueError("Empty weights source; " + _accepted_forms())

    if not is_pathlike_obj:
        if text in RELEASED_WEIGHTS:
            return _resolve_released(text)
        scheme = urllib.parse.urlparse(text).scheme.lower()
        if scheme in ("http", "https"):
            return download_url(text)
        if "://" in text:
            raise ValueError(f"Unsupported URL scheme {scheme!r} in weights source {text!r}; "
                             + _accepted_forms())

    path = Path(text).expanduser()
    if path.is_file():
        return path
    if path.exists():
        raise ValueError(f"Weights path {str(path)!r} exists but is not a file; " + _accepted_forms())
    if is_pathlike_obj or _looks_like_path(text):
        raise FileNotFoundError(f"Weights file not found: {str(path)!r} (resolved to {str(path.absolute())!r})")
    raise ValueError(f"Unknown weights source {text!r}: it is not a released name, a URL, or an "
                     f"existing file; " + _accepted_forms())


# --------------------------------------------------------------------------------------------
# URL download
# --------------------------------------------------------------------------------------------


def _url_cache_dir() -> Path:
    return Path(torch.hub.get_dir()) / "zipsplat"


def url_cache_path(url: str) -> Path:
    """Where weights downloaded from ``url`` are cached: ``<hub dir>/zipsplat/urls/<sha256(url)[:16]>/<file name>``.

    The whole URL names the folder, so two URLs whose files share a name (``.../model.safetensors``) never reuse
    each other's file, nor resume each other's ``.part``."""
    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    return _url_cache_dir() / "urls" / digest / filename_from_url(url)


def download_url(url: str, dest_dir: WeightsSource | None = None) -> Path:
    """Download ``url`` into ``dest_dir`` (default: its own folder, :func:`url_cache_path`) and return the path.

    An existing final file is reused without touching the network. Data is written to
    ``<name>.part`` and renamed when complete; an existing ``.part`` is resumed with an HTTP Range
    request (restarted if the server ignores the range). The machinery lives in
    :func:`zipsplat_ns.utils.download.download_url`; failures raise :class:`WeightsDownloadError`.
    """
    folder = Path(dest_dir).expanduser() if dest_dir is not None else url_cache_path(url).parent
    return _download_url(
        url,
        folder,
        what="weights",
        manual_hint="download the file manually and pass its local path",
        error_cls=WeightsDownloadError,
        headers={"User-Agent": "zipsplat_ns-weights/1.0"},
    )


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _numpy_safe_globals() -> list[Any]:
    """Numpy scalar/dtype reconstructors: harmless, and common in saved metrics (``eval`` entries)."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        return []
    out: list[Any] = [np.dtype]
    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    out.append(scalar)
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        out.extend(getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType"))
    return out


def _safe_globals_ctx() -> contextlib.AbstractContextManager[Any]:
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    extra = _numpy_safe_globals()
    if safe_globals is None or not extra:  # pragma: no cover - old torch
        return contextlib.nullcontext()
    return safe_globals(extra)


def _unsafe_globals(path: Path) -> list[str]:
    fn = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if fn is None:  # pragma: no cover
        return []
    try:
        return list(fn(str(path)))
    except Exception:  # noqa: BLE001 - best effort for the error message
        return []


def _is_weights_only_refusal(err: BaseException) -> bool:
    return isinstance(err, pickle.UnpicklingError) and "weights only load failed" in str(err).lower()


def _detect_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (SAFETENSORS_SUFFIX, ".safetensor"):
        return "safetensors"
    if suffix in TORCH_PICKLE_SUFFIXES:
        return "torch"
    with open(path, "rb") as fh:
        head = fh.read(9)
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "torch"
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    raise CheckpointFormatError(
        f"Cannot tell the format of weights file {str(path)!r}: use a .safetensors file or a torch "
        f"checkpoint ({', '.join(TORCH_PICKLE_SUFFIXES)})"
    )


def _load_safetensors(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as err:  # noqa: BLE001 - SafetensorError and friends
        raise CheckpointFormatError(
            f"Could not read {str(path)!r} as a safetensors file (corrupt or incomplete download?): "
            f"{type(err).__name__}: {err}"
        ) from err


def _load_torch(path: Path, allow_pickle: bool) -> Any:
    try:
        with _safe_globals_ctx():
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - classified below
        if not _is_weights_only_refusal(err):
            raise CheckpointFormatError(
                f"Could not read {str(path)!r} as a PyTorch checkpoint (corrupt, truncated, or not a "
                f"checkpoint?): {type(err).__name__}: {err}"
            ) from err
        refusal = err

    needed = _unsafe_globals(path)
    needed_txt = f" It references: {', '.join(needed)}." if needed else ""
    if not allow_pickle:
        raise UnsafeCheckpointError(
            f"Refusing to fully unpickle {str(path)!r}: it cannot be loaded with torch.load(weights_only=True) "
            f"because it contains Python objects other than tensors and plain containers.{needed_txt} "
            "Full unpickling can execute arbitrary code, so only do it for files from a source you trust. "
            f"To opt in, pass allow_pickle=True (Python) or {_ALLOW_PICKLE_CLI_FLAG} (command line); or "
            "re-save the file as .safetensors."
        ) from refusal
    logger.warning("Loading %s with full unpickling (allow_pickle=True); only do this for trusted files.%s",
                   path, needed_txt)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001
        raise CheckpointFormatError(
            f"Could not unpickle {str(path)!r}: {type(err).__name__}: {err}"
        ) from err


NERFSTUDIO_NET_PREFIXES: tuple[str, ...] = ("_model.net.", "_model.module.net.")
WEIGHTS_REF_KEY = "zipsplat_weights_ref"
"""The only key of a ``zipsplat-ns reconstruct`` checkpoint that names its weights instead of holding them."""


def _nerfstudio_network(pipeline_state: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The network part of a nerfstudio checkpoint's ``pipeline`` state (``_model.net.*`` keys, DDP or not)."""
    out = {}
    for key, value in pipeline_state.items():
        for prefix in NERFSTUDIO_NET_PREFIXES:
            if isinstance(key, str) and key.startswith(prefix):
                out[key[len(prefix):]] = value
    if not out and WEIGHTS_REF_KEY in pipeline_state:
        raise CheckpointFormatError(
            f"Weights file {str(path)!r} is the checkpoint of a zipsplat-ns reconstruct run that refers to its weights "
            f"instead of holding them; pass those weights instead: {pipeline_state[WEIGHTS_REF_KEY]!r}"
        )
    if not out:
        raise CheckpointFormatError(
            f"Weights file {str(path)!r} is a nerfstudio checkpoint without ZipSplat network weights "
            f"(no key starts with {' or '.join(NERFSTUDIO_NET_PREFIXES)}); was it written by another method?"
        )
    return out


def _extract_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and isinstance(obj.get("pipeline"), Mapping) and "step" in obj:
        obj = _nerfstudio_network(obj["pipeline"], path)  # ns-train checkpoint (nerfstudio_models/step-*.ckpt)
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping):
        raise CheckpointFormatError(
            f"Weights file {str(path)!r} does not contain a state dict (got {type(obj).__name__}); expected "
            "a dict of tensors, or a dict with a 'model' or 'state_dict' entry"
        )
    if len(obj) == 0:
        raise CheckpointFormatError(f"Weights file {str(path)!r} contains an empty state dict")

    out: dict[str, torch.Tensor] = {}
    bad: list[str] = []
    for key, value in obj.items():
        if not isinstance(key, str):
            bad.append(f"{key!r} (non-string key)")
            continue
        if not isinstance(value, torch.Tensor):
            bad.append(f"{key!r} ({type(value).__name__})")
            continue
        name = key[len("module."):] if key.startswith("module.") else key
        if name in out:
            raise CheckpointFormatError(
                f"Weights file {str(path)!r}: key {key!r} collides with {name!r} after stripping 'module.'"
            )
        out[name] = value
    if bad:
        shown = ", ".join(bad[:5]) + (f", ... ({len(bad)} in total)" if len(bad) > 5 else "")
        raise CheckpointFormatError(
            f"Weights file {str(path)!r} has state-dict entries that are not tensors: {shown}"
        )
    return out


def load_state_dict_from_source(
    source: WeightsSource, *, allow_pickle: bool = False
) -> dict[str, torch.Tensor]:
    """Resolve ``source`` (see :func:`resolve_weights`) and load its state dict onto the CPU.

    Accepts ``.safetensors`` files and torch checkpoints (``{"model": sd}``, ``{"state_dict": sd}``, a raw state
    dict, or an ``ns-train`` checkpoint ``{"step", "pipeline": {"_model.net.*": ...}}``). A leading ``module.`` is stripped from keys. Checkpoints that need full unpickling
    raise :class:`UnsafeCheckpointError` unless ``allow_pickle=True``.
    """
    path = resolve_weights(source)
    size = path.stat().st_size
    if size == 0:
        raise CheckpointFormatError(f"Weights file {str(path)!r} is empty (0 bytes); re-download it")
    fmt = _detect_format(path)
    obj = _load_safetensors(path) if fmt == "safetensors" else _load_torch(path, allow_pickle)
    state_dict = _extract_state_dict(obj, path)
    logger.info("Loaded %d tensors from %s", len(state_dict), path)
    return state_dict


# --------------------------------------------------------------------------------------------
# DA3 -> backbone initialisation
# --------------------------------------------------------------------------------------------


class Da3Conversion(NamedTuple):
    """Result of :func:`convert_da3_state_dict_with_report`."""

    state_dict: dict[str, torch.Tensor]
    #: (original key, new key) for every kept tensor.
    renamed: list[tuple[str, str]]
    #: original keys that were not kept (DA3 head, camera decoder, ...).
    dropped: list[str]
    embed_dim: int


_DA3_KEEP_PREFIXES = ("backbone.", "cam_enc.")


def _normalise_variant(variant: str) -> str:
    aliases = {"s": "small", "vits": "small", "b": "base", "vitb": "base", "l": "large",
               "vitl": "large", "g": "giant", "vitg": "giant"}
    key = str(variant).strip().lower()
    key = aliases.get(key, key)
    if key not in DA3_EMBED_DIMS:
        raise ValueError(f"Unknown DA3 variant {variant!r}; expected one of {', '.join(DA3_EMBED_DIMS)}")
    return key


def _da3_rename(key: str) -> str:
    parts = key.split(".")
    if parts and parts[0] == "model":
        parts = parts[1:]
    return ".".join(p for p in parts if p != "pretrained")


def _iter_dims(sd: Mapping[str, torch.Tensor]) -> Iterator[tuple[str, int]]:
    proj = sd.get("backbone.patch_embed.proj.weight")
    if isinstance(proj, torch.Tensor) and proj.ndim >= 1:
        yield "backbone.patch_embed.proj.weight", int(proj.shape[0])
    pos = sd.get("backbone.pos_embed")
    if isinstance(pos, torch.Tensor) and pos.ndim >= 1:
        yield "backbone.pos_embed", int(pos.shape[-1])


def convert_da3_state_dict_with_report(
    sd: Mapping[str, torch.Tensor], variant: str, *, prefix: str = "backbone."
) -> Da3Conversion:
    """Like :func:`convert_da3_state_dict`, also returning renamed/dropped keys and the embed dim."""
    variant = _normalise_variant(variant)
    expected = DA3_EMBED_DIMS[variant]

    stripped: dict[str, tuple[str, torch.Tensor]] = {}
    dropped: list[str] = []
    for key, value in sd.items():
        new = _da3_rename(key)
        if not new.startswith(_DA3_KEEP_PREFIXES):
            dropped.append(key)
            continue
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"DA3 state dict entry {key!r} is a {type(value).__name__}, not a tensor")
        if new in stripped:
            raise ValueError(f"DA3 keys {stripped[new][0]!r} and {key!r} both map to {new!r}")
        stripped[new] = (key, value)

    if not stripped:
        raise ValueError(
            "No 'backbone.*' or 'cam_enc.*' keys found (after stripping 'model.' and '.pretrained'): this "
            "does not look like a Depth-Anything-3 checkpoint"
        )
    dims = list(_iter_dims({k: v for k, (_, v) in stripped.items()}))
    if not dims:
        raise ValueError(
            "Cannot check the DA3 variant: neither 'backbone.patch_embed.proj.weight' nor "
            "'backbone.pos_embed' is present in the DA3 state dict"
        )
    by_dim = {d: v for v, d in DA3_EMBED_DIMS.items()}
    for name, dim in dims:
        if dim != expected:
            guess = by_dim.get(dim)
            hint = f" (that is DA3-{guess.upper()}; use variant {guess!r})" if guess else ""
            raise ValueError(
                f"DA3 variant mismatch: {variant!r} expects embed dim {expected}, but {name} has embed dim "
                f"{dim}{hint}"
            )

    out: dict[str, torch.Tensor] = {}
    renamed: list[tuple[str, str]] = []
    for new, (orig, value) in stripped.items():
        out[prefix + new] = value
        renamed.append((orig, prefix + new))
    return Da3Conversion(state_dict=out, renamed=renamed, dropped=dropped, embed_dim=expected)


def convert_da3_state_dict(
    sd: Mapping[str, torch.Tensor], variant: str, *, prefix: str = "backbone."
) -> dict[str, torch.Tensor]:
    """Convert a DA3 ``model.safetensors`` state dict into our backbone initialisation.

    Strips a leading ``model.`` and every ``pretrained`` path component, keeps only ``backbone.*`` and
    ``cam_enc.*`` and prepends ``prefix`` (so keys become ``backbone.backbone.*`` / ``backbone.cam_enc.*``).
    Checks the embed dim of ``variant`` (small 384, base 768, large 1024, giant 1536). Dropped keys are
    logged; use :func:`convert_da3_state_dict_with_report` to get them.
    """
    result = convert_da3_state_dict_with_report(sd, variant, prefix=prefix)
    if result.dropped:
        groups: dict[str, int] = {}
        for key in result.dropped:
            head = _da3_rename(key).split(".", 1)[0]
            groups[head] = groups.get(head, 0) + 1
        logger.info("DA3 conversion: kept %d tensors, dropped %d (%s)", len(result.state_dict),
                    len(result.dropped), ", ".join(f"{k}.*: {n}" for k, n in sorted(groups.items())))
    return result.state_dict
