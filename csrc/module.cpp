// The Python module kdprune._C. Ops live in the other csrc/*.cpp files, each registered with
// TORCH_LIBRARY_FRAGMENT(kdprune, m) and reached as torch.ops.kdprune.<name> once this is imported.
#include <torch/extension.h>
#include <ATen/Parallel.h>

namespace {
int64_t num_threads() { return at::get_num_threads(); }
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "kdprune native CPU kernels (ops registered under torch.ops.kdprune)";
  m.def("num_threads", &num_threads, "intra-op threads the CPU kernels use");
}
