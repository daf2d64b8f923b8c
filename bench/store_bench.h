// `vecwal-bench ingest`, `search` and `mixed`: the durable index as a server
// uses it, each figure beside its baseline from the same run.
//  - ingest: durable single-op upserts from many threads vs RocksDB sync puts
//    of the same bytes; batched upserts vs the raw device writing as many
//    bytes durably.
//  - search: batched k-NN through the store vs the same FAISS index searched
//    directly (the cost of the store's locking and id mapping).
//  - mixed: writers, searchers and automatic checkpoints at once, vs each of
//    them alone.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "bench/measure.h"
#include "recovery/durable_index.h"

namespace vecwal::bench {

struct StoreWorkloadConfig {
  std::string dir;
  size_t vectors = 20000;       // in the store searched and written to
  size_t dim = 768;
  std::string description = "Flat";
  int writers = 16;             // threads doing single-op upserts
  int searchers = 2;            // threads doing batched searches
  size_t batch = 1024;          // vectors per atomic batch in batched ingest
  size_t queries = 16;          // queries per search call
  size_t k = 10;
  double seconds = 3;           // per measurement
  int repeat = 1;               // medians over this many runs
  double checkpoint_mib = 64;   // automatic checkpoint interval in mixed
  uint64_t stall_writes_at_intervals = recovery::DurableIndexOptions{}.stall_writes_at_intervals;
  size_t recent_writes_merge_at = recovery::DurableIndexOptions{}.recent_writes_merge_at;
  uint64_t writer_slice_us = recovery::DurableIndexOptions{}.writer_slice_us;
  uint64_t merge_hold_us = recovery::DurableIndexOptions{}.merge_hold_us;
  uint64_t search_hold_us = recovery::DurableIndexOptions{}.search_hold_us;
  uint64_t search_batch_hold_us = recovery::DurableIndexOptions{}.search_batch_hold_us;
  uint64_t grow_storage_ahead_from = recovery::DurableIndexOptions{}.grow_storage_ahead_from;
  // ingest: the writers upsert new ids into an empty store until it holds
  // this many (0: not measured); their longest upsert, and their rate, with
  // the storage grown ahead and grown in the merge that needs it.
  size_t grow_to = 0;
  // Search knobs (0: FAISS's own), given to the store and to the FAISS
  // baseline alike: nprobe for IVF, ef_search for HNSW.
  size_t nprobe = 0, ef_search = 0;
  // search: the share of the ids a filter passes (0: no filter), the same
  // ids for the store and for FAISS (an IDSelectorBitmap).
  double filter_share = 0;
  bool filter_as_ids = false;  // the store gets them as a list (SearchParams::ids), not a predicate
  bool rocksdb = true;
  // The store's wrap_index: gpu::OnDevice where --device gpu asks for it.
  std::function<Result<std::unique_ptr<index::VectorIndex>>(std::unique_ptr<index::VectorIndex>)> wrap_index;
};

std::vector<Row> RunIngestBench(const StoreWorkloadConfig& c);
std::vector<Row> RunSearchBench(const StoreWorkloadConfig& c);
std::vector<Row> RunMixedBench(const StoreWorkloadConfig& c);

}  // namespace vecwal::bench
