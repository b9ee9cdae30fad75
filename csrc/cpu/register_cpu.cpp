// CPU kernels of the `reformer` operators.
#include <torch/library.h>

#include "../lsh_attention.h"

TORCH_LIBRARY_IMPL(reformer, CPU, m) {
  m.impl("lsh_buckets", &reformer::cpu::lsh_buckets);
  m.impl("lsh_attention", &reformer::cpu::lsh_attention);
  m.impl("lsh_attention_backward", &reformer::cpu::lsh_attention_backward);
}
