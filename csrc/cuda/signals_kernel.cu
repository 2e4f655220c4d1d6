// signals on CUDA: one warp per row; lanes stride over the classes, warp shuffles reduce.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include "../checks.h"
#include "warp.cuh"

namespace memunlearn {
namespace {

constexpr int kRowsPerBlock = 8;

template <typename T>
__global__ void signals_kernel(const T* __restrict__ z, const int64_t* __restrict__ labels, T* __restrict__ out,
                               int64_t n, int64_t classes) {
  const int lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  if (row >= n) return;  // whole warps leave together: a warp is one row
  const T* r = z + row * classes;
  T peak = -INFINITY;
  long long best = classes;
  for (int64_t j = lane; j < classes; j += kWarp) {
    if (r[j] > peak) {
      peak = r[j];
      best = j;
    }
  }
  warp_argmax(peak, best);
  T sum = 0, weighted = 0;
  for (int64_t j = lane; j < classes; j += kWarp) {
    const T d = r[j] - peak;
    const T e = exp(d);
    sum += e;
    weighted += e * d;
  }
  sum = warp_sum(sum);
  weighted = warp_sum(weighted);
  if (lane == 0) {
    const int64_t y = labels[row];
    const T log_sum = log(sum);
    const T log_p_true = r[y] - peak - log_sum;
    T* o = out + row * 5;
    o[0] = exp(log_p_true);
    o[1] = T(1) / sum;
    o[2] = log_sum - weighted / sum;
    o[3] = -log_p_true;
    o[4] = best == y ? T(1) : T(0);
  }
}

at::Tensor signals_cuda(const at::Tensor& logits, const at::Tensor& labels) {
  check_logits(logits, "logits");
  check_labels(logits, labels);
  const auto z = logits.contiguous();
  const auto y = labels.contiguous();
  const int64_t n = z.size(0), classes = z.size(1);
  auto out = at::empty({n, 5}, z.options());
  if (n == 0) return out;
  const dim3 block(kRowsPerBlock * kWarp);
  const dim3 grid(static_cast<unsigned>((n + kRowsPerBlock - 1) / kRowsPerBlock));
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "memunlearn::signals_cuda", [&] {
    signals_kernel<scalar_t><<<grid, block, 0, stream>>>(z.const_data_ptr<scalar_t>(), y.const_data_ptr<int64_t>(),
                                                         out.mutable_data_ptr<scalar_t>(), n, classes);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(memunlearn, CUDA, m) { m.impl("signals", &signals_cuda); }

}  // namespace memunlearn
