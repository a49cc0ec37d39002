"""Conversion benchmark: ms per image at full size and at the model size for the raw,
JPEG-lossless and JPEG 2000 sets, side by side with DCMTK `dcmj2pnm --write-png` and a
plain pydicom (apply_modality_lut + apply_voi_lut) + OpenCV pipeline; then throughput of
the process pool on all cores.

    .venv/bin/python ../shared/tools/make_xray_dataset.py /tmp/xrds --n 40 --jpegll --j2k
    .venv/bin/python bench/convert.py /tmp/xrds [--limit N]

Per-image figures run sequentially in one process with OpenCV limited to one thread (one
core); dcmj2pnm is timed as a whole process (it has no other way to run). "diff" is the
largest mean absolute difference, in grey levels, between our display image (before gamma
and resize) and dcmj2pnm's PNG with the same window.
"""

from __future__ import annotations

import sys

# bench/queue.py shadows the standard library's `queue` (which multiprocessing needs):
# drop this script's folder from the import path before anything imports it.
sys.path.pop(0)

import argparse  # noqa: E402
import io  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from pydicom import dcmread  # noqa: E402
from pydicom.pixels import apply_modality_lut, apply_voi_lut  # noqa: E402

from xrayvision.dicom.convert import ConvertOptions, chosen_window, convert_bytes, to_display  # noqa: E402

FULL = ConvertOptions(max_side=0)
MODEL = ConvertOptions(max_side=1024)


def plain_pipeline(data: bytes) -> bytes:
    ds = dcmread(io.BytesIO(data))
    arr = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    img = ((arr - lo) / max(hi - lo, 1.0) * 255.0).astype(np.uint8)
    if str(ds.PhotometricInterpretation) == "MONOCHROME1":
        img = 255 - img
    return cv2.imencode(".png", img)[1].tobytes()


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return (time.perf_counter() - start) * 1000


def dcmtk(path: Path, data: bytes, out: Path) -> tuple[float | None, float | None]:
    """dcmj2pnm's wall time and the difference to our display image (None if it cannot)."""
    ds = dcmread(io.BytesIO(data))
    window = chosen_window(ds)
    cmd = ["dcmj2pnm", "--write-png", *(["+Ww", str(window.center), str(window.width)]
                                        if window else ["+Wi", "1"]), str(path), str(out)]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True)
    elapsed = (time.perf_counter() - start) * 1000
    if done.returncode != 0:
        return None, None
    theirs = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    ours = to_display(ds)
    return elapsed, float(np.abs(ours.astype(int) - theirs.astype(int)).mean())


def convert_model(data: bytes) -> int:
    return len(convert_bytes(data, MODEL).png)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--limit", type=int, default=0)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    sets = [s for s in ("raw", "jpegll", "j2k") if (args.dataset / s).is_dir()]
    print(f"{'set':<7}{'n':>4}{'ours full':>11}{'ours model':>12}{'plain':>9}{'dcmj2pnm':>10}"
          f"{'plain/ours':>12}{'dcmtk/ours':>12}{'diff':>7}   (ms per image, mean)")
    files_by_set = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.png"
        for name in sets:
            files = sorted((args.dataset / name).glob("*.dcm"))
            if args.limit:
                files = files[: args.limit]
            files_by_set[name] = files
            full, model, plain, dcm, diffs = [], [], [], [], []
            for path in files:
                data = path.read_bytes()
                full.append(timed(convert_bytes, data, FULL))
                model.append(timed(convert_bytes, data, MODEL))
                plain.append(timed(plain_pipeline, data))
                elapsed, diff = dcmtk(path, data, out)
                if elapsed is not None:
                    dcm.append(elapsed)
                    diffs.append(diff)
            m = statistics.mean
            dcm_text = f"{m(dcm):>10.0f}" if dcm else f"{'n/a':>10}"
            ratio = f"{m(dcm) / m(full):>12.1f}" if dcm else f"{'n/a':>12}"
            diff_text = f"{max(diffs):>7.2f}" if diffs else f"{'n/a':>7}"
            print(f"{name:<7}{len(files):>4}{m(full):>11.0f}{m(model):>12.0f}{m(plain):>9.0f}"
                  f"{dcm_text}{m(plain) / m(full):>12.1f}{ratio}{diff_text}", flush=True)
    workers = os.cpu_count() or 1
    print(f"\nprocess pool, {workers} workers, model size:")
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(convert_model, [files_by_set[sets[0]][0].read_bytes()] * workers))
        for name in sets:
            blobs = [p.read_bytes() for p in files_by_set[name]]
            start = time.perf_counter()
            list(pool.map(convert_model, blobs))
            elapsed = time.perf_counter() - start
            print(f"{name:<7}{len(blobs) / elapsed:>8.1f} images/s", flush=True)


if __name__ == "__main__":
    main()
