// symmetric_kl on CUDA: one warp per row; lanes stride over the classes (coalesced), warp shuffles reduce.
// log p = max(z - max - log sum exp, log clamp) and p = exp(log p), so the clamp acts on both as in the reference.
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

constexpr int kRowsPerBlock = 8;

template <typename T>
__device__ T symmetric_kl_row(const T* __restrict__ p, const T* __restrict__ q, int64_t classes, int lane,
                              T log_clamp) {
  T mp = -INFINITY, mq = -INFINITY;
  for (int64_t j = lane; j < classes; j += kWarp) {
    mp = max(mp, p[j]);
    mq = max(mq, q[j]);
  }
  mp = warp_max(mp);
  mq = warp_max(mq);
  T sp = 0, sq = 0;
  for (int64_t j = lane; j < classes; j += kWarp) {
    sp += exp(p[j] - mp);
    sq += exp(q[j] - mq);
  }
  const T lse_p = mp + log(warp_sum(sp)), lse_q = mq + log(warp_sum(sq));
  T total = 0;
  for (int64_t j = lane; j < classes; j += kWarp) {
    const T log_p = max(p[j] - lse_p, log_clamp);
    const T log_q = max(q[j] - lse_q, log_clamp);
    total += (exp(log_p) - exp(log_q)) * (log_p - log_q);
  }
  return warp_sum(total);
}

template <typename T>
__global__ void symmetric_kl_kernel(const T* __restrict__ zp, const T* __restrict__ zq, T* __restrict__ out,
                                    int64_t n, int64_t classes, T log_clamp) {
  const int lane = threadIdx.x % kWarp;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kRowsPerBlock;
  // a warp is one row, so its lanes enter and leave the loop together, as the shuffles need
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp; row < n;
       row += stride) {
    const T total = symmetric_kl_row(zp + row * classes, zq + row * classes, classes, lane, log_clamp);
    if (lane == 0) out[row] = T(0.5) * total;
  }
}

at::Tensor symmetric_kl_cuda(const at::Tensor& logits_p, const at::Tensor& logits_q) {
  check_pair(logits_p, logits_q);
  const c10::cuda::CUDAGuard device_guard(logits_p.device());
  const auto p = logits_p.contiguous();
  const auto q = logits_q.contiguous();
  const int64_t n = p.size(0), classes = p.size(1);
  auto out = at::empty({n}, p.options());
  if (n == 0) return out;
  const int64_t blocks = std::min<int64_t>((n + kRowsPerBlock - 1) / kRowsPerBlock,
                                           std::numeric_limits<int32_t>::max());
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "memunlearn::symmetric_kl_cuda", [&] {
    symmetric_kl_kernel<scalar_t><<<static_cast<unsigned>(blocks), kRowsPerBlock * kWarp, 0, stream>>>(
        p.const_data_ptr<scalar_t>(), q.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), n, classes,
        static_cast<scalar_t>(std::log(kClamp)));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(memunlearn, CUDA, m) { m.impl("symmetric_kl", &symmetric_kl_cuda); }

}  // namespace memunlearn
