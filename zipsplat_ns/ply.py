"""Standard 3DGS (Inria) PLY files: the layout that ``ns-export gaussian-splat`` and common splat viewers use.

One ``vertex`` element, binary little-endian, all properties ``float`` in this order:
``x y z nx ny nz f_dc_0..2 f_rest_0..(3(K-1)-1) opacity scale_0..2 rot_0..3``

- ``f_dc`` are the raw SH DC coefficients; ``f_rest`` are channel-major (all R coefficients, then G, then B), i.e.
  our ``sh[:, 1:, :]`` ``(N, K-1, 3)`` transposed to ``(N, 3, K-1)`` and flattened;
- ``opacity`` is a logit, ``scale_*`` are log standard deviations, ``rot_*`` a wxyz quaternion;
- normals are zero. Coordinates are written as they are (no axis change).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import List, Tuple, Union

import numpy as np
import torch

from zipsplat_ns.gaussians import Gaussians, sh_degree_from_coeffs
from zipsplat_ns.utils.atomic import atomic_write

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip
_REQUIRED = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
             "rot_0", "rot_1", "rot_2", "rot_3"]  # fmt: skip


def property_names(sh_degree: int) -> List[str]:
    """Vertex property names, in file order, for a given SH degree."""
    k = (sh_degree + 1) ** 2
    return (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(3 * (k - 1))]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )


def gaussians_to_ply_array(g: Gaussians) -> np.ndarray:
    """Pack unbatched Gaussians into the ``(N, P)`` float32 table of the PLY layout."""
    if len(g.batch_shape) != 0:
        raise ValueError(
            f"save_ply: expected unbatched Gaussians (N, ...), got batch shape {tuple(g.batch_shape)}; "
            "index one scene first, e.g. gaussians[0]"
        )
    g.validate_finite("save_ply: Gaussians")
    with torch.no_grad():
        n = g.num_gaussians
        means = g.means.detach().double().cpu()
        sh = g.sh.detach().double().cpu()
        f_dc = sh[:, 0, :]
        f_rest = sh[:, 1:, :].transpose(1, 2).reshape(n, 3 * (sh.shape[1] - 1))  # channel-major, as in the Inria layout
        op = g.opacities.detach().double().cpu().clamp(1e-6, 1 - 1e-6)
        opacity = torch.log(op) - torch.log1p(-op)
        scales = torch.log(g.scales.detach().double().cpu().clamp_min(1e-6))
        quats = g.quats.detach().double().cpu()
        table = torch.cat([means, torch.zeros(n, 3, dtype=torch.float64), f_dc, f_rest, opacity[:, None], scales, quats], 1)
    return table.float().numpy()


def save_ply(g: Gaussians, path: Union[str, os.PathLike]) -> Path:
    """Write ``g`` (unbatched) as a binary little-endian 3DGS PLY; atomic (no half-written file on failure)."""
    path = Path(path)
    table = gaussians_to_ply_array(g)
    names = property_names(g.sh_degree)
    assert table.shape[1] == len(names)
    header = ["ply", "format binary_little_endian 1.0", "comment written by zipsplat_ns (3DGS layout)"]
    header += [f"element vertex {table.shape[0]}"] + [f"property float {n}" for n in names] + ["end_header"]
    data = ("\n".join(header) + "\n").encode("ascii") + np.ascontiguousarray(table, dtype="<f4").tobytes()
    atomic_write(path, data)
    return path


def _parse_header(raw: bytes, path: Path) -> Tuple[str, int, List[Tuple[str, str]], int, bool]:
    """``(format, vertex count, vertex properties, data offset, whether 'vertex' is the only element)``."""
    end = raw.find(b"end_header")
    if not raw.startswith(b"ply") or end < 0:
        raise ValueError(f"load_ply: {path} is not a PLY file (missing 'ply' magic or 'end_header')")
    nl = raw.find(b"\n", end)
    if nl < 0:
        raise ValueError(f"load_ply: {path}: truncated header")
    try:
        lines = raw[:end].decode("ascii").splitlines()
    except UnicodeDecodeError as exc:
        raise ValueError(f"load_ply: {path}: header is not ASCII") from exc
    fmt, elements = None, []  # elements: (name, count, [(prop, dtype)])
    for line in lines[1:]:
        tok = line.split()
        if not tok or tok[0] in ("comment", "obj_info"):
            continue
        if tok[0] == "format":
            fmt = tok[1]
        elif tok[0] == "element":
            elements.append((tok[1], int(tok[2]), []))
        elif tok[0] == "property":
            if not elements:
                raise ValueError(f"load_ply: {path}: property before any element")
            if tok[1] == "list":
                elements[-1][2].append((tok[-1], "list"))
            else:
                if tok[1] not in _PLY_TYPES:
                    raise ValueError(f"load_ply: {path}: unknown property type {tok[1]!r}")
                elements[-1][2].append((tok[2], _PLY_TYPES[tok[1]]))
    if fmt is None:
        raise ValueError(f"load_ply: {path}: header has no 'format' line")
    if not elements or elements[0][0] != "vertex":
        raise ValueError(f"load_ply: {path}: the first element must be 'vertex' (3DGS layout), got {[e[0] for e in elements]}")
    name, count, props = elements[0]
    if any(t == "list" for _, t in props):
        raise ValueError(f"load_ply: {path}: list properties in 'vertex' are not part of the 3DGS layout")
    return fmt, count, props, nl + 1, len(elements) == 1


def load_ply(path: Union[str, os.PathLike]) -> Gaussians:
    """Read a 3DGS PLY (binary little/big endian or ASCII; any property order) into unbatched Gaussians."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_ply: no such file: {path}")
    raw = path.read_bytes()
    fmt, count, props, offset, vertex_only = _parse_header(raw, path)
    names = [p for p, _ in props]
    missing = [r for r in _REQUIRED if r not in names]
    if missing:
        raise ValueError(
            f"load_ply: {path} is not a 3D Gaussian splat PLY (missing vertex properties {missing}); "
            "a point cloud or mesh PLY cannot be loaded as Gaussians"
        )
    if fmt == "ascii":
        text = raw[offset:].decode("ascii", errors="replace").split()
        need = count * len(props)
        if len(text) < need:
            raise ValueError(f"load_ply: {path}: truncated ASCII data ({len(text)} of {need} values)")
        if vertex_only and len(text) > need:
            raise ValueError(
                f"load_ply: {path}: {len(text) - need} values after the {count} vertices of the header; its vertex "
                "count is wrong or the file is corrupt"
            )
        arr = np.asarray(text[:need], dtype=np.float64).reshape(count, len(props))
        cols = {n: arr[:, i] for i, n in enumerate(names)}
    elif fmt in ("binary_little_endian", "binary_big_endian"):
        endian = "<" if fmt == "binary_little_endian" else ">"
        dtype = np.dtype([(n, endian + t) for n, t in props])
        need = count * dtype.itemsize
        if len(raw) - offset < need:
            raise ValueError(f"load_ply: {path}: truncated data ({len(raw) - offset} of {need} bytes for {count} vertices)")
        if vertex_only and len(raw) - offset > need:
            raise ValueError(
                f"load_ply: {path}: {len(raw) - offset - need} bytes after the {count} vertices of the header; its "
                "vertex count is wrong or the file is corrupt"
            )
        rec = np.frombuffer(raw, dtype=dtype, count=count, offset=offset)
        cols = {n: rec[n] for n in names}
    else:
        raise ValueError(f"load_ply: {path}: unsupported PLY format {fmt!r}")

    def stack(keys: List[str]) -> torch.Tensor:
        return torch.from_numpy(np.stack([np.asarray(cols[k], dtype=np.float32) for k in keys], -1))

    rest = sorted((n for n in names if re.fullmatch(r"f_rest_\d+", n)), key=lambda n: int(n.split("_")[-1]))
    if len(rest) % 3:
        raise ValueError(f"load_ply: {path}: {len(rest)} f_rest properties is not a multiple of 3")
    if [int(n.split("_")[-1]) for n in rest] != list(range(len(rest))):
        raise ValueError(f"load_ply: {path}: the f_rest properties must be f_rest_0 .. f_rest_{len(rest) - 1}, got {rest}")
    k = len(rest) // 3 + 1
    sh_degree_from_coeffs(k)
    means = stack(["x", "y", "z"])
    f_dc = stack(["f_dc_0", "f_dc_1", "f_dc_2"])
    sh = torch.zeros(count, k, 3)
    sh[:, 0] = f_dc
    if k > 1:
        sh[:, 1:] = stack(rest).reshape(count, 3, k - 1).transpose(1, 2)
    opacity_logit = torch.from_numpy(np.asarray(cols["opacity"], dtype=np.float64))
    log_scales = stack(["scale_0", "scale_1", "scale_2"]).double()
    g = Gaussians(
        means=means,
        scales=torch.exp(log_scales).float(),
        quats=stack(["rot_0", "rot_1", "rot_2", "rot_3"]),
        opacities=torch.sigmoid(opacity_logit).float(),
        sh=sh,
    )
    g.validate_finite(f"load_ply: {path}")
    bad = torch.nonzero(g.quats.norm(dim=-1) < 1e-12)[:, 0].tolist()
    if bad:
        raise ValueError(
            f"load_ply: {path}: {len(bad)} Gaussian(s) with an all-zero rotation (rot_0..rot_3), e.g. vertices "
            f"{bad[:5]}; a rotation quaternion must be nonzero"
        )
    return g


__all__ = ["save_ply", "load_ply", "property_names", "gaussians_to_ply_array"]
