// RowStore: dense float32 rows searched exactly, which gpu/'s mirrored index
// keeps its copy of a Flat index in. DeviceFlatStore is the card's; tests
// give the mirror one in host memory, so that what the mirror does with ids
// and rows is checked where no card is.
//
// Rows are dense (0..rows()-1): a caller that removes rows moves rows from
// the end into the holes (MoveRows, then Truncate) and keeps its own row ->
// id table. No CUDA types and no C++20 here: nvcc compiles this as C++17.
#pragma once

#include <cstddef>
#include <cstdint>

#include "io/status.h"

namespace vecwal::gpu {

struct RowMove {
  uint64_t from = 0, to = 0;
};

// The rows a search may return: every row, or where `keep` is given those
// whose byte is nonzero; never one listed in `skip`. A store that keeps its
// rows on a card keeps a mask there too, so that the common search (a few
// hidden ids, no filter) sends the card the rows it skips, not a byte for
// every row.
struct RowFilter {
  const uint8_t* keep = nullptr;   // rows() bytes, or null
  const uint64_t* skip = nullptr;  // `skipped` row numbers, each below rows()
  size_t skipped = 0;
};

class RowStore {
 public:
  virtual ~RowStore() = default;
  virtual uint32_t dim() const = 0;
  virtual size_t rows() const = 0;
  // The largest k Search takes.
  virtual size_t max_k() const = 0;
  // Storage for `rows` in all, so that the adds up to it never move it.
  virtual Status Reserve(size_t rows) = 0;
  // Appends n rows of dim floats, contiguous in host memory.
  virtual Status Append(const float* rows, size_t n) = 0;
  // Appends n rows, row i at rows[i] (dim floats, any alignment).
  virtual Status AppendGathered(const std::byte* const* rows, size_t n) = 0;
  // Row m.to becomes a copy of row m.from, for each of the n moves, in one
  // step. Every destination lies below every source, as when holes are
  // filled from the end: no row is read after it is written.
  virtual Status MoveRows(const RowMove* moves, size_t n) = 0;
  // Drops the rows from `rows` on.
  virtual Status Truncate(size_t rows) = 0;
  // The k nearest rows to each of nq queries (nq x dim host floats): row
  // numbers (-1 where fewer than k rows pass) and distances (NaN there;
  // squared L2, or the inner product), nq x k each, best first, among the
  // rows `which` lets through.
  virtual Status Search(const float* queries, size_t nq, size_t k, const RowFilter& which, float* distances,
                        int64_t* rows) = 0;
};

// What every store checks before it moves a row or masks one, against its
// `rows` rows: every row in range, and for MoveRows every destination below
// every source. An error names the first row at fault.
Status CheckMoves(const RowMove* moves, size_t n, size_t rows);
Status CheckSkips(const RowFilter& which, size_t rows);

}  // namespace vecwal::gpu
