#include "bench/gpu_bench.h"

#include <stdio.h>

#include <algorithm>
#include <map>
#include <random>
#include <sstream>
#include <stdexcept>
#include <thread>

#include <faiss/IndexFlat.h>
#include <fmt/core.h>

#include "bench/scratch.h"
#include "gpu/device.h"
#include "gpu/flat_store.h"
#include "gpu/mirrored_index.h"
#include "recovery/durable_index.h"

namespace vecwal::bench {
namespace {

// Queries a second over three runs of seconds/3 each (at least one call a
// run), the median.
double QueriesPerSec(double seconds, size_t nq, const std::function<void(uint64_t)>& call) {
  std::vector<double> runs;
  for (int r = 0; r < 3; ++r) {
    uint64_t calls = 0;
    const auto t0 = Clock::now();
    do call(calls++);
    while (Seconds(Clock::now() - t0) < seconds / 3);
    runs.push_back(static_cast<double>(calls * nq) / Seconds(Clock::now() - t0));
  }
  return Median(runs);
}

// PyTorch's queries/s for each batch size (0 where it did not run).
std::map<size_t, double> TorchQueriesPerSec(const GpuBenchConfig& c) {
  std::map<size_t, double> out;
  if (c.torch_script.empty()) return out;
  std::string cmd = fmt::format("{} {} {} {} {} {}", c.python, c.torch_script, c.vectors, c.dim, c.k, c.seconds);
  for (size_t nq : c.queries) cmd += " " + std::to_string(nq);
  fmt::print(stderr, "  PyTorch baseline: {}\n", cmd);
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  if (p == nullptr) return out;
  char line[512];
  while (std::fgets(line, sizeof line, p) != nullptr) {
    size_t nq = 0;
    double qps = 0;
    if (std::sscanf(line, "nq %zu queries_per_s %lf", &nq, &qps) == 2) out[nq] = qps;
    else fmt::print(stderr, "  torch: {}", line);
  }
  if (const int rc = ::pclose(p); rc != 0) fmt::print(stderr, "  PyTorch baseline exited with status {}\n", rc);
  return out;
}

struct OpenedStore {
  std::unique_ptr<recovery::DurableIndex> store;
  const index::VectorIndex* index = nullptr;  // the mirror, where on the card
};

OpenedStore Open(const GpuBenchConfig& c, const std::string& dir, bool on_card) {
  OpenedStore out;
  recovery::DurableIndexOptions o;
  o.dir = dir;
  o.spec = {static_cast<uint32_t>(c.dim), index::Metric::kL2, "Flat"};
  o.checkpoint_every_log_bytes = 0;
  if (on_card) {
    auto wrap = gpu::OnDevice(c.device);
    o.wrap_index = [&out, wrap](std::unique_ptr<index::VectorIndex> made) {
      auto m = wrap(std::move(made));
      if (m.ok()) out.index = m->get();
      return m;
    };
  }
  auto d = recovery::DurableIndex::Open(o);
  if (!d.ok()) throw std::runtime_error(d.status().ToString());
  out.store = std::move(d).value();
  return out;
}

}  // namespace

std::vector<Row> RunGpuBench(const GpuBenchConfig& c) {
  if (gpu::CudaDeviceCount() <= c.device)
    throw std::runtime_error(fmt::format("no CUDA device {} here ({} found)", c.device, gpu::CudaDeviceCount()));
  auto described = gpu::DescribeDevice(c.device);
  Check(described.status());
  fmt::print(stderr, "  device {}: {}\n", c.device, *described);
  Scratch s(c.dir);
  const size_t most = *std::max_element(c.queries.begin(), c.queries.end());
  const auto data = RandomVectors(c.vectors, c.dim, 1);
  const auto queries = RandomVectors(4 * most, c.dim, 2);
  auto query = [&](size_t nq, uint64_t i) {
    return std::span<const float>(queries.data() + (i % 4) * most * c.dim, nq * c.dim);
  };

  fmt::print(stderr, "  building a store of {} x {}-d vectors on the card ...\n", c.vectors, c.dim);
  const std::string dir = s.path() + "/db";
  auto opened = Open(c, dir, true);
  auto& d = *opened.store;
  constexpr size_t kBatch = 4096;
  for (size_t base = 0; base < c.vectors; base += kBatch) {
    recovery::WriteBatch b;
    for (size_t i = base; i < std::min(c.vectors, base + kBatch); ++i) b.Upsert(i, {data.data() + i * c.dim, c.dim});
    Check(d.Apply(b));
  }
  Check(d.Checkpoint().status());

  faiss::IndexFlatL2 cpu(static_cast<faiss::Index::idx_t>(c.dim));
  cpu.add(static_cast<faiss::Index::idx_t>(c.vectors), data.data());
  const std::string base_name = fmt::format("gpu search {}k x {}-d Flat, k={}", c.vectors / 1000, c.dim, c.k);
  std::vector<Row> rows;

  // What the card finds of FAISS's exact answers: the proof that the card
  // searched every row, not only that it was fast.
  {
    const size_t nq = std::min<size_t>(most, 64);
    auto ours = d.Search(query(nq, 0), c.k);
    Check(ours.status());
    std::vector<float> dd(nq * c.k);
    std::vector<faiss::Index::idx_t> truth(nq * c.k);
    cpu.search(static_cast<faiss::Index::idx_t>(nq), query(nq, 0).data(), static_cast<faiss::Index::idx_t>(c.k),
               dd.data(), truth.data());
    size_t hits = 0;
    for (size_t q = 0; q < nq; ++q)
      for (size_t j = 0; j < c.k; ++j)
        hits += std::count(truth.begin() + q * c.k, truth.begin() + (q + 1) * c.k,
                           static_cast<faiss::Index::idx_t>(ours->ids[q * c.k + j]));
    rows.push_back({base_name, "recall@k", static_cast<double>(hits) / static_cast<double>(truth.size()),
                    "FAISS CPU Flat (exact)", 1.0, true, ">= 0.999"});
  }

  // The card's search alone (gpu::DeviceFlatStore, row numbers for ids):
  // what the store adds to it is its locks, the recent writes and the ids.
  auto alone = gpu::DeviceFlatStore::Create(c.device, static_cast<uint32_t>(c.dim), false);
  Check(alone.status());
  Check((*alone)->Append(data.data(), c.vectors));

  const auto torch = TorchQueriesPerSec(c);
  for (size_t nq : c.queries) {
    fmt::print(stderr, "  {} queries a call ...\n", nq);
    const double ours = QueriesPerSec(c.seconds, nq, [&](uint64_t i) { Check(d.Search(query(nq, i), c.k).status()); });
    std::vector<float> ad(nq * c.k);
    std::vector<int64_t> ar(nq * c.k);
    const double bare = QueriesPerSec(c.seconds, nq, [&](uint64_t i) {
      Check((*alone)->Search(query(nq, i).data(), nq, c.k, {}, ad.data(), ar.data()));
    });
    std::vector<float> dd(nq * c.k);
    std::vector<faiss::Index::idx_t> ll(nq * c.k);
    const double theirs = !c.faiss_cpu ? 0 : QueriesPerSec(c.seconds, nq, [&](uint64_t i) {
      cpu.search(static_cast<faiss::Index::idx_t>(nq), query(nq, i).data(), static_cast<faiss::Index::idx_t>(c.k),
                 dd.data(), ll.data());
    });
    const std::string w = fmt::format("{}, {} queries/call", base_name, nq);
    auto t = torch.find(nq);
    const double pt = t == torch.end() ? 0 : t->second;
    rows.push_back({w, "queries/s", ours, "PyTorch on the same card (FP32)", pt, true, ""});
    rows.push_back({w + ", the card's search alone", "queries/s", bare, "PyTorch on the same card (FP32)", pt, true, ""});
    if (c.faiss_cpu) rows.push_back({w, "queries/s", ours, "FAISS CPU Flat, same vectors", theirs, true, ""});
  }
  Check(gpu::DeviceStatus(*opened.index));
  Check(d.Close());
  opened = {};

  // A restart: the checkpoint loaded (and, on the card, copied there) and
  // one query answered, against the same store reopened on the CPU.
  auto reopen = [&](bool on_card) {
    std::vector<double> runs;
    for (int r = 0; r < 3; ++r) {
      const auto t0 = Clock::now();
      auto o = Open(c, dir, on_card);
      Check(o.store->Search(query(1, 0), c.k).status());
      runs.push_back(Seconds(Clock::now() - t0));
      if (on_card) Check(gpu::DeviceStatus(*o.index));
      Check(o.store->Close());
    }
    return Median(runs);
  };
  const double card = reopen(true), host = reopen(false);
  rows.push_back({fmt::format("reopen {}k x {}-d Flat to its first answer", c.vectors / 1000, c.dim), "seconds", card,
                  "the same store reopened on the CPU", host, false, ""});
  fmt::print("device {}: {}\n", c.device, *described);
  return rows;
}

}  // namespace vecwal::bench
