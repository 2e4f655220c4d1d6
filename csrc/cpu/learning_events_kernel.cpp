// learning_events on the CPU. Rows of [E, N] are contiguous, so threads take chunks of columns and stream every row
// of their chunk. Per-column state (forgetting events, first correct row, last wrong row + 1) is as narrow as the
// number of presentations allows (uint8 up to 255, uint16 up to 65535), so one 64-byte vector covers 64 or 32
// columns. The state of one vector stays in registers while kRows consecutive rows go through it, with the rows
// prefetched ahead: that halves the time of a row-at-a-time loop, whose state loads and stores dominate.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

#include "../checks.h"

namespace memunlearn {
namespace {

constexpr int64_t kVectorBytes = 64;
constexpr int64_t kMaxChunk = 16384;  // columns per task: 3 state arrays of this many entries stay in L2
constexpr int64_t kRows = 8;          // rows per pass over a chunk
constexpr int64_t kPrefetch = 512;    // bytes ahead in each row

template <typename S>
struct Lanes {
  static constexpr int64_t count = kVectorBytes / static_cast<int64_t>(sizeof(S));
  typedef S State __attribute__((vector_size(kVectorBytes)));
  typedef uint8_t Bits __attribute__((vector_size(count)));  // the 0/1 bytes of `count` columns
};

template <typename S>
inline typename Lanes<S>::State load_correct(const uint8_t* p) {
  typename Lanes<S>::Bits bits;
  std::memcpy(&bits, p, sizeof bits);
  if constexpr (sizeof(S) == 1) {
    return bits;
  } else {
    return __builtin_convertvector(bits, typename Lanes<S>::State);
  }
}

// columns [lo, lo + width) of correct[E, n]; `state` holds 3 x width entries
template <typename S>
void events_chunk(const uint8_t* correct, int64_t epochs, int64_t n, int64_t lo, int64_t width, S* state,
                  int64_t* forgetting, int64_t* first, int64_t* needed) {
  using State = typename Lanes<S>::State;
  constexpr int64_t lanes = Lanes<S>::count;
  const int64_t vectors = width / lanes, covered = vectors * lanes;
  S* forgets = state;
  S* first_ok = state + width;
  S* last_wrong = state + 2 * width;
  std::fill(forgets, forgets + covered, S(0));
  std::fill(first_ok, first_ok + covered, static_cast<S>(epochs));
  std::fill(last_wrong, last_wrong + covered, S(0));
  const State never = State{} + static_cast<S>(epochs);
  for (int64_t e0 = 0; e0 < epochs; e0 += kRows) {
    const int64_t e1 = std::min(epochs, e0 + kRows);
    for (int64_t v = 0; v < covered; v += lanes) {
      const uint8_t* column = correct + lo + v;
      State forgot, learned, wrong;
      std::memcpy(&forgot, forgets + v, sizeof forgot);
      std::memcpy(&learned, first_ok + v, sizeof learned);
      std::memcpy(&wrong, last_wrong + v, sizeof wrong);
      State before = e0 == 0 ? State{} : load_correct<S>(column + (e0 - 1) * n);  // nothing to forget at row 0
      for (int64_t e = e0; e < e1; ++e) {
        __builtin_prefetch(column + e * n + kPrefetch);
        const State now = load_correct<S>(column + e * n);
        forgot += before & (now ^ 1);                                  // 1 -> 0
        const State candidate = now != 0 ? State{} + static_cast<S>(e) : never;
        learned = candidate < learned ? candidate : learned;           // first correct row
        wrong = now != 0 ? wrong : State{} + static_cast<S>(e + 1);    // last wrong row + 1
        before = now;
      }
      std::memcpy(forgets + v, &forgot, sizeof forgot);
      std::memcpy(first_ok + v, &learned, sizeof learned);
      std::memcpy(last_wrong + v, &wrong, sizeof wrong);
    }
  }
  for (int64_t j = 0; j < covered; ++j) {
    forgetting[lo + j] = first_ok[j] == static_cast<S>(epochs) ? epochs : forgets[j];  // never learned: all of E
    first[lo + j] = first_ok[j];
    needed[lo + j] = last_wrong[j];
  }
  for (int64_t j = lo + covered; j < lo + width; ++j) {  // the last few columns, one at a time
    int64_t forgot = 0, learned = epochs, wrong = 0;
    bool before = false;
    for (int64_t e = 0; e < epochs; ++e) {
      const bool now = correct[e * n + j] != 0;
      forgot += before && !now;
      learned = now && learned == epochs ? e : learned;
      wrong = now ? wrong : e + 1;
      before = now;
    }
    forgetting[j] = learned == epochs ? epochs : forgot;
    first[j] = learned;
    needed[j] = wrong;
  }
}

template <typename S>
void learning_events_impl(const uint8_t* correct, int64_t epochs, int64_t n, int64_t* forgetting, int64_t* first,
                          int64_t* needed) {
  // enough chunks for every thread, whole vectors wide, at most kMaxChunk
  const int64_t threads = at::get_num_threads();
  const int64_t per_thread = (n + threads - 1) / threads;
  const int64_t chunk = std::clamp<int64_t>((per_thread + kVectorBytes - 1) / kVectorBytes * kVectorBytes,
                                            kVectorBytes, kMaxChunk);
  const int64_t chunks = (n + chunk - 1) / chunk;
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<S> state(3 * chunk);
    for (int64_t c = begin; c < end; ++c) {
      const int64_t lo = c * chunk;
      events_chunk<S>(correct, epochs, n, lo, std::min(chunk, n - lo), state.data(), forgetting, first, needed);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> learning_events_cpu(const at::Tensor& correct) {
  check_correct(correct);
  const auto c = correct.contiguous();
  const int64_t epochs = c.size(0), n = c.size(1);
  TORCH_CHECK(epochs < std::numeric_limits<int32_t>::max(), "too many presentations: ", epochs);
  auto options = c.options().dtype(at::kLong);
  auto forgetting = at::empty({n}, options), first = at::empty({n}, options), needed = at::empty({n}, options);
  const uint8_t* data = reinterpret_cast<const uint8_t*>(c.const_data_ptr<bool>());
  int64_t* f = forgetting.mutable_data_ptr<int64_t>();
  int64_t* fl = first.mutable_data_ptr<int64_t>();
  int64_t* pn = needed.mutable_data_ptr<int64_t>();
  if (epochs <= std::numeric_limits<uint8_t>::max()) {
    learning_events_impl<uint8_t>(data, epochs, n, f, fl, pn);
  } else if (epochs <= std::numeric_limits<uint16_t>::max()) {
    learning_events_impl<uint16_t>(data, epochs, n, f, fl, pn);
  } else {
    learning_events_impl<uint32_t>(data, epochs, n, f, fl, pn);
  }
  return {forgetting, first, needed};
}

}  // namespace

TORCH_LIBRARY_IMPL(memunlearn, CPU, m) { m.impl("learning_events", &learning_events_cpu); }

}  // namespace memunlearn
