// learning_events on CUDA: one thread per example (column); a warp reads 32 neighbouring bytes of a row at once.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>

#include "../checks.h"

namespace memunlearn {
namespace {

constexpr int kThreads = 256;

__global__ void learning_events_kernel(const bool* __restrict__ correct, int64_t epochs, int64_t n,
                                       int64_t* __restrict__ forgetting, int64_t* __restrict__ first,
                                       int64_t* __restrict__ needed) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < n; j += stride) {
    int64_t forgets = 0, first_ok = epochs, last_wrong = 0;
    bool before = false;
    for (int64_t e = 0; e < epochs; ++e) {
      const bool now = correct[e * n + j];
      forgets += before && !now;                            // 1 -> 0
      first_ok = now && first_ok == epochs ? e : first_ok;  // first correct row
      last_wrong = now ? last_wrong : e + 1;                // last wrong row + 1
      before = now;
    }
    forgetting[j] = first_ok == epochs ? epochs : forgets;  // never learned: every presentation counts
    first[j] = first_ok;
    needed[j] = last_wrong;
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> learning_events_cuda(const at::Tensor& correct) {
  check_correct(correct);
  const c10::cuda::CUDAGuard device_guard(correct.device());
  const auto c = correct.contiguous();
  const int64_t epochs = c.size(0), n = c.size(1);
  auto options = c.options().dtype(at::kLong);
  auto forgetting = at::empty({n}, options), first = at::empty({n}, options), needed = at::empty({n}, options);
  if (n == 0) return {forgetting, first, needed};
  const int64_t blocks = std::min<int64_t>((n + kThreads - 1) / kThreads, std::numeric_limits<int32_t>::max());
  learning_events_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      c.const_data_ptr<bool>(), epochs, n, forgetting.mutable_data_ptr<int64_t>(), first.mutable_data_ptr<int64_t>(),
      needed.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {forgetting, first, needed};
}

}  // namespace

TORCH_LIBRARY_IMPL(memunlearn, CUDA, m) { m.impl("learning_events", &learning_events_cuda); }

}  // namespace memunlearn
