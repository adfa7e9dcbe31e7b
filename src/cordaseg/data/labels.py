"""Class definitions in one place (docs/data-formats.md, "Labels"): the 19 Cityscapes training classes, their
palette, the 19 / 16 / 13-class evaluation protocols, and the ID lookup tables of each dataset.

Lookup tables are 256- or 65536-entry uint8 arrays, so mapping a whole label image is a single
``table[ids]`` indexing operation, never a per-pixel Python loop.
"""

from __future__ import annotations

import numpy as np

NUM_CLASSES = 19
IGNORE_INDEX = 255

CLASS_NAMES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)

# Cityscapes colours of the train IDs 0..18 (RGB), as used by the official scripts.
PALETTE = np.array(
    [
        (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
        (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
        (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
        (0, 80, 100), (0, 0, 230), (119, 11, 32),
    ],
    dtype=np.uint8,
)

# Evaluation protocols: the train IDs that are scored. SYNTHIA has no terrain, truck or train
# (16 classes); the 13-class protocol also drops wall, fence and pole.
PROTOCOLS: dict[int, tuple[int, ...]] = {
    19: tuple(range(19)),
    16: tuple(c for c in range(19) if c not in (9, 14, 16)),
    13: tuple(c for c in range(19) if c not in (3, 4, 5, 9, 14, 16)),
}

# Cityscapes label IDs of the train IDs 0..18; every other label ID is ignored.
CITYSCAPES_TRAIN_LABEL_IDS: tuple[int, ...] = (
    7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33,
)
# All label IDs the Cityscapes scheme defines (0..33; -1 is "license plate", not in PNGs).
CITYSCAPES_KNOWN_LABEL_IDS: tuple[int, ...] = tuple(range(34))

# SYNTHIA class ID -> train ID; every other SYNTHIA ID is ignored.
SYNTHIA_TO_TRAIN: dict[int, int] = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10, 10: 11, 17: 12,
    8: 13, 18: 14, 19: 15, 20: 16, 12: 17, 11: 18,
}
# SYNTHIA-RAND-CITYSCAPES class IDs 0..22 (0 = void).
SYNTHIA_KNOWN_IDS: tuple[int, ...] = tuple(range(23))


def _lookup_table(mapping: dict[int, int], size: int) -> np.ndarray:
    table = np.full(size, IGNORE_INDEX, dtype=np.uint8)
    for source_id, train_id in mapping.items():
        table[source_id] = train_id
    table.setflags(write=False)
    return table


CITYSCAPES_ID_TO_TRAIN = _lookup_table(
    {label_id: train_id for train_id, label_id in enumerate(CITYSCAPES_TRAIN_LABEL_IDS)}, 256
)
# 65536 entries so raw 16-bit SYNTHIA class IDs index it directly.
SYNTHIA_ID_TO_TRAIN = _lookup_table(SYNTHIA_TO_TRAIN, 65536)

# Train ID -> Cityscapes label ID (ignore -> 0, "unlabeled"), for labelIds PNGs.
TRAIN_TO_CITYSCAPES_ID = np.zeros(256, dtype=np.uint8)
TRAIN_TO_CITYSCAPES_ID[: NUM_CLASSES] = CITYSCAPES_TRAIN_LABEL_IDS
TRAIN_TO_CITYSCAPES_ID.setflags(write=False)


def colorize(train_ids: np.ndarray) -> np.ndarray:
    """(H, W) train IDs -> (H, W, 3) uint8 RGB in the Cityscapes palette; ignore is black."""
    table = np.zeros((256, 3), dtype=np.uint8)
    table[:NUM_CLASSES] = PALETTE
    return table[np.asarray(train_ids, dtype=np.uint8)]
