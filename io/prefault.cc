#include "io/prefault.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>

namespace vecwal {

bool PrefaultForWrite(std::byte* begin, size_t len) {
  if (len == 0) return true;
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t start = reinterpret_cast<uintptr_t>(begin) / page * page;
  const uintptr_t end = reinterpret_cast<uintptr_t>(begin) + len;
  return ::madvise(reinterpret_cast<void*>(start), end - start, MADV_POPULATE_WRITE) == 0;
}

}  // namespace vecwal
