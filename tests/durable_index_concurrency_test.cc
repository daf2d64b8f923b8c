// recovery/: the durable index's writers beside its searches, merges and
// checkpoints: who waits for whom, for how long, and that every read stays
// exact meanwhile.
#define BOOST_TEST_MODULE durable_index_concurrency
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <thread>
#include <map>
#include <optional>
#include <semaphore>
#include <set>
#include <functional>
#include <future>
#include <random>
#include <span>
#include <utility>

#include "index/forwarding_index.h"
#include "index/vector_index.h"
#include "recovery/durable_index.h"
#include "tests/durable_index_util.h"
#include "tests/test_util.h"

using namespace vecwal;
using namespace vecwal::recovery;
using namespace vecwal::store_test;

namespace {

// Id `id`'s vector of `dim` normal components, the same on every call.
std::vector<float> VecOf(uint64_t id, uint32_t dim) {
  std::mt19937_64 r(id);
  std::normal_distribution<float> g;
  std::vector<float> v(dim);
  for (auto& x : v) x = g(r);
  return v;
}

// Under a sanitizer our code runs several times slower and FAISS's does not:
// tests that compare times check only the results there.
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
constexpr bool kTimesChecked = false;
#else
constexpr bool kTimesChecked = true;
#endif

// Upserts ids [from, from + n) with VecOf vectors, as one atomic batch.
void UpsertRange(DurableIndex& d, uint64_t from, uint64_t n, uint32_t dim) {
  WriteBatch b;
  for (uint64_t id = from; id < from + n; ++id) b.Upsert(id, VecOf(id, dim));
  BOOST_REQUIRE(d.Apply(b).ok());
}

// Threads inserting VecOf vectors, each taking the next id from `first` on
// while `more(id)`; Join() returns the longest insert, in ms.
class TimedInserters {
 public:
  TimedInserters(DurableIndex& d, uint32_t dim, uint64_t first, int threads, std::function<bool(uint64_t)> more)
      : next_(first), longest_(static_cast<size_t>(threads), 0) {
    for (int w = 0; w < threads; ++w)
      threads_.emplace_back([this, &d, dim, w, more] {
        for (uint64_t id = next_++; more(id); id = next_++) {
          const auto t = std::chrono::steady_clock::now();
          if (!d.Insert(id, VecOf(id, dim)).ok()) ++errors_;
          const std::chrono::duration<double, std::milli> took = std::chrono::steady_clock::now() - t;
          longest_[static_cast<size_t>(w)] = std::max(longest_[static_cast<size_t>(w)], took.count());
        }
      });
  }
  double Join() {
    for (auto& t : threads_) t.join();
    threads_.clear();
    return *std::ranges::max_element(longest_);
  }
  int errors() const { return errors_.load(); }
  // One past the last id taken, once joined (the last one each took was not inserted).
  uint64_t next() const { return next_.load(); }

 private:
  std::atomic<uint64_t> next_;
  std::atomic<int> errors_{0};
  std::vector<double> longest_;
  std::vector<std::thread> threads_;
};

}  // namespace

// With merges every few writes, reads beside two writers never go back
// behind a write that returned, and no search lists an id twice (a stale copy
// of it in the index beside its recent write).
BOOST_AUTO_TEST_CASE(reads_during_merges_see_each_ids_latest_write) {
  test::TempDir dir;
  auto o = Options(dir.path());
  o.recent_writes_merge_at = 2;
  auto d = OpenOrDie(o);
  constexpr int kWriters = 2, kIdsEach = 20, kRounds = 150;
  std::array<std::atomic<int>, kWriters * kIdsEach> returned{};  // the version each id's last returned write wrote
  std::atomic<int> writing{kWriters};
  test::ThreadErrors errors;
  auto vec = [](int version, uint64_t id) {
    std::vector<float> v(kDim, 0.f);
    v[0] = static_cast<float>(version);
    v[1] = static_cast<float>(id);
    return v;
  };
  std::vector<std::thread> ts;
  for (int w = 0; w < kWriters; ++w)
    ts.emplace_back([&, w] {
      for (int version = 1; version <= kRounds; ++version)
        for (int j = 0; j < kIdsEach; ++j) {
          const uint64_t id = w * kIdsEach + j;
          if (const Status s = d->Upsert(id, vec(version, id)); !s.ok()) errors.Add("upsert of id " + std::to_string(id) + ": " + s.ToString());
          returned[id] = version;
        }
      --writing;
    });
  for (int r = 0; r < 2; ++r)
    ts.emplace_back([&, r] {
      std::mt19937_64 rng(r);
      while (writing > 0) {
        const uint64_t id = rng() % returned.size();
        const int at_least = returned[id];
        auto e = d->Get(id);
        if (at_least > 0 && (!e.ok() || e->vector[0] < static_cast<float>(at_least) || e->vector[1] != static_cast<float>(id)))
          errors.Add("id " + std::to_string(id) + " read behind version " + std::to_string(at_least));
        auto hits = d->Search(vec(at_least, id), returned.size());
        if (!hits.ok()) {
          errors.Add("search: " + hits.status().ToString());
          continue;
        }
        std::set<uint64_t> seen;
        for (uint64_t h : hits->ids)
          if (h != index::kNoId && !seen.insert(h).second) errors.Add("a search listed id " + std::to_string(h) + " twice");
      }
    });
  for (auto& t : ts) t.join();
  BOOST_TEST(errors.count() == 0, errors.ToString());
  BOOST_TEST(d->Stats().merges > 100u);
  BOOST_TEST(d->Size() == returned.size());
}

// A scan beside a writer and its merges lists the store as it was at the
// LSN the scan returns: the writer's ops are in a known order (generation
// after generation over the same ids, some removed in even ones), so that
// LSN names exactly which vector, or none, each id has.
BOOST_AUTO_TEST_CASE(a_scan_beside_writes_and_merges_sees_the_store_at_the_lsn_it_returns) {
  test::TempDir dir;
  auto o = Options(dir.path());
  o.recent_writes_merge_at = 2;
  auto d = OpenOrDie(o);
  constexpr uint64_t kIds = 30;
  constexpr int kGenerations = 150;
  const uint64_t base = d->Stats().durable_lsn;
  auto removed_in = [](int gen, uint64_t id) { return gen % 2 == 0 && id % 5 == 4; };
  std::atomic<bool> writing{true};
  test::ThreadErrors errors;
  std::thread writer([&] {
    for (int gen = 1; gen <= kGenerations; ++gen)
      for (uint64_t id = 0; id < kIds; ++id) {
        std::vector<float> v(kDim, 0.f);
        v[0] = static_cast<float>(gen);
        v[1] = static_cast<float>(id);
        const Status s = removed_in(gen, id) ? d->Remove(id) : d->Upsert(id, v);
        if (!s.ok()) errors.Add("gen " + std::to_string(gen) + " id " + std::to_string(id) + ": " + s.ToString());
      }
    writing = false;
  });
  size_t scans = 0, mid_generation = 0;
  while (writing) {
    std::map<uint64_t, int> seen;  // id -> generation
    auto lsn = d->Scan(3, [&](const ScanPiece& p) {
      for (size_t i = 0; i < p.ids.size(); ++i)
        if (!seen.emplace(p.ids[i], static_cast<int>(p.vectors[i * kDim])).second)
          errors.Add("id " + std::to_string(p.ids[i]) + " listed twice");
      return Status::OK();
    });
    if (!lsn.ok()) {
      errors.Add("scan: " + lsn.status().ToString());
      break;
    }
    ++scans;
    // The ops up to the LSN: whole generations, then the first `into` ids of the next.
    const uint64_t ops = *lsn - base, gen = ops / kIds, into = ops % kIds;
    mid_generation += into != 0;
    for (uint64_t id = 0; id < kIds; ++id) {
      const int last = static_cast<int>(id < into ? gen + 1 : gen);  // the generation of its last op
      const bool present = last > 0 && !removed_in(last, id);
      auto it = seen.find(id);
      if (present != (it != seen.end()) || (present && it->second != last))
        errors.Add("scan at LSN " + std::to_string(*lsn) + ": id " + std::to_string(id) + " is " +
                   (it == seen.end() ? std::string("absent") : "of generation " + std::to_string(it->second)) +
                   ", its op up to there " + (present ? "of generation " + std::to_string(last) : std::string("removed it")));
    }
    if (errors.count() > 0) break;
  }
  writer.join();
  BOOST_TEST(errors.count() == 0, errors.ToString());
  BOOST_TEST(scans > 10u);
  BOOST_TEST(mid_generation > 0u);
  BOOST_TEST(d->Stats().merges > 100u);
  // A visitor's error ends the scan, and is what the scan returns.
  size_t pieces = 0;
  auto stopped = d->Scan(4, [&](const ScanPiece&) {
    ++pieces;
    return Status::Unavailable("enough");
  });
  BOOST_TEST(pieces == 1u);
  BOOST_TEST(stopped.status().ToString().find("enough") != std::string::npos, stopped.status().ToString());
  BOOST_TEST((d->Scan(0, [](const ScanPiece&) { return Status::OK(); }).status().code() == Status::Code::kInvalidArgument));
}

// A scan holds the merges back, not the readers: with a merge due and
// waiting for the scan, searches and Gets (of writes the merge has not
// moved) return while the scan's visitor is still inside.
BOOST_AUTO_TEST_CASE(searches_and_gets_go_on_while_a_scan_holds_a_due_merge_back) {
  test::TempDir dir;
  auto o = Options(dir.path());
  o.recent_writes_merge_at = 8;  // the bound, where writers wait for a merge: 32
  auto d = OpenOrDie(o);
  std::mt19937_64 rng(3);
  for (uint64_t id = 0; id < 100; ++id) BOOST_REQUIRE(d->Upsert(id, Vec(rng)).ok());
  BOOST_REQUIRE(d->Checkpoint().ok());  // nothing left to merge
  std::promise<void> inside;
  std::atomic<bool> release{false};
  Result<uint64_t> scanned = Status::Unavailable("not run");
  std::thread scanner([&] {
    bool first = true;
    scanned = d->Scan(10, [&](const ScanPiece&) {
      if (std::exchange(first, false)) {
        inside.set_value();
        while (!release) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      return Status::OK();
    });
  });
  inside.get_future().wait();
  const uint64_t merges = d->Stats().merges;
  // On a thread of its own, so that the scan is let go whatever happens.
  auto reads = std::async(std::launch::async, [&] {
    for (uint64_t id = 100; id < 120; ++id)  // a merge is due
      if (!d->Upsert(id, Vec(rng)).ok()) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));  // and waiting
    auto hits = d->Search(Vec(rng), 5);
    auto got = d->Get(110);
    return hits.ok() && got.ok();
  });
  const bool went_on = reads.wait_for(std::chrono::seconds(10)) == std::future_status::ready;
  const uint64_t merges_during = went_on ? d->Stats().merges : merges;  // Stats waits for a stuck writer
  release = true;
  scanner.join();
  BOOST_TEST(went_on);
  BOOST_TEST(reads.get());
  BOOST_TEST(merges_during == merges);  // held back
  BOOST_REQUIRE_MESSAGE(scanned.ok(), scanned.status().ToString());
  for (int i = 0; i < 1000 && d->Stats().merges == merges; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  BOOST_TEST(d->Stats().merges > merges);  // and run once the scan ends
}

// A flat index's storage doubles as it grows; each merge step makes its
// room beside searches (the bigger storage copied with the index held
// shared) and swaps it in under its hold. Searches running all the while
// find every vector whose batch returned, under its own id, through several
// doublings.
BOOST_AUTO_TEST_CASE(searches_find_every_returned_write_while_merges_move_the_storage) {
  test::TempDir dir;
  auto o = Options(dir.path());
  o.recent_writes_merge_at = 64;
  auto d = OpenOrDie(o);
  constexpr uint64_t kBatch = 100, kBatches = 160;
  std::atomic<uint64_t> returned{0};  // ids [0, returned) are written
  std::atomic<bool> writing{true};
  test::ThreadErrors errors;
  std::vector<std::thread> searchers;
  for (int t = 0; t < 2; ++t)
    searchers.emplace_back([&, t] {
      std::mt19937_64 rng(t);
      while (writing) {
        const uint64_t upto = returned.load();
        if (upto == 0) continue;
        // The newest batch (in the recent writes, or being merged) or any older one.
        const uint64_t id = rng() % 2 == 0 ? upto - 1 - rng() % kBatch : rng() % upto;
        auto hits = d->Search(VecOf(id, kDim), 1);
        if (!hits.ok()) errors.Add("search: " + hits.status().ToString());
        else if (hits->ids[0] != id)
          errors.Add("id " + std::to_string(id) + "'s vector found id " + std::to_string(hits->ids[0]) + " of " +
                     std::to_string(upto) + " written");
      }
    });
  for (uint64_t b = 0; b < kBatches; ++b) {
    UpsertRange(*d, b * kBatch, kBatch, kDim);
    returned = (b + 1) * kBatch;
  }
  writing = false;
  for (auto& t : searchers) t.join();
  BOOST_TEST(errors.count() == 0, errors.ToString());
  BOOST_TEST(d->Size() == kBatch * kBatches);
  BOOST_TEST(d->Stats().merges >= 10u);
}

// A Flat store's storage grows beside its writes (grow_storage_ahead_from):
// the store's thread copies it in steps while merges remove rows below what
// it copied and add rows around it. Searches go on beside it; the store
// equals its writers' models after, and after a reopen.
BOOST_AUTO_TEST_CASE(storage_grown_beside_writes_holds_every_write) {
  test::TempDir dir;
  auto o = Options(dir.path());
  o.recent_writes_merge_at = 32;
  o.grow_storage_ahead_from = 0;
  // Steps of a few rows, each 200 us longer: at this size a growth would be
  // whole before the next merge, and no write would land beside it.
  struct SlowGrowth final : index::ForwardingIndex {
    using ForwardingIndex::ForwardingIndex;
    bool GrowStep(size_t bytes) override {
      std::this_thread::sleep_for(std::chrono::microseconds(200));
      return inner_->GrowStep(bytes / 4);
    }
  };
  o.wrap_index = [](std::unique_ptr<index::VectorIndex> inner) -> Result<std::unique_ptr<index::VectorIndex>> {
    return std::unique_ptr<index::VectorIndex>(std::make_unique<SlowGrowth>(std::move(inner)));
  };
  Model all;
  {
    auto d = OpenOrDie(o);
    constexpr int kThreads = 3;
    std::vector<Model> models(kThreads);
    std::atomic<int> errors{0};
    std::atomic<bool> writing{true};
    std::thread searcher([&] {
      std::mt19937_64 rng(9);
      while (writing)
        if (!d->Search(Vec(rng), 3).ok()) ++errors;
    });
    std::vector<std::thread> ts;
    for (int t = 0; t < kThreads; ++t)
      ts.emplace_back([&, t] {
        std::mt19937_64 rng(70 + t);
        Model& m = models[t];
        for (uint64_t i = 0; i < 2500; ++i) {
          const uint64_t id = t * 1'000'000 + rng() % (100 + i);  // mostly new ids, some written again
          if (rng() % 4 == 0) {
            if (d->Remove(id).ok() != (m.rows.count(id) != 0)) ++errors;
            m.rows.erase(id);
          } else {
            auto v = Vec(rng);
            if (!d->Upsert(id, v).ok()) ++errors;
            m.rows[id] = {v, {}};
          }
        }
      });
    for (auto& t : ts) t.join();
    writing = false;
    searcher.join();
    BOOST_TEST(errors.load() == 0);
    BOOST_TEST_MESSAGE("storage growths: " << d->Stats().storage_growths);
    BOOST_TEST(d->Stats().storage_growths >= 2u);
    for (auto& m : models) all.rows.insert(m.rows.begin(), m.rows.end());
    ExpectEqual(*d, all);
  }
  ExpectEqual(*OpenOrDie(o), all);
}

// A graph index keeps removed vectors as tombstones; a checkpoint that finds
// enough of them rebuilds the index without them while writes go on (it
// rebuilt with every writer stopped, for as long as building the index took),
// and the rebuilt index holds exactly what the writes left.
BOOST_AUTO_TEST_CASE(a_checkpoint_rebuilds_a_graph_index_while_writes_go_on) {
  test::TempDir dir;
  auto o = Options(dir.path(), "HNSW32");  // its rebuild takes longer than writing its checkpoint
  Model m;
  std::mt19937_64 rng(31);
  auto d = OpenOrDie(o);
  constexpr uint64_t kIds = 20000;
  for (uint64_t base = 0; base < kIds; base += 1000) {
    WriteBatch b;
    for (uint64_t id = base; id < base + 1000; ++id) {
      auto v = Vec(rng);
      b.Upsert(id, v);
      m.rows[id] = {v, {}};
    }
    BOOST_REQUIRE(d->Apply(b).ok());
  }
  WriteBatch gone;
  for (uint64_t id = 0; id < kIds / 4; ++id) {
    gone.Remove(id);
    m.rows.erase(id);
  }
  BOOST_REQUIRE(d->Apply(gone).ok());
  // The writes that began after the checkpoint did: how many returned before
  // it ended, and the longest any took. With the rebuild holding writers
  // back, only writes beside the file's writing returned (8-18 here) and one
  // waited for about half the checkpoint; beside the rebuild, hundreds
  // return, and the longest waits a few percent of it.
  using Clock = std::chrono::steady_clock;
  std::atomic<bool> began{false}, ended{false};
  int written_meanwhile = 0;
  Clock::duration longest{};
  Status write_failed;  // the writer's, read once it joined
  std::thread writer([&] {
    std::mt19937_64 wrng(32);
    while (!ended) {
      const bool inside = began.load();
      const auto t = Clock::now();
      const uint64_t id = kIds / 4 + wrng() % (kIds / 2);  // rewrites: tombstones during the rebuild
      auto v = Vec(wrng);
      if (write_failed = d->Upsert(id, v); !write_failed.ok()) return;
      m.rows[id] = {v, {}};
      if (inside) longest = std::max(longest, Clock::now() - t);
      if (inside && !ended) ++written_meanwhile;
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const auto t0 = Clock::now();
  began = true;
  auto lsn = d->Checkpoint();
  ended = true;
  const auto took = Clock::now() - t0;
  writer.join();
  BOOST_REQUIRE_MESSAGE(write_failed.ok(), write_failed.ToString());
  BOOST_REQUIRE_MESSAGE(lsn.ok(), lsn.status().ToString());
  auto st = d->Stats();
  BOOST_TEST(st.compactions == 1u);
  BOOST_TEST(st.tombstones < kIds / 4);  // only what the writer rewrote during the rebuild
  auto ms = [](Clock::duration x) { return std::chrono::duration<double, std::milli>(x).count(); };
  BOOST_TEST_MESSAGE(written_meanwhile << " writes returned during the checkpoint (" << ms(took)
                                       << " ms), the longest took " << ms(longest) << " ms; tombstones "
                                       << st.tombstones);
  BOOST_TEST(written_meanwhile >= 50);
  BOOST_TEST(ms(longest) < ms(took) / 3);
  ExpectEqual(*d, m, false);
  d.reset();
  ExpectEqual(*OpenOrDie(o), m, false);
}

// A merge into HNSW adds milliseconds a vector here, and one of 512 at once
// held every search (and every apply) for as long as the whole add. A merge
// now sets the recent writes aside and adds them in steps: searches wait at
// most about a step. One writer inserts, updates and removes while a reader
// times its searches and checks every read against the ops returned so far:
// an id in the set a merge is moving must read from it (the index has
// dropped its old entry and holds some of the new ones, which it must hide).
// With merge_hold_us 0 (a merge at once) the longest search waits for a
// whole merge: the timing check can fail.
BOOST_AUTO_TEST_CASE(searches_wait_for_a_merges_step_not_the_whole_merge) {
  using Clock = std::chrono::steady_clock;
  constexpr uint32_t kWide = 256;  // slow enough HNSW adds to tell a step from a merge
  constexpr uint64_t kIds = 4096, kUpdated = 2048, kRemovedTo = 3072, kFill = 4000, kFillFrom = 1'000'000;
  auto vec = [](uint64_t id, int version) {
    std::mt19937_64 r(id * 7 + static_cast<uint64_t>(version));
    std::normal_distribution<float> g;
    std::vector<float> v(kWide);
    for (auto& x : v) x = g(r);
    v[0] = static_cast<float>(version);
    v[1] = static_cast<float>(id);
    return v;
  };
  // The ops in order: insert each id (version 1), update the first half
  // (version 2), remove the next quarter.
  auto op_of = [&](uint64_t i) -> std::pair<uint64_t, int> {  // (id, version; 0: removed)
    if (i < kIds) return {i, 1};
    if (i < kIds + kUpdated) return {i - kIds, 2};
    return {i - kIds - kUpdated + kUpdated, 0};
  };
  constexpr uint64_t kOps = kIds + kUpdated + (kRemovedTo - kUpdated);
  double longest_ms[2] = {0, 0};
  // The longest read in steps is a step and whatever the machine adds: beside
  // another test (ctest -j 2) one took 41 ms against 118 ms for a whole merge
  // (alone: 10-18 against 84-98). A pair that misses the ratio is measured
  // again, up to three times; the reads are checked in every one.
  for (int attempt = 1; attempt <= 3; ++attempt) {
    for (int stepped = 0; stepped < 2; ++stepped) {
      BOOST_TEST_CONTEXT((stepped ? "merges in steps" : "merges at once") << ", try " << attempt) {
        test::TempDir dir;
        auto o = Options(dir.path(), "HNSW32");
        o.spec.dim = kWide;
        o.recent_writes_merge_at = 2048;
        if (!stepped) o.merge_hold_us = 0;
        auto d = OpenOrDie(o);
        // A graph of some size first: adds to a small one are quick. Each half
        // stays below the merge bound, and the checkpoint merges it with
        // nobody waiting: its steps double (6 for 2000 rows), where steps of
        // about merge_hold_us took about 35.
        const auto t_fill = Clock::now();
        for (uint64_t base = 0; base < kFill; base += 100) {
          WriteBatch b;
          for (uint64_t id = kFillFrom + base; id < kFillFrom + base + 100; ++id) b.Upsert(id, vec(id, 1));
          BOOST_REQUIRE(d->Apply(b).ok());
          if ((base + 100) % (kFill / 2) == 0) BOOST_REQUIRE(d->Checkpoint().ok());
        }
        const auto filled = d->Stats();
        BOOST_TEST_MESSAGE("fill " << std::chrono::duration<double>(Clock::now() - t_fill).count() << " s, "
                                   << filled.merges << " merges in " << filled.merge_steps << " steps");
        BOOST_TEST(filled.merges == 2u);
        if (stepped) BOOST_TEST(filled.merge_steps <= 16u);
        std::atomic<uint64_t> done{0};
        int errors = 0;  // the reader's, on this thread
        test::ThreadErrors write_errors;
        std::thread writer([&] {
          for (uint64_t i = 0; i < kOps; ++i) {
            const auto [id, version] = op_of(i);
            const Status s = version == 0 ? d->Remove(id) : version == 1 ? d->Insert(id, vec(id, 1)) : d->Update(id, vec(id, 2));
            if (!s.ok()) write_errors.Add("op " + std::to_string(i) + ": " + s.ToString());
            done = i + 1;
          }
        });
        std::mt19937_64 rng(41);
        Clock::duration longest{};
        uint64_t searches = 0;
        while (done.load() < kOps) {
          const uint64_t before = done.load();
          if (before == 0) continue;
          auto t = Clock::now();  // each read call is timed: Get, Contains, Search
          auto timed = [&] {
            const auto now = Clock::now();
            longest = std::max(longest, now - t);
            t = now;
          };
          // The id of a returned op. A read may show the state the last
          // returned op on it left, or that of a later op on it: the one in
          // flight is visible before it returns.
          const uint64_t id = op_of(rng() % before).first;
          uint64_t last = 0;
          for (uint64_t i = 0; i < before; ++i)
            if (op_of(i).first == id) last = i;
          const int at_least = op_of(last).second;
          auto e = d->Get(id);
          timed();
          const bool contains = d->Contains(id);
          timed();
          std::set<int> may;  // the versions a read may show; 0: absent
          for (uint64_t i = last; i <= done.load() && i < kOps; ++i)
            if (op_of(i).first == id) may.insert(op_of(i).second);
          const int shown = e.ok() ? (e->vector[0] == 2.f ? 2 : 1) : 0;
          if (!may.count(shown) || (e.ok() && e->vector != vec(id, shown)) ||
              !std::ranges::any_of(may, [&](int v) { return (v != 0) == contains; })) {
            ++errors;
            BOOST_TEST_MESSAGE("id " << id << " read behind op " << last << ": version " << shown << ", contains "
                                     << contains);
          }
          auto hits = d->Search(vec(id, std::max(at_least, 1)), 10);
          timed();
          ++searches;
          if (!hits.ok()) {
            ++errors;
            continue;
          }
          std::set<uint64_t> seen;
          for (uint64_t h : hits->ids) {
            if (h == index::kNoId) continue;
            const bool removed = h >= kUpdated && h < kRemovedTo && before > kIds + (h - kUpdated) + kUpdated;
            if (!seen.insert(h).second || removed || (h >= kIds && (h < kFillFrom || h >= kFillFrom + kFill))) {
              ++errors;
              BOOST_TEST_MESSAGE("a search listed id " << h << (removed ? ", removed," : "") << " wrongly");
            }
          }
        }
        writer.join();
        longest_ms[stepped] = std::chrono::duration<double, std::milli>(longest).count();
        const auto st = d->Stats();
        BOOST_TEST_MESSAGE((stepped ? "in steps: " : "at once: ") << st.merges << " merges in " << st.merge_steps
                                                                  << " steps, " << searches
                                                                  << " searches, the longest " << longest_ms[stepped] << " ms");
        BOOST_TEST(errors == 0);
        BOOST_TEST(write_errors.count() == 0, write_errors.ToString());
        BOOST_TEST(st.merges >= 3u);
        if (stepped) BOOST_TEST(st.merge_steps - filled.merge_steps > 8 * (st.merges - filled.merges));
        BOOST_TEST(d->Size() == kFill + kIds - (kRemovedTo - kUpdated));
      }
    }
    if (!kTimesChecked || longest_ms[1] * 3 < longest_ms[0]) break;
  }
  // Under a sanitizer our code (the reads' scans of the recent writes) runs
  // several times slower and FAISS's adds do not, and the longest read in
  // steps measured 56-87 ms against 259-263 ms at once: the reads are checked
  // there, not the times.
  if (kTimesChecked) BOOST_TEST(longest_ms[1] * 3 < longest_ms[0]);
}

// Writers faster than the index (HNSW at 256-d) fill the recent writes to
// their bound. A writer there takes merge steps until they are under it, so
// writes go at the index's pace and none waits for a whole merge: where the
// writer at the bound merged every unmerged write at once, the longest of
// these writes waited for such a merge and more.
BOOST_AUTO_TEST_CASE(a_writer_at_the_bound_waits_for_a_merge_step_not_the_whole_merge) {
  using Clock = std::chrono::steady_clock;
  constexpr uint32_t kWide = 256;
  constexpr uint64_t kMergeAt = 128, kBound = 4 * kMergeAt, kFill = 1500, kWrites = 1200;
  auto vec = [](uint64_t id) { return VecOf(id, kWide); };
  // What one merge of the bound's writes costs this index, at once: FAISS's
  // add of them to a graph of the same size.
  double whole_ms = 0;
  {
    auto index = index::NewFaissIndex({kWide, index::Metric::kL2, "HNSW32"});
    BOOST_REQUIRE(index.ok());
    std::vector<uint64_t> ids;
    std::vector<float> rows;
    for (uint64_t id = 0; id < kFill + kBound; ++id) {
      ids.push_back(id);
      const auto v = vec(id);
      rows.insert(rows.end(), v.begin(), v.end());
    }
    BOOST_REQUIRE((*index)->Add(std::span(ids).first(kFill), std::span(rows).first(kFill * kWide)).ok());
    const auto t = Clock::now();
    BOOST_REQUIRE((*index)->Add(std::span(ids).subspan(kFill), std::span(rows).subspan(kFill * kWide)).ok());
    whole_ms = std::chrono::duration<double, std::milli>(Clock::now() - t).count();
  }
  test::TempDir dir;
  auto o = Options(dir.path(), "HNSW32");
  o.spec.dim = kWide;
  o.recent_writes_merge_at = kMergeAt;
  auto d = OpenOrDie(o);
  for (uint64_t base = 0; base < kFill; base += 100) UpsertRange(*d, base, 100, kWide);
  BOOST_REQUIRE(d->Checkpoint().ok());  // every write merged
  // A second round, only where the first had a write as long as a third of
  // the whole merge: a stall of a loaded machine (a 155 ms write in one CI-like
  // run, against 15 ms alone) seldom comes twice, a wait for a merge would.
  double longest_ms = 0;
  uint64_t written = kFill;
  for (int round = 0; round < 2; ++round) {
    const auto before = d->Stats();
    const uint64_t to = written + kWrites;
    TimedInserters writers(*d, kWide, written, 2, [to](uint64_t id) { return id < to; });
    longest_ms = writers.Join();
    written = to;
    const auto st = d->Stats();
    BOOST_TEST_MESSAGE("a merge of " << kBound << " at once: " << whole_ms << " ms; the longest write: "
                                     << longest_ms << " ms; " << st.merges - before.merges << " merges in "
                                     << st.merge_steps - before.merge_steps << " steps; " << st.recent_writes
                                     << " unmerged at the end");
    BOOST_TEST(writers.errors() == 0);
    BOOST_TEST(st.recent_writes < 2 * kBound);  // the set a merge moves, and fewer new ones than it has left
    BOOST_TEST(d->Size() == written);
    if (!kTimesChecked || longest_ms * 3 < whole_ms) break;
  }
  for (uint64_t id = 0; id < written; id += 7) {
    auto e = d->Get(id);
    BOOST_TEST((e.ok() && e->vector == vec(id)), "id " << id);
  }
  // Under a sanitizer our code runs several times slower and FAISS's adds do
  // not: the writes are checked there, not the times.
  if (kTimesChecked) BOOST_TEST(longest_ms * 3 < whole_ms);
}

// A checkpoint holds merge_mu_ through its whole merge; a writer at the bound
// meanwhile waits for one of its steps, not for all of them.
BOOST_AUTO_TEST_CASE(a_writer_at_the_bound_waits_for_a_step_of_a_checkpoints_merge) {
  using Clock = std::chrono::steady_clock;
  constexpr uint32_t kWide = 128;
  constexpr uint64_t kMergeAt = 256, kFill = 1500, kSet = 1000, kWriterFrom = 100'000;
  test::TempDir dir;
  auto o = Options(dir.path(), "HNSW32");
  o.spec.dim = kWide;
  o.recent_writes_merge_at = kMergeAt;  // bound 1024: a set of 1000 being merged leaves writers at it
  o.wal.segment_bytes = 4 << 20;        // room for a batch of 1000
  auto d = OpenOrDie(o);
  for (uint64_t base = 0; base < kFill; base += 100) UpsertRange(*d, base, 100, kWide);
  BOOST_REQUIRE(d->Checkpoint().ok());  // every write merged
  UpsertRange(*d, kFill, kSet, kWide);  // merged by the applier thread, then by the checkpoint
  std::atomic<bool> stop{false};
  TimedInserters writers(*d, kWide, kWriterFrom, 2, [&](uint64_t) { return !stop.load(); });
  const auto t = Clock::now();
  auto c = d->Checkpoint();
  const double checkpoint_ms = std::chrono::duration<double, std::milli>(Clock::now() - t).count();
  stop = true;
  const double longest_ms = writers.Join();
  BOOST_REQUIRE(c.ok());
  const uint64_t written = writers.next() - kWriterFrom - 2;  // each thread's last id was not inserted
  BOOST_TEST_MESSAGE("checkpoint " << checkpoint_ms << " ms; the longest of " << written << " writes beside it "
                                   << longest_ms << " ms");
  BOOST_TEST(writers.errors() == 0);
  BOOST_TEST(d->Size() == kFill + kSet + written);
  // Where they waited for merge_mu_, the longest took most of the checkpoint.
  if (kTimesChecked) BOOST_TEST(longest_ms * 5 < checkpoint_ms);
}

// A checkpoint takes the index as merged, at the LSN of the last op in it,
// and writers go on meanwhile. Where it stopped them until every op placed
// was merged, a writer beside an HNSW checkpoint waited for the merge of what
// it wrote while the checkpoint merged what was there before: at about the
// pace of the index's adds, as here, half the checkpoint.
BOOST_AUTO_TEST_CASE(a_checkpoint_holds_no_writer_back) {
  using Clock = std::chrono::steady_clock;
  constexpr uint32_t kWide = 256;
  constexpr uint64_t kFill = 1500, kUnmerged = 200, kWriterFrom = 100'000;  // batches of 100
  auto vec = [](uint64_t id) { return VecOf(id, kWide); };
  // The writer's pace: one write per two of FAISS's adds of one vector to a
  // graph of this size (a merge step beside a writer adds about one, and
  // pauses as long), so that the checkpoint's merges keep up with it.
  Clock::duration one_add{};
  {
    auto index = index::NewFaissIndex({kWide, index::Metric::kL2, "HNSW32"});
    BOOST_REQUIRE(index.ok());
    std::vector<Clock::duration> took;
    for (uint64_t id = 0; id < kFill + 21; ++id) {
      const auto v = vec(id);
      const uint64_t ids[] = {id};
      const auto t = Clock::now();
      BOOST_REQUIRE((*index)->Add(ids, v).ok());
      if (id >= kFill) took.push_back(Clock::now() - t);
    }
    std::ranges::sort(took);
    one_add = took[took.size() / 2];
  }
  test::TempDir dir;
  auto o = Options(dir.path(), "HNSW32");
  o.spec.dim = kWide;
  o.recent_writes_merge_at = 4096;  // merged by checkpoints only
  uint64_t lsn = 0, acked_before = 0;
  std::atomic<uint64_t> written{0};
  {
    auto d = OpenOrDie(o);
    for (uint64_t base = 0; base < kFill + kUnmerged; base += 100) {
      WriteBatch b;
      for (uint64_t id = base; id < base + 100; ++id) b.Upsert(id, vec(id));
      BOOST_REQUIRE(d->Apply(b).ok());
      if (base + 100 == kFill) BOOST_REQUIRE(d->Checkpoint().ok());
    }
    std::atomic<bool> checkpointing{false}, stop{false};
    std::atomic<int> errors{0};
    double longest_ms = 0;  // of the writes that overlapped the checkpoint
    std::thread writer([&] {
      for (uint64_t id = kWriterFrom; !stop.load(); ++id) {
        const bool during = checkpointing.load();
        const auto t = Clock::now();
        if (!d->Insert(id, vec(id)).ok()) ++errors;
        if (during || checkpointing.load())
          longest_ms = std::max(longest_ms, std::chrono::duration<double, std::milli>(Clock::now() - t).count());
        written = id - kWriterFrom + 1;
        std::this_thread::sleep_until(t + 2 * one_add);
      }
    });
    while (written < 10) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    acked_before = d->Stats().durable_lsn;
    checkpointing = true;
    const auto t = Clock::now();
    auto c = d->Checkpoint();
    const double checkpoint_ms = std::chrono::duration<double, std::milli>(Clock::now() - t).count();
    checkpointing = false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    stop = true;
    writer.join();
    BOOST_REQUIRE(c.ok());
    lsn = *c;
    const auto st = d->Stats();
    const double one_add_ms = std::chrono::duration<double, std::milli>(one_add).count();
    BOOST_TEST_MESSAGE("one add " << one_add_ms << " ms; checkpoint "
                                  << checkpoint_ms << " ms at LSN " << lsn << " (durable " << st.durable_lsn
                                  << "); the longest write beside it " << longest_ms << " ms; " << written.load()
                                  << " written");
    BOOST_TEST(errors.load() == 0);
    BOOST_TEST(lsn >= acked_before);  // every write acknowledged before the call
    BOOST_TEST(lsn <= st.durable_lsn);
    // Here 14-21 ms against 2.3-2.7 s; where the checkpoint held writers,
    // 393-484 ms against 1.4-1.5 s.
    if (kTimesChecked) BOOST_TEST(longest_ms * 10 < checkpoint_ms);
  }
  // The checkpoint, then the log after its LSN: every write.
  auto d = OpenOrDie(o);
  BOOST_TEST(d->Stats().recovery.checkpoint_lsn == lsn);
  BOOST_TEST(d->Size() == kFill + kUnmerged + written);
  for (uint64_t id = 0; id < kFill + kUnmerged; id += 37) {
    auto e = d->Get(id);
    BOOST_TEST((e.ok() && e->vector == vec(id)), "id " << id);
  }
  for (uint64_t i = 0; i < written; i += 7) {
    auto e = d->Get(kWriterFrom + i);
    BOOST_TEST((e.ok() && e->vector == vec(kWriterFrom + i)), "id " << kWriterFrom + i);
  }
}

// The write whose log bytes call for an automatic checkpoint returns once it
// is applied, like any other: the store's checkpointer takes the checkpoint.
BOOST_AUTO_TEST_CASE(an_automatic_checkpoint_keeps_no_write_waiting) {
  using Clock = std::chrono::steady_clock;
  constexpr uint32_t kWide = 128;
  constexpr uint64_t kFill = 3000, kBatch = 100, kWriterFrom = 100'000;
  auto vec = [](uint64_t id) { return VecOf(id, kWide); };
  test::TempDir dir;
  auto o = Options(dir.path() + "/db", "HNSW32");
  o.spec.dim = kWide;
  o.recent_writes_merge_at = 4096;  // merged by the checkpoint: it takes seconds
  // No log limit: a writer faster than the checkpoint would reach it (four
  // intervals) and wait there, by design, for the checkpoint's end (2.2 s of
  // a 5.3 s checkpoint on a slow day of this VM); that wait is tested apart.
  o.stall_writes_at_intervals = 0;
  uint64_t batch_bytes = 0, record_bytes = 0;  // log bytes, from a scratch store
  {
    auto scratch = o;
    scratch.dir = dir.path() + "/scratch";
    auto d = OpenOrDie(scratch);
    UpsertRange(*d, 0, kBatch, kWide);
    batch_bytes = d->Stats().log_bytes_since_checkpoint;
    BOOST_REQUIRE(d->Upsert(kWriterFrom, vec(kWriterFrom)).ok());
    record_bytes = d->Stats().log_bytes_since_checkpoint - batch_bytes;
  }
  // The 20th write after the fill crosses it.
  o.checkpoint_every_log_bytes = kFill / kBatch * batch_bytes + 20 * record_bytes - record_bytes / 2;
  auto d = OpenOrDie(o);
  for (uint64_t from = 0; from < kFill; from += kBatch) UpsertRange(*d, from, kBatch, kWide);
  BOOST_REQUIRE(d->Stats().checkpoints == 1u);  // the new store's, at Open
  double longest_ms = 0;
  uint64_t id = kWriterFrom;
  const auto until = Clock::now() + std::chrono::seconds(120);
  while (d->Stats().checkpoints < 2 && Clock::now() < until) {
    const auto t = Clock::now();
    BOOST_REQUIRE(d->Upsert(id, vec(id)).ok());
    longest_ms = std::max(longest_ms, std::chrono::duration<double, std::milli>(Clock::now() - t).count());
    ++id;
  }
  const auto st = d->Stats();
  BOOST_REQUIRE(st.checkpoints == 2u);
  BOOST_TEST(st.auto_checkpoint_failures == 0u);
  BOOST_TEST(st.stalled_writes == 0u);
  BOOST_TEST(st.last_checkpoint_lsn >= kFill / kBatch + 20);  // up to the crossing write, at least
  BOOST_TEST_MESSAGE("automatic checkpoint " << st.last_checkpoint_s * 1e3 << " ms at LSN " << st.last_checkpoint_lsn
                                             << "; the longest of " << id - kWriterFrom << " writes " << longest_ms
                                             << " ms");
  // Where the crossing write took the checkpoint itself, it took as long.
  if (kTimesChecked) BOOST_TEST(longest_ms * 5 < st.last_checkpoint_s * 1e3);
  BOOST_REQUIRE(d->Close().ok());
  auto again = OpenOrDie(o);
  BOOST_TEST(again->Size() == kFill + (id - kWriterFrom));
}

// Writers, searchers and checkpoints at once (run under ThreadSanitizer in CI).
BOOST_AUTO_TEST_CASE(concurrent_writers_searchers_checkpoints_and_scrubs) {
  test::TempDir dir;
  auto o = Options(dir.path(), "HNSW8");
  o.checkpoint_every_log_bytes = 32 << 10;
  o.compact_tombstone_ratio = 0;  // every checkpoint rebuilds the index beside the writers and searchers
  auto d = OpenOrDie(o);
  std::atomic<bool> stop{false};
  std::atomic<int> errors{0};
  std::vector<std::thread> ts;
  for (int w = 0; w < 3; ++w)
    ts.emplace_back([&, w] {
      std::mt19937_64 rng(w);
      for (int i = 0; i < 150; ++i) {
        uint64_t id = w * 1000 + rng() % 100;
        if (!d->Upsert(id, Vec(rng)).ok()) ++errors;
        if (i % 7 == 0 && d->Contains(id) && !d->Remove(id).ok()) ++errors;
      }
    });
  for (int r = 0; r < 2; ++r)
    ts.emplace_back([&, r] {
      std::mt19937_64 rng(100 + r);
      // The second searcher asks only for the second writer's ids.
      const auto writer_1 = [](uint64_t id) { return id / 1000 == 1; };
      while (!stop) {
        auto q = Vec(rng);
        auto res = r == 0 ? d->Search(q, 5) : d->Search(q, 5, {.filter = writer_1});
        if (!res.ok()) ++errors;
        for (uint64_t id : res->ids)
          if (id != index::kNoId && (id % 1000 >= 100 || (r == 1 && !writer_1(id))))
            ++errors;  // only ids that were written, and that the filter passes
        std::this_thread::sleep_for(std::chrono::microseconds(200));  // leave the writers a core
      }
    });
  ts.emplace_back([&] {
    while (!stop) {
      if (!d->Checkpoint().ok()) ++errors;
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  });
  std::vector<uint64_t> backed_up;  // the LSN of each backup
  ts.emplace_back([&] {  // backups beside the checkpoints they take and copy
    for (int b = 0; !stop; ++b) {
      auto info = d->Backup(dir / ("backup-" + std::to_string(b)));
      if (!info.ok()) ++errors;
      else backed_up.push_back(info->lsn);
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  });
  ts.emplace_back([&] {  // a scrub reads back the log the writers append to: no damage there
    while (!stop) {
      auto s = d->Scrub();
      if (!s.ok() || !s->problems.empty() || s->repaired_at_lsn != 0) ++errors;
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  });
  for (int w = 0; w < 3; ++w) ts[w].join();
  stop = true;
  for (size_t i = 3; i < ts.size(); ++i) ts[i].join();
  BOOST_TEST(errors.load() == 0);
  const size_t size = d->Size();
  BOOST_REQUIRE(d->Close().ok());
  d.reset();
  BOOST_TEST(OpenOrDie(o)->Size() == size);
  BOOST_TEST(!backed_up.empty());
  for (size_t b = 0; b < backed_up.size(); ++b) {
    auto copy = OpenOrDie(Options(dir / ("backup-" + std::to_string(b)), "HNSW8"));
    BOOST_TEST(copy->Stats().recovery.checkpoint_lsn == backed_up[b]);
  }
}

// Writers on disjoint ids, pipelined through one log: each thread's ids end
// as its own model says, before and after a reopen.
BOOST_AUTO_TEST_CASE(concurrent_writers_each_equal_their_own_model) {
  test::TempDir dir;
  auto o = Options(dir.path());
  o.checkpoint_every_log_bytes = 64 << 10;
  Model all;
  {
    auto d = OpenOrDie(o);
    constexpr int kThreads = 4;
    std::vector<Model> models(kThreads);
    std::atomic<int> errors{0};
    std::vector<std::thread> ts;
    for (int t = 0; t < kThreads; ++t)
      ts.emplace_back([&, t] {
        std::mt19937_64 rng(50 + t);
        Model& m = models[t];
        for (int i = 0; i < 250; ++i) {
          uint64_t id = t * 1000 + rng() % 40;
          auto v = Vec(rng);
          auto p = test::Payload(rng(), rng() % 30);
          bool present = m.rows.count(id) != 0;
          if (rng() % 3 == 0) {
            if (d->Remove(id).ok() != present) ++errors;
            m.rows.erase(id);
          } else if (rng() % 2 == 0) {
            if (d->Insert(id, v, p).ok() == present) ++errors;
            if (!present) m.rows[id] = {v, p};
          } else {
            if (!d->Upsert(id, v, p).ok()) ++errors;
            m.rows[id] = {v, p};
          }
        }
      });
    for (auto& t : ts) t.join();
    BOOST_TEST(errors.load() == 0);
    for (auto& m : models) all.rows.insert(m.rows.begin(), m.rows.end());
    ExpectEqual(*d, all);
  }
  ExpectEqual(*OpenOrDie(o), all);
}

namespace {

struct BesideSearch {
  bool held = false;        // the search ran on well after the writers were looked at
  int returned = 0;         // writers that returned while it ran
  bool seen = false;        // and their writes were visible to Get and Search
};

// 16 writers upsert (or insert) while a search of `nq` queries holds the
// index (a store with search_hold_us 0); they are given up to a second.
BesideSearch WriteBesideLongSearch(DurableIndex& d, std::mt19937_64& rng, size_t nq, bool insert = false) {
  std::vector<float> q;
  for (size_t i = 0; i < nq; ++i) {
    auto v = Vec(rng);
    q.insert(q.end(), v.begin(), v.end());
  }
  using Clock = std::chrono::steady_clock;
  std::atomic<bool> searching{true}, search_ok{false};
  Clock::time_point search_ended;
  std::thread search([&] {
    search_ok = d.Search(q, 10).ok();
    search_ended = Clock::now();
    searching = false;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // the search holds the index
  std::vector<std::vector<float>> vs;
  for (int i = 0; i < 16; ++i) vs.push_back(Vec(rng));
  std::atomic<int> returned{0};
  std::vector<std::thread> writers;
  for (uint64_t i = 0; i < 16; ++i)
    writers.emplace_back([&, i] {
      const uint64_t id = 1'000'000 + i;
      if ((insert ? d.Insert(id, vs[i]) : d.Upsert(id, vs[i])).ok()) ++returned;
    });
  BesideSearch out;
  const auto until = Clock::now() + std::chrono::seconds(1);
  while (returned.load() < 16 && searching.load() && Clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  out.returned = returned.load();
  const auto looked_at = Clock::now();
  if (out.returned == 16) {
    auto e = d.Get(1'000'007);
    auto hit = d.Search(vs[3], 1);
    out.seen = e.ok() && e->vector == vs[7] && hit.ok() && hit->ids[0] == 1'000'003 && d.Contains(1'000'015);
  }
  search.join();
  // Still searching when looked at is not enough: the search lets go of the
  // index inside Search, and its thread, preempted before it says so, may
  // let blocked writers return first. A margin the preemption cannot span
  // (the search runs seconds; a write beside it, milliseconds) can.
  out.held = search_ended - looked_at >= std::chrono::milliseconds(250);
  for (auto& w : writers) w.join();
  BOOST_REQUIRE(search_ok.load());
  BOOST_REQUIRE(returned.load() == 16);
  return out;
}

// A store of 20000 vectors, and how many queries make one search of it hold
// the index for about 3 s: timed on a batch as big as it takes for half a
// second, since per query big batches run faster than small ones.
size_t FillAndTimeLongSearch(DurableIndex& d, std::mt19937_64& rng) {
  for (uint64_t base = 0; base < 20000; base += 1000) {
    WriteBatch b;
    for (uint64_t id = base; id < base + 1000; ++id) b.Upsert(id, Vec(rng));
    BOOST_REQUIRE(d.Apply(b).ok());
  }
  size_t nq = 200;
  for (double took = 0; took < 0.5 && nq < 2'000'000; nq *= 4) {
    std::vector<float> probe;
    for (size_t i = 0; i < nq; ++i) {
      auto v = Vec(rng);
      probe.insert(probe.end(), v.begin(), v.end());
    }
    const auto t0 = std::chrono::steady_clock::now();
    BOOST_REQUIRE(d.Search(probe, 10).ok());
    took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (took >= 0.5) nq = static_cast<size_t>(static_cast<double>(nq) * 3.0 / took) / 4;  // ~3 s, after *= 4
  }
  return nq;
}

// WriteBesideLongSearch until a search held the index through it: up to 3
// tries, each search 4 times longer, `ready` run before each. Nothing where
// no search did; `nq` is then the longest tried.
std::optional<BesideSearch> WriteBesideAHeldSearch(DurableIndex& d, std::mt19937_64& rng, size_t& nq, bool insert,
                                                   const std::function<void()>& ready) {
  for (int attempt = 0; attempt < 3; ++attempt, nq *= 4) {
    ready();
    const auto r = WriteBesideLongSearch(d, rng, nq, insert);
    if (r.held) return r;  // else the search ended too soon to tell: a longer one
  }
  nq /= 4;
  return std::nullopt;
}

}  // namespace

// Writers apply beside the index (its recent writes), so a search that holds
// the index for seconds holds none of them back: they return, and what they
// wrote is seen, while it runs. A store that applies straight into the index
// (recent_writes_merge_at 0) makes them wait for the search: the check can fail.
BOOST_AUTO_TEST_CASE(writes_return_and_are_seen_while_a_search_holds_the_index) {
  for (size_t merge_at : {size_t{1024}, size_t{0}}) {
    BOOST_TEST_CONTEXT("recent_writes_merge_at " << merge_at) {
      test::TempDir dir;
      auto o = Options(dir.path());
      o.search_hold_us = 0;  // a search holds the index for its whole call
      o.recent_writes_merge_at = merge_at;
      auto d = OpenOrDie(o);
      std::mt19937_64 rng(5);
      size_t nq = FillAndTimeLongSearch(*d, rng);
      // Each search begins with no recent writes (the search path differs
      // with and without them): 16 writes a try stay below the merge bound.
      const auto r =
          WriteBesideAHeldSearch(*d, rng, nq, /*insert=*/false, [&] { BOOST_REQUIRE(d->Checkpoint().ok()); });
      BOOST_REQUIRE_MESSAGE(r, "no search held the index long enough, even with " << nq << " queries");
      if (merge_at != 0) {
        BOOST_TEST(r->returned == 16);
        BOOST_TEST(r->seen);
        BOOST_TEST(d->Stats().recent_writes > 0u);
      } else {
        BOOST_TEST(r->returned == 0);
      }
    }
  }
}

// An insert checks that its id is absent, which may mean asking the index.
// It asked holding the lock searches share, and once a merge waited for a
// search to end, that lock let no one in: the insert waited for the search,
// with placement held, and every writer behind it. It now asks under the
// recent writes' lock, which every change to the index's ids holds too.
BOOST_AUTO_TEST_CASE(inserts_return_while_a_merge_waits_for_a_search) {
  test::TempDir dir;
  auto o = Options(dir.path());
  o.search_hold_us = 0;
  o.recent_writes_merge_at = 8;  // half the writers' inserts call for a merge, which waits for the search
  auto d = OpenOrDie(o);
  std::mt19937_64 rng(6);
  size_t nq = FillAndTimeLongSearch(*d, rng);
  const auto r = WriteBesideAHeldSearch(*d, rng, nq, /*insert=*/true, [&] {
    BOOST_REQUIRE(d->Checkpoint().ok());
    for (uint64_t i = 0; i < 16; ++i) (void)d->Remove(1'000'000 + i);  // the ids inserted last try
    BOOST_REQUIRE(d->Checkpoint().ok());
  });
  BOOST_REQUIRE_MESSAGE(r, "no search held the index long enough, even with " << nq << " queries");
  BOOST_TEST(r->returned == 16);
  BOOST_TEST(r->seen);
}

// A thread's first blocking write asks for the store's writer slice, so a
// woken writer preempts CPU-bound searches; 0 leaves the thread alone.
BOOST_AUTO_TEST_CASE(a_blocking_write_asks_for_the_writer_slice) {
  if (!test::KernelHasCustomSlices()) {
    BOOST_TEST_MESSAGE("kernel before 6.12: slices asked for are not kept, nothing to see");
    return;
  }
  for (uint64_t slice_us : {uint64_t{300}, uint64_t{0}}) {
    test::TempDir dir;
    auto o = Options(dir.path());
    o.writer_slice_us = slice_us;
    auto d = OpenOrDie(o);
    uint64_t before = 0, after = 0;
    Status written;
    std::thread([&] {
      before = test::ReportedSlice();
      written = d->Upsert(1, std::vector<float>(kDim, 1.f));
      after = test::ReportedSlice();
    }).join();
    BOOST_TEST(written.ok(), written.ToString());
    BOOST_TEST(before != 300'000u);
    BOOST_TEST(after == (slice_us == 0 ? before : 300'000u));
  }
}

// Keeps a write in flight: the applier thread, which applies async writes,
// is held inside the callback of an earlier one, so a later one stays placed
// and unapplied until Release (or the end of the scope).
class WriteInFlight {
 public:
  WriteInFlight(DurableIndex& d, uint64_t id, std::mt19937_64& rng) {
    d.UpsertAsync(id, Vec(rng), {}, [this](const Status& st) {
      first_ok_ = st.ok();
      entered_.release();
      release_.acquire();
    });
    entered_.acquire();
    second_ = d.UpsertAsync(id + 1, Vec(rng));
  }
  ~WriteInFlight() { (void)Release(); }
  // Lets both writes through; whether both were applied.
  bool Release() {
    if (std::exchange(released_, true)) return false;
    release_.release();
    return second_.get().ok() && first_ok_.load();
  }

 private:
  std::binary_semaphore entered_{0}, release_{0};
  std::atomic<bool> first_ok_{false};
  bool released_ = false;
  std::future<Status> second_;
};

// A query that outlasts the hold makes a chunk of one query, which FAISS runs
// on one thread; with no write in flight a lone search takes a chunk of as
// many queries as FAISS has threads, and beside one it keeps to one query.
BOOST_AUTO_TEST_CASE(a_lone_search_takes_every_search_thread_unless_a_write_is_in_flight) {
  test::TempDir t;
  auto o = Options(t / "db");
  o.search_hold_us = 1;  // every query outlasts it, once a search has been timed
  auto d = OpenOrDie(o);
  std::mt19937_64 rng(5);
  std::vector<float> queries;
  WriteBatch b;
  for (uint64_t i = 0; i < 4000; ++i) {  // a query takes microseconds, however fast the machine
    auto v = Vec(rng);
    if (i < 12) queries.insert(queries.end(), v.begin(), v.end());
    b.Upsert(i, v);
  }
  BOOST_REQUIRE(d->Apply(b).ok());  // returns once applied: nothing is in flight after
  BOOST_REQUIRE(d->Search(queries, 3).ok());  // the first call is one chunk, and times a query
  const size_t threads = index::SearchThreads();
  if (threads == 1) BOOST_TEST_MESSAGE("FAISS has one thread here (OMP_NUM_THREADS=1): chunks of one query either way");
  auto holds_of_a_search = [&] {
    const uint64_t before = d->Stats().search_holds;
    auto got = d->Search(queries, 3);
    BOOST_TEST(got.ok(), got.status().ToString());  // not REQUIRE: the applier may be held below
    if (!got.ok()) return ~uint64_t{0};
    BOOST_TEST(got->nq == 12u);
    return d->Stats().search_holds - before;
  };
  BOOST_TEST(holds_of_a_search() == (12 + threads - 1) / threads);

  // Beside a write in flight the search takes one query a chunk.
  WriteInFlight w(*d, 5000, rng);
  BOOST_TEST(holds_of_a_search() == 12u);
  BOOST_REQUIRE(w.Release());
  BOOST_TEST(holds_of_a_search() == (12 + threads - 1) / threads);
}

// Where a call's queries cost less each in bigger calls (Flat's BLAS
// product, from index::VectorIndex::SearchBatchFloor queries on), a call
// with that many takes at least that many a chunk, a short tail with the
// chunk before it; and the chunks double while nobody waits for the index
// and no write is in flight, up to search_batch_hold_us (0: not at all).
BOOST_AUTO_TEST_CASE(a_call_of_many_queries_takes_them_in_chunks_of_the_batch_floor_that_grow_while_unwatched) {
  for (uint64_t batch_hold_us : {uint64_t{10'000'000}, uint64_t{0}}) {
    BOOST_TEST_CONTEXT("search_batch_hold_us " << batch_hold_us) {
      test::TempDir t;
      auto o = Options(t / "db");
      o.search_hold_us = 1;          // every query outlasts it, once a search has been timed
      o.recent_writes_merge_at = 0;  // no merge in the background to wait for the index
      o.search_batch_hold_us = batch_hold_us;
      auto d = OpenOrDie(o);
      const size_t floor = (*index::NewFaissIndex(o.spec))->SearchBatchFloor();
      BOOST_REQUIRE_MESSAGE(floor > 1, "Flat has no batch floor here: " << floor);
      std::mt19937_64 rng(6);
      std::vector<float> queries;
      for (uint64_t i = 0; i < 20000; i += 1000) {  // a query takes microseconds, however fast the machine
        WriteBatch b;
        for (uint64_t j = i; j < i + 1000; ++j) {
          auto v = Vec(rng);
          if (j < 10 * floor) queries.insert(queries.end(), v.begin(), v.end());
          b.Upsert(j, v);
        }
        auto applied = d->Apply(b);  // returns once applied: nothing is in flight after
        BOOST_REQUIRE_MESSAGE(applied.ok(), applied.ToString());
      }
      auto holds_of_a_search = [&](size_t nq) {
        const uint64_t before = d->Stats().search_holds;
        auto got = d->Search(std::span(queries).first(nq * kDim), 3);
        BOOST_TEST(got.ok(), got.status().ToString());  // not REQUIRE: the applier may be held below
        if (!got.ok()) return ~uint64_t{0};
        BOOST_TEST(got->nq == nq);
        return d->Stats().search_holds - before;
      };
      BOOST_TEST(holds_of_a_search(10 * floor) == 1u);  // the first call is one chunk, and times a query

      // Beside a write in flight: chunks of the floor, which a search beside it
      // sets back to.
      WriteInFlight w(*d, 30000, rng);
      (void)holds_of_a_search(floor);
      BOOST_TEST(holds_of_a_search(floor + floor / 2) == 1u);  // a tail under the floor goes with the chunk before
      BOOST_TEST(holds_of_a_search(2 * floor + floor / 2) == 2u);
      (void)holds_of_a_search(floor - 1);  // times a query of a call under the floor
      BOOST_TEST(holds_of_a_search(floor - 1) == floor - 1);  // a query a chunk, as before
      BOOST_REQUIRE(w.Release());

      if (batch_hold_us == 0) {  // chunks do not grow
        BOOST_TEST(holds_of_a_search(10 * floor) == 10u);
        BOOST_TEST(holds_of_a_search(10 * floor) == 10u);
      } else {
        // Nobody waiting and nothing in flight: 1, 2, 4, then the 3 floors left.
        BOOST_TEST(holds_of_a_search(10 * floor) == 4u);
        // Grown on: one chunk now takes a whole call of 10 floors.
        BOOST_TEST(holds_of_a_search(10 * floor) == 1u);
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(chunked_search_returns_what_one_whole_search_returns) {
  test::TempDir t;
  auto whole_opts = Options(t / "db");
  whole_opts.search_hold_us = 0;
  auto chunked_opts = whole_opts;
  chunked_opts.search_hold_us = 1;  // one query per hold once a search has been timed
  std::vector<float> data;
  std::mt19937_64 rng(17);
  {
    auto d = DurableIndex::Open(whole_opts);
    BOOST_REQUIRE(d.ok());
    for (uint64_t i = 0; i < 300; ++i) {
      auto v = Vec(rng);
      data.insert(data.end(), v.begin(), v.end());
      BOOST_REQUIRE((*d)->Upsert(i, v).ok());
    }
  }
  std::vector<float> queries(data.begin(), data.begin() + 37 * kDim);
  auto whole = DurableIndex::Open(whole_opts);
  BOOST_REQUIRE(whole.ok());
  auto want = (*whole)->Search(queries, 5);
  BOOST_REQUIRE(want.ok());
  BOOST_REQUIRE((*whole)->Close().ok());
  whole->reset();
  auto chunked = DurableIndex::Open(chunked_opts);
  BOOST_REQUIRE(chunked.ok());
  for (int call = 0; call < 2; ++call) {  // the first call times, the second is chunked
    auto got = (*chunked)->Search(queries, 5);
    BOOST_REQUIRE(got.ok());
    BOOST_TEST(got->nq == 37u);
    BOOST_TEST(got->ids == want->ids, boost::test_tools::per_element());
    // Single queries and batches take different FAISS kernels (BLAS from 20
    // queries on): the same neighbours, distances equal up to rounding.
    for (size_t j = 0; j < want->distances.size(); ++j)
      BOOST_TEST(std::abs(got->distances[j] - want->distances[j]) <= 1e-3f * (1 + want->distances[j]));
  }
  for (size_t q = 0; q < 37; ++q) BOOST_TEST(want->ids[q * 5] == q);  // each finds itself first
}

// Two searchers with different knobs at once (every list, and one), beside a
// writer whose far-away vectors merge into the index meanwhile: each gets
// exactly the results it got alone. Knobs set on the shared index (FAISS's
// ParameterSpace) would leak from one searcher into the other.
BOOST_AUTO_TEST_CASE(searchers_with_different_knobs_at_once_each_get_their_own) {
  constexpr uint32_t kWide = 16;
  test::TempDir dir;
  auto o = Options(dir.path(), "IVF8,Flat");
  o.spec.dim = kWide;
  o.recent_writes_merge_at = 16;
  auto d = OpenOrDie(o);
  std::vector<float> sample;
  for (uint64_t id = 0; id < 800; ++id) {
    const auto v = VecOf(id, kWide);
    sample.insert(sample.end(), v.begin(), v.end());
  }
  BOOST_REQUIRE(d->Train(sample).ok());
  UpsertRange(*d, 0, 800, kWide);
  BOOST_REQUIRE(d->Checkpoint().ok());
  std::vector<float> queries;
  for (uint64_t q = 0; q < 8; ++q) {
    const auto v = VecOf(10'000 + q, kWide);
    queries.insert(queries.end(), v.begin(), v.end());
  }
  const index::SearchParams every{.nprobe = 8}, one{.nprobe = 1};
  const auto alone_every = d->Search(queries, 5, every), alone_one = d->Search(queries, 5, one);
  BOOST_REQUIRE(alone_every.ok());
  BOOST_REQUIRE(alone_one.ok());
  BOOST_REQUIRE(alone_every->ids != alone_one->ids);
  std::atomic<bool> writing{true};
  std::atomic<int> wrong{0}, searches{0}, write_errors{0};
  std::thread writer([&] {
    // Far from every query: never among their 5 nearest. 200 writes: a
    // dozen merges at 16.
    for (uint64_t id = 100'000; id < 100'200; ++id) {
      std::vector<float> v(kWide, 1000.f + static_cast<float>(id % 1000));
      if (!d->Upsert(id, v).ok()) ++write_errors;
    }
    writing = false;
  });
  auto searcher = [&](const index::SearchParams& p, const index::SearchResults& want) {
    return std::thread([&, p] {
      for (int i = 0; i < 50 || writing.load(); ++i) {
        auto r = d->Search(queries, 5, p);
        ++searches;
        if (!r.ok() || r->ids != want.ids) ++wrong;
      }
    });
  };
  std::thread a = searcher(every, *alone_every), b = searcher(one, *alone_one);
  a.join();
  b.join();
  writer.join();
  BOOST_TEST_MESSAGE(searches.load() << " searches beside " << d->Stats().merges << " merges");
  BOOST_TEST(wrong.load() == 0);
  BOOST_TEST(write_errors.load() == 0);
  BOOST_TEST(d->Stats().merges > 2u);
}
