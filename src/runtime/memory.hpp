// Aligned allocations that fail loudly: hwy::AllocateAligned returns null when the memory
// cannot be had; these throw OutOfMemory naming the buffer and its size instead.
#pragma once

#include <hwy/aligned_allocator.h>

#include <cstddef>
#include <string>

#include "attnkit/error.hpp"

namespace attnkit::detail {

template <typename T = float>
hwy::AlignedFreeUniquePtr<T[]> allocate(size_t count, const char* what) {
  constexpr size_t kMax = (size_t{1} << 62) / sizeof(T);
  hwy::AlignedFreeUniquePtr<T[]> p;
  if (count <= kMax) p = hwy::AllocateAligned<T>(count == 0 ? 1 : count);
  if (!p) {
    throw OutOfMemory(std::string(what) + ": cannot allocate " +
                      std::to_string(static_cast<double>(count) * sizeof(T) / (1 << 30)) +
                      " GiB for this shape");
  }
  return p;
}

}  // namespace attnkit::detail
