#!/usr/bin/env python3
"""Draws the shipped known-answer probe set's images (probes/*.png): synthetic PA chest
radiographs, one normal and one with a massive right pleural effusion (the right
hemithorax opaque, a meniscus, the mediastinum pushed to the left). Deterministic (a
fixed seed): rerunning gives the same files.

  python scripts/make_probe_set.py probes/
"""

import sys
from pathlib import Path

import cv2
import numpy as np

SIDE = 896  # MedGemma's input size


def soft(mask: np.ndarray, blur: int = 21) -> np.ndarray:
    return cv2.GaussianBlur(mask.astype(np.float32), (blur, blur), 0)


def chest(effusion: bool, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = SIDE
    y, x = np.mgrid[0:n, 0:n].astype(np.float32) / n
    img = np.full((n, n), 0.08, np.float32)  # air around the patient
    body = ((x - 0.5) / 0.46) ** 2 + ((y - 0.58) / 0.62) ** 2 < 1
    img[body] = 0.55
    shift = 0.05 if effusion else 0.0  # mediastinum pushed away from the effusion
    lungs = np.zeros((n, n), np.float32)
    for cx in (0.31, 0.69):  # the patient's right lung is on the image's left
        dome = 0.80 if cx < 0.5 else 0.83
        lung = (((x - cx) / 0.17) ** 2 + ((y - 0.50) / 0.34) ** 2 < 1) & (y < dome)
        lungs[lung] = 1
    heart = ((x - 0.54 - shift) / 0.15) ** 2 + ((y - 0.66) / 0.13) ** 2 < 1
    mediastinum = (np.abs(x - 0.5 - shift) < 0.07) & (y > 0.18) & (y < 0.75)
    lungs[heart | mediastinum] = 0
    img = img - 0.38 * soft(lungs, 31)
    # ribs: bright arcs over the lungs, clavicles, the spine
    ribs = np.zeros((n, n), np.float32)
    for k in range(9):
        level = 0.24 + k * 0.062
        for side in (-1, 1):
            arc = level - 0.12 * ((x - 0.5) * side * 2.4 - 0.45) ** 2
            ribs[(np.abs(y - arc) < 0.009) & ((x - 0.5) * side > 0.06)
                 & ((x - 0.5) * side < 0.40)] = 1
    clav = (np.abs(y - (0.2 + 0.12 * np.abs(x - 0.5))) < 0.012) & (np.abs(x - 0.5) < 0.3)
    spine = np.abs(x - 0.5 - shift / 2) < 0.035
    img += 0.12 * soft(ribs, 5) * soft(body, 5) + 0.2 * soft(clav, 5)
    img += 0.15 * soft(spine & (y > 0.1), 9)
    if effusion:  # the right hemithorax opaque up to a meniscus rising laterally
        level = 0.30 + 0.10 * ((x - 0.14) / 0.2) ** 2
        fluid = (x < 0.48) & (y > level) & body
        img = np.maximum(img, soft(fluid, 25) * 0.62)
    img += 0.05 * cv2.GaussianBlur(rng.normal(0, 1, (n, n)).astype(np.float32), (0, 0), 6)
    img += rng.normal(0, 0.01, (n, n)).astype(np.float32)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, effusion in (("normal-chest-pa.png", False), ("effusion-chest-pa.png", True)):
        cv2.imwrite(str(out / name), chest(effusion), [cv2.IMWRITE_PNG_COMPRESSION, 9])


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "probes"))
