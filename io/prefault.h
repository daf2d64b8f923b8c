// Faulting in memory for writing ahead of time.
#pragma once

#include <cstddef>

namespace vecwal {

// Faults in the pages of [begin, begin + len) for writing without writing
// them (MADV_POPULATE_WRITE, Linux 5.14): the kernel's zeroing of fresh
// pages happens now, on this thread, not inside a later copy that holds a
// lock. Pages only partly in the range are included. Returns false where the
// kernel cannot (the pages then fault in on first write, as they would have).
bool PrefaultForWrite(std::byte* begin, size_t len);

}  // namespace vecwal
