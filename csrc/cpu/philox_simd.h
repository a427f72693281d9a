// The Philox normal stream of csrc/kernels/philox.h, computed for kLanes consecutive counters at
// once in SIMD registers (AVX-512: 16 lanes, AVX2: 8, SSE2 or other: 4).
//
// The integers and uniforms are bit-exact with philox.h. The Box-Muller log, sin and cos are
// Cephes' single-precision polynomials (logf, sinf/cosf: ~1 ulp) instead of libm, so the normals
// differ from the CUDA/Triton/reference ones by a few ulp (< 1e-6 absolute, as |eps| < 5.7).
// Every CPU kernel draws its normals through randn4_lanes (or randn2_lanes, its first two
// normals of each counter) and nothing else: the forward and the backward see bit-identical eps,
// whatever the thread count or tiling, because each lane's value is a pure function of its
// counter (FMA contraction is off, nothing is reassociated).
//
// GCC/Clang vector extensions do the arithmetic; the few operations they cannot express without
// scalarizing (sqrt without errno, 32x32->64 multiplies, the 4 x kLanes transpose) use the ISA's
// intrinsics where available.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#define GMK_SIMD_INLINE inline __attribute__((always_inline))

namespace gmk {
namespace simd {

#if defined(__AVX512F__)
constexpr int kLanes = 16;
#elif defined(__AVX2__)
constexpr int kLanes = 8;
#else
constexpr int kLanes = 4;
#endif
constexpr int kBytes = 4 * kLanes;

typedef uint32_t u32v __attribute__((vector_size(kBytes)));
typedef int32_t i32v __attribute__((vector_size(kBytes)));
typedef uint64_t u64v __attribute__((vector_size(kBytes)));
typedef float f32v __attribute__((vector_size(kBytes)));
typedef double f64v __attribute__((vector_size(kBytes)));

// The register type of a kernel's scalar_t: kLanes floats or kLanes / 2 doubles.
template <typename scalar_t>
struct Vec;
template <>
struct Vec<float> {
  typedef f32v type;
  static constexpr int width = kLanes;
};
template <>
struct Vec<double> {
  typedef f64v type;
  static constexpr int width = kLanes / 2;
};

template <typename V>
GMK_SIMD_INLINE V load(const void* from) {
  V value;
  std::memcpy(&value, from, sizeof(V));
  return value;
}

template <typename V>
GMK_SIMD_INLINE void store(void* to, V value) {
  std::memcpy(to, &value, sizeof(V));
}

GMK_SIMD_INLINE f32v select(i32v mask, f32v if_true, f32v if_false) {
  return (f32v)((mask & (i32v)if_true) | (~mask & (i32v)if_false));
}

GMK_SIMD_INLINE i32v lane_index() {
  i32v index;
  for (int lane = 0; lane < kLanes; ++lane) index[lane] = lane;
  return index;
}

// (x & 0xffffffff) * factor in each 64-bit lane: one vpmuludq (compilers emit a full 64-bit
// multiply for the plain expression).
GMK_SIMD_INLINE u64v mul_low_halves(u64v x, uint32_t factor) {
#if defined(__AVX512F__)
  // The maskz forms avoid GCC 12's false -Wmaybe-uninitialized on _mm512_undefined_*().
  return (u64v)_mm512_maskz_mul_epu32(0xFF, (__m512i)x, _mm512_set1_epi64(factor));
#elif defined(__AVX2__)
  return (u64v)_mm256_mul_epu32((__m256i)x, _mm256_set1_epi64x(factor));
#elif defined(__SSE2__)
  return (u64v)_mm_mul_epu32((__m128i)x, _mm_set1_epi64x(factor));
#else
  return (x & 0xffffffffull) * static_cast<uint64_t>(factor);
#endif
}

// High and low 32 bits of factor * value per 32-bit lane (even and odd lanes multiplied apart).
GMK_SIMD_INLINE void mulhilo(uint32_t factor, u32v value, u32v& hi, u32v& lo) {
  const u64v pairs = (u64v)value;
  const u64v even = mul_low_halves(pairs, factor);
  const u64v odd = mul_low_halves(pairs >> 32, factor);
  hi = (u32v)((even >> 32) | (odd & 0xffffffff00000000ull));
  lo = (u32v)((even & 0xffffffffull) | (odd << 32));  // cheaper than a 32-bit vpmulld
}

// Correctly rounded like sqrtf, but without the errno branch that stops vectorization.
GMK_SIMD_INLINE f32v sqrt(f32v x) {
#if defined(__AVX512F__)
  return (f32v)_mm512_maskz_sqrt_ps(0xFFFF, (__m512)x);
#elif defined(__AVX2__)
  return (f32v)_mm256_sqrt_ps((__m256)x);
#elif defined(__SSE2__)
  return (f32v)_mm_sqrt_ps((__m128)x);
#else
  for (int lane = 0; lane < kLanes; ++lane) x[lane] = __builtin_sqrtf(x[lane]);
  return x;
#endif
}

// a * b + c lane by lane with one rounding where the target has FMA, as gmk::multiply_add
// (multiply_add.h) on one float: the same bits as that scalar call on each lane. (The build
// turns implicit contraction off, so only this call fuses.) The register width follows kLanes.
GMK_SIMD_INLINE f32v multiply_add(f32v a, f32v b, f32v c) {
#if defined(__FMA__) && defined(__AVX512F__)
  return (f32v)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#elif defined(__FMA__) && defined(__AVX2__) && !defined(__AVX512F__)
  return (f32v)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#elif defined(__FMA__) && defined(__SSE2__) && !defined(__AVX2__) && !defined(__AVX512F__)
  return (f32v)_mm_fmadd_ps((__m128)a, (__m128)b, (__m128)c);
#elif defined(__FMA__)
  for (int lane = 0; lane < kLanes; ++lane) a[lane] = __builtin_fmaf(a[lane], b[lane], c[lane]);
  return a;
#else
  return a * b + c;
#endif
}

// Cephes logf for normal positive x (here x in [1e-7, 1]): x = m 2^e with m in [sqrt(1/2),
// sqrt(2)), log x = e log 2 + log1p-polynomial(m - 1); log 2 split in two for exactness.
GMK_SIMD_INLINE f32v log(f32v x) {
  const i32v bits = (i32v)x;
  i32v exponent = ((bits >> 23) & 0xff) - 126;
  f32v m = (f32v)((bits & 0x007fffff) | 0x3f000000);  // in [0.5, 1)
  const i32v below = m < 0.707106781186547524f;         // -1 in lanes where m < sqrt(1/2)
  exponent += below;
  m = (m + (f32v)(below & (i32v)m)) - 1.0f;
  const f32v m2 = m * m;
  f32v y = 7.0376836292e-2f * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * m2;
  const f32v e = __builtin_convertvector(exponent, f32v);
  y = y + e * -2.12194440e-4f;
  y = y - 0.5f * m2;
  return (m + y) + e * 0.693359375f;
}

// Cephes sinf/cosf for x in [0, 2 pi]: octant j = round-to-even-octant(x 4/pi), r = x - j pi/4
// with pi/4 split in three (each product exact for j <= 8), then the two minimax polynomials.
GMK_SIMD_INLINE void sincos(f32v x, f32v& sin_x, f32v& cos_x) {
  i32v octant = __builtin_convertvector(x * 1.27323954473516f, i32v);
  octant += octant & 1;
  const f32v y = __builtin_convertvector(octant, f32v);
  const f32v r = ((x - y * 0.78515625f) - y * 2.4187564849853515625e-4f) -
                 y * 3.77489497744594108e-8f;
  octant &= 7;
  const f32v r2 = r * r;
  const f32v sin_poly =
      ((-1.9515295891e-4f * r2 + 8.3321608736e-3f) * r2 - 1.6666654611e-1f) * r2 * r + r;
  const f32v cos_poly = ((2.443315711809948e-5f * r2 - 1.388731625493765e-3f) * r2 +
                         4.166664568298827e-2f) * r2 * r2 - 0.5f * r2 + 1.0f;
  const i32v swap = (octant == 2) | (octant == 6);
  const i32v sign_bit = i32v{} + static_cast<int32_t>(0x80000000u);
  const i32v sin_negative = octant > 3;
  const i32v cos_negative = (octant > 3) ^ ((octant & 3) > 1);
  sin_x = (f32v)((i32v)select(swap, cos_poly, sin_poly) ^ (sin_negative & sign_bit));
  cos_x = (f32v)((i32v)select(swap, sin_poly, cos_poly) ^ (cos_negative & sign_bit));
}

GMK_SIMD_INLINE f32v uint_to_uniform(u32v bits) {
  const i32v value = (i32v)bits;
  const i32v magnitude = (value & ~(value >> 31)) | (~value & (value >> 31));  // i < 0 ? ~i : i
  return __builtin_convertvector(magnitude, f32v) * 4.6566127342e-10f;
}

// out[4 l + j] = normal j of counter first + l (l < kLanes): the layout of an eps row.
GMK_SIMD_INLINE void interleave4(f32v n0, f32v n1, f32v n2, f32v n3, float* out) {
#if defined(__AVX512F__)
  const __m512i pair_lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i pair_hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30,
                                            15, 31);
  const __m512i quad_lo = _mm512_setr_epi32(0, 1, 16, 17, 2, 3, 18, 19, 4, 5, 20, 21, 6, 7, 22, 23);
  const __m512i quad_hi = _mm512_setr_epi32(8, 9, 24, 25, 10, 11, 26, 27, 12, 13, 28, 29, 14, 15,
                                            30, 31);
  const __m512 ab_lo = _mm512_permutex2var_ps((__m512)n0, pair_lo, (__m512)n1);
  const __m512 ab_hi = _mm512_permutex2var_ps((__m512)n0, pair_hi, (__m512)n1);
  const __m512 cd_lo = _mm512_permutex2var_ps((__m512)n2, pair_lo, (__m512)n3);
  const __m512 cd_hi = _mm512_permutex2var_ps((__m512)n2, pair_hi, (__m512)n3);
  _mm512_storeu_ps(out, _mm512_permutex2var_ps(ab_lo, quad_lo, cd_lo));
  _mm512_storeu_ps(out + 16, _mm512_permutex2var_ps(ab_lo, quad_hi, cd_lo));
  _mm512_storeu_ps(out + 32, _mm512_permutex2var_ps(ab_hi, quad_lo, cd_hi));
  _mm512_storeu_ps(out + 48, _mm512_permutex2var_ps(ab_hi, quad_hi, cd_hi));
#elif defined(__AVX2__)
  const __m256 t0 = _mm256_unpacklo_ps((__m256)n0, (__m256)n1);
  const __m256 t1 = _mm256_unpackhi_ps((__m256)n0, (__m256)n1);
  const __m256 t2 = _mm256_unpacklo_ps((__m256)n2, (__m256)n3);
  const __m256 t3 = _mm256_unpackhi_ps((__m256)n2, (__m256)n3);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  _mm256_storeu_ps(out, _mm256_permute2f128_ps(u0, u1, 0x20));
  _mm256_storeu_ps(out + 8, _mm256_permute2f128_ps(u2, u3, 0x20));
  _mm256_storeu_ps(out + 16, _mm256_permute2f128_ps(u0, u1, 0x31));
  _mm256_storeu_ps(out + 24, _mm256_permute2f128_ps(u2, u3, 0x31));
#elif defined(__SSE2__)
  __m128 r0 = (__m128)n0, r1 = (__m128)n1, r2 = (__m128)n2, r3 = (__m128)n3;
  _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
  _mm_storeu_ps(out, r0);
  _mm_storeu_ps(out + 4, r1);
  _mm_storeu_ps(out + 8, r2);
  _mm_storeu_ps(out + 12, r3);
#else
  for (int lane = 0; lane < kLanes; ++lane) {
    out[4 * lane] = n0[lane];
    out[4 * lane + 1] = n1[lane];
    out[4 * lane + 2] = n2[lane];
    out[4 * lane + 3] = n3[lane];
  }
#endif
}

// Philox4x32-10 of counters first .. first + kLanes - 1 (one per lane) into c0 .. c3.
GMK_SIMD_INLINE void philox_lanes(uint64_t seed, uint64_t first, u32v& c0, u32v& c1, u32v& c2,
                                  u32v& c3) {
  const uint32_t first_lo = static_cast<uint32_t>(first);
  const u32v c0_start = (u32v)lane_index() + first_lo;
  // A lane whose low word wrapped past 2^32 carries into the high word.
  c1 = (u32v{} + static_cast<uint32_t>(first >> 32)) - (u32v)(c0_start < first_lo);
  c0 = c0_start;
  c2 = u32v{};
  c3 = u32v{};
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    u32v hi_b, lo_b, hi_a, lo_a;
    mulhilo(0xCD9E8D57u, c2, hi_b, lo_b);
    mulhilo(0xD2511F53u, c0, hi_a, lo_a);
    c0 = hi_b ^ c1 ^ k0;
    c2 = hi_a ^ c3 ^ k1;
    c1 = lo_b;
    c3 = lo_a;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
}

// Box-Muller radius of a uniform word, the uniform clamped away from 0.
GMK_SIMD_INLINE f32v box_muller_radius(u32v word) {
  const f32v floor = f32v{} + 1.0e-7f;
  const f32v u = uint_to_uniform(word);
  return sqrt(-2.0f * log(select(u < floor, floor, u)));
}

// The 4 * kLanes normals of counters first .. first + kLanes - 1 (Triton's randn4x order) into
// out[0 .. 4 kLanes). Same Philox rounds and Box-Muller as gmk::randn4.
GMK_SIMD_INLINE void randn4_lanes(uint64_t seed, uint64_t first, float* out) {
  u32v c0, c1, c2, c3;
  philox_lanes(seed, first, c0, c1, c2, c3);
  const f32v r01 = box_muller_radius(c0), r23 = box_muller_radius(c2);
  f32v sin01, cos01, sin23, cos23;
  sincos(6.2831855f * uint_to_uniform(c1), sin01, cos01);
  sincos(6.2831855f * uint_to_uniform(c3), sin23, cos23);
  interleave4(r01 * cos01, r01 * sin01, r23 * cos23, r23 * sin23, out);
}

// randn4_lanes' first two normals of each counter, bit for bit (out[4 i], out[4 i + 1]; out[4 i
// + 2] and out[4 i + 3] are 0), without the second pair's log, sqrt and sincos: half the cost,
// for rows of at most two coordinates, which use only those.
GMK_SIMD_INLINE void randn2_lanes(uint64_t seed, uint64_t first, float* out) {
  u32v c0, c1, c2, c3;
  philox_lanes(seed, first, c0, c1, c2, c3);
  const f32v r01 = box_muller_radius(c0);
  f32v sin01, cos01;
  sincos(6.2831855f * uint_to_uniform(c1), sin01, cos01);
  interleave4(r01 * cos01, r01 * sin01, f32v{}, f32v{}, out);
}

}  // namespace simd
}  // namespace gmk
