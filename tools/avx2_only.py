"""Run a command on this x86-64 CPU as if it were an AVX2-only one (no AVX-512, VNNI or AMX).

    python tools/avx2_only.py COMMAND [ARG ...]
    python tools/avx2_only.py .venv/bin/python benchmarks/bench_onnx.py --models mobile_sam

Libraries that choose their kernels from CPUID at run time (onnxruntime's MLAS, numpy, PyTorch,
oneDNN) then run their AVX2 kernels, so AVX2-only speed and numerics can be measured on a newer
CPU: same core and caches, the AVX2 instruction mix. ``avx2_only.c`` (compiled here with ``cc``
into ``build/``) hides the features through Linux's CPUID faulting; the CPU's /proc/cpuinfo
must list ``cpuid_fault``. The command gets ``FINESAM_EMULATED_CPU=avx2`` in its environment
(/proc/cpuinfo still lists the real flags: programs that read it are not fooled).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().with_name("avx2_only.c")
EMULATED_CPU_VARIABLE = "FINESAM_EMULATED_CPU"


class EmulationUnavailable(RuntimeError):
    """This machine cannot hide CPU features (not x86-64 Linux, no CPUID faulting, no C compiler)."""


def cpu_flags() -> set[str]:
    """The CPU's flags as /proc/cpuinfo lists them (the real ones: the emulation does not change them)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))


def emulation_unavailable() -> str | None:
    """Why AVX2-only emulation cannot run here, or None when it can."""
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        return "AVX2-only emulation needs x86-64 Linux"
    flags = cpu_flags()
    if "cpuid_fault" not in flags:
        return "this CPU or kernel has no CPUID faulting (cpuid_fault is not in /proc/cpuinfo)"
    if "avx2" not in flags:
        return "this CPU has no AVX2"
    if shutil.which("cc") is None:
        return "no C compiler (cc) to build tools/avx2_only.c: install gcc"
    return None


def build_preload(folder: Path) -> Path:
    """Compile ``avx2_only.c`` into ``folder`` (again only when the source is newer); its path."""
    reason = emulation_unavailable()
    if reason:
        raise EmulationUnavailable(reason)
    library = folder / "avx2_only.so"
    if library.exists() and library.stat().st_mtime >= SOURCE.stat().st_mtime:
        return library
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f"avx2_only.{os.getpid()}.so"
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(partial), str(SOURCE), "-ldl"], check=True)
    partial.replace(library)  # atomic: a concurrent build never loads a half-written library
    return library


def avx2_only_environment(library: Path, environment: dict[str, str] | None = None) -> dict[str, str]:
    """``environment`` (default: this process's) with the library preloaded."""
    environment = dict(os.environ if environment is None else environment)
    environment["LD_PRELOAD"] = " ".join(filter(None, [str(library), environment.get("LD_PRELOAD", "")]))
    environment[EMULATED_CPU_VARIABLE] = "avx2"
    return environment


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    try:
        library = build_preload(SOURCE.parents[1] / "build")
    except EmulationUnavailable as error:
        print(f"avx2_only: {error}", file=sys.stderr)
        return 2
    os.execvpe(argv[0], argv, avx2_only_environment(library))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
