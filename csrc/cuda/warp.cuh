// Warp-level reductions shared by the row-per-warp CUDA kernels.
#pragma once
#include <cuda_runtime.h>

namespace memunlearn {

constexpr int kWarp = 32;

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v = max(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// the maximum and the FIRST index holding it (argmax semantics), across the warp
template <typename T>
__device__ __forceinline__ void warp_argmax(T& v, long long& idx) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    const T other = __shfl_xor_sync(0xffffffffu, v, offset);
    const long long other_idx = __shfl_xor_sync(0xffffffffu, idx, offset);
    if (other > v || (other == v && other_idx < idx)) {
      v = other;
      idx = other_idx;
    }
  }
}

}  // namespace memunlearn
