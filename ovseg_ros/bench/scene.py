"""The one synthetic input of every benchmark: a deterministic frame with edges, and class
names for a vocabulary of any size."""

from __future__ import annotations

import numpy as np

# Common object names for realistic vocabularies (COCO's 80 things + indoor/outdoor stuff).
OBJECT_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush", "wall", "floor",
    "ceiling", "sky", "road", "sidewalk", "grass", "tree", "building", "door", "window",
    "shelf", "cabinet", "lamp", "curtain", "pillow", "box", "bag", "mirror", "rug", "stairs",
    "fence", "pole", "sign", "mountain", "water", "sand", "snow", "rock", "bridge", "desk",
    "monitor", "trash can", "bucket", "painting", "towel", "basket", "drawer", "counter",
    "helmet", "glove", "pallet",
)  # fmt: skip


def synthetic_vocabulary(count: int) -> list[str]:
    """``count`` distinct class names: the common object names first, then ``object i``."""
    names = list(OBJECT_NAMES[:count])
    names += [f"object {i}" for i in range(len(names), count)]
    return names


def synthetic_image(width: int, height: int, *, seed: int = 0, regions: int = 12) -> np.ndarray:
    """A deterministic ``uint8 [H, W, 3]`` RGB frame: smooth colour regions plus noise.

    Voronoi regions of flat colour with a gentle shading gradient give propagation real edges
    to respect; mild Gaussian noise keeps the pixel graph from being trivially uniform. The
    layout is defined in relative coordinates, so every size shows the same scene; another
    ``seed`` gives another scene (one per camera in the several-cameras benchmark).
    """
    rng = np.random.default_rng(seed)
    centres = rng.random((regions, 2)).astype(np.float32)  # (y, x) in [0, 1)
    colours = rng.integers(30, 226, size=(regions, 3)).astype(np.float32)
    ys = (np.arange(height, dtype=np.float32) + 0.5) / height
    xs = (np.arange(width, dtype=np.float32) + 0.5) / width
    dist = (ys[None, :, None] - centres[:, 0, None, None]) ** 2
    dist = dist + (xs[None, None, :] - centres[:, 1, None, None]) ** 2
    image = colours[dist.argmin(axis=0)]  # [H, W, 3]
    shade = 20.0 * np.sin(3.0 * np.pi * xs[None, :] + 0.7) * np.cos(2.0 * np.pi * ys[:, None])
    image += shade[..., None]
    image += rng.normal(0.0, 6.0, size=image.shape).astype(np.float32)
    return np.clip(image, 0, 255).round().astype(np.uint8)
