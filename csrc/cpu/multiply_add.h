// multiply_add: a * b + c with one rounding where the target has FMA. The build turns implicit
// contraction off (-ffp-contract=off), so a kernel's dot products are exactly the chains of this
// call that it writes: the same operands in the same order give the same bits in every pass,
// which is what makes ties exact (nearest_neighbors) and results independent of the thread count.
#pragma once

#include <cmath>

namespace gmk {

template <typename T>
inline T multiply_add(T a, T b, T c) {
#ifdef __FMA__
  return std::fma(a, b, c);
#else
  return a * b + c;
#endif
}

}  // namespace gmk
