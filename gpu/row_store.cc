#include "gpu/row_store.h"

#include <string>

namespace vecwal::gpu {
namespace {

std::string Str(uint64_t v) { return std::to_string(v); }

}  // namespace

Status CheckMoves(const RowMove* moves, size_t n, size_t rows) {
  size_t lowest_from = 0, highest_to = 0;  // indices into moves
  for (size_t i = 0; i < n; ++i) {
    const RowMove& m = moves[i];
    if (m.from >= rows || m.to >= rows)
      return Status::InvalidArgument("row store: move " + Str(i) + " (row " + Str(m.from) + " to row " + Str(m.to) +
                                     ") is past the last of " + Str(rows) + " rows");
    if (m.from < moves[lowest_from].from) lowest_from = i;
    if (m.to > moves[highest_to].to) highest_to = i;
  }
  if (n > 0 && moves[highest_to].to >= moves[lowest_from].from)
    return Status::InvalidArgument("row store: move " + Str(highest_to) + " writes row " + Str(moves[highest_to].to) +
                                   ", not below row " + Str(moves[lowest_from].from) + " that move " +
                                   Str(lowest_from) + " reads: a batch of moves fills holes below its sources");
  return Status::OK();
}

Status CheckSkips(const RowFilter& which, size_t rows) {
  for (size_t i = 0; i < which.skipped; ++i)
    if (which.skip[i] >= rows)
      return Status::InvalidArgument("row store: skipped row " + Str(which.skip[i]) + " (entry " + Str(i) +
                                     ") is past the last of " + Str(rows) + " rows");
  return Status::OK();
}

}  // namespace vecwal::gpu
