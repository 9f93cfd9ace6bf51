"""GPU facts for the planner and the engine builder, and detection of the GPUs on this machine.

The table is pure data; ``detect_gpus`` is the one edge function (NVML when ``nvidia-ml-py`` is
importable, else ``nvidia-smi``; an empty list when there is no GPU, never an exception).

Units and conventions:

- ``memory_gib`` is the total the driver reports (``nvidia-smi --query-gpu=memory.total``, MiB /
  1024), which is what the runtime can allocate from; it is a little below the marketing "80 GB"
  because of the driver's reservation (H100 80GB HBM3: 81559 MiB = 79.6 GiB).
- ``hbm_bandwidth_gbps`` is the datasheet memory bandwidth in GB/s (10^9 bytes/s).
- TFLOPS are *dense* tensor-core figures; datasheets print "with sparsity", which is twice these.
- ``nvlink_gbps`` is the per-GPU NVLink bandwidth (bidirectional, as NVIDIA quotes it); None where
  GPUs talk over PCIe only. Measured all-reduce bandwidth is about 0.8x of it (NCCL issue #1264).

Sources (NVIDIA datasheets and product pages; the numbers are their dense values):

- A100: https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf
- H100 SXM / PCIe / NVL: https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet
- H200: https://www.nvidia.com/en-us/data-center/h200/ (and MLCommons inference v4.1
  H200-SXM-141GBx8 system description: 141 GB HBM3e, 18x NVLink4 900 GB/s)
- GH200: https://resources.nvidia.com/en-us-grace-cpu/grace-hopper-superchip (96 GB HBM3 variant)
- L40S: https://resources.nvidia.com/en-us-l40s/l40s-datasheet-28413
- L4: https://resources.nvidia.com/en-us-data-center-overview/l4-gpu-datasheet
- A10: https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a10/pdf/a10-datasheet.pdf
- B200: https://resources.nvidia.com/en-us-dgx-systems/dgx-b200-datasheet (DGX B200 system
  figures divided by its 8 GPUs: 1,440 GB, 64 TB/s, 72 PFLOPS FP8 sparse -> 4.5 PFLOPS dense)
- Compute capabilities: https://developer.nvidia.com/cuda-gpus
"""

from __future__ import annotations

import contextlib
import re
import shutil
from dataclasses import dataclass

from trtbuild import proc, vocab
from trtbuild.errors import SpecError, TrtbuildError
from trtbuild.specs import StrictModel

_A100 = "https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf"
_H100 = "https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet"
_H200 = "https://www.nvidia.com/en-us/data-center/h200/"
_GH200 = "https://resources.nvidia.com/en-us-grace-cpu/grace-hopper-superchip"
_L40S = "https://resources.nvidia.com/en-us-l40s/l40s-datasheet-28413"
_L4 = "https://resources.nvidia.com/en-us-data-center-overview/l4-gpu-datasheet"
_A10 = "https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a10/pdf/a10-datasheet.pdf"
_B200 = "https://resources.nvidia.com/en-us-dgx-systems/dgx-b200-datasheet"


class GpuSpec(StrictModel):
    """Datasheet facts about one GPU model."""

    name: str
    marketing_name: str
    sm: int
    memory_gib: float
    hbm_bandwidth_gbps: float
    bf16_dense_tflops: float
    fp8_dense_tflops: float | None
    nvlink_gbps: float | None
    source: str

    @property
    def compute_capability(self) -> str:
        """``"9.0"`` for SM 90."""
        return f"{self.sm // 10}.{self.sm % 10}"

    @property
    def supports_fp8(self) -> bool:
        """FP8 tensor cores exist from Ada (SM 89) and Hopper (SM 90) on."""
        return vocab.supports_fp8(self.sm)

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * 2**30)


# fmt: off
_GPUS: tuple[GpuSpec, ...] = (
    GpuSpec(name="a100-40gb", marketing_name="NVIDIA A100-SXM4-40GB", sm=80, memory_gib=40.0,
            hbm_bandwidth_gbps=1555, bf16_dense_tflops=312, fp8_dense_tflops=None,
            nvlink_gbps=600, source=_A100),
    GpuSpec(name="a100-80gb", marketing_name="NVIDIA A100-SXM4-80GB", sm=80, memory_gib=80.0,
            hbm_bandwidth_gbps=2039, bf16_dense_tflops=312, fp8_dense_tflops=None,
            nvlink_gbps=600, source=_A100),
    GpuSpec(name="a100-80gb-pcie", marketing_name="NVIDIA A100 80GB PCIe", sm=80, memory_gib=80.0,
            hbm_bandwidth_gbps=1935, bf16_dense_tflops=312, fp8_dense_tflops=None,
            nvlink_gbps=None, source=_A100),
    GpuSpec(name="h100-sxm", marketing_name="NVIDIA H100 80GB HBM3", sm=90, memory_gib=79.6,
            hbm_bandwidth_gbps=3350, bf16_dense_tflops=989, fp8_dense_tflops=1979,
            nvlink_gbps=900, source=_H100),
    GpuSpec(name="h100-pcie", marketing_name="NVIDIA H100 PCIe", sm=90, memory_gib=79.6,
            hbm_bandwidth_gbps=2000, bf16_dense_tflops=756, fp8_dense_tflops=1513,
            nvlink_gbps=None, source=_H100),  # an optional NVLink bridge joins pairs only
    GpuSpec(name="h100-nvl", marketing_name="NVIDIA H100 NVL", sm=90, memory_gib=93.6,
            hbm_bandwidth_gbps=3900, bf16_dense_tflops=835, fp8_dense_tflops=1671,
            nvlink_gbps=600, source=_H100),
    GpuSpec(name="h200", marketing_name="NVIDIA H200", sm=90, memory_gib=140.4,
            hbm_bandwidth_gbps=4800, bf16_dense_tflops=989, fp8_dense_tflops=1979,
            nvlink_gbps=900, source=_H200),
    GpuSpec(name="gh200", marketing_name="NVIDIA GH200 480GB", sm=90, memory_gib=95.6,
            hbm_bandwidth_gbps=4000, bf16_dense_tflops=989, fp8_dense_tflops=1979,
            nvlink_gbps=900, source=_GH200),
    GpuSpec(name="l40s", marketing_name="NVIDIA L40S", sm=89, memory_gib=45.0,
            hbm_bandwidth_gbps=864, bf16_dense_tflops=362.05, fp8_dense_tflops=733,
            nvlink_gbps=None, source=_L40S),
    GpuSpec(name="l4", marketing_name="NVIDIA L4", sm=89, memory_gib=22.5,
            hbm_bandwidth_gbps=300, bf16_dense_tflops=121, fp8_dense_tflops=242,
            nvlink_gbps=None, source=_L4),
    GpuSpec(name="a10", marketing_name="NVIDIA A10", sm=86, memory_gib=22.5,
            hbm_bandwidth_gbps=600, bf16_dense_tflops=125, fp8_dense_tflops=None,
            nvlink_gbps=None, source=_A10),
    GpuSpec(name="b200", marketing_name="NVIDIA B200", sm=100, memory_gib=179.1,
            hbm_bandwidth_gbps=8000, bf16_dense_tflops=2250, fp8_dense_tflops=4500,
            nvlink_gbps=1800, source=_B200),
)

# Other spellings people (and nvidia-smi) use, normalised by ``_key``.
_ALIASES: dict[str, str] = {
    "a100": "a100-80gb", "a100-40g": "a100-40gb", "a100-sxm4-40gb": "a100-40gb",
    "a100-pcie-40gb": "a100-40gb", "a100-80g": "a100-80gb", "a100-sxm4-80gb": "a100-80gb",
    "a100-sxm": "a100-80gb", "a100-80gb-sxm": "a100-80gb", "a100-pcie": "a100-80gb-pcie",
    "h100": "h100-sxm", "h100-sxm5": "h100-sxm", "h100-80gb-hbm3": "h100-sxm",
    "h100-sxm5-80gb": "h100-sxm", "h100-80gb-pcie": "h100-pcie", "h100-94gb": "h100-nvl",
    "h200-sxm": "h200", "h200-141gb": "h200", "h200-141gb-hbm3e": "h200",
    "gh200-480gb": "gh200", "gh200-96gb": "gh200", "l40s-48gb": "l40s", "l4-24gb": "l4",
    "a10-24gb": "a10", "b200-180gb": "b200",
}
# fmt: on


def _key(name: str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"h100-80gb-hbm3"``."""
    key = re.sub(r"[\s_]+", "-", name.strip().lower())
    key = re.sub(r"^(nvidia-|tesla-)+", "", key)
    return re.sub(r"-+", "-", key).strip("-")


_BY_KEY: dict[str, GpuSpec] = {
    **{_key(g.marketing_name): g for g in _GPUS},
    **{alias: next(g for g in _GPUS if g.name == target) for alias, target in _ALIASES.items()},
    **{g.name: g for g in _GPUS},
}


def known_gpus() -> list[str]:
    """Canonical names, in table order."""
    return [g.name for g in _GPUS]


def find_gpu(name: str) -> GpuSpec | None:
    """The spec for ``name`` (any known spelling, case-insensitive), or None."""
    return _BY_KEY.get(_key(name))


def get_gpu(name: str) -> GpuSpec:
    """The spec for ``name``; unknown names raise ``SpecError`` listing the known ones."""
    spec = find_gpu(name)
    if spec is None:
        raise SpecError(f"unknown GPU {name!r}; known GPUs: {', '.join(known_gpus())}.")
    return spec


@dataclass(frozen=True)
class DetectedGpu:
    """One GPU on this machine, as the driver reports it."""

    index: int
    name: str
    sm: int
    memory_mib: int
    spec: GpuSpec | None


def detect_gpus() -> list[DetectedGpu]:
    """The GPUs on this machine; ``[]`` when there is no GPU, driver or nvidia-smi."""
    found = _detect_nvml()
    return found if found is not None else _detect_nvidia_smi()


def _detect_nvml() -> list[DetectedGpu] | None:
    """NVML through nvidia-ml-py when it is installed; None to fall back to nvidia-smi."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver: NVMLError_LibraryNotFound / DriverNotLoaded
        return None
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            name = name.decode() if isinstance(name, bytes) else str(name)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle).total // 2**20
            gpus.append(_detected(index, name, major * 10 + minor, int(memory)))
        return gpus
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def _detect_nvidia_smi() -> list[DetectedGpu]:

    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    argv = [exe, "--query-gpu=index,name,compute_cap,memory.total", "--format=csv,noheader,nounits"]
    try:
        result = proc.run(argv, quiet=True, check=False, timeout=30)
    except TrtbuildError:  # vanished or hung
        return []
    if result.returncode != 0:  # "couldn't communicate with the NVIDIA driver": no usable GPU
        return []
    return parse_nvidia_smi_csv(result.output)


def parse_nvidia_smi_csv(text: str) -> list[DetectedGpu]:
    """Parse ``index, name, compute_cap, memory.total`` lines; lines that do not parse are skipped."""
    gpus = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 4:
            continue
        index, name, cap, memory = fields
        try:
            major, _, minor = cap.partition(".")
            gpus.append(_detected(int(index), name, int(major) * 10 + int(minor or 0), int(memory)))
        except ValueError:
            continue
    return gpus


def _detected(index: int, name: str, sm: int, memory_mib: int) -> DetectedGpu:
    return DetectedGpu(index=index, name=name, sm=sm, memory_mib=memory_mib, spec=find_gpu(name))
