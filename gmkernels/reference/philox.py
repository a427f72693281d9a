"""Philox4x32-10 normals in pure PyTorch: the same stream as csrc/kernels/philox.h and Triton's
``tl.randn4x`` (counter = (offset lo, offset hi, 0, 0), key = (seed lo, seed hi)).

uint32 arithmetic is done in int64 tensors; a 32 x 32 -> 64-bit product is split into 16-bit
halves so that no intermediate exceeds 2^49.
"""
from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57


def _mulhilo32(constant: int, value: torch.Tensor):
    """(hi, lo) 32-bit halves of constant * value for value in [0, 2^32)."""
    low_product = value * (constant & 0xFFFF)
    middle = value * (constant >> 16) + (low_product >> 16)
    return middle >> 16, ((middle & 0xFFFF) << 16) | (low_product & 0xFFFF)


def philox4x32_10(seed: torch.Tensor, offset: torch.Tensor):
    """Four uint32 draws (as int64 tensors) per offset; seed is a 0-dim int64 tensor."""
    c0, c1 = offset & _MASK32, (offset >> 32) & _MASK32
    c2 = torch.zeros_like(offset)
    c3 = torch.zeros_like(offset)
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    for _ in range(10):
        hi_b, lo_b = _mulhilo32(_ROUND_B, c2)
        hi_a, lo_a = _mulhilo32(_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + _KEY_A) & _MASK32
        k1 = (k1 + _KEY_B) & _MASK32
    return c0, c1, c2, c3


def uint_to_uniform(bits: torch.Tensor) -> torch.Tensor:
    """float(i < 0 ? ~i : i) * 4.6566127342e-10f with i the bits read as int32."""
    magnitude = torch.where(bits >= 2**31, _MASK32 - bits, bits)
    scale = torch.tensor(4.6566127342e-10, dtype=torch.float32, device=bits.device)
    return magnitude.to(torch.float32) * scale


def randn4(seed: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """(*offset.shape, 4) float32 normals, Box-Muller on (u0, u1) and (u2, u3)."""
    u0, u1, u2, u3 = (uint_to_uniform(b) for b in philox4x32_10(seed, offset))
    two_pi = torch.tensor(6.2831855, dtype=torch.float32, device=offset.device)
    r01 = torch.sqrt(-2.0 * torch.log(torch.clamp(u0, min=1e-7)))
    r23 = torch.sqrt(-2.0 * torch.log(torch.clamp(u2, min=1e-7)))
    theta01, theta23 = two_pi * u1, two_pi * u3
    return torch.stack(
        (r01 * torch.cos(theta01), r01 * torch.sin(theta01),
         r23 * torch.cos(theta23), r23 * torch.sin(theta23)),
        dim=-1,
    )


def normal_rows(seed: torch.Tensor, num_rows: int, dim: int, device=None) -> torch.Tensor:
    """eps (num_rows, dim) float32: row s, coordinate k uses counter s * ceil(dim/4) + k // 4,
    lane k % 4."""
    groups = (dim + 3) // 4
    seed = seed.to(device=device or seed.device, dtype=torch.int64)
    offset = torch.arange(num_rows * groups, dtype=torch.int64, device=seed.device)
    eps = randn4(seed, offset).reshape(num_rows, groups * 4)
    return eps[:, :dim]
