#include "attnkit/tensor.hpp"

namespace attnkit {

std::string shape_string(const ConstTensorView& v) {
  std::string s = "[";
  for (int i = 0; i < v.rank; ++i) s += (i ? ", " : "") + std::to_string(v.shape[i]);
  return s + "]";
}

}  // namespace attnkit
