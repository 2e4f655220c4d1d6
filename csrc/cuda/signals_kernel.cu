// signals on CUDA: one warp per row; lanes stride over the classes (coalesced), warp shuffles reduce.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "../checks.h"
#include "warp.cuh"

namespace memunlearn {
namespace {

constexpr int kRowsPerBlock = 8;

template <typename T>
__device__ void signals_row(const T* __restrict__ z, int64_t label, T* __restrict__ out, int64_t classes,
                            int lane) {
  T peak = -INFINITY;
  long long best = classes;
  for (int64_t j = lane; j < classes; j += kWarp) {
    if (z[j] > peak) {  // strict: each lane keeps its first maximal logit
      peak = z[j];
      best = j;
    }
  }
  warp_argmax(peak, best);  // the first maximal logit of the row, as argmax
  T sum = 0, weighted = 0;
  for (int64_t j = lane; j < classes; j += kWarp) {
    const T d = z[j] - peak;
    const T e = exp(d);
    sum += e;
    weighted += e * d;
  }
  sum = warp_sum(sum);
  weighted = warp_sum(weighted);
  if (lane == 0) {
    CUDA_KERNEL_ASSERT_MSG(label >= 0 && label < classes, "memunlearn::signals: a label is out of [0, C)");
    const T log_sum = log(sum);
    const T log_p_true = z[label] - peak - log_sum;
    out[0] = exp(log_p_true);
    out[1] = T(1) / sum;
    out[2] = log_sum - weighted / sum;
    out[3] = -log_p_true;
    out[4] = best == label ? T(1) : T(0);
  }
}

template <typename T>
__global__ void signals_kernel(const T* __restrict__ z, const int64_t* __restrict__ labels, T* __restrict__ out,
                               int64_t n, int64_t classes) {
  const int lane = threadIdx.x % kWarp;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kRowsPerBlock;
  // a warp is one row, so its lanes enter and leave the loop together, as the shuffles need
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp; row < n;
       row += stride) {
    signals_row(z + row * classes, labels[row], out + row * 5, classes, lane);
  }
}

at::Tensor signals_cuda(const at::Tensor& logits, const at::Tensor& labels) {
  check_logits(logits, "logits");
  check_labels(logits, labels);
  const c10::cuda::CUDAGuard device_guard(logits.device());
  const auto z = logits.contiguous();
  const auto y = labels.contiguous();
  const int64_t n = z.size(0), classes = z.size(1);
  auto out = at::empty({n, 5}, z.options());
  if (n == 0) return out;
  const int64_t blocks = std::min<int64_t>((n + kRowsPerBlock - 1) / kRowsPerBlock,
                                           std::numeric_limits<int32_t>::max());
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "memunlearn::signals_cuda", [&] {
    signals_kernel<scalar_t><<<static_cast<unsigned>(blocks), kRowsPerBlock * kWarp, 0, stream>>>(
        z.const_data_ptr<scalar_t>(), y.const_data_ptr<int64_t>(), out.mutable_data_ptr<scalar_t>(), n, classes);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(memunlearn, CUDA, m) { m.impl("signals", &signals_cuda); }

}  // namespace memunlearn
