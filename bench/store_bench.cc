#include "bench/store_bench.h"

#include <algorithm>
#include <atomic>
#include <deque>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <stdexcept>
#include <thread>

#include <faiss/AutoTune.h>
#include <faiss/IndexFlat.h>
#include <faiss/IndexHNSW.h>
#include <faiss/IndexIVF.h>
#include <faiss/IndexPreTransform.h>
#include <faiss/impl/IDSelector.h>
#include <faiss/index_factory.h>
#include <fmt/core.h>

#include "bench/baselines.h"
#include "bench/scratch.h"
#include "recovery/durable_index.h"

namespace vecwal::bench {
namespace {

std::unique_ptr<recovery::DurableIndex> OpenStore(const StoreWorkloadConfig& c, const std::string& dir,
                                                  double checkpoint_mib) {
  recovery::DurableIndexOptions o;
  o.dir = dir;
  o.spec = {static_cast<uint32_t>(c.dim), index::Metric::kL2, c.description};
  o.checkpoint_every_log_bytes = static_cast<uint64_t>(checkpoint_mib * (1 << 20));
  o.recent_writes_merge_at = c.recent_writes_merge_at;
  o.writer_slice_us = c.writer_slice_us;
  o.merge_hold_us = c.merge_hold_us;
  o.search_hold_us = c.search_hold_us;
  o.search_batch_hold_us = c.search_batch_hold_us;
  o.grow_storage_ahead_from = c.grow_storage_ahead_from;
  o.stall_writes_at_intervals = c.stall_writes_at_intervals;
  o.wal.thread_slice_us = c.writer_slice_us;
  o.search = {c.nprobe, c.ef_search};
  o.wrap_index = c.wrap_index;
  auto d = recovery::DurableIndex::Open(o);
  if (!d.ok()) throw std::runtime_error(d.status().ToString());
  return std::move(d).value();
}

// Trains on all of `data` when the index needs it, then upserts its first n
// vectors as ids [0, n) in batches.
void Fill(recovery::DurableIndex& d, const StoreWorkloadConfig& c, const std::vector<float>& data, size_t n) {
  if (d.NeedsTraining()) Check(d.Train(data));
  for (size_t base = 0; base < n; base += c.batch) {
    recovery::WriteBatch b;
    for (size_t i = base; i < std::min(n, base + c.batch); ++i) b.Upsert(i, {data.data() + i * c.dim, c.dim});
    Check(d.Apply(b));
  }
}

// Latency percentiles of calls made by several threads for `seconds`.
struct Timed {
  double per_sec = 0;  // calls per second, all threads
  Latency lat;
};

Timed TimeCalls(int threads, double seconds, const std::function<bool(int, uint64_t)>& call) {
  std::vector<std::vector<double>> us(threads);
  std::atomic<uint64_t> calls{0};
  double per_sec = RunFor(threads, seconds, [&](int t) -> uint64_t {
    auto t0 = Clock::now();
    if (!call(t, calls.fetch_add(1, std::memory_order_relaxed))) return 0;
    us[t].push_back(Seconds(Clock::now() - t0) * 1e6);
    return 1;
  });
  std::vector<double> all;
  for (auto& v : us) all.insert(all.end(), v.begin(), v.end());
  return {per_sec, Percentiles(std::move(all))};
}

// Vector bytes a second that one thread upserts in atomic batches of
// c.batch, keeping `in_flight` batches placed (ApplyAsync) or, at 1, one
// blocking Apply at a time. With `searcher`, into a store of c.vectors
// beside a thread searching it one query a call: every merge of the batches
// into the index waits for the query in progress.
double BatchedBytesPerSec(const StoreWorkloadConfig& c, const std::vector<float>& data, size_t in_flight,
                          bool searcher) {
  Scratch s(c.dir);
  auto d = OpenStore(c, s.path() + "/db", 256);
  const uint64_t base = uint64_t{1} << 40;  // the batches' ids, above the fill's
  if (searcher) Fill(*d, c, RandomVectors(c.vectors, c.dim, 4), c.vectors);
  else Fill(*d, c, data, 0);  // trains an index that needs it
  std::atomic<bool> stop{false};
  std::thread search([&] {
    while (searcher && !stop.load() && d->Search({data.data(), c.dim}, c.k).ok()) {
    }
  });
  uint64_t next = base;
  std::deque<std::future<Status>> placed;
  const double batches = RunFor(1, c.seconds, [&](int) -> uint64_t {
    recovery::WriteBatch b;
    for (size_t i = 0; i < c.batch; ++i) b.Upsert(next + i, {data.data() + (i % 4096) * c.dim, c.dim});
    next += c.batch;
    if (in_flight <= 1) return d->Apply(b).ok() ? 1 : 0;
    placed.push_back(d->ApplyAsync(b));
    if (placed.size() < in_flight) return 1;
    const bool ok = placed.front().get().ok();
    placed.pop_front();
    return ok ? 1 : 0;
  });
  for (auto& f : placed) f.wait();
  stop = true;
  search.join();
  return batches * static_cast<double>(c.batch * c.dim * sizeof(float));
}

// c.writers threads upsert ids [0, c.grow_to) into an empty store, no
// checkpoints; `ahead`: its storage grows beside them (c's setting), or in
// the merge that needs it. The longest upsert (ms) and the upserts a second.
std::pair<double, double> GrowingUpserts(const StoreWorkloadConfig& c, const std::vector<float>& data, bool ahead) {
  Scratch s(c.dir);
  StoreWorkloadConfig g = c;
  if (!ahead) g.grow_storage_ahead_from = UINT64_MAX;
  auto d = OpenStore(g, s.path() + "/db", 0);
  std::atomic<uint64_t> next{0};
  std::atomic<bool> failed{false};
  std::vector<double> longest(static_cast<size_t>(c.writers), 0);
  const auto t0 = Clock::now();
  std::vector<std::thread> ts;
  for (int t = 0; t < c.writers; ++t)
    ts.emplace_back([&, t] {
      for (uint64_t id = next++; id < c.grow_to && !failed; id = next++) {
        const auto t1 = Clock::now();
        if (!d->Upsert(id, {data.data() + (id % 4096) * c.dim, c.dim}).ok()) failed = true;
        longest[static_cast<size_t>(t)] = std::max(longest[static_cast<size_t>(t)], Seconds(Clock::now() - t1) * 1e3);
      }
    });
  for (auto& t : ts) t.join();
  if (failed) throw std::runtime_error("an upsert into the growing store failed");
  return {*std::max_element(longest.begin(), longest.end()), static_cast<double>(c.grow_to) / Seconds(Clock::now() - t0)};
}

}  // namespace

std::vector<Row> RunIngestBench(const StoreWorkloadConfig& c) {
  const std::string w = fmt::format("ingest, {}-d {}", c.dim, c.description);
  const size_t bytes_per_vector = c.dim * sizeof(float);
  std::vector<double> single, rocks, batched, pipelined, beside, raw, grow_ms, grow_rate, merge_ms, merge_rate;
  const auto data = RandomVectors(std::max<size_t>(c.batch, 4096), c.dim, 1);
  for (int r = 0; r < c.repeat; ++r) {
    if (c.grow_to > 0) {
      for (bool ahead : {r % 2 == 0, r % 2 != 0}) {  // which goes first alternates
        const auto [ms, rate] = GrowingUpserts(c, data, ahead);
        (ahead ? grow_ms : merge_ms).push_back(ms);
        (ahead ? grow_rate : merge_rate).push_back(rate);
      }
    }
    {
      Scratch s(c.dir);
      auto d = OpenStore(c, s.path() + "/db", 256);
      Fill(*d, c, data, 0);
      single.push_back(TimeCalls(c.writers, c.seconds, [&](int t, uint64_t i) {
                         (void)t;
                         return d->Upsert(i, {data.data() + (i % 4096) * c.dim, c.dim}).ok();
                       }).per_sec);
    }
    if (c.rocksdb) {
      Scratch s(c.dir);
      rocks.push_back(RocksDbSyncPutsPerSec(s.path(), c.writers, bytes_per_vector, c.seconds).value_or(0));
    }
    batched.push_back(BatchedBytesPerSec(c, data, 1, false));
    pipelined.push_back(BatchedBytesPerSec(c, data, 3, false));
    beside.push_back(BatchedBytesPerSec(c, data, 1, true));
    {
      Scratch s(c.dir);
      raw.push_back(RawDurableWriteBytesPerSec(s.path(), c.batch * bytes_per_vector, 1, c.seconds));
    }
  }
  std::vector<Row> rows;
  rows.push_back({fmt::format("{}, {} threads, 1 op each", w, c.writers), "upserts/s", Median(single),
                  c.rocksdb ? fmt::format("RocksDB sync puts ({} threads)", c.writers) : "", c.rocksdb ? Median(rocks) : 0,
                  true, ""});
  rows.push_back({fmt::format("{}, batches of {}", w, c.batch), "vector B/s", Median(batched),
                  fmt::format("raw O_DIRECT+DSYNC {} KiB writes", c.batch * bytes_per_vector >> 10), Median(raw),
                  true, ""});
  rows.push_back({fmt::format("{}, batches of {}, 3 in flight", w, c.batch), "vector B/s", Median(pipelined),
                  fmt::format("raw O_DIRECT+DSYNC {} KiB writes", c.batch * bytes_per_vector >> 10), Median(raw),
                  true, ""});
  rows.push_back({fmt::format("{}, batches of {} beside a searcher of {}+", w, c.batch, c.vectors), "vector B/s",
                  Median(beside), "the same batches, no searcher", Median(batched), true, ""});
  if (c.grow_to > 0) {
    const std::string g = fmt::format("{}, {} threads growing an empty store to {}", w, c.writers, c.grow_to);
    rows.push_back({g, "longest upsert ms", Median(grow_ms), "storage grown in the merge that needs it",
                    Median(merge_ms), false, ""});
    rows.push_back({g, "upserts/s", Median(grow_rate), "storage grown in the merge that needs it", Median(merge_rate),
                    true, ""});
  }
  return rows;
}

// A filter's ids for the search workload: about `share` of 0..n-1, spread
// over them, as packed bits (FAISS's IDSelectorBitmap) and as a predicate.
struct SearchFilter {
  SearchFilter(size_t n, double share) : bits((n + 7) / 8) {
    std::mt19937_64 rng(11);
    std::bernoulli_distribution in(share);
    for (size_t id = 0; id < n; ++id)
      if (in(rng)) bits[id >> 3] |= static_cast<uint8_t>(1u << (id & 7));
  }
  bool operator()(uint64_t id) const { return id >> 3 < bits.size() && (bits[id >> 3] >> (id & 7) & 1) != 0; }
  std::vector<uint8_t> bits;
};

// Per-call parameters for FAISS's own search of `fi` with a selector, the
// knobs as set on the index (a params object replaces them): what a FAISS
// user writes to filter a search.
struct FaissFilteredParams {
  FaissFilteredParams(faiss::Index& fi, faiss::IDSelector* sel) {
    faiss::Index* core = &fi;
    auto* pre = dynamic_cast<faiss::IndexPreTransform*>(core);
    if (pre != nullptr) core = pre->index;
    faiss::SearchParameters* own = &plain;
    if (auto* ivf = dynamic_cast<faiss::IndexIVF*>(core)) {
      ivf_params.nprobe = ivf->nprobe;
      own = &ivf_params;
    } else if (auto* hnsw = dynamic_cast<faiss::IndexHNSW*>(core)) {
      hnsw_params.efSearch = hnsw->hnsw.efSearch;
      own = &hnsw_params;
    }
    own->sel = sel;
    top = own;
    if (pre != nullptr) {
      pre_params.index_params = own;
      top = &pre_params;
    }
  }
  faiss::SearchParameters plain;
  faiss::SearchParametersIVF ivf_params;
  faiss::SearchParametersHNSW hnsw_params;
  faiss::SearchParametersPreTransform pre_params;
  faiss::SearchParameters* top = nullptr;
};

std::vector<Row> RunSearchBench(const StoreWorkloadConfig& c) {
  Scratch s(c.dir);
  const auto data = RandomVectors(c.vectors, c.dim, 2);
  const auto queries = RandomVectors(16 * c.queries, c.dim, 3);
  fmt::print(stderr, "  building a store of {} x {}-d vectors ({}) ...\n", c.vectors, c.dim, c.description);
  auto d = OpenStore(c, s.path() + "/db", 0);
  Fill(*d, c, data, c.vectors);
  // The same vectors in a FAISS index of the same description, searched directly.
  std::unique_ptr<faiss::Index> fi(faiss::index_factory(static_cast<int>(c.dim), c.description.c_str()));
  if (!fi->is_trained) fi->train(static_cast<faiss::Index::idx_t>(c.vectors), data.data());
  fi->add(static_cast<faiss::Index::idx_t>(c.vectors), data.data());
  // The same knobs, set on FAISS's index the way a FAISS user sets them.
  std::string knobs;
  if (c.nprobe != 0) knobs = fmt::format("nprobe={}", c.nprobe);
  if (c.ef_search != 0) knobs += fmt::format("{}efSearch={}", knobs.empty() ? "" : ",", c.ef_search);
  if (!knobs.empty()) faiss::ParameterSpace().set_index_parameters(fi.get(), knobs.c_str());
  const SearchFilter filter(c.vectors, c.filter_share);
  faiss::IDSelectorBitmap selector(filter.bits.size(), filter.bits.data());
  std::optional<FaissFilteredParams> fparams;
  index::SearchParams ours_params;
  std::vector<uint64_t> listed;
  if (c.filter_share > 0) {
    fparams.emplace(*fi, &selector);
    if (c.filter_as_ids) {
      for (uint64_t id = 0; id < c.vectors; ++id)
        if (filter(id)) listed.push_back(id);
      ours_params.ids = listed;
    } else {
      ours_params.filter = std::cref(filter);
    }
  }
  const faiss::SearchParameters* theirs_params = fparams ? fparams->top : nullptr;
  auto query = [&](uint64_t i) {
    return std::span<const float>(queries.data() + (i % 16) * c.queries * c.dim, c.queries * c.dim);
  };
  // What each finds of the true k nearest (an exact search) for every query
  // the runs use: the price of an approximate index's speed, and the proof
  // that the knobs reached both.
  double ours_recall = 0, faiss_recall = 0;
  {
    const auto nq = static_cast<faiss::Index::idx_t>(16 * c.queries);
    const auto k = static_cast<faiss::Index::idx_t>(c.k);
    faiss::IndexFlatL2 exact(static_cast<faiss::Index::idx_t>(c.dim));
    exact.add(static_cast<faiss::Index::idx_t>(c.vectors), data.data());
    std::vector<float> dd(static_cast<size_t>(nq * k));
    std::vector<faiss::Index::idx_t> truth(dd.size()), theirs(dd.size());
    faiss::SearchParameters exact_params;
    exact_params.sel = &selector;
    exact.search(nq, queries.data(), k, dd.data(), truth.data(), fparams ? &exact_params : nullptr);
    fi->search(nq, queries.data(), k, dd.data(), theirs.data(), theirs_params);
    auto ours = d->Search(queries, c.k, ours_params);
    Check(ours.status());
    size_t ours_hits = 0, faiss_hits = 0;
    for (size_t q = 0; q < static_cast<size_t>(nq); ++q) {
      const auto* t = truth.data() + q * c.k;
      for (size_t j = 0; j < c.k; ++j) {
        ours_hits += std::count(t, t + c.k, static_cast<faiss::Index::idx_t>(ours->ids[q * c.k + j]));
        faiss_hits += std::count(t, t + c.k, theirs[q * c.k + j]);
      }
    }
    ours_recall = static_cast<double>(ours_hits) / static_cast<double>(truth.size());
    faiss_recall = static_cast<double>(faiss_hits) / static_cast<double>(truth.size());
  }
  std::vector<double> ours_qps, faiss_qps, ours_p99, faiss_p99;
  std::vector<float> dist(c.queries * c.k * static_cast<size_t>(c.searchers));
  std::vector<faiss::Index::idx_t> labels(dist.size());
  for (int r = 0; r < c.repeat; ++r) {
    auto o = TimeCalls(c.searchers, c.seconds,
                       [&](int, uint64_t i) { return d->Search(query(i), c.k, ours_params).ok(); });
    auto f = TimeCalls(c.searchers, c.seconds, [&](int t, uint64_t i) {
      auto q = query(i);
      const size_t off = static_cast<size_t>(t) * c.queries * c.k;
      fi->search(static_cast<faiss::Index::idx_t>(c.queries), q.data(), static_cast<faiss::Index::idx_t>(c.k),
                 dist.data() + off, labels.data() + off, theirs_params);
      return true;
    });
    ours_qps.push_back(o.per_sec * static_cast<double>(c.queries));
    faiss_qps.push_back(f.per_sec * static_cast<double>(c.queries));
    ours_p99.push_back(o.lat.p99_us);
    faiss_p99.push_back(f.lat.p99_us);
  }
  const std::string w = fmt::format(
      "search {}k x {}-d {}{}{}, k={}, {} queries/call, {} threads{}", c.vectors / 1000, c.dim, c.description,
      c.wrap_index ? " on GPU 0" : "",
      knobs.empty() ? "" : " " + knobs, c.k, c.queries, c.searchers,
      c.filter_share > 0 ? fmt::format(", filter passes {:g}%{}", 100 * c.filter_share, c.filter_as_ids ? " (ids)" : "")
                         : std::string());
  return {{w, "queries/s", Median(ours_qps), "FAISS CPU search, same index", Median(faiss_qps), true, ""},
          {w, "call p99 us", Median(ours_p99), "FAISS CPU search p99", Median(faiss_p99), false, ""},
          {w, "recall@k", ours_recall, "FAISS CPU search recall@k", faiss_recall, true, ""}};
}

std::vector<Row> RunMixedBench(const StoreWorkloadConfig& c) {
  Scratch s(c.dir);
  const auto data = RandomVectors(std::max<size_t>(c.vectors, 4096), c.dim, 4);
  const auto queries = RandomVectors(16 * c.queries, c.dim, 5);
  fmt::print(stderr, "  building a store of {} x {}-d vectors ({}) ...\n", c.vectors, c.dim, c.description);
  auto d = OpenStore(c, s.path() + "/db", c.checkpoint_mib);
  Fill(*d, c, data, c.vectors);
  std::atomic<uint64_t> next_id{0};
  auto write = [&](int, uint64_t i) {
    // Updates of existing ids and inserts of new ones, half and half.
    uint64_t id = i % 2 ? next_id.fetch_add(1) + c.vectors : (i * 7919) % c.vectors;
    return d->Upsert(id, {data.data() + (i % 4096) * c.dim, c.dim}).ok();
  };
  auto search = [&](int, uint64_t i) {
    return d->Search({queries.data() + (i % 16) * c.queries * c.dim, c.queries * c.dim}, c.k).ok();
  };
  std::vector<double> w_alone, w_mixed, w99_alone, w99_mixed, wmax_alone, wmax_mixed, s_alone, s_mixed, s99_alone, s99_mixed, smax_alone,
      smax_mixed, ckpts;
  // Each phase starts with every write merged into the index: where the index
  // adds slower than writers write (HNSW here), a phase would otherwise inherit
  // the last one's backlog, up to 4 x recent_writes_merge_at vectors to merge.
  auto settle = [&] { Check(d->Checkpoint().status()); };
  for (int r = 0; r < c.repeat; ++r) {
    settle();
    auto wa = TimeCalls(c.writers, c.seconds, write);
    settle();
    auto sa = TimeCalls(c.searchers, c.seconds, search);
    settle();
    const auto st0 = d->Stats();
    int checkpoints = 0;
    uint64_t peak_log = 0;
    Timed wm, sm;
    {
      std::atomic<bool> stop{false};
      // Checkpoints by log volume, as configured; and at least one forced, so
      // every run has writes and searches meeting a checkpoint.
      std::thread ck([&] {
        std::this_thread::sleep_for(std::chrono::duration<double>(c.seconds / 3));
        if (!stop && d->Checkpoint().ok()) ++checkpoints;
      });
      // The log a crash now would replay, sampled.
      std::thread sampler([&] {
        for (; !stop; std::this_thread::sleep_for(std::chrono::milliseconds(50)))
          peak_log = std::max(peak_log, d->Stats().log_bytes_since_checkpoint);
      });
      std::thread searchers([&] { sm = TimeCalls(c.searchers, c.seconds, search); });
      wm = TimeCalls(c.writers, c.seconds, write);
      searchers.join();
      stop = true;
      ck.join();
      sampler.join();
    }
    const auto st1 = d->Stats();
    const double limit_mib = c.checkpoint_mib * static_cast<double>(c.stall_writes_at_intervals);
    fmt::print(stderr,
               "    log since the last checkpoint: peak {:.2f} MiB ({}); {} checkpoints, {} writes stalled for {:.2f} s\n",
               static_cast<double>(peak_log) / (1 << 20),
               limit_mib > 0 ? fmt::format("writers wait at {:.2f} MiB", limit_mib) : std::string("no limit"),
               st1.checkpoints - st0.checkpoints, st1.stalled_writes - st0.stalled_writes,
               st1.write_stall_s - st0.write_stall_s);
    if (st1.last_checkpoint_lsn != st0.last_checkpoint_lsn && checkpoints == 0) checkpoints = 1;
    w_alone.push_back(wa.per_sec);
    w_mixed.push_back(wm.per_sec);
    w99_alone.push_back(wa.lat.p99_us);
    w99_mixed.push_back(wm.lat.p99_us);
    wmax_alone.push_back(wa.lat.max_us);
    wmax_mixed.push_back(wm.lat.max_us);
    s_alone.push_back(sa.per_sec * static_cast<double>(c.queries));
    s_mixed.push_back(sm.per_sec * static_cast<double>(c.queries));
    s99_alone.push_back(sa.lat.p99_us);
    s99_mixed.push_back(sm.lat.p99_us);
    smax_alone.push_back(sa.lat.max_us);
    smax_mixed.push_back(sm.lat.max_us);
    ckpts.push_back(checkpoints);
  }
  const std::string w = fmt::format("mixed {}k x {}-d {}: {} writers + {} searchers + checkpoints", c.vectors / 1000,
                                    c.dim, c.description, c.writers, c.searchers);
  return {{w, "upserts/s", Median(w_mixed), "the same writers alone", Median(w_alone), true, ""},
          {w, "upsert p99 us", Median(w99_mixed), "upsert p99, writers alone", Median(w99_alone), false, ""},
          {w, "upsert max us", Median(wmax_mixed), "longest upsert, writers alone", Median(wmax_alone), false, ""},
          {w, "queries/s", Median(s_mixed), "the same searchers alone", Median(s_alone), true, ""},
          {w, "search p99 us", Median(s99_mixed), "search p99, searchers alone", Median(s99_alone), false, ""},
          {w, "search max us", Median(smax_mixed), "longest search, searchers alone", Median(smax_alone), false, ""},
          {w, "checkpoints", Median(ckpts), "", 0, true, ""}};
}

}  // namespace vecwal::bench
