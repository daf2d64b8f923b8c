// SegmentAllocator: keeps the next segment file ready, so that a rotation on
// the commit path costs one header write and no metadata I/O.
//
// A segment is made ready by renaming a retired segment whose header block
// was zeroed (recycling: no zero-fill, and its stale records can never verify
// under the new segment's id and epoch), or by creating a zero-filled file.
// Either way the directory is fsynced before the file is handed out.
//
// Thread safety: all methods may be called from any thread; preparation runs
// on one background thread.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "io/file_system.h"

namespace vecwal::wal {

class SegmentAllocator {
 public:
  SegmentAllocator(FileSystem& fs, std::string dir, uint64_t segment_bytes, size_t max_spares);
  ~SegmentAllocator();
  SegmentAllocator(const SegmentAllocator&) = delete;
  SegmentAllocator& operator=(const SegmentAllocator&) = delete;

  // A blank file of the right size found at open: reused before new ones.
  void AdoptSpare(const std::string& path);
  // Starts making the file for segment `id` ready in the background.
  void PrepareAsync(uint64_t id);
  // The writable file for segment `id`: waits for its background preparation,
  // or prepares it now.
  Result<std::unique_ptr<File>> Take(uint64_t id);
  // A segment no longer needed: zeroes its header and keeps it as a spare,
  // or removes it once enough spares are kept.
  Status Retire(const std::string& path);
  // Waits for background preparation to finish.
  void Quiesce();

 private:
  Result<std::unique_ptr<File>> Prepare(uint64_t id);
  Status CheckBlank(const std::string& path);
  std::string PathOf(uint64_t id) const;

  FileSystem& fs_;
  const std::string dir_;
  const uint64_t segment_bytes_;
  const size_t max_spares_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::string> spares_;
  std::map<uint64_t, Result<std::unique_ptr<File>>> ready_;
  uint64_t preparing_ = 0;  // id being prepared in the background, 0 if none
  std::thread worker_;
};

}  // namespace vecwal::wal
