// Input checks shared by the CPU and CUDA kernels: direct torch.ops calls skip the Python validation.
#pragma once
#include <ATen/ATen.h>

namespace memunlearn {

inline void check_logits(const at::Tensor& logits, const char* name) {
  TORCH_CHECK(logits.dim() == 2, name, " must be [N, C], got ", logits.sizes());
  TORCH_CHECK(logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kDouble, name,
              " must be float32 or float64, got ", logits.scalar_type());
  TORCH_CHECK(logits.size(1) >= 1, name, " needs at least one class column");
}

inline void check_labels(const at::Tensor& logits, const at::Tensor& labels) {
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == logits.size(0), "labels must be [", logits.size(0),
              "], got ", labels.sizes());
  TORCH_CHECK(labels.scalar_type() == at::kLong, "labels must be int64, got ", labels.scalar_type());
  TORCH_CHECK(labels.device() == logits.device(), "labels and logits must be on the same device");
}

inline void check_correct(const at::Tensor& correct) {
  TORCH_CHECK(correct.dim() == 2, "correct must be [E, N], got ", correct.sizes());
  TORCH_CHECK(correct.scalar_type() == at::kBool, "correct must be bool, got ", correct.scalar_type());
}

inline void check_pair(const at::Tensor& p, const at::Tensor& q) {
  check_logits(p, "logits_p");
  check_logits(q, "logits_q");
  TORCH_CHECK(p.sizes() == q.sizes() && p.scalar_type() == q.scalar_type() && p.device() == q.device(),
              "logits_p and logits_q must have the same shape, dtype and device");
}

constexpr double kClamp = 1e-10;

}  // namespace memunlearn
