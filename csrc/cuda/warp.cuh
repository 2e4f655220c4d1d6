// Reductions within groups of G lanes of a warp (G a power of two, 1..32), shared by the row-per-group kernels, and
// the choice of G for a row of C classes.
//
// A group of G consecutive lanes holds one row; a warp holds 32 / G rows. The butterfly (__shfl_xor_sync with offsets
// G/2 .. 1) never crosses a group, so each group reduces its own row. The mask is the whole warp: the kernels keep
// every lane of a warp in the loop until the warp is done (a group past the last row recomputes a valid row and drops
// the result), so all 32 lanes reach every shuffle, as __shfl_xor_sync with a full mask requires.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

namespace memunlearn {

constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;

template <int G, typename T>
__device__ __forceinline__ T group_sum(T v) {
  static_assert(G >= 1 && G <= kWarp && (G & (G - 1)) == 0, "G must be a power of two in [1, 32]");
#pragma unroll
  for (int offset = G / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

template <int G, typename T>
__device__ __forceinline__ T group_max(T v) {
#pragma unroll
  for (int offset = G / 2; offset > 0; offset /= 2) v = max(v, __shfl_xor_sync(kFullMask, v, offset));
  return v;
}

// true in every lane of the group when `v` is true in every lane of the group
template <int G>
__device__ __forceinline__ bool group_all(bool v) {
  int all = v;
#pragma unroll
  for (int offset = G / 2; offset > 0; offset /= 2) all &= __shfl_xor_sync(kFullMask, all, offset);
  return all != 0;
}

// the maximum and the FIRST index holding it (argmax semantics), across the group
template <int G, typename T>
__device__ __forceinline__ void group_argmax(T& v, long long& idx) {
#pragma unroll
  for (int offset = G / 2; offset > 0; offset /= 2) {
    const T other = __shfl_xor_sync(kFullMask, v, offset);
    const long long other_idx = __shfl_xor_sync(kFullMask, idx, offset);
    if (other > v || (other == v && other_idx < idx)) {
      v = other;
      idx = other_idx;
    }
  }
}

// lanes per row: the smallest power of two that covers C classes, so no lane loops for C <= 32 (C = 10: 16 lanes,
// two rows per warp, where a warp per row left 22 of 32 lanes idle); a whole warp striding over wider rows
inline int lanes_per_row(int64_t classes) {
  int g = 1;
  while (g < classes && g < kWarp) g *= 2;
  return g;
}

// calls f(std::integral_constant<int, G>{}) with G = lanes_per_row(classes) as a compile-time constant
template <typename F>
void dispatch_lanes_per_row(int64_t classes, F&& f) {
  switch (lanes_per_row(classes)) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 8: f(std::integral_constant<int, 8>{}); break;
    case 16: f(std::integral_constant<int, 16>{}); break;
    default: f(std::integral_constant<int, 32>{}); break;
  }
}

}  // namespace memunlearn
