// symmetric_kl on CUDA. A row of C classes goes to a group of G = lanes_per_row(C) lanes (warp.cuh): one lane per
// class up to C = 32 (a warp holds 32 / G rows), a whole warp striding over the classes beyond. Lane 0 of each group
// writes its row's value: the groups of a warp hold consecutive rows, so a warp's writes are consecutive addresses.
// log p = max(z - max - log sum exp, log clamp) and p = exp(log p), so the clamp acts on both as in the reference.
// A row whose log-sum-exp is NaN (a NaN or +inf logit, or every logit -inf) scores NaN, as the reference's softmax
// does; the fast-math max would otherwise turn NaN log-probabilities into the clamp.
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

template <int G, typename T>
__device__ T symmetric_kl_row(const T* __restrict__ p, const T* __restrict__ q, int64_t classes, int lane,
                              T log_clamp) {
  T mp = -INFINITY, mq = -INFINITY;
  for (int64_t j = lane; j < classes; j += G) {
    mp = max(mp, p[j]);
    mq = max(mq, q[j]);
  }
  mp = group_max<G>(mp);
  mq = group_max<G>(mq);
  T sp = 0, sq = 0;
  for (int64_t j = lane; j < classes; j += G) {
    sp += exp(p[j] - mp);
    sq += exp(q[j] - mq);
  }
  const T lse_p = mp + log(group_sum<G>(sp)), lse_q = mq + log(group_sum<G>(sq));
  T total = 0;
  for (int64_t j = lane; j < classes; j += G) {
    const T log_p = max(p[j] - lse_p, log_clamp);
    const T log_q = max(q[j] - lse_q, log_clamp);
    total += (exp(log_p) - exp(log_q)) * (log_p - log_q);
  }
  total = group_sum<G>(total);
  return isnan(lse_p) || isnan(lse_q) ? std::numeric_limits<T>::quiet_NaN() : total;
}

template <typename T, int G>
__global__ void __launch_bounds__(kThreads)
    symmetric_kl_kernel(const T* __restrict__ zp, const T* __restrict__ zq, T* __restrict__ out, int64_t n,
                        int64_t classes, T log_clamp) {
  constexpr int kRows = kThreads / G;  // rows per block per step
  const int lane = threadIdx.x % G;
  const int slot = threadIdx.x / G;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kRows;
  // the loop bound is the same for the whole block, so every lane of a warp reaches every shuffle
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * kRows; base < n; base += stride) {
    const int64_t row = base + slot < n ? base + slot : n - 1;  // a group past the end redoes the last row
    const T total = symmetric_kl_row<G>(zp + row * classes, zq + row * classes, classes, lane, log_clamp);
    if (lane == 0 && base + slot < n) out[row] = T(0.5) * total;
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
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "memunlearn::symmetric_kl_cuda", [&] {
    dispatch_lanes_per_row(classes, [&](auto lanes) {
      constexpr int G = decltype(lanes)::value;
      constexpr int64_t rows = kThreads / G;
      const int64_t blocks = std::min<int64_t>((n + rows - 1) / rows, std::numeric_limits<int32_t>::max());
      symmetric_kl_kernel<scalar_t, G><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
          p.const_data_ptr<scalar_t>(), q.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), n, classes,
          static_cast<scalar_t>(std::log(kClamp)));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(memunlearn, CUDA, m) { m.impl("symmetric_kl", &symmetric_kl_cuda); }

}  // namespace memunlearn
