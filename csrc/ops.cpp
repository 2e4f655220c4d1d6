// Schemas of the scoring ops. Kernels register per backend in cpu/<op>_kernel.cpp and cuda/<op>_kernel.cu.
#include <torch/library.h>

TORCH_LIBRARY(memunlearn, m) {
  // [N, C] logits, [N] int64 labels -> [N, 5]: true-class probability, max probability, entropy, loss, correct
  m.def("signals(Tensor logits, Tensor labels) -> Tensor");
  // [E, N] bool -> forgetting events, first learned, presentations needed (int64 [N] each)
  m.def("learning_events(Tensor correct) -> (Tensor, Tensor, Tensor)");
  // [N, C] logits twice -> [N]: 0.5 (KL(p||q) + KL(q||p)), probabilities clamped at 1e-10
  m.def("symmetric_kl(Tensor logits_p, Tensor logits_q) -> Tensor");
}
