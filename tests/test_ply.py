"""3DGS PLY save/load in the standard (Inria / ns-export) layout."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from zipsplat_ns import Gaussians
from zipsplat_ns.ply import load_ply, property_names, save_ply

SHARED = Path(__file__).resolve().parents[2] / "shared"


def random_gaussians(n: int, sh_degree: int, seed: int = 0) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, 4, generator=g)
    return Gaussians(
        means=torch.randn(n, 3, generator=g) * 3,
        scales=torch.rand(n, 3, generator=g) * 0.2 + 1e-4,
        quats=q / q.norm(dim=-1, keepdim=True),
        opacities=torch.rand(n, generator=g) * 0.98 + 0.01,
        sh=torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g),
    )


@pytest.mark.parametrize("sh_degree", [0, 1, 3])
def test_round_trip_is_float32_exact(tmp_path, sh_degree):
    g = random_gaussians(257, sh_degree)
    path = save_ply(g, tmp_path / "scene.ply")
    back = load_ply(path)
    assert back.num_gaussians == 257 and back.sh_degree == sh_degree
    torch.testing.assert_close(back.means, g.means, rtol=0, atol=0)
    torch.testing.assert_close(back.sh, g.sh, rtol=0, atol=0)
    torch.testing.assert_close(back.quats, g.quats, rtol=0, atol=0)
    # Opacity and scale go through logit / log and back; float32 rounding only.
    torch.testing.assert_close(back.opacities, g.opacities, rtol=2e-6, atol=1e-7)
    torch.testing.assert_close(back.scales, g.scales, rtol=2e-6, atol=0)


def test_header_and_property_order_follow_the_standard_layout(tmp_path):
    g = random_gaussians(10, 1)
    path = save_ply(g, tmp_path / "scene.ply")
    header = path.read_bytes().split(b"end_header\n")[0].decode().splitlines()
    assert header[0] == "ply" and header[1] == "format binary_little_endian 1.0"
    assert "element vertex 10" in header
    props = [line.split()[2] for line in header if line.startswith("property")]
    assert all(line.split()[1] == "float" for line in header if line.startswith("property"))
    expected = (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(9)]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )
    assert props == expected == property_names(1)
    # File size = header + N * 26 float32 values.
    assert path.stat().st_size == len(path.read_bytes().split(b"end_header\n")[0]) + len(b"end_header\n") + 10 * 26 * 4


def test_independent_read_with_plyfile(tmp_path):
    plyfile = pytest.importorskip("plyfile")
    g = random_gaussians(33, 1, seed=5)
    path = save_ply(g, tmp_path / "scene.ply")
    v = plyfile.PlyData.read(str(path))["vertex"]
    assert len(v) == 33
    np.testing.assert_array_equal(np.stack([v["x"], v["y"], v["z"]], -1), g.means.numpy())
    np.testing.assert_array_equal(np.stack([v["nx"], v["ny"], v["nz"]], -1), 0)
    np.testing.assert_array_equal(np.stack([v[f"f_dc_{i}"] for i in range(3)], -1), g.sh[:, 0].numpy())
    # f_rest is channel-major: f_rest_0..2 are the red channel's coefficients 1..3.
    np.testing.assert_array_equal(np.stack([v[f"f_rest_{i}"] for i in range(3)], -1), g.sh[:, 1:, 0].numpy())
    np.testing.assert_array_equal(np.stack([v[f"f_rest_{i}"] for i in range(6, 9)], -1), g.sh[:, 1:, 2].numpy())
    opa = 1 / (1 + np.exp(-v["opacity"].astype(np.float64)))
    np.testing.assert_allclose(opa, g.opacities.numpy(), rtol=1e-6)
    np.testing.assert_allclose(np.exp(v["scale_1"]), g.scales[:, 1].numpy(), rtol=1e-6)
    np.testing.assert_array_equal(np.stack([v[f"rot_{i}"] for i in range(4)], -1), g.quats.numpy())


def test_reads_files_written_by_plyfile_in_another_order_and_encoding(tmp_path):
    plyfile = pytest.importorskip("plyfile")
    g = random_gaussians(5, 0, seed=2)
    names = property_names(0)[::-1]  # reversed property order, big-endian, double precision
    table = {
        "x": g.means[:, 0], "y": g.means[:, 1], "z": g.means[:, 2], "nx": torch.zeros(5), "ny": torch.zeros(5),
        "nz": torch.zeros(5), "f_dc_0": g.sh[:, 0, 0], "f_dc_1": g.sh[:, 0, 1], "f_dc_2": g.sh[:, 0, 2],
        "opacity": torch.logit(g.opacities.double()), "scale_0": g.scales[:, 0].log(), "scale_1": g.scales[:, 1].log(),
        "scale_2": g.scales[:, 2].log(), "rot_0": g.quats[:, 0], "rot_1": g.quats[:, 1], "rot_2": g.quats[:, 2],
        "rot_3": g.quats[:, 3],
    }  # fmt: skip
    arr = np.empty(5, dtype=[(n, ">f8") for n in names])
    for n in names:
        arr[n] = table[n].double().numpy()
    for text in (False, True):
        path = tmp_path / f"other_{text}.ply"
        plyfile.PlyData([plyfile.PlyElement.describe(arr, "vertex")], text=text, byte_order=">").write(str(path))
        back = load_ply(path)
        torch.testing.assert_close(back.means, g.means, atol=1e-6, rtol=0)
        torch.testing.assert_close(back.opacities, g.opacities, atol=1e-6, rtol=0)


def test_save_is_atomic_and_refuses_bad_input(tmp_path):
    g = random_gaussians(4, 0)
    with pytest.raises(ValueError, match="unbatched"):
        save_ply(g.add_batch_dim(), tmp_path / "b.ply")
    bad = Gaussians(g.means.clone(), g.scales, g.quats, g.opacities, g.sh)
    bad.means[1, 0] = float("nan")
    with pytest.raises(ValueError, match="means: contains 1 non-finite"):
        save_ply(bad, tmp_path / "nan.ply")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing half-written, no temp files left
    old = os.umask(0o027)  # the written file gets the permissions open() would give it under the umask ...
    try:
        mode = save_ply(g, tmp_path / "ok.ply").stat().st_mode & 0o777
        assert mode == 0o640 and os.umask(0o027) == 0o027  # ... and the umask itself is left as it was
    finally:
        os.umask(old)


def test_load_errors_name_the_file_and_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.ply"):
        load_ply(tmp_path / "missing.ply")
    junk = tmp_path / "junk.ply"
    junk.write_bytes(b"\x89PNG not a ply")
    with pytest.raises(ValueError, match="junk.ply is not a PLY file"):
        load_ply(junk)
    pc = tmp_path / "points.ply"
    pc.write_bytes(
        b"ply\nformat binary_little_endian 1.0\nelement vertex 1\nproperty float x\nproperty float y\n"
        b"property float z\nproperty uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n" + bytes(15)
    )
    with pytest.raises(ValueError, match=r"not a 3D Gaussian splat PLY \(missing vertex properties \['f_dc_0'"):
        load_ply(pc)
    path = save_ply(random_gaussians(8, 1), tmp_path / "ok.ply")
    trunc = tmp_path / "trunc.ply"
    trunc.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ValueError, match="trunc.ply: truncated data"):
        load_ply(trunc)
    # a header that counts fewer vertices than the file holds, f_rest with a gap, an all-zero rotation
    raw = path.read_bytes()
    fewer = tmp_path / "fewer.ply"
    fewer.write_bytes(raw.replace(b"element vertex 8", b"element vertex 7"))
    with pytest.raises(ValueError, match=r"fewer.ply: 104 bytes after the 7 vertices"):
        load_ply(fewer)
    gap = tmp_path / "gap.ply"
    gap.write_bytes(raw.replace(b"property float f_rest_8\n", b"property float f_rest_20\n"))
    with pytest.raises(ValueError, match=r"gap.ply: the f_rest properties must be f_rest_0 .. f_rest_8"):
        load_ply(gap)
    g = random_gaussians(8, 1)
    g.quats[3] = 0.0
    zero = save_ply(g, tmp_path / "zero.ply")
    with pytest.raises(ValueError, match=r"zero.ply: 1 Gaussian\(s\) with an all-zero rotation .* \[3\]"):
        load_ply(zero)


@pytest.mark.skipif(not (SHARED / "data").is_dir(), reason="../shared/data is absent (real sparse point clouds)")
def test_real_point_cloud_ply_is_refused_clearly():
    with pytest.raises(ValueError, match="a point cloud or mesh PLY cannot be loaded"):
        load_ply(SHARED / "data" / "scenes" / "llff-beer" / "points3D.ply")


def test_gaussians_container_validation_and_helpers():
    g = random_gaussians(64, 1)
    with pytest.raises(ValueError, match="expected K in"):
        Gaussians(g.means, g.scales, g.quats, g.opacities, torch.zeros(64, 5, 3))
    with pytest.raises(ValueError, match="scales: leading shape"):
        Gaussians(g.means, g.scales[:10], g.quats, g.opacities, g.sh)
    with pytest.raises(ValueError, match=r"quats: expected shape \(\.\.\., 4\)"):
        Gaussians(g.means, g.scales, g.quats[:, :3], g.opacities, g.sh)
    colored = g.color_by_group(32)
    assert colored.sh.shape == (64, 1, 3)
    rgb = colored.rgb
    assert torch.equal(rgb[:32], rgb[:1].expand(32, 3)) and torch.equal(rgb[32:], rgb[32:33].expand(32, 3))
    assert not torch.equal(rgb[0], rgb[32])
    batched = Gaussians.stack([g, g])
    assert batched.batch_shape == (2,) and batched[1].num_gaussians == 64
    assert Gaussians.cat([g, g]).num_gaussians == 128


@pytest.mark.parametrize("sh_degree", [0, 1])
def test_an_empty_scene_writes_a_valid_ply(tmp_path, sh_degree):
    """No Gaussians (e.g. all cropped away): a valid PLY with 0 vertices and the full header, read back empty."""
    k = (sh_degree + 1) ** 2
    g = Gaussians(torch.zeros(0, 3), torch.ones(0, 3), torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, k, 3))
    path = tmp_path / "empty.ply"
    g.save_ply(path)
    assert b"element vertex 0\n" in path.read_bytes()
    back = Gaussians.load_ply(path)
    assert back.num_gaussians == 0 and back.sh.shape == (0, k, 3)
