// Philox4x32-10 counter-based generator and the normal transform shared by every backend.
//
// This is exactly Triton's `tl.randint4x` / `tl.randn4x` stream, so the C++, CUDA and Triton
// kernels (and the pure-PyTorch reference in gmkernels/reference/philox.py) draw the same eps:
//   counter = (offset lo, offset hi, 0, 0), key = (seed lo, seed hi), 10 rounds;
//   uniform  = float(i < 0 ? ~i : i) * 4.6566127342e-10f   with i the draw read as int32;
//   normals  = Box-Muller on (u0, u1) and (u2, u3): r = sqrt(-2 log max(1e-7, u_a)),
//              (r cos(2 pi u_b), r sin(2 pi u_b)).
// Integers and uniforms are bit-exact across backends; normals may differ by a few ulp where the
// math libraries' logf/cosf/sinf differ (FMA contraction is off in every build). The CPU kernels
// compute the same stream kLanes counters at a time with Cephes polynomials for log/sin/cos
// (csrc/cpu/philox_simd.h); randn4 below is the scalar form the CUDA kernels use.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define GMK_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define GMK_HOST_DEVICE inline
#endif

namespace gmk {

struct Philox4 {
  uint32_t x, y, z, w;
};

GMK_HOST_DEVICE uint32_t mulhi32(uint32_t a, uint32_t b) {
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
}

GMK_HOST_DEVICE Philox4 philox4x32_10(uint64_t seed, uint64_t offset) {
  constexpr uint32_t kKeyA = 0x9E3779B9u, kKeyB = 0xBB67AE85u;
  constexpr uint32_t kRoundA = 0xD2511F53u, kRoundB = 0xCD9E8D57u;
  uint32_t c0 = static_cast<uint32_t>(offset), c1 = static_cast<uint32_t>(offset >> 32);
  uint32_t c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    const uint32_t prev_c0 = c0, prev_c2 = c2;
    c0 = mulhi32(kRoundB, prev_c2) ^ c1 ^ k0;
    c2 = mulhi32(kRoundA, prev_c0) ^ c3 ^ k1;
    c1 = kRoundB * prev_c2;
    c3 = kRoundA * prev_c0;
    k0 += kKeyA;
    k1 += kKeyB;
  }
  return {c0, c1, c2, c3};
}

GMK_HOST_DEVICE float uint_to_uniform(uint32_t bits) {
  const int32_t value = static_cast<int32_t>(bits);
  return static_cast<float>(value < 0 ? ~value : value) * 4.6566127342e-10f;
}

// Four standard normals for one Philox counter, in Triton's randn4x order.
GMK_HOST_DEVICE void randn4(uint64_t seed, uint64_t offset, float out[4]) {
  const Philox4 bits = philox4x32_10(seed, offset);
  const float u0 = fmaxf(1.0e-7f, uint_to_uniform(bits.x));
  const float u2 = fmaxf(1.0e-7f, uint_to_uniform(bits.z));
  const float theta01 = 6.2831855f * uint_to_uniform(bits.y);
  const float theta23 = 6.2831855f * uint_to_uniform(bits.w);
  const float r01 = sqrtf(-2.0f * logf(u0));
  const float r23 = sqrtf(-2.0f * logf(u2));
  out[0] = r01 * cosf(theta01);
  out[1] = r01 * sinf(theta01);
  out[2] = r23 * cosf(theta23);
  out[3] = r23 * sinf(theta23);
}

// eps[s, k] of a sample row of `dim` coordinates: row s owns counters s * groups_per_row + k / 4,
// lane k % 4, with groups_per_row = ceil(dim / 4). A row never shares a counter with another row,
// so any tiling over rows regenerates the same numbers.
GMK_HOST_DEVICE int64_t philox_groups_per_row(int64_t dim) { return (dim + 3) / 4; }

}  // namespace gmk
