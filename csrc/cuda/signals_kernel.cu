// signals on CUDA. A row of C classes goes to a group of G = lanes_per_row(C) lanes (warp.cuh): one lane per class up
// to C = 32 (a warp holds 32 / G rows), a whole warp striding over the classes beyond. A block of kThreads lanes
// takes kThreads / G consecutive rows at a time; the groups stage their 5 values in shared memory and the block
// writes the tile's 5 x rows values out contiguously, consecutive threads to consecutive addresses.
// Per row, as the CPU kernel: max m, first argmax, s = sum exp(z - m), w = sum exp(z - m)(z - m); then
// p_y = exp(z_y - m - log s), p_max = 1 / s, entropy = log s - w / s, loss = -log p_y, correct = (argmax == y).
// A row with a NaN or infinite logit gets NaN in all 5 columns: the rule proxies.signals(check_finite=False) applies
// on every backend.
// Labels are checked on the host before the launch (one min/max reduction and one device-to-host read, so one sync):
// a device assert would leave the CUDA context unusable for the rest of the process.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "../checks.h"
#include "warp.cuh"

namespace memunlearn {
namespace {

constexpr int kThreads = 256;
constexpr int kColumns = 5;

template <typename T, int G>
__global__ void __launch_bounds__(kThreads)
    signals_kernel(const T* __restrict__ z, const int64_t* __restrict__ labels, T* __restrict__ out, int64_t n,
                   int64_t classes) {
  constexpr int kRows = kThreads / G;  // rows per block per step
  __shared__ T staged[kRows * kColumns];
  const int lane = threadIdx.x % G;  // the lane's class within its row
  const int slot = threadIdx.x / G;  // the group's row within the block's tile
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kRows;
  // the loop bound is the same for the whole block (shuffles and __syncthreads need every lane)
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * kRows; base < n; base += stride) {
    const int64_t row = base + slot < n ? base + slot : n - 1;  // a group past the end redoes the last row, then drops it
    const T* __restrict__ zr = z + row * classes;
    const int64_t label = labels[row];
    T peak = -INFINITY;
    long long best = classes;
    bool finite = true;
    for (int64_t j = lane; j < classes; j += G) {
      const T v = zr[j];
      finite = finite && isfinite(v);
      if (v > peak) {  // strict: each lane keeps its first maximal logit
        peak = v;
        best = j;
      }
    }
    group_argmax<G>(peak, best);  // the first maximal logit of the row, as argmax
    finite = group_all<G>(finite);
    T sum = 0, weighted = 0;
    for (int64_t j = lane; j < classes; j += G) {  // the row's second read comes from L1
      const T d = zr[j] - peak;
      const T e = exp(d);
      sum += e;
      weighted += e * d;
    }
    sum = group_sum<G>(sum);
    weighted = group_sum<G>(weighted);
    if (lane == 0) {
      T* o = staged + slot * kColumns;
      if (finite) {
        const T log_sum = log(sum);
        const T log_p_true = zr[label] - peak - log_sum;
        o[0] = exp(log_p_true);
        o[1] = T(1) / sum;
        o[2] = log_sum - weighted / sum;
        o[3] = -log_p_true;
        o[4] = best == label ? T(1) : T(0);
      } else {
        const T nan = std::numeric_limits<T>::quiet_NaN();
#pragma unroll
        for (int k = 0; k < kColumns; ++k) o[k] = nan;
      }
    }
    __syncthreads();
    const int values = static_cast<int>(n - base < kRows ? n - base : kRows) * kColumns;
    T* tile = out + base * kColumns;
    for (int k = threadIdx.x; k < values; k += kThreads) tile[k] = staged[k];
    __syncthreads();  // the next step overwrites `staged`
  }
}

// labels outside [0, C) raise here, on the host, like the CPU op, instead of tripping a device assert
void check_label_range(const at::Tensor& labels, int64_t classes) {
  if (labels.numel() == 0) return;
  const auto [low, high] = at::aminmax(labels);
  const auto bounds = at::stack({low, high}).cpu();  // one device-to-host read: the op's only sync
  const int64_t lo = bounds[0].item<int64_t>(), hi = bounds[1].item<int64_t>();
  TORCH_CHECK(lo >= 0 && hi < classes, "labels must lie in [0, ", classes, "), got ", lo < 0 ? lo : hi);
}

at::Tensor signals_cuda(const at::Tensor& logits, const at::Tensor& labels) {
  check_logits(logits, "logits");
  check_labels(logits, labels);
  const c10::cuda::CUDAGuard device_guard(logits.device());
  const auto z = logits.contiguous();
  const auto y = labels.contiguous();
  const int64_t n = z.size(0), classes = z.size(1);
  check_label_range(y, classes);
  auto out = at::empty({n, kColumns}, z.options());
  if (n == 0) return out;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "memunlearn::signals_cuda", [&] {
    dispatch_lanes_per_row(classes, [&](auto lanes) {
      constexpr int G = decltype(lanes)::value;
      constexpr int64_t rows = kThreads / G;
      const int64_t blocks = std::min<int64_t>((n + rows - 1) / rows, std::numeric_limits<int32_t>::max());
      signals_kernel<scalar_t, G><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
          z.const_data_ptr<scalar_t>(), y.const_data_ptr<int64_t>(), out.mutable_data_ptr<scalar_t>(), n, classes);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(memunlearn, CUDA, m) { m.impl("signals", &signals_cuda); }

}  // namespace memunlearn
