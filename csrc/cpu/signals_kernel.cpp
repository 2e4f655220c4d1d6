// signals on the CPU: one pass per row (max, then exp-sums), rows split across threads.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#include "../checks.h"

namespace memunlearn {
namespace {

template <typename T>
void signals_rows(const T* z, const int64_t* labels, T* out, int64_t begin, int64_t end, int64_t classes) {
  for (int64_t i = begin; i < end; ++i) {
    const T* row = z + i * classes;
    T peak = row[0];
    int64_t best = 0;
    for (int64_t j = 1; j < classes; ++j) {
      if (row[j] > peak) {  // strict: the first maximal logit wins, as argmax
        peak = row[j];
        best = j;
      }
    }
    T sum = 0, weighted = 0;
#pragma omp simd reduction(+ : sum, weighted)
    for (int64_t j = 0; j < classes; ++j) {
      const T d = row[j] - peak;
      const T e = std::exp(d);
      sum += e;
      weighted += e * d;
    }
    const T log_sum = std::log(sum);
    const int64_t y = labels[i];
    const T log_p_true = row[y] - peak - log_sum;
    T* o = out + i * 5;
    o[0] = std::exp(log_p_true);
    o[1] = T(1) / sum;
    o[2] = log_sum - weighted / sum;
    o[3] = -log_p_true;
    o[4] = best == y ? T(1) : T(0);
  }
}

at::Tensor signals_cpu(const at::Tensor& logits, const at::Tensor& labels) {
  check_logits(logits, "logits");
  check_labels(logits, labels);
  const auto z = logits.contiguous();
  const auto y = labels.contiguous();
  const int64_t n = z.size(0), classes = z.size(1);
  auto out = at::empty({n, 5}, z.options());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "memunlearn::signals", [&] {
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    const int64_t* yp = y.const_data_ptr<int64_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
      signals_rows<scalar_t>(zp, yp, op, begin, end, classes);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(memunlearn, CPU, m) { m.impl("signals", &signals_cpu); }

}  // namespace memunlearn
