#pragma once
// Large working buffers: asks the kernel to back [p, p + bytes) with huge
// pages. A fresh 4096 x 4096 float buffer is otherwise first touched 4 KB
// page by page (detail/memory.hpp has the measurements). The advice changes
// no result; where it is unavailable or refused, nothing happens.

#include "detail/memory.hpp"

#include <cstddef>

namespace loftq {

inline void advise_huge_pages(void* p, std::size_t bytes) { detail::advise_huge_pages(p, bytes); }

}  // namespace loftq
