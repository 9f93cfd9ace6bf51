"""The GPU facts table and detection (through a fake nvidia-smi on PATH)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from trtbuild import gpus
from trtbuild.errors import SpecError
from trtbuild.gpus import DetectedGpu, detect_gpus, get_gpu, known_gpus, parse_nvidia_smi_csv

FAKES = Path(__file__).parent / "fakes"
REQUIRED = ["a100-40gb", "a100-80gb", "h100-sxm", "h100-pcie", "h100-nvl", "h200", "gh200", "l40s",
            "l4", "b200"]  # fmt: skip


def test_table_has_the_required_gpus_with_cited_sources() -> None:
    assert set(REQUIRED) <= set(known_gpus())
    for name in known_gpus():
        spec = get_gpu(name)
        assert spec.name == name
        assert spec.source.startswith("https://") and "nvidia.com" in spec.source
        assert spec.memory_gib > 10 and spec.hbm_bandwidth_gbps > 100
        assert spec.bf16_dense_tflops > 50
        # FP8 tensor cores exist exactly from SM 89 on
        assert spec.supports_fp8 == (spec.sm >= 89) == (spec.fp8_dense_tflops is not None)
        if spec.fp8_dense_tflops:  # dense FP8 is twice dense BF16 on every GPU in the table
            assert spec.fp8_dense_tflops == pytest.approx(2 * spec.bf16_dense_tflops, rel=0.02)


@pytest.mark.parametrize(
    ("name", "memory_gib", "bandwidth", "bf16", "sm", "nvlink"),
    [
        (
            "h100-sxm",
            79.6,
            3350,
            989,
            90,
            900,
        ),  # datasheet: 80 GB HBM3, 3.35 TB/s, 989 TF, 900 GB/s
        ("h200", 140.4, 4800, 989, 90, 900),  # 141 GB HBM3e, 4.8 TB/s
        ("a100-80gb", 80.0, 2039, 312, 80, 600),
        ("a100-40gb", 40.0, 1555, 312, 80, 600),
        ("l40s", 45.0, 864, 362.05, 89, None),
        ("b200", 179.1, 8000, 2250, 100, 1800),
    ],
)
def test_datasheet_values(
    name: str, memory_gib: float, bandwidth: float, bf16: float, sm: int, nvlink: float | None
) -> None:
    spec = get_gpu(name)
    assert (spec.memory_gib, spec.hbm_bandwidth_gbps, spec.bf16_dense_tflops, spec.sm) == (
        memory_gib, bandwidth, bf16, sm)  # fmt: skip
    assert spec.nvlink_gbps == nvlink


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("H100", "h100-sxm"),
        ("h100-sxm5", "h100-sxm"),
        ("NVIDIA H100 80GB HBM3", "h100-sxm"),
        ("nvidia h100 pcie", "h100-pcie"),
        ("NVIDIA H100 NVL", "h100-nvl"),
        ("NVIDIA A100-SXM4-40GB", "a100-40gb"),
        ("NVIDIA A100-SXM4-80GB", "a100-80gb"),
        ("NVIDIA A100 80GB PCIe", "a100-80gb-pcie"),
        ("NVIDIA GH200 480GB", "gh200"),
        ("NVIDIA H200", "h200"),
        ("L40S", "l40s"),
        ("NVIDIA B200", "b200"),
    ],
)
def test_aliases(alias: str, name: str) -> None:
    assert get_gpu(alias).name == name


def test_compute_capability() -> None:
    assert get_gpu("h100").compute_capability == "9.0"
    assert get_gpu("l4").compute_capability == "8.9"
    assert get_gpu("b200").compute_capability == "10.0"
    assert not get_gpu("a100-80gb").supports_fp8


def test_unknown_gpu_lists_the_known_ones() -> None:
    with pytest.raises(SpecError) as exc:
        get_gpu("v100")
    assert exc.value.message.startswith("unknown GPU 'v100'; known GPUs: a100-40gb, ")
    assert "h100-sxm" in exc.value.message and exc.value.exit_code == 2


# -- detection -----------------------------------------------------------------------------------
@pytest.fixture
def fake_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PATH holds only a fake nvidia-smi; NVML is treated as absent."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").symlink_to(FAKES / "fake_nvidia-smi")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin")
    monkeypatch.setenv("FAKE_NVIDIA_SMI_ARGS", str(tmp_path / "args"))
    monkeypatch.setattr(gpus, "_detect_nvml", lambda: None)
    return tmp_path


def test_detect_with_nvidia_smi(fake_smi: Path) -> None:
    found = detect_gpus()
    assert found == [
        DetectedGpu(index=0, name="NVIDIA H100 80GB HBM3", sm=90, memory_mib=81559, spec=get_gpu("h100-sxm")),
        DetectedGpu(index=1, name="NVIDIA H100 80GB HBM3", sm=90, memory_mib=81559, spec=get_gpu("h100-sxm")),
    ]  # fmt: skip
    args = (fake_smi / "args").read_text().split()
    assert args == [
        "--query-gpu=index,name,compute_cap,memory.total",
        "--format=csv,noheader,nounits",
    ]


def test_detect_unknown_gpu_has_no_spec(fake_smi: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = fake_smi / "out.csv"
    out.write_text("0, NVIDIA GeForce RTX 3060, 8.6, 12288\n1, NVIDIA L4, 8.9, 23034\n")
    monkeypatch.setenv("FAKE_NVIDIA_SMI_OUTPUT", str(out))
    first, second = detect_gpus()
    assert (first.name, first.sm, first.memory_mib, first.spec) == (
        "NVIDIA GeForce RTX 3060",
        86,
        12288,
        None,
    )
    assert second.spec == get_gpu("l4")


def test_detect_failing_nvidia_smi_means_no_gpu(
    fake_smi: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = fake_smi / "out.txt"
    out.write_text(
        "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n"
    )
    monkeypatch.setenv("FAKE_NVIDIA_SMI_OUTPUT", str(out))
    monkeypatch.setenv("FAKE_NVIDIA_SMI_EXIT", "9")
    assert detect_gpus() == []


def test_detect_without_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(gpus, "_detect_nvml", lambda: None)
    assert detect_gpus() == []


def test_parse_skips_lines_that_do_not_parse() -> None:
    text = "0, NVIDIA L40S, 8.9, 46068\n\ngarbage\n1, NVIDIA L40S, [N/A], 46068\n"
    assert [g.index for g in parse_nvidia_smi_csv(text)] == [0]
