#include "qforge_host/base/allocator.hpp"

#include <malloc.h>

namespace qforge::host {

void keep_large_allocations_in_heap() {
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 128 << 20);
}

}  // namespace qforge::host
