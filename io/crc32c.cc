#include "io/crc32c.h"

#include <isa-l/crc.h>

#include <climits>

namespace vecwal::crc32c {

uint32_t Extend(uint32_t init_crc, const void* data, size_t n) {
  // ISA-L works on the un-inverted register and takes an int length.
  auto* p = static_cast<unsigned char*>(const_cast<void*>(data));
  uint32_t reg = ~init_crc;
  while (n > 0) {
    int chunk = n > static_cast<size_t>(INT_MAX / 2) ? INT_MAX / 2 : static_cast<int>(n);
    reg = crc32_iscsi(p, chunk, reg);
    p += chunk;
    n -= static_cast<size_t>(chunk);
  }
  return ~reg;
}

}  // namespace vecwal::crc32c
