// ReplayWindow: applies a log tail to an index in large batches.
//
// Ops arrive in log order. Within a window, each id's ops collapse to their
// net effect (last upsert wins; a delete drops the row), and a flush removes
// every touched id from the index and adds the surviving rows in one call.
// A row is a pointer to its vector where the log read it: the window keeps
// the log's read buffers those lie in (wal::LogRecord::keep) until it has
// been applied, so each vector is copied once, into the index (copying it
// into the window first was a tenth of replay's CPU at 1M x 768-d, on the
// thread that reads the log). Vectors that come without a buffer to keep
// are copied into the window. A window holds about kWindowBytes of vectors,
// and at most kMaxKept buffers: a log that rewrites a few ids over and over
// fills few rows, and must not keep the whole log in memory.
//
// A full window is applied to the index on a thread of its own while the
// caller fills the other one: replay's reading, verifying and decoding then
// overlap the index's adds instead of taking turns with them (at 1M x 768-d
// each was about half of replay). Windows are applied one at a time, in the
// order they filled, so the index sees the log's order. Payloads are kept by
// the caller's thread as ops arrive; the applier touches only the index.
//
// Thread safety: one caller thread; the index must not be used by anything
// else until Flush() has returned.
#pragma once

#include <algorithm>
#include <cstdint>
#include <future>
#include <memory>
#include <vector>

#include "index/id_table.h"
#include "index/vector_index.h"
#include "recovery/payload_store.h"
#include "wal/record_ops.h"

namespace vecwal::recovery {

class ReplayWindow {
 public:
  static constexpr size_t kWindowBytes = 16 << 20;
  static constexpr size_t kMaxKept = 8;  // read buffers (4 MiB of log each) per window
  ReplayWindow(index::VectorIndex& idx, PayloadStore& payloads, size_t rows_per_flush = 0);
  ~ReplayWindow();  // waits for a window being applied
  ReplayWindow(const ReplayWindow&) = delete;
  ReplayWindow& operator=(const ReplayWindow&) = delete;

  // The ops of one record (a batch whole), as views into its payload;
  // `lsn` names the record in errors. `keep`, when set, owns the memory the
  // views point into and keeps it unchanged while held; without it the
  // vectors are copied during the call. An error from an earlier window's
  // apply is returned by a later call.
  Status Apply(std::span<const wal::OpView> ops, uint64_t lsn, const std::shared_ptr<const void>& keep = nullptr);
  // Applies everything taken so far and waits for it.
  Status Flush();
  // Seconds the applier spent in the index (overlapping the caller's work).
  double apply_busy_s() const { return apply_busy_s_; }

 private:
  struct Window {
    std::vector<uint64_t> ids;             // row -> id, index::kNoId for a row deleted since
    std::vector<const std::byte*> rows;    // row -> its vector
    std::vector<float> copies;             // vectors that came without `keep`; never reallocated
    std::vector<std::shared_ptr<const void>> kept;  // the buffers rows point into
    index::IdMap<size_t> row;            // live id -> row
    std::vector<uint64_t> touched;         // ids to remove from the index first
    uint64_t first_lsn = 0, last_lsn = 0;  // of the records whose ops it holds, for errors
    bool full(size_t limit) const { return ids.size() >= limit || kept.size() >= kMaxKept; }
  };
  Status Upsert(const wal::OpView& u, uint64_t lsn, const std::shared_ptr<const void>& keep);
  const std::byte* Place(Window& w, const wal::OpView& u, const std::shared_ptr<const void>& keep);
  void Delete(uint64_t id);
  Status Hand();  // starts applying the open window once the last one is done
  Status Wait();  // for the window being applied
  Status ApplyToIndex(Window& w);

  index::VectorIndex& idx_;
  PayloadStore& payloads_;
  const uint32_t dim_;
  const size_t limit_;
  Window windows_[2];
  int open_ = 0;
  double apply_busy_s_ = 0;      // written by the applier before its future is ready
  std::future<Status> applying_;  // last: joined before the windows go
};

}  // namespace vecwal::recovery
