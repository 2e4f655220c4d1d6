// learning_events on CUDA. correct[E, N] is row-major: the N columns of one presentation are contiguous bytes, so a
// thread owns 4 * W consecutive columns and streams them down the E rows, one W-word vector load per row (W = 4: one
// 16-byte load, a warp reading 512 contiguous bytes of a row; W = 1: one 4-byte load, for N too small to give every
// SM a block of 16-column threads). A row whose start is not aligned to the vector (N not a multiple of it) is read
// as the two aligned vectors around it and funnel-shifted into place: the shift is the same for every thread of a
// row, so the branch never diverges. The last N mod 4W columns go byte by byte to one thread.
//
// The bytes are 0/1, so the counts run four columns to a 32-bit word (SIMD within a register), exact for up to 255
// rows, then are added into 32-bit counters per column:
//   forgets    += before & ~now                      (1 -> 0 transitions)
//   ever       |= now;  first += ever ^ 1            (rows before the first correct one: first learned, E if never)
//   run         = (run + 1) & (now ? 0xff : 0)       (the trailing run of correct rows: needed = E - run)
// and forgetting events = ever ? forgets : E (never learned: every presentation counts), as the CPU kernel.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <tuple>

#include "../checks.h"

namespace memunlearn {
namespace {

constexpr int kThreads = 256;
constexpr uint32_t kOnes = 0x01010101u;  // 1 in every byte
constexpr int kBlockRows = 255;          // rows a byte counter can count

// the 4 * W bytes at `p` as W little-endian words; `p` need not be aligned, but the 4W-aligned vectors holding its
// first and last byte must be readable (they are: each holds a byte of the tensor)
template <int W>
__device__ __forceinline__ void load_columns(const uint8_t* p, uint32_t (&now)[W]) {
  constexpr uintptr_t kAlign = 4 * W;
  const uintptr_t address = reinterpret_cast<uintptr_t>(p);
  const int shift = static_cast<int>(address & (kAlign - 1));
  const uint8_t* aligned = p - shift;
  uint32_t w[2 * W];
  if constexpr (W == 4) {
    const uint4 a = __ldg(reinterpret_cast<const uint4*>(aligned));
    w[0] = a.x, w[1] = a.y, w[2] = a.z, w[3] = a.w;
  } else {
    static_assert(W == 1, "W is 1 or 4");
    w[0] = __ldg(reinterpret_cast<const unsigned int*>(aligned));
  }
  if (shift == 0) {  // N a multiple of the vector: every row
#pragma unroll
    for (int k = 0; k < W; ++k) now[k] = w[k];
    return;
  }
  if constexpr (W == 4) {
    const uint4 b = __ldg(reinterpret_cast<const uint4*>(aligned + kAlign));
    w[4] = b.x, w[5] = b.y, w[6] = b.z, w[7] = b.w;
  } else {
    w[1] = __ldg(reinterpret_cast<const unsigned int*>(aligned + kAlign));
  }
  const int words = shift >> 2, bits = (shift & 3) * 8;  // whole words to skip, then bits
#pragma unroll
  for (int k = 0; k < W; ++k) {
    uint32_t lo = w[k], hi = w[k + 1];
    if constexpr (W == 4) {  // selects on constant indices keep w in registers
      lo = words == 0 ? w[k] : words == 1 ? w[k + 1] : words == 2 ? w[k + 2] : w[k + 3];
      hi = words == 0 ? w[k + 1] : words == 1 ? w[k + 2] : words == 2 ? w[k + 3] : w[k + 4];
    }
    now[k] = __funnelshift_r(lo, hi, bits);
  }
}

// columns [j, j + 4W) of correct[epochs, n]
template <int W>
__device__ void full_chunk(const uint8_t* __restrict__ correct, int64_t epochs, int64_t n, int64_t j,
                           int64_t* __restrict__ forgetting, int64_t* __restrict__ first,
                           int64_t* __restrict__ needed) {
  constexpr int kCols = 4 * W;
  uint32_t before[W], ever[W];
  int32_t forgets_total[kCols], first_total[kCols], run_total[kCols];
#pragma unroll
  for (int k = 0; k < W; ++k) before[k] = ever[k] = 0;  // nothing to forget at row 0
#pragma unroll
  for (int k = 0; k < kCols; ++k) forgets_total[k] = first_total[k] = run_total[k] = 0;
  for (int64_t e0 = 0; e0 < epochs; e0 += kBlockRows) {
    const int rows = static_cast<int>(epochs - e0 < kBlockRows ? epochs - e0 : kBlockRows);
    uint32_t forgets[W], firsts[W], run[W];
#pragma unroll
    for (int k = 0; k < W; ++k) forgets[k] = firsts[k] = run[k] = 0;
    const uint8_t* column = correct + e0 * n + j;
#pragma unroll 4
    for (int i = 0; i < rows; ++i) {
      uint32_t now[W];
      load_columns<W>(column + i * n, now);
#pragma unroll
      for (int k = 0; k < W; ++k) {
        forgets[k] += before[k] & ~now[k];
        ever[k] |= now[k];
        firsts[k] += ever[k] ^ kOnes;
        run[k] = (run[k] + kOnes) & (now[k] * 0xffu);
        before[k] = now[k];
      }
    }
#pragma unroll
    for (int k = 0; k < W; ++k) {
#pragma unroll
      for (int b = 0; b < 4; ++b) {
        const int c = 4 * k + b;
        forgets_total[c] += (forgets[k] >> (8 * b)) & 0xffu;
        first_total[c] += (firsts[k] >> (8 * b)) & 0xffu;
        const int r = (run[k] >> (8 * b)) & 0xffu;
        run_total[c] = r == rows ? run_total[c] + rows : r;  // a run through the whole block continues the last
      }
    }
  }
  // 16-byte stores: j is a multiple of 4, the outputs 256-byte aligned
#pragma unroll
  for (int c = 0; c < kCols; c += 2) {
    const bool ever0 = (ever[c / 4] >> (8 * (c % 4))) & 1u, ever1 = (ever[c / 4] >> (8 * (c % 4 + 1))) & 1u;
    *reinterpret_cast<longlong2*>(forgetting + j + c) =
        make_longlong2(ever0 ? forgets_total[c] : epochs, ever1 ? forgets_total[c + 1] : epochs);
    *reinterpret_cast<longlong2*>(first + j + c) = make_longlong2(first_total[c], first_total[c + 1]);
    *reinterpret_cast<longlong2*>(needed + j + c) = make_longlong2(epochs - run_total[c], epochs - run_total[c + 1]);
  }
}

// the last columns [j, n), fewer than one vector: byte loads
__device__ void tail_chunk(const uint8_t* __restrict__ correct, int64_t epochs, int64_t n, int64_t j,
                           int64_t* __restrict__ forgetting, int64_t* __restrict__ first,
                           int64_t* __restrict__ needed) {
  for (; j < n; ++j) {
    int64_t forgets = 0, first_ok = epochs, last_wrong = 0;
    bool before = false;
    for (int64_t e = 0; e < epochs; ++e) {
      const bool now = correct[e * n + j] != 0;
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

template <int W>
__global__ void __launch_bounds__(kThreads)
    learning_events_kernel(const uint8_t* __restrict__ correct, int64_t epochs, int64_t n,
                           int64_t* __restrict__ forgetting, int64_t* __restrict__ first,
                           int64_t* __restrict__ needed) {
  constexpr int kCols = 4 * W;
  const int64_t chunks = (n + kCols - 1) / kCols;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < chunks; t += stride) {
    const int64_t j = t * kCols;
    if (j + kCols <= n) {
      full_chunk<W>(correct, epochs, n, j, forgetting, first, needed);
    } else {
      tail_chunk(correct, epochs, n, j, forgetting, first, needed);
    }
  }
}

template <int W>
void launch(const uint8_t* correct, int64_t epochs, int64_t n, int64_t* forgetting, int64_t* first,
            int64_t* needed, cudaStream_t stream) {
  const int64_t chunks = (n + 4 * W - 1) / (4 * W);
  const int64_t blocks = std::min<int64_t>((chunks + kThreads - 1) / kThreads, std::numeric_limits<int32_t>::max());
  learning_events_kernel<W><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(correct, epochs, n, forgetting,
                                                                                   first, needed);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> learning_events_cuda(const at::Tensor& correct) {
  check_correct(correct);
  const c10::cuda::CUDAGuard device_guard(correct.device());
  const auto c = correct.contiguous();
  const int64_t epochs = c.size(0), n = c.size(1);
  TORCH_CHECK(epochs < std::numeric_limits<int32_t>::max(), "too many presentations: ", epochs);
  auto options = c.options().dtype(at::kLong);
  auto forgetting = at::empty({n}, options), first = at::empty({n}, options), needed = at::empty({n}, options);
  if (n == 0) return {forgetting, first, needed};
  const uint8_t* data = reinterpret_cast<const uint8_t*>(c.const_data_ptr<bool>());
  int64_t* f = forgetting.mutable_data_ptr<int64_t>();
  int64_t* fl = first.mutable_data_ptr<int64_t>();
  int64_t* pn = needed.mutable_data_ptr<int64_t>();
  auto stream = at::cuda::getCurrentCUDAStream();
  // 16 columns a thread once that still gives every SM a full block, else 4 (4x the threads for small N)
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  if ((n + 15) / 16 >= sms * kThreads) {
    launch<4>(data, epochs, n, f, fl, pn, stream);
  } else {
    launch<1>(data, epochs, n, f, fl, pn, stream);
  }
  return {forgetting, first, needed};
}

}  // namespace

TORCH_LIBRARY_IMPL(memunlearn, CUDA, m) { m.impl("learning_events", &learning_events_cuda); }

}  // namespace memunlearn
