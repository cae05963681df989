"""The ``device`` data backend: decode JPEGs and build BYOL's views on the training device, as batched tensor ops.

On GPUs the CPU pipeline caps a ResNet-50 BYOL run (one GPU trains faster than a dozen cores augment). Here the
loader workers only read bytes and draw each view's parameters with the shared sampler
(:func:`training.augment.draw_view`, one parameter set per sample and view, never one per batch); the step
decodes the batch with ``torchvision.io.decode_jpeg(..., device=...)`` and applies the recipe with per-sample
parameters as batched tensor ops. On CPU the same code runs (and is what the tests exercise).
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from training.augment import AugmentConfig, ViewDraw

_ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def header_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` as displayed (EXIF orientation applied), read from the header only; None if unreadable."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if img.getexif().get(0x0112) in _ROTATED:
                width, height = height, width
            return width, height
    except Exception:
        return None


def decode_batch(blobs: list[bytes], device: torch.device) -> list[torch.Tensor | None]:
    """uint8 ``(3, H, W)`` tensors on ``device``: JPEGs through ``decode_jpeg`` (batched, on the GPU there), other
    formats through PIL on the CPU; an undecodable image gives None."""
    from torchvision.io import ImageReadMode, decode_jpeg

    out: list[torch.Tensor | None] = [None] * len(blobs)
    jpegs = [i for i, b in enumerate(blobs) if b[:2] == b"\xff\xd8"]
    if jpegs:
        data = [torch.frombuffer(bytearray(blobs[i]), dtype=torch.uint8) for i in jpegs]
        try:
            decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)
            for i, tensor in zip(jpegs, decoded):
                out[i] = tensor
        except RuntimeError:  # one corrupt file fails the batched call: decode one by one to find it
            for i, tensor in zip(jpegs, data):
                try:
                    out[i] = decode_jpeg(tensor, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)
                except RuntimeError:
                    out[i] = None
    others = set(range(len(blobs))) - set(jpegs)
    for i, blob in enumerate(blobs):
        if i in others:
            try:
                from hub.preprocess import to_rgb

                with Image.open(io.BytesIO(blob)) as img:
                    img.load()
                    out[i] = torch.from_numpy(np.asarray(to_rgb(img)).copy()).permute(2, 0, 1).to(device)
            except Exception:
                out[i] = None
    return out


def _gray(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma of ``(B, 3, H, W)`` floats in [0, 1] -> ``(B, 1, H, W)``."""
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    v = maxc
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    safe = delta.clamp_min(1e-12)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return torch.stack((h, s, v), 1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = torch.stack((torch.stack((v, q, p, p, t, v), 1), torch.stack((t, v, v, q, p, p), 1),
                         torch.stack((p, p, t, v, v, q), 1)), 1)  # (B, 3, 6, H, W)
    return table.gather(2, i[:, None, None].expand(-1, 3, 1, -1, -1)).squeeze(2)


def _blur(x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Per-sample Gaussian blur (separable, reflect padding) of ``(B, 3, H, W)``; ``sigmas`` ``(B,)``."""
    radius = int(math.ceil(3 * float(sigmas.max())))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernels = torch.exp(-(offsets[None] ** 2) / (2 * sigmas[:, None] ** 2))
    kernels = kernels / kernels.sum(1, keepdim=True)  # (B, K)
    b, c, h, w = x.shape
    weight = kernels.repeat_interleave(c, 0)[:, None]  # (B*C, 1, K)
    y = F.pad(x.reshape(1, b * c, h, w), (radius, radius, 0, 0), mode="reflect")
    y = F.conv2d(y, weight[:, :, None, :], groups=b * c)
    y = F.pad(y, (0, 0, radius, radius), mode="reflect")
    y = F.conv2d(y, weight[:, :, :, None], groups=b * c)
    return y.reshape(b, c, h, w)


def apply_views(images: list[torch.Tensor], draws: list[ViewDraw], cfg: AugmentConfig) -> torch.Tensor:
    """Views of ``images`` (uint8 ``(3, H, W)``) under ``draws`` (one per image) -> float ``(B, 3, S, S)`` in [0, 1].

    Crop + resize per sample (bicubic, antialiased); then flip, colour jitter (each sample's own op order and
    factors), grayscale, blur (each sample's sigma) and solarize, batched with per-sample masks and factors."""
    size = cfg.size
    crops = []
    for img, d in zip(images, draws):
        left, top, w, h = d.box
        crop = img[:, top:top + h, left:left + w].float()[None]
        crops.append(F.interpolate(crop, size=(size, size), mode="bicubic", antialias=True, align_corners=False))
    x = torch.cat(crops).clamp_(0, 255).div_(255.0)
    device = x.device

    def mask(values) -> torch.Tensor:
        return torch.tensor(values, device=device, dtype=torch.bool)

    flip = mask([d.flip for d in draws])
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    jittered = [d.jitter for d in draws]
    factors = torch.tensor([j[1] if j else (1.0, 1.0, 1.0, 0.0) for j in jittered], device=device, dtype=x.dtype)
    for position in range(4):  # each sample applies its own permutation of the four ops
        ops = torch.tensor([j[0][position] if j else -1 for j in jittered], device=device)
        for op in range(4):
            sel = ops == op
            if not bool(sel.any()):
                continue
            xs, f = x[sel], factors[sel, op].view(-1, 1, 1, 1)
            if op == 0:  # brightness: blend with black
                y = xs * f
            elif op == 1:  # contrast: blend with the mean gray level
                y = f * xs + (1 - f) * _gray(xs).mean(dim=(1, 2, 3), keepdim=True)
            elif op == 2:  # saturation: blend with the grayscale image
                y = f * xs + (1 - f) * _gray(xs)
            else:  # hue: rotate the HSV hue
                hsv = _rgb_to_hsv(xs.clamp(0, 1))
                hsv[:, 0] = (hsv[:, 0] + f.view(-1, 1, 1)) % 1.0
                y = _hsv_to_rgb(hsv)
            x[sel] = y.clamp(0, 1)
    gray = mask([d.gray for d in draws])
    if bool(gray.any()):
        x = torch.where(gray[:, None, None, None], _gray(x).expand_as(x), x)
    blurred = [i for i, d in enumerate(draws) if d.blur_sigma is not None]
    if blurred:
        sigmas = torch.tensor([draws[i].blur_sigma for i in blurred], device=device, dtype=x.dtype)
        x[blurred] = _blur(x[blurred], sigmas)
    solar = mask([d.solarize for d in draws])
    if bool(solar.any()):
        threshold = cfg.solarize_threshold / 255.0
        x = torch.where(solar[:, None, None, None] & (x >= threshold), 1.0 - x, x)
    return x
