// symmetric_kl on the CPU: per row, log p = z - max - log sum exp, so the only transcendental per element is exp.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "../checks.h"

namespace memunlearn {
namespace {

template <typename T>
void symmetric_kl_rows(const T* zp, const T* zq, T* out, int64_t begin, int64_t end, int64_t classes) {
  const T log_clamp = static_cast<T>(std::log(kClamp));
  for (int64_t i = begin; i < end; ++i) {
    const T* p = zp + i * classes;
    const T* q = zq + i * classes;
    T mp = p[0], mq = q[0];
    for (int64_t j = 1; j < classes; ++j) {
      mp = std::max(mp, p[j]);
      mq = std::max(mq, q[j]);
    }
    T sp = 0, sq = 0;
#pragma omp simd reduction(+ : sp, sq)
    for (int64_t j = 0; j < classes; ++j) {
      sp += std::exp(p[j] - mp);
      sq += std::exp(q[j] - mq);
    }
    const T lsp = mp + std::log(sp), lsq = mq + std::log(sq);
    T total = 0;
#pragma omp simd reduction(+ : total)
    for (int64_t j = 0; j < classes; ++j) {
      const T log_p = std::max(p[j] - lsp, log_clamp);
      const T log_q = std::max(q[j] - lsq, log_clamp);
      total += (std::exp(log_p) - std::exp(log_q)) * (log_p - log_q);
    }
    out[i] = T(0.5) * total;
  }
}

at::Tensor symmetric_kl_cpu(const at::Tensor& logits_p, const at::Tensor& logits_q) {
  check_pair(logits_p, logits_q);
  const auto p = logits_p.contiguous();
  const auto q = logits_q.contiguous();
  const int64_t n = p.size(0), classes = p.size(1);
  auto out = at::empty({n}, p.options());
  AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "memunlearn::symmetric_kl", [&] {
    const scalar_t* pp = p.const_data_ptr<scalar_t>();
    const scalar_t* qp = q.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, 2048, [&](int64_t begin, int64_t end) {
      symmetric_kl_rows<scalar_t>(pp, qp, op, begin, end, classes);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(memunlearn, CPU, m) { m.impl("symmetric_kl", &symmetric_kl_cpu); }

}  // namespace memunlearn
