// SegmentWindow: the log reader's view of one segment file, a window at a
// time, with the next chunk read by another thread.
//
// Replay used to read each segment whole (64 MiB by default, and as much
// again for the segment read ahead): memory that recovery holds beside the
// index it rebuilds, and that grew with the segment size. A window holds one
// chunk (4 MiB) plus the record that straddles into it; the next few chunks,
// in this segment and at the start of the next one the scan will visit, are
// read meanwhile. More than one: replay applies its batches in bursts (tens
// of milliseconds each), and with a single chunk ahead the device idled
// through every burst; eight (32 MiB) read a 1M-vector log ~10% faster
// than four did, with the index's adds on another thread.
//
// Access is expected to move forward; a step back (salvage resuming after a
// look-ahead) costs a synchronous read, nothing worse.
//
// Keep() lets a reader hold on to the buffer the bytes it was last given lie
// in, instead of copying them: replay keeps the vectors of a batch that way
// until the index has taken them (copying 3 GB of vectors out of the log's
// buffers was a tenth of replay's CPU at 1M x 768-d). A kept buffer is
// never written again; the window reads into others from a pool that kept
// buffers go back to once the last holder lets go.
//
// Thread safety: one scanning thread; the read-ahead thread touches only the
// pending chunk, and every path that could reach it first joins it.
#pragma once

#include <cstdint>
#include <deque>
#include <future>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "io/aligned_buffer.h"
#include "io/file_system.h"
#include "wal/segment_files.h"

namespace vecwal::wal {

class SegmentWindow {
 public:
  static constexpr size_t kDefaultChunk = 4 << 20;
  static constexpr size_t kDefaultDepth = 8;  // chunks read ahead
  // A straddling record up to this long is carried over from the old window
  // in memory; a longer one is read again.
  static constexpr size_t kDefaultCarry = 4 << 20;

  // Both sizes are multiples of 4096 (tests use small ones).
  explicit SegmentWindow(FileSystem& fs, size_t chunk = kDefaultChunk, size_t carry = kDefaultCarry,
                         size_t depth = kDefaultDepth);
  ~SegmentWindow() { DropAhead(); }
  SegmentWindow(const SegmentWindow&) = delete;
  SegmentWindow& operator=(const SegmentWindow&) = delete;

  // Moves to segment `seg`. `then`, when set, is the segment the scan visits
  // after it: its first chunk is read ahead once this one's last is read.
  // Fails only when that read ahead failed.
  Status Begin(const SegmentFileInfo& seg, const SegmentFileInfo* then);
  // Joins any read in flight and lets go of the files: the segment list
  // passed to Begin may go after this.
  void End();

  // Bytes [pos, pos + len) of the current segment, which must lie within
  // it; valid until the next call.
  Result<const std::byte*> At(uint64_t pos, size_t len);

  // The buffer holding the bytes the last At returned, for a caller to hold
  // while it uses them after the next call. Any thread may drop it.
  std::shared_ptr<const void> Keep() const { return win_buf_; }

  uint64_t size() const { return seg_->file_bytes; }
  uint64_t bytes_read() const { return bytes_read_; }

 private:
  class BufferPool;
  using Buffer = std::shared_ptr<AlignedBuffer>;
  // One chunk read (or being read) by a read-ahead thread, at carry_ into
  // `buf` so that a straddling record can be put in front of it.
  struct Ahead {
    const SegmentFileInfo* seg = nullptr;
    uint64_t offset = 0;
    size_t len = 0;
    std::unique_ptr<File> file;  // when not the current segment's
    Buffer buf;
    std::future<Status> done;
    uint64_t read = 0;  // bytes, written by the read-ahead thread
  };

  Status Slide(uint64_t pos, size_t len);
  Status ReadInto(uint64_t start, uint64_t end);  // synchronous, into win_buf_ at 0
  void StartAhead();
  // Waits for the oldest chunk read ahead; returns its read's status.
  Status JoinFront();
  void DropAhead();  // joins every read ahead and forgets them
  Status OpenCurrent();
  // Reads dst.size() bytes at `offset`; fewer than `need` is damage.
  static Status ReadChunk(File& f, const std::string& path, uint64_t file_bytes, uint64_t offset,
                          std::span<std::byte> dst, size_t need, uint64_t* read);

  FileSystem& fs_;
  const size_t chunk_, carry_;  // bytes
  const size_t depth_;
  const SegmentFileInfo* seg_ = nullptr;
  const SegmentFileInfo* then_ = nullptr;
  std::shared_ptr<BufferPool> pool_;  // shared with the buffers it lent
  std::unique_ptr<File> file_;
  Buffer win_buf_;
  size_t win_off_ = 0;      // where the window starts in win_buf_
  uint64_t win_start_ = 0;  // file offset of the window's first byte
  uint64_t win_len_ = 0;
  uint64_t bytes_read_ = 0;
  std::deque<Ahead> ahead_;  // in file order: this segment, then `then_`
};

}  // namespace vecwal::wal
