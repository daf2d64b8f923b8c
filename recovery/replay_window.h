// ReplayWindow: applies a log tail to an index in large batches.
//
// Ops arrive in log order. Within a window, each id's ops collapse to their
// net effect (last upsert wins; a delete drops the row), rows are packed in
// one contiguous array, and a flush removes every touched id from the index
// and adds the surviving rows in one call. Memory stays at one window
// (about kWindowBytes of vectors, allocated once) beyond the index itself:
// a window of 64k rows (196 MB at 768-d, twice that while the vector grew)
// was most of replay's peak memory above the index, for no speed.
//
// Thread safety: none; recovery runs it on one thread before serving.
#pragma once

#include <algorithm>
#include <cstdint>
#include <unordered_map>
#include <vector>

#include "index/vector_index.h"
#include "recovery/checkpoint_file.h"
#include "wal/record_ops.h"

namespace vecwal::recovery {

class ReplayWindow {
 public:
  static constexpr size_t kWindowBytes = 16 << 20;
  ReplayWindow(index::VectorIndex& idx, Payloads& payloads, size_t rows_per_flush = 0)
      : idx_(idx),
        payloads_(payloads),
        dim_(idx.spec().dim),
        limit_(rows_per_flush ? rows_per_flush : std::max<size_t>(1024, kWindowBytes / (dim_ * sizeof(float)))) {
    ids_.reserve(limit_);
    vecs_.reserve(limit_ * dim_);  // grown (and zeroed) once, by the first window
  }

  // The ops of one record (a batch whole), as views into its payload;
  // `lsn` names the record in errors.
  Status Apply(std::span<const wal::OpView> ops, uint64_t lsn);
  Status Flush();

 private:
  Status Upsert(const wal::OpView& u, uint64_t lsn);
  void Delete(uint64_t id);

  index::VectorIndex& idx_;
  Payloads& payloads_;
  const uint32_t dim_;
  const size_t limit_;
  std::vector<uint64_t> ids_;   // row -> id, index::kNoId for a row deleted since
  std::vector<float> vecs_;     // rows x dim; rows beyond ids_.size() are free
  std::unordered_map<uint64_t, size_t> row_;  // live id -> row
  std::vector<uint64_t> touched_;              // ids to remove from the index first
};

}  // namespace vecwal::recovery
