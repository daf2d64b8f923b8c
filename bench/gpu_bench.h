// `vecwal-bench gpu`: the store's exact search on a GPU (gpu::OnDevice),
// beside PyTorch's on the same card (bench/torch_knn.py, the same shapes,
// FP32) and FAISS's CPU Flat search of the same vectors, for several query
// batch sizes; and the time a reopened store takes to serve its first search
// from the card, beside the same store reopened on the CPU.
#pragma once

#include <string>
#include <vector>

#include "bench/measure.h"

namespace vecwal::bench {

struct GpuBenchConfig {
  std::string dir;
  size_t vectors = 1'000'000;
  size_t dim = 768;
  size_t k = 10;
  std::vector<size_t> queries = {1, 16, 256, 1024};  // per search call
  double seconds = 3;                                // per measurement, in three runs
  int device = 0;
  std::string torch_script = "bench/torch_knn.py";   // empty: no PyTorch baseline
  std::string python = "python3";
  bool faiss_cpu = true;  // a 1024-query call takes FAISS's CPU search about 20 s on 16 cores
};

std::vector<Row> RunGpuBench(const GpuBenchConfig& c);

}  // namespace vecwal::bench
