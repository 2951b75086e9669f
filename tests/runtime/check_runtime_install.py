"""Check a runtime-only install of finesam (``pip install .``, no extras) in a separate venv.

    python tests/runtime/check_runtime_install.py --venv .venv-runtime

``make check-runtime`` (part of ``make test``) builds that venv and runs this script. The script
needs only the standard library: everything that uses finesam, numpy or Pillow runs in a
subprocess of the runtime venv (``FINESAM_OFFLINE=1``, bounded by --timeout). It prints one
``ok: ...`` / ``FAILED: ...`` line per check, then ``N passed, M failed``; exit status 1 if any
check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

IMAGE_SIZE = (320, 240)  # width, height
BOX = ("40", "30", "260", "200")


class Checker:
    def __init__(self, venv: Path, timeout: float, workdir: Path):
        self.bin = venv / "bin"
        self.python = str(self.bin / "python")
        self.finesam = str(self.bin / "finesam")
        self.timeout = timeout
        self.workdir = workdir  # cwd of every subprocess: nothing of the source tree is importable
        self.env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        self.env.update(FINESAM_OFFLINE="1", PYTHONNOUSERSITE="1", PYTHONDONTWRITEBYTECODE="1")
        self.passed = 0
        self.failed = 0

    def ok(self, what: str) -> None:
        self.passed += 1
        print(f"ok: {what}", flush=True)

    def fail(self, what: str, why: str = "") -> None:
        self.failed += 1
        print(f"FAILED: {what}" + (f": {why}" if why else ""), flush=True)

    def run(self, *cmd: str) -> subprocess.CompletedProcess:
        """Run ``cmd``; a timeout or a missing executable comes back as returncode -1."""
        try:
            return subprocess.run(cmd, cwd=self.workdir, env=self.env, capture_output=True, text=True,
                                  timeout=self.timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as error:
            return subprocess.CompletedProcess(cmd, -1, _text(error.stdout), f"timed out after {self.timeout:.0f} s\n" + _text(error.stderr))
        except OSError as error:
            return subprocess.CompletedProcess(cmd, -1, "", f"could not run: {error}")

    def py(self, code: str, *args: str) -> subprocess.CompletedProcess:
        return self.run(self.python, "-c", code, *args)

    def expect(self, what: str, result: subprocess.CompletedProcess, code: int, needle: str | None = None,
               stream: str = "stderr") -> bool:
        """Check the exit code (and that ``needle`` is in ``stream``); report and return the verdict."""
        text = result.stderr if stream == "stderr" else result.stdout
        if result.returncode != code:
            self.fail(what, f"exit {result.returncode}, expected {code}{_tail(result)}")
            return False
        if needle is not None and needle not in text:
            self.fail(what, f"no {needle!r} in {stream}{_tail(result)}")
            return False
        self.ok(what)
        return True


def _text(data) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def _tail(result: subprocess.CompletedProcess, lines: int = 8) -> str:
    out = "\n".join((result.stdout.strip() + "\n" + result.stderr.strip()).strip().splitlines()[-lines:])
    return ("\n    " + out.replace("\n", "\n    ")) if out else ""


MAKE_FILES = r"""
import sys
import numpy as np
from PIL import Image
image_path, data_dir = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(0)
w, h = int(sys.argv[3]), int(sys.argv[4])
Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(image_path, quality=90)
import pathlib
root = pathlib.Path(data_dir)
(root / "im").mkdir(parents=True)
(root / "gt").mkdir()
Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "im" / "a.jpg", quality=90)
gt = np.zeros((h, w), np.uint8)
gt[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 255
Image.fromarray(gt).save(root / "gt" / "a.png")
"""

IMAGE_SIZE_OF = r"""
import sys
from PIL import Image
with Image.open(sys.argv[1]) as image:
    print(*image.size)
"""

IMPORT_ALL = r"""
import importlib, json, pkgutil, sys, traceback
import finesam
failed, imported, walk_errors = {}, [], []
names = sorted({m.name for m in pkgutil.walk_packages(finesam.__path__, "finesam.", onerror=walk_errors.append)})
for name in names:
    if name == "finesam.cli.__main__" or any(part.startswith("_") for part in name.split(".")):
        continue
    try:
        importlib.import_module(name)
        imported.append(name)
    except BaseException as error:
        failed[name] = "".join(traceback.format_exception_only(type(error), error)).strip()
for name in walk_errors:
    failed.setdefault(name, "could not be imported while walking the package")
print(json.dumps({"file": finesam.__file__, "prefix": sys.prefix, "imported": imported, "failed": failed}))
"""

IMPORT_FAILS = r"""
import importlib, sys
try:
    module = importlib.import_module(sys.argv[1])
except ImportError:
    sys.exit(0)
print(f"{sys.argv[1]} imports from {getattr(module, '__file__', '?')}")
sys.exit(1)
"""

AMG_COCO = r"""
import sys
import numpy as np
import finesam
model = finesam.load("mobile_sam", random_weights=True)
image = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
generator = finesam.AutomaticMaskGenerator(model, points_per_side=2, pred_iou_thresh=0, stability_score_thresh=0,
                                           output_mode="coco_rle")
records = generator.generate(image)
bad = [r["segmentation"] for r in records if not isinstance(r["segmentation"].get("counts"), str)]
print(f"{len(records)} masks; not compressed RLEs: {bad[:1]}")
sys.exit(3 if bad or not records else 0)
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--venv", type=Path, default=Path(".venv-runtime"), help="runtime venv (pip install ., no extras)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds allowed to each subprocess")
    args = parser.parse_args(argv)
    venv = args.venv.resolve()
    with tempfile.TemporaryDirectory(prefix="finesam-runtime-") as tmp:
        check = Checker(venv, args.timeout, Path(tmp))
        run_checks(check, venv, Path(tmp))
    print(f"{check.passed} passed, {check.failed} failed")
    return 1 if check.failed else 0


def run_checks(check: Checker, venv: Path, tmp: Path) -> None:
    if not Path(check.python).exists():
        check.fail(f"runtime venv {venv}", "no bin/python (make check-runtime builds it)")
        return

    # 1. the command line's help
    for command in ((), ("segment",), ("eval",)):
        check.expect(f"finesam {' '.join(command + ('--help',))}", check.run(check.finesam, *command, "--help"), 0,
                     "usage:", stream="stdout")

    # 2. finesam segment on a random image
    image, data = tmp / "image.jpg", tmp / "data"
    made = check.py(MAKE_FILES, str(image), str(data), *map(str, IMAGE_SIZE))
    if made.returncode != 0:
        check.fail("make the test image and data set with Pillow", f"exit {made.returncode}{_tail(made)}")
        return
    out = tmp / "out.png"
    what = "finesam segment IMAGE --model mobile_sam --random-weights --box ... --out OUT.png"
    if check.expect(what, check.run(check.finesam, "segment", str(image), "--model", "mobile_sam", "--random-weights",
                                    "--box", *BOX, "--out", str(out)), 0):
        size = check.py(IMAGE_SIZE_OF, str(out)) if out.exists() else None
        if size is None:
            check.fail("OUT.png exists", f"{out} was not written")
        elif size.returncode != 0 or size.stdout.split() != [str(n) for n in IMAGE_SIZE]:
            check.fail("OUT.png has the image's size", f"expected {IMAGE_SIZE}, got {size.stdout.strip()!r}{_tail(size)}")
        else:
            check.ok(f"OUT.png exists and is {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}")

    # 3. every public module imports, from the installed copy (not the source tree)
    result = check.py(IMPORT_ALL)
    try:
        report = json.loads(result.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        check.fail("import finesam and walk its modules", f"exit {result.returncode}{_tail(result)}")
    else:
        if Path(report["file"]).resolve().is_relative_to(Path(report["prefix"]).resolve()):
            check.ok(f"finesam is imported from the venv ({report['file']})")
        else:
            check.fail("finesam is imported from the venv", f"it comes from {report['file']} (an editable install?)")
        for name, error in sorted(report["failed"].items()):
            check.fail(f"import {name}", error)
        if not report["failed"]:
            check.ok(f"import all {len(report['imported'])} public modules of finesam")

    # 4. the extras are absent, and the features that need them say which extra to install
    hint = f" (remove {venv} and rerun: the runtime venv must have no extras)"
    for module in ("skimage", "pycocotools"):
        result = check.py(IMPORT_FAILS, module)
        if result.returncode == 0:
            check.ok(f"import {module} fails in the runtime venv")
        else:
            check.fail(f"import {module} fails in the runtime venv", (result.stdout.strip() or _tail(result)) + hint)
    check.expect("python -m finesam.cli.demo --random-weights exits 2 naming finesam[demo]",
                 check.run(check.python, "-m", "finesam.cli.demo", "--random-weights", "--out", str(tmp / "demo")),
                 2, "finesam[demo]")
    eval_cmd = (check.finesam, "eval", "--model", "mobile_sam", "--random-weights", "--data", f"X={data}",
                "--protocol", "box")
    check.expect("finesam eval (HCE on) exits 2 naming finesam[eval]",
                 check.run(*eval_cmd, "--out", str(tmp / "eval-hce")), 2, "finesam[eval]")
    eval_out = tmp / "eval-no-hce"
    if check.expect("finesam eval --no-hce exits 0 without scikit-image",
                    check.run(*eval_cmd, "--no-hce", "--out", str(eval_out)), 0):
        if (eval_out / "summary.json").is_file():
            check.ok("finesam eval --no-hce wrote summary.json")
        else:
            check.fail("finesam eval --no-hce wrote summary.json", f"{eval_out} holds {sorted(p.name for p in eval_out.glob('*'))}")
    check.expect('AutomaticMaskGenerator(model, output_mode="coco_rle") works without pycocotools',
                 check.py(AMG_COCO), 0)


if __name__ == "__main__":
    sys.exit(main())
