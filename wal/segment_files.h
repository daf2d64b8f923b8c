// What the segment files of a log directory are, read from their headers.
//
// A segment file is live (a header naming its own id), blank (block 0 all
// zeros: preallocated or recycled, not yet activated) or damaged (block 0
// holds neither). Read by the log and, read-only, by vecwal-inspect.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "io/file_system.h"
#include "wal/format.h"

namespace vecwal::wal {

struct SegmentFileInfo {
  enum class State { kLive, kBlank, kDamaged };
  uint64_t id = 0;
  std::string path;
  uint64_t file_bytes = 0;
  State state = State::kBlank;
  SegmentHeader header;  // valid when live
  std::string problem;   // why it is damaged
};

// Every segment file in `dir`, sorted by id.
Result<std::vector<SegmentFileInfo>> ListSegmentFiles(FileSystem& fs, const std::string& dir);

// Encodes a whole header block (both copies) for `h` into `block`.
void EncodeHeaderBlock(const SegmentHeader& h, std::span<std::byte> block);

// Activates a reserved segment file: writes its header block (stamped with
// the current time) and makes it durable before any record may go there.
Status WriteSegmentHeader(File& file, SegmentHeader h);

}  // namespace vecwal::wal
