// symmetric_kl on the CPU: 0.5 sum_j (p_j - q_j)(log p_j - log q_j) with p = max(softmax(z_p), 1e-10), q likewise.
// Three passes over a row that stays in L1: the maxima; exp(z - max) and its sum, kept for the third pass; then
// p_j = max(e_j / s, clamp) and log p_j = max(z_j - max - log s, log clamp), so exp runs once per logit. Blocks of
// one vector's worth of rows go to the threads; narrow rows (fewer than two vectors of classes) are copied into
// [C, lanes] tiles so that the lanes run across rows, wider rows run one at a time with the lanes across classes.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../checks.h"
#include "simd.h"

namespace memunlearn {
namespace {

using simd::kLanes;
using simd::Mask;
using simd::Vec;

// one term of the sum for a vector of classes: (p - q)(log p - log q), both clamped
template <typename T>
inline Vec<T> kl_terms(Vec<T> zp, Vec<T> zq, Vec<T> ep, Vec<T> eq, Vec<T> inv_sp, Vec<T> inv_sq, Vec<T> lse_p,
                       Vec<T> lse_q) {
  const Vec<T> clamp = simd::broadcast(static_cast<T>(kClamp));
  const Vec<T> log_clamp = simd::broadcast(static_cast<T>(std::log(kClamp)));
  Vec<T> p = ep * inv_sp, q = eq * inv_sq;
  p = p > clamp ? p : clamp;
  q = q > clamp ? q : clamp;
  Vec<T> log_p = zp - lse_p, log_q = zq - lse_q;
  log_p = log_p > log_clamp ? log_p : log_clamp;
  log_q = log_q > log_clamp ? log_q : log_clamp;
  return (p - q) * (log_p - log_q);
}

// rows [0, rows) of a block; out gets one value per row
template <typename T>
void narrow_block(const T* zp, const T* zq, T* out, int64_t rows, int64_t classes, T* tiles) {
  constexpr int64_t lanes = kLanes<T>;
  T* tp = tiles;                 // [C, lanes] logits of p
  T* tq = tp + classes * lanes;  // ... of q
  T* ep = tq + classes * lanes;  // exp(z_p - max)
  T* eq = ep + classes * lanes;  // exp(z_q - max)
  for (int64_t i = 0; i < lanes; ++i) {
    for (int64_t j = 0; j < classes; ++j) {
      tp[j * lanes + i] = i < rows ? zp[i * classes + j] : T(0);  // padding lanes of the last block: zeros
      tq[j * lanes + i] = i < rows ? zq[i * classes + j] : T(0);
    }
  }
  Vec<T> mp = simd::load(tp), mq = simd::load(tq);
  for (int64_t j = 1; j < classes; ++j) {
    const Vec<T> a = simd::load(tp + j * lanes), b = simd::load(tq + j * lanes);
    mp = a > mp ? a : mp;
    mq = b > mq ? b : mq;
  }
  Vec<T> sp{}, sq{};
  for (int64_t j = 0; j < classes; ++j) {
    const Vec<T> a = simd::exp_nonpositive(simd::load(tp + j * lanes) - mp);
    const Vec<T> b = simd::exp_nonpositive(simd::load(tq + j * lanes) - mq);
    simd::store(ep + j * lanes, a);
    simd::store(eq + j * lanes, b);
    sp += a;
    sq += b;
  }
  alignas(64) T lse[2][lanes], inverse[2][lanes];
  alignas(64) T sums[2][lanes], peaks[2][lanes];
  simd::store(sums[0], sp);
  simd::store(sums[1], sq);
  simd::store(peaks[0], mp);
  simd::store(peaks[1], mq);
#pragma omp simd
  for (int64_t i = 0; i < lanes; ++i) {  // glibc's vector log under -ffast-math
    lse[0][i] = peaks[0][i] + std::log(sums[0][i]);
    lse[1][i] = peaks[1][i] + std::log(sums[1][i]);
    inverse[0][i] = T(1) / sums[0][i];
    inverse[1][i] = T(1) / sums[1][i];
  }
  const Vec<T> lse_p = simd::load(lse[0]), lse_q = simd::load(lse[1]);
  const Vec<T> inv_sp = simd::load(inverse[0]), inv_sq = simd::load(inverse[1]);
  Vec<T> total{};
  for (int64_t j = 0; j < classes; ++j) {
    total += kl_terms<T>(simd::load(tp + j * lanes), simd::load(tq + j * lanes), simd::load(ep + j * lanes),
                      simd::load(eq + j * lanes), inv_sp, inv_sq, lse_p, lse_q);
  }
  for (int64_t i = 0; i < rows; ++i) out[i] = T(0.5) * total[i];
}

// one row; `buffer` holds 2 x classes values
template <typename T>
T wide_row(const T* p, const T* q, int64_t classes, T* buffer) {
  constexpr int64_t lanes = kLanes<T>;
  const int64_t full = classes / lanes * lanes;  // classes covered by whole vectors
  const int64_t last = classes - lanes;          // the row's last vector starts here, overlapping the one before
  const Mask<T> fresh = simd::iota<T>() >= static_cast<simd::Lane<T>>(full - last);  // lanes not seen before
  T* ep = buffer;
  T* eq = buffer + classes;
  Vec<T> top_p = simd::load(p), top_q = simd::load(q);
  for (int64_t j = lanes; j < classes; j += lanes) {
    const int64_t at = std::min(j, last);
    const Vec<T> a = simd::load(p + at), b = simd::load(q + at);
    top_p = a > top_p ? a : top_p;
    top_q = b > top_q ? b : top_q;
  }
  const Vec<T> mp = simd::broadcast(simd::max(top_p)), mq = simd::broadcast(simd::max(top_q));
  Vec<T> sp{}, sq{};
  for (int64_t j = 0; j < classes; j += lanes) {
    const int64_t at = std::min(j, last);
    Vec<T> a = simd::exp_nonpositive(simd::load(p + at) - mp);
    Vec<T> b = simd::exp_nonpositive(simd::load(q + at) - mq);
    simd::store(ep + at, a);
    simd::store(eq + at, b);
    if (j != at) {  // the overlapping last vector: count only the new lanes
      a = fresh ? a : Vec<T>{};
      b = fresh ? b : Vec<T>{};
    }
    sp += a;
    sq += b;
  }
  const T sum_p = simd::sum(sp), sum_q = simd::sum(sq);
  const Vec<T> lse_p = mp + std::log(sum_p), lse_q = mq + std::log(sum_q);
  const Vec<T> inv_sp = simd::broadcast(T(1) / sum_p), inv_sq = simd::broadcast(T(1) / sum_q);
  Vec<T> total{};
  for (int64_t j = 0; j < classes; j += lanes) {
    const int64_t at = std::min(j, last);
    Vec<T> term = kl_terms<T>(simd::load(p + at), simd::load(q + at), simd::load(ep + at), simd::load(eq + at),
                           inv_sp, inv_sq, lse_p, lse_q);
    total += j != at ? (fresh ? term : Vec<T>{}) : term;
  }
  return T(0.5) * simd::sum(total);
}

template <typename T>
void symmetric_kl_blocks(const T* zp, const T* zq, T* out, int64_t n, int64_t classes, int64_t begin,
                         int64_t end) {
  constexpr int64_t lanes = kLanes<T>;
  const bool narrow = classes < 2 * lanes;  // as in signals_kernel.cpp
  std::vector<T> buffer(narrow ? 4 * classes * lanes : 2 * classes);
  for (int64_t block = begin; block < end; ++block) {
    const int64_t first = block * lanes, rows = std::min(lanes, n - first);
    if (narrow) {
      narrow_block(zp + first * classes, zq + first * classes, out + first, rows, classes, buffer.data());
    } else {
      for (int64_t i = first; i < first + rows; ++i) {
        out[i] = wide_row(zp + i * classes, zq + i * classes, classes, buffer.data());
      }
    }
  }
}

at::Tensor symmetric_kl_cpu(const at::Tensor& logits_p, const at::Tensor& logits_q) {
  check_pair(logits_p, logits_q);
  const auto p = logits_p.contiguous();
  const auto q = logits_q.contiguous();
  const int64_t n = p.size(0), classes = p.size(1);
  auto out = at::empty({n}, p.options());
  AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "memunlearn::symmetric_kl", [&] {
    constexpr int64_t lanes = kLanes<scalar_t>;
    const int64_t blocks = (n + lanes - 1) / lanes;
    const int64_t grain = std::max<int64_t>(1, 16384 / (lanes * classes));  // ~2 x 16k logits per task
    const scalar_t* pp = p.const_data_ptr<scalar_t>();
    const scalar_t* qp = q.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, blocks, grain, [&](int64_t begin, int64_t end) {
      symmetric_kl_blocks<scalar_t>(pp, qp, op, n, classes, begin, end);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(memunlearn, CPU, m) { m.impl("symmetric_kl", &symmetric_kl_cpu); }

}  // namespace memunlearn
