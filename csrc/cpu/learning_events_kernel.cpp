// learning_events on the CPU: rows of [E, N] are contiguous, so each thread takes a chunk of columns and streams
// every row of it once, keeping per-column state in small arrays. The state is as narrow as the number of
// presentations allows (uint8 up to 255, uint16 up to 65535), so one vector instruction covers 64 or 32 columns.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <tuple>
#include <vector>

#include "../checks.h"

namespace memunlearn {
namespace {

// columns per task: three state arrays of this many entries stay in L2 while 2 x E rows stream through
constexpr int64_t kChunk = 32768;

template <typename S>
void events_chunks(const uint8_t* data, int64_t epochs, int64_t n, int64_t chunk_begin, int64_t chunk_end,
                   int64_t* f_out, int64_t* first_out, int64_t* needed_out) {
  std::vector<S> forgets(kChunk), first_ok(kChunk), last_wrong(kChunk);
  const S total = static_cast<S>(epochs);
  for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
    const int64_t lo = chunk * kChunk, width = std::min(kChunk, n - lo);
    S* __restrict fg = forgets.data();
    S* __restrict fo = first_ok.data();
    S* __restrict lw = last_wrong.data();
    std::fill(fg, fg + width, S(0));
    std::fill(fo, fo + width, total);
    std::fill(lw, lw + width, S(0));
    for (int64_t e = 0; e < epochs; ++e) {
      const uint8_t* __restrict now = data + e * n + lo;
      const S step = static_cast<S>(e), next = static_cast<S>(e + 1);
      if (e > 0) {
        const uint8_t* __restrict before = now - n;
#pragma omp simd
        for (int64_t j = 0; j < width; ++j) fg[j] += static_cast<S>(before[j] & (now[j] ^ 1));
      }
#pragma omp simd
      for (int64_t j = 0; j < width; ++j) {
        const bool right = now[j] != 0;
        const S first_candidate = right ? step : total;  // first correct presentation
        const S last_candidate = right ? S(0) : next;    // last wrong presentation + 1
        fo[j] = fo[j] < first_candidate ? fo[j] : first_candidate;
        lw[j] = lw[j] > last_candidate ? lw[j] : last_candidate;
      }
    }
    for (int64_t j = 0; j < width; ++j) {
      f_out[lo + j] = fo[j] == total ? epochs : fg[j];  // never learned: every presentation counts
      first_out[lo + j] = fo[j];
      needed_out[lo + j] = lw[j];
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> learning_events_cpu(const at::Tensor& correct) {
  check_correct(correct);
  const auto c = correct.contiguous();
  const int64_t epochs = c.size(0), n = c.size(1);
  TORCH_CHECK(epochs <= std::numeric_limits<int32_t>::max(), "too many presentations: ", epochs);
  auto options = c.options().dtype(at::kLong);
  auto forgetting = at::empty({n}, options), first = at::empty({n}, options), needed = at::empty({n}, options);
  const uint8_t* data = reinterpret_cast<const uint8_t*>(c.const_data_ptr<bool>());
  int64_t* f_out = forgetting.mutable_data_ptr<int64_t>();
  int64_t* first_out = first.mutable_data_ptr<int64_t>();
  int64_t* needed_out = needed.mutable_data_ptr<int64_t>();
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    if (epochs <= std::numeric_limits<uint8_t>::max()) {
      events_chunks<uint8_t>(data, epochs, n, begin, end, f_out, first_out, needed_out);
    } else if (epochs <= std::numeric_limits<uint16_t>::max()) {
      events_chunks<uint16_t>(data, epochs, n, begin, end, f_out, first_out, needed_out);
    } else {
      events_chunks<int32_t>(data, epochs, n, begin, end, f_out, first_out, needed_out);
    }
  });
  return {forgetting, first, needed};
}

}  // namespace

TORCH_LIBRARY_IMPL(memunlearn, CPU, m) { m.impl("learning_events", &learning_events_cpu); }

}  // namespace memunlearn
