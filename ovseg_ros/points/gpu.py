"""The accelerator builder of the point block: torch on the engine's device, one download."""

from __future__ import annotations

import numpy as np
import torch


def _upload(array: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    if isinstance(array, torch.Tensor):
        return array.to(device, non_blocking=True)
    array = np.asarray(array)
    if array.dtype in (np.uint16, np.uint32):
        array = array.astype(np.int32)  # torch has few ops for these
    elif not array.flags.writeable:
        array = array.copy()  # torch refuses to wrap read-only memory
    return torch.from_numpy(array).to(device, non_blocking=True)


def torch_block(
    depth_values: np.ndarray,
    units_per_metre: float,
    rays: torch.Tensor,
    sources: dict[str, tuple[np.ndarray | torch.Tensor, torch.Tensor | None]],
    depth_min: float,
    depth_max: float,
    classes: frozenset[int] | None,
    organized: bool,
) -> tuple[np.ndarray, int]:
    """Same contract as :func:`ovseg_ros.points.cpu.numpy_block`, computed on ``rays.device``."""
    device = rays.device
    z = _upload(np.ascontiguousarray(depth_values), device).reshape(-1).to(torch.float32)
    if units_per_metre != 1.0:
        z = z / units_per_metre
    # One fused mask; NaN fails every comparison, inf fails depth_max, 0 fails z > 0.
    valid = (z >= depth_min) & (z <= depth_max) & (z > 0)
    flat = {}
    for name, (image, index) in sources.items():
        flat[name] = (_upload(image, device), index)  # index: on the device already
    if classes is not None:
        labels, index = flat["labels"]
        grid_labels = (labels if index is None else labels[index]).long()
        wanted = torch.tensor(sorted(classes), dtype=torch.long, device=device)
        valid &= torch.isin(grid_labels, wanted)

    if organized:
        keep = None
        z_out = torch.where(valid, z, float("nan"))
        x_out = rays[0].reshape(-1) * z_out
        y_out = rays[1].reshape(-1) * z_out
        num_valid = int(valid.sum())
    else:
        keep = valid.nonzero().squeeze(1)
        z_out = z[keep]
        x_out = rays[0].reshape(-1)[keep] * z_out
        y_out = rays[1].reshape(-1)[keep] * z_out
        num_valid = int(keep.numel())

    def sampled(name: str) -> torch.Tensor:
        image, index = flat[name]
        if keep is not None:
            index = keep if index is None else index[keep]
        return image if index is None else image[index]

    color = sampled("rgb").to(torch.int32)
    rgb_bits = (color[:, 0] << 16) | (color[:, 1] << 8) | color[:, 2]
    label_bits = sampled("labels").to(torch.int32)  # the UINT32 field's bits (ids < 65536)
    conf = sampled("confidence").to(torch.float32)
    words = [x_out, y_out, z_out, rgb_bits, label_bits, conf]
    block = torch.stack([w.view(torch.int32) for w in words], dim=1)
    return block.cpu().numpy(), num_valid
