// symmetric_kl on CUDA: one warp per row; log p = z - log sum exp, so each element costs two exps.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include "../checks.h"
#include "warp.cuh"

namespace memunlearn {
namespace {

constexpr int kRowsPerBlock = 8;

template <typename T>
__global__ void symmetric_kl_kernel(const T* __restrict__ zp, const T* __restrict__ zq, T* __restrict__ out,
                                    int64_t n, int64_t classes, T log_clamp) {
  const int lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  if (row >= n) return;
  const T* p = zp + row * classes;
  const T* q = zq + row * classes;
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
  const T lsp = mp + log(warp_sum(sp)), lsq = mq + log(warp_sum(sq));
  T total = 0;
  for (int64_t j = lane; j < classes; j += kWarp) {
    const T log_p = max(p[j] - lsp, log_clamp);
    const T log_q = max(q[j] - lsq, log_clamp);
    total += (exp(log_p) - exp(log_q)) * (log_p - log_q);
  }
  total = warp_sum(total);
  if (lane == 0) out[row] = T(0.5) * total;
}

at::Tensor symmetric_kl_cuda(const at::Tensor& logits_p, const at::Tensor& logits_q) {
  check_pair(logits_p, logits_q);
  const auto p = logits_p.contiguous();
  const auto q = logits_q.contiguous();
  const int64_t n = p.size(0), classes = p.size(1);
  auto out = at::empty({n}, p.options());
  if (n == 0) return out;
  const dim3 block(kRowsPerBlock * kWarp);
  const dim3 grid(static_cast<unsigned>((n + kRowsPerBlock - 1) / kRowsPerBlock));
  AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "memunlearn::symmetric_kl_cuda", [&] {
    symmetric_kl_kernel<scalar_t><<<grid, block, 0, at::cuda::getCurrentCUDAStream()>>>(
        p.const_data_ptr<scalar_t>(), q.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), n, classes,
        static_cast<scalar_t>(log(kClamp)));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(memunlearn, CUDA, m) { m.impl("symmetric_kl", &symmetric_kl_cuda); }

}  // namespace memunlearn
