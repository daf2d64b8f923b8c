// ReplayWindow: applies a log tail to an index in large batches.
//
// Ops arrive in log order. Within a window, each id's ops collapse to their
// net effect (last upsert wins; a delete drops the row), rows are packed in
// one contiguous array, and a flush removes every touched id from the index
// and adds the surviving rows in one call. Memory stays at two windows
// (about kWindowBytes of vectors each, allocated once) beyond the index
// itself.
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
#include <unordered_map>
#include <vector>

#include "index/vector_index.h"
#include "recovery/payload_store.h"
#include "wal/record_ops.h"

namespace vecwal::recovery {

class ReplayWindow {
 public:
  static constexpr size_t kWindowBytes = 16 << 20;
  ReplayWindow(index::VectorIndex& idx, PayloadStore& payloads, size_t rows_per_flush = 0);
  ~ReplayWindow();  // waits for a window being applied
  ReplayWindow(const ReplayWindow&) = delete;
  ReplayWindow& operator=(const ReplayWindow&) = delete;

  // The ops of one record (a batch whole), as views into its payload;
  // `lsn` names the record in errors. An error from an earlier window's
  // apply is returned by a later call.
  Status Apply(std::span<const wal::OpView> ops, uint64_t lsn);
  // Applies everything taken so far and waits for it.
  Status Flush();
  // Seconds the applier spent in the index (overlapping the caller's work).
  double apply_busy_s() const { return apply_busy_s_; }

 private:
  struct Window {
    std::vector<uint64_t> ids;   // row -> id, index::kNoId for a row deleted since
    std::vector<float> vecs;     // rows x dim; rows beyond ids.size() are free
    std::unordered_map<uint64_t, size_t> row;  // live id -> row
    std::vector<uint64_t> touched;             // ids to remove from the index first
  };
  Status Upsert(const wal::OpView& u, uint64_t lsn);
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
