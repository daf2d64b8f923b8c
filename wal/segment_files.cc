#include "wal/segment_files.h"

#include "io/aligned_buffer.h"

#include <algorithm>
#include <chrono>
#include <cstring>

namespace vecwal::wal {
namespace {

bool AllZero(std::span<const std::byte> s) {
  return std::all_of(s.begin(), s.end(), [](std::byte b) { return b == std::byte{0}; });
}

SegmentFileInfo Classify(uint64_t id, std::string path, uint64_t size, std::span<const std::byte> block0) {
  SegmentFileInfo info{id, std::move(path), size};
  if (block0.size() < kHeaderCopyOffset + kSegmentHeaderSize) {
    info.state = AllZero(block0) ? SegmentFileInfo::State::kBlank : SegmentFileInfo::State::kDamaged;
    info.problem = "file is " + std::to_string(size) + " bytes, shorter than a segment header block";
    return info;
  }
  for (size_t off : {size_t{0}, kHeaderCopyOffset}) {
    auto h = DecodeSegmentHeader(block0.data() + off);
    if (!h || h->segment_id != id) continue;
    if (h->segment_bytes != size || h->block_size < kMinBlockSize || h->first_lsn == 0) {
      info.state = SegmentFileInfo::State::kDamaged;
      info.problem = "header says " + std::to_string(h->segment_bytes) + " bytes and block " +
                     std::to_string(h->block_size) + ", file has " + std::to_string(size) + " bytes";
      return info;
    }
    info.state = SegmentFileInfo::State::kLive;
    info.header = *h;
    return info;
  }
  if (AllZero(block0.first(kMinBlockSize))) {
    info.state = SegmentFileInfo::State::kBlank;
  } else {
    info.state = SegmentFileInfo::State::kDamaged;
    info.problem = "neither copy of the segment header (offsets 0 and 2048) verifies for segment id " +
                   std::to_string(id);
  }
  return info;
}

}  // namespace

void EncodeHeaderBlock(const SegmentHeader& h, std::span<std::byte> block) {
  std::memset(block.data(), 0, block.size());
  EncodeSegmentHeader(h, block.data());
  EncodeSegmentHeader(h, block.data() + kHeaderCopyOffset);
}

Status WriteSegmentHeader(File& file, SegmentHeader h) {
  h.created_unix_ns = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                                std::chrono::system_clock::now().time_since_epoch())
                                                .count());
  AlignedBuffer block(h.block_size, 4096);
  EncodeHeaderBlock(h, block.span());
  VECWAL_RETURN_IF_ERROR(file.WriteAt(0, block.span()));
  return file.Sync();
}

Result<std::vector<SegmentFileInfo>> ListSegmentFiles(FileSystem& fs, const std::string& dir) {
  VECWAL_ASSIGN_OR_RETURN(auto names, fs.ListDir(dir));
  std::vector<SegmentFileInfo> out;
  for (const auto& name : names) {
    auto id = ParseSegmentFileName(name);
    if (!id) continue;
    std::string path = dir + "/" + name;
    FileOpenOptions ro;
    auto opened = fs.Open(path, ro);
    if (opened.status().IsNotFound()) continue;  // renamed by a live writer since the listing
    VECWAL_ASSIGN_OR_RETURN(auto file, std::move(opened));
    VECWAL_ASSIGN_OR_RETURN(uint64_t size, file->Size());
    size_t n = static_cast<size_t>(std::min<uint64_t>(size, kMinBlockSize));
    if (file->is_direct()) n = AlignDown(n, file->alignment());
    std::vector<std::byte> block0;
    if (n > 0) {
      VECWAL_ASSIGN_OR_RETURN(block0, ReadRange(*file, 0, n));
    }
    out.push_back(Classify(*id, path, size, block0));
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.id < b.id; });
  return out;
}

}  // namespace vecwal::wal
