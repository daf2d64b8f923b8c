// `vecwal-bench recovery` and `vecwal-bench checkpoint`: restart time and
// checkpoint cost of the durable index, beside the raw device and FAISS.
#pragma once

#include <string>
#include <vector>

#include "bench/measure.h"

namespace vecwal::bench {

struct StoreBenchConfig {
  std::string dir;
  size_t vectors = 100000;
  size_t dim = 768;
  std::string description = "Flat";
  int repeat = 1;
  // checkpoint: rewrite this share of the ids (random ones, in batches)
  // before the append p99 is measured, and append rewrites of existing ids:
  // a graph index (HNSW) then holds tombstones, and checkpoints rebuild it.
  double rewrite_share = 0;
};

std::vector<Row> RunRecoveryBench(const StoreBenchConfig& c);
std::vector<Row> RunCheckpointBench(const StoreBenchConfig& c);
// A Flat store of c.vectors copied into c.description by recovery::Reindex,
// beside FAISS building that index from the same vectors in memory.
struct ReindexBenchConfig {
  size_t train_sample = 100000;
  bool copy_first = false;  // recovery::ReindexOptions::copy_first
  size_t threads = 0;       // recovery::ReindexOptions::threads
  unsigned writers = 0;     // threads upserting into the source throughout
};
std::vector<Row> RunReindexBench(const StoreBenchConfig& c, const ReindexBenchConfig& rc);

}  // namespace vecwal::bench
