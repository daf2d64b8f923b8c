// Simulated power loss at every crash point of a workload.
//
// Each workload runs once over a PowerLossRecorder. Then, for every prefix of
// the disk operations it made (a crash point: after each write, completion,
// sync, rename, removal), and for each way the cut can treat what was not
// durable yet (all lost, all kept, the newest write torn at sector
// granularity, a random subset kept, torn and reordered, with unsynced
// directory entries lost), the disk is rebuilt in a scratch directory and
// opened in the default recovery mode. It must open, hold every op
// acknowledged before the crash point, and nothing garbled or partial.
//
// VECWAL_POWER_POINTS=N samples N crash points evenly (the sanitizer runs do);
// unset or 0 runs every one.
#define BOOST_TEST_MODULE power_loss
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <future>
#include <iterator>
#include <map>
#include <random>

#include "io/aligned_buffer.h"
#include "io/power_loss_file_system.h"
#include "recovery/durable_index.h"
#include "recovery/reindex.h"
#include "tests/test_util.h"

using namespace vecwal;

namespace {

// VECWAL_POWER_POINTS, or 0 (every point) where it is not set.
size_t PowerPointsAsked() {
  const char* env = std::getenv("VECWAL_POWER_POINTS");
  return env ? static_cast<size_t>(std::atoll(env)) : 0;
}

// `want` crash points out of [0, total], evenly spread; 0: every one.
std::vector<size_t> CrashPointsOf(size_t total, size_t want = PowerPointsAsked()) {
  std::vector<size_t> out;
  if (want == 0 || want > total) {
    for (size_t n = 0; n <= total; ++n) out.push_back(n);
  } else {
    for (size_t i = 0; i < want; ++i) out.push_back(i * total / (want - 1 > 0 ? want - 1 : 1));
  }
  return out;
}

// Scratch images go to tmpfs when there is one: thousands of small trees.
std::string ImageRoot() {
  const char* env = std::getenv("VECWAL_TEST_DIR");
  if (env) return env;
  return std::filesystem::exists("/dev/shm") ? "/dev/shm" : "/tmp";
}

size_t RecordSize(uint64_t lsn) { return 100 + (lsn * 2654435761u) % 9000; }

}  // namespace

BOOST_AUTO_TEST_CASE(log_keeps_every_acknowledged_record_at_every_power_loss_point) {
  test::TempDir t;
  const std::string root = t / "rec", log = root + "/log";
  auto rec = std::make_shared<PowerLossRecorder>(NewPosixFileSystem(test::BackendUnderTest()));
  std::map<uint64_t, uint64_t> acked_at;       // lsn -> op count when acknowledged
  std::vector<std::pair<uint64_t, uint64_t>> releases;  // (op count when it began, lsn)
  {
    auto o = test::SmallLogOptions();
    o.fs = rec;
    auto w = wal::Wal::Open(log, o);
    BOOST_REQUIRE_MESSAGE(w.ok(), w.status().ToString());
    uint64_t next = 1;
    for (int i = 0; i < 120; ++i) {
      if (i % 4 == 3) {  // a burst of async appends: several writes in flight at once
        std::vector<std::vector<std::byte>> bodies;
        std::vector<std::future<Result<uint64_t>>> fs;
        for (int j = 0; j < 8; ++j) bodies.push_back(test::Payload(next + j, RecordSize(next + j)));
        for (auto& b : bodies) fs.push_back((*w)->AppendAsync(wal::RecordType::kOpaque, b));
        for (auto& f : fs) {
          auto lsn = f.get();
          BOOST_REQUIRE(lsn.ok());
          BOOST_REQUIRE(*lsn == next);
          acked_at[next++] = rec->op_count();
        }
      } else {
        auto lsn = (*w)->Append(wal::RecordType::kOpaque, test::Payload(next, RecordSize(next)));
        BOOST_REQUIRE(lsn.ok());
        BOOST_REQUIRE(*lsn == next);
        acked_at[next++] = rec->op_count();
      }
      if (i % 40 == 39) {
        const uint64_t x = next - 20;
        releases.push_back({rec->op_count(), x});
        BOOST_REQUIRE((*w)->ReleaseBefore(x).ok());
      }
    }
    BOOST_REQUIRE((*w)->Close().ok());
  }
  const auto ops = rec->ops();
  const auto points = CrashPointsOf(ops.size());
  BOOST_TEST_MESSAGE(ops.size() << " disk operations, " << points.size() << " crash points, " << acked_at.size()
                                << " records");
  std::mt19937_64 rng(42);
  size_t images = 0;
  for (size_t n : points) {
    uint64_t floor = 1;
    for (auto [at, x] : releases)
      if (at <= n) floor = std::max(floor, x);
    for (CrashVariant v : kAllCrashVariants) {
      const std::string img = ImageRoot() + "/vecwal-power-" + std::to_string(::getpid());
      std::filesystem::remove_all(img);
      BOOST_REQUIRE(BuildCrashImage(ops, n, v, rng, root, img).ok());
      ++images;
      std::map<uint64_t, std::vector<std::byte>> got;
      auto o = test::SmallLogOptions();
      auto w = wal::Wal::Open(img + "/log", o, [&](const wal::LogRecord& r) {
        got[r.lsn].assign(r.payload.begin(), r.payload.end());
        return Status::OK();
      });
      const std::string where = "crash point " + std::to_string(n) + " of " + std::to_string(ops.size()) + ", " +
                                ToString(v);
      BOOST_REQUIRE_MESSAGE(w.ok(), where << ": " << w.status().ToString());
      for (const auto& [lsn, body] : got)
        BOOST_REQUIRE_MESSAGE(body == test::Payload(lsn, RecordSize(lsn)), where << ": LSN " << lsn << " garbled");
      for (const auto& [lsn, at] : acked_at)
        if (at <= n && lsn >= floor)
          BOOST_REQUIRE_MESSAGE(got.count(lsn), where << ": acknowledged LSN " << lsn << " lost");
      // Appends go on after the last record that survived.
      auto next = (*w)->Append(wal::RecordType::kOpaque, test::Payload(1, 10));
      BOOST_REQUIRE_MESSAGE(next.ok(), where << ": " << next.status().ToString());
      if (!got.empty()) BOOST_TEST(*next == got.rbegin()->first + 1);
      BOOST_REQUIRE((*w)->Close().ok());
      w->reset();
      std::filesystem::remove_all(img);
    }
  }
  BOOST_TEST_MESSAGE(images << " power-loss images verified");
}

namespace {

constexpr uint32_t kDim = 8;
using Model = std::map<uint64_t, std::pair<std::vector<float>, std::vector<std::byte>>>;

std::vector<float> VecFor(uint64_t seed) {
  std::vector<float> v(kDim);
  for (uint32_t i = 0; i < kDim; ++i) v[i] = static_cast<float>((seed * 31 + i * 7) % 1000) / 100.f;
  return v;
}

recovery::DurableIndexOptions StoreOptions(const std::string& dir, std::shared_ptr<FileSystem> fs,
                                           const std::string& desc) {
  recovery::DurableIndexOptions o;
  o.dir = dir;
  o.spec = {kDim, index::Metric::kL2, desc};
  o.wal = test::SmallLogOptions();
  if (fs) o.wal.fs = std::move(fs);
  o.checkpoint_every_log_bytes = 2 << 10;  // many checkpoints, each releasing log
  if (desc != "Flat") {
    o.compact_tombstone_ratio = 0.5;  // some checkpoints keep tombstones, some rebuild without them
    o.recent_writes_merge_at = 4;   // writes reach the index between checkpoints too
  }
  return o;
}

// Lossy codes (PQ, SQ) give vectors back approximately, within `tolerance`
// a component. Payloads are still exact, and tell a wrong id apart.
std::string Differs(const recovery::DurableIndex& d, const Model& m, float tolerance) {
  if (d.Size() != m.size()) return "size " + std::to_string(d.Size()) + " vs " + std::to_string(m.size());
  for (const auto& [id, row] : m) {
    auto e = d.Get(id);
    if (!e.ok()) return "id " + std::to_string(id) + " missing";
    if (e->payload != row.second || e->vector.size() != row.first.size())
      return "id " + std::to_string(id) + " differs";
    for (size_t i = 0; i < row.first.size(); ++i)
      if (!(std::abs(e->vector[i] - row.first[i]) <= tolerance))
        return "id " + std::to_string(id) + " differs at component " + std::to_string(i);
  }
  return "";
}

// Records a workload of 150 single, removing and batched ops on a store of
// `desc` (trained first where it needs it, which checkpoints), then opens
// the store at `points` of its crash points (0: every one) in every variant,
// and checks it holds the ops acknowledged by then, or those and the one in
// flight, and takes writes.
void CheckStoreAtPowerLossPoints(const std::string& desc, float tolerance, size_t points_wanted) {
  test::TempDir t;
  const std::string root = t / "rec", db = root + "/db";
  auto rec = std::make_shared<PowerLossRecorder>(NewPosixFileSystem(test::BackendUnderTest()));
  std::vector<Model> states(1);         // states[k]: after the first k ops
  std::vector<uint64_t> acked_at(1, 0);  // acked_at[k]: op count when op k-1 was acknowledged
  std::mt19937_64 rng(7);
  {
    auto d = recovery::DurableIndex::Open(StoreOptions(db, rec, desc));
    BOOST_REQUIRE_MESSAGE(d.ok(), d.status().ToString());
    if ((*d)->NeedsTraining()) {
      std::vector<float> sample;
      for (int i = 0; i < 500; ++i) {
        auto v = VecFor(rng());
        sample.insert(sample.end(), v.begin(), v.end());
      }
      auto trained = (*d)->Train(sample);
      BOOST_REQUIRE_MESSAGE(trained.ok(), trained.ToString());
    }
    for (int i = 0; i < 150; ++i) {
      Model m = states.back();
      const uint64_t id = rng() % 30, seed = rng();
      auto payload = test::Payload(seed, rng() % 40);
      Status s;
      const int kind = static_cast<int>(rng() % 6);
      if (kind == 0 && m.count(id)) {
        s = (*d)->Remove(id);
        m.erase(id);
      } else if (kind == 1) {
        recovery::WriteBatch b;
        const uint64_t id2 = (id + 1) % 30;
        b.Upsert(id, VecFor(seed), payload);
        b.Remove(id2);
        s = (*d)->Apply(b);
        m[id] = {VecFor(seed), payload};
        m.erase(id2);
      } else {
        s = (*d)->Upsert(id, VecFor(seed), payload);
        m[id] = {VecFor(seed), payload};
      }
      BOOST_REQUIRE_MESSAGE(s.ok(), s.ToString());
      states.push_back(std::move(m));
      acked_at.push_back(rec->op_count());
    }
    BOOST_REQUIRE((*d)->Close().ok());
  }
  const auto ops = rec->ops();
  const auto points = CrashPointsOf(ops.size(), points_wanted);
  BOOST_TEST_MESSAGE(desc << ": " << ops.size() << " disk operations, " << points.size() << " crash points");
  for (size_t n : points) {
    // Ops acknowledged by then must be there; the one in flight may be.
    size_t acked = 0;
    while (acked + 1 < acked_at.size() && acked_at[acked + 1] <= n) ++acked;
    for (CrashVariant v : kAllCrashVariants) {
      const std::string img = ImageRoot() + "/vecwal-power-db-" + std::to_string(::getpid());
      std::filesystem::remove_all(img);
      BOOST_REQUIRE(BuildCrashImage(ops, n, v, rng, root, img).ok());
      const std::string where = desc + ", crash point " + std::to_string(n) + " of " + std::to_string(ops.size()) +
                                ", " + ToString(v) + ", " + std::to_string(acked) + " ops acknowledged";
      auto d = recovery::DurableIndex::Open(StoreOptions(img + "/db", nullptr, desc));
      BOOST_REQUIRE_MESSAGE(d.ok(), where << ": " << d.status().ToString());
      std::string first = Differs(**d, states[acked], tolerance);
      bool ok = first.empty() || (acked + 1 < states.size() && Differs(**d, states[acked + 1], tolerance).empty());
      BOOST_REQUIRE_MESSAGE(ok, where << ": the store equals neither the acknowledged state nor the next: " << first);
      // A store with acknowledged writes was trained before them.
      if (acked > 0) BOOST_REQUIRE_MESSAGE(!(*d)->NeedsTraining(), where << ": the trained index was lost");
      if (!(*d)->NeedsTraining()) {
        auto s = (*d)->Upsert(1000, VecFor(1), {});
        BOOST_REQUIRE_MESSAGE(s.ok(), where << ": a write after reopening: " << s.ToString());
      }
      BOOST_REQUIRE((*d)->Close().ok());
      d->reset();
      std::filesystem::remove_all(img);
    }
  }
}

}  // namespace

BOOST_AUTO_TEST_CASE(store_keeps_every_acknowledged_op_at_every_power_loss_point) {
  CheckStoreAtPowerLossPoints("Flat", 0, PowerPointsAsked());
}

// Indexes that are trained (the trained, empty index is checkpointed before
// the first write) or that keep tombstones until a checkpoint rebuilds them
// (HNSW, IVF lists packed for fast scan: 3 of their 8 checkpoints rebuild
// here, the others keep tombstones) write other checkpoints than Flat's
// (copies, not exports): 120 crash points each, or a tenth of
// VECWAL_POWER_POINTS's (the sanitizer runs).
BOOST_AUTO_TEST_CASE(trained_and_tombstoning_stores_keep_every_acknowledged_op_at_power_loss_points) {
  const size_t asked = PowerPointsAsked();
  const size_t points = asked != 0 ? std::clamp<size_t>(asked / 10, 2, 120) : 120;
  const std::pair<const char*, float> kinds[] = {
      {"HNSW8", 0}, {"IVF4,Flat", 0}, {"IVF4,PQ8x4fs", 1}, {"HNSW8,SQ8", 0.1f}, {"OPQ4,IVF4,PQ4x4", 2}};
  for (const auto& [desc, tolerance] : kinds) CheckStoreAtPowerLossPoints(desc, tolerance, points);
}

// The simulator's truncation: bytes past the new size go, volatile writes
// below it stay volatile (kept, dropped or torn like any other). A recycled
// checkpoint file is written and then truncated to its new end before it is
// synced; a model that forgot the writes under the cut would call that
// checkpoint damaged.
BOOST_AUTO_TEST_CASE(truncation_keeps_the_volatile_writes_below_the_new_size) {
  test::TempDir t;
  const std::string root = t / "rec", path = root + "/f";
  std::filesystem::create_directories(root);
  auto rec = std::make_shared<PowerLossRecorder>(NewPosixFileSystem(test::BackendUnderTest()));
  {
    FileOpenOptions o;
    o.create = o.writable = true;
    auto f = rec->Open(path, o);
    BOOST_REQUIRE(f.ok());
    BOOST_REQUIRE(rec->SyncDir(root).ok());  // the name is durable; the write is not
    AlignedBuffer b(8192, 4096);
    std::memset(b.data(), 0xab, b.size());
    BOOST_REQUIRE((*f)->WriteAt(0, b.span()).ok());
  }
  BOOST_REQUIRE(rec->Truncate(path, 5000).ok());
  const auto ops = rec->ops();
  std::mt19937_64 rng(1);
  for (CrashVariant v : {CrashVariant::kKeepVolatile, CrashVariant::kDropVolatile}) {
    const std::string img = t / ("img-" + std::to_string(static_cast<int>(v)));
    BOOST_REQUIRE(BuildCrashImage(ops, ops.size(), v, rng, root, img).ok());
    std::ifstream in(img + "/f", std::ios::binary);
    std::vector<char> got((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    BOOST_TEST_CONTEXT(ToString(v)) {
      BOOST_TEST(got.size() == 5000u);
      const char want = v == CrashVariant::kKeepVolatile ? char(0xab) : char(0);
      BOOST_TEST(std::all_of(got.begin(), got.end(), [&](char c) { return c == want; }));
    }
  }
}

// The simulator's directory renames: a directory renamed whole (as a
// reindex names its finished store) is found under its new name once the
// directory it is in is synced, under its old one while that sync is
// lost, and its files are what was synced in it under either name.
BOOST_AUTO_TEST_CASE(a_renamed_directory_is_found_where_the_last_sync_of_its_parent_left_it) {
  test::TempDir t;
  const std::string root = t / "rec";
  std::filesystem::create_directories(root + "/building");
  auto rec = std::make_shared<PowerLossRecorder>(NewPosixFileSystem(test::BackendUnderTest()));
  {
    FileOpenOptions o;
    o.create = o.writable = true;
    auto f = rec->Open(root + "/building/f", o);
    BOOST_REQUIRE(f.ok());
    AlignedBuffer b(4096, 4096);
    std::memset(b.data(), 0xcd, b.size());
    BOOST_REQUIRE((*f)->WriteAt(0, b.span()).ok());
    BOOST_REQUIRE((*f)->Sync().ok());
  }
  BOOST_REQUIRE(rec->SyncDir(root + "/building").ok());
  BOOST_REQUIRE(rec->Rename(root + "/building", root + "/done").ok());
  const size_t before_sync = rec->op_count();
  BOOST_REQUIRE(rec->SyncDir(root).ok());
  const auto ops = rec->ops();
  std::mt19937_64 rng(1);
  auto found = [&](size_t n, CrashVariant v) {
    const std::string img = t / ("img-" + std::to_string(n) + "-" + std::to_string(static_cast<int>(v)));
    BOOST_REQUIRE(BuildCrashImage(ops, n, v, rng, root, img).ok());
    std::string where;
    for (const char* dir : {"/building/f", "/done/f"})
      if (std::filesystem::exists(img + dir)) {
        where += dir;
        BOOST_TEST(std::filesystem::file_size(img + dir) == 4096u);
      }
    return where;
  };
  BOOST_TEST(found(before_sync, CrashVariant::kDropVolatile) == "/building/f");  // the rename not synced
  BOOST_TEST(found(before_sync, CrashVariant::kKeepVolatile) == "/done/f");
  BOOST_TEST(found(before_sync - 1, CrashVariant::kKeepVolatile) == "/building/f");  // before the rename
  for (CrashVariant v : kAllCrashVariants) BOOST_TEST(found(ops.size(), v) == "/done/f", ToString(v));
}

// A reindex cut by power at any point of its disk operations leaves either
// no store at its target, or the whole new store, which opens with every
// entry of its source and takes writes; and the next reindex then succeeds.
BOOST_AUTO_TEST_CASE(a_reindex_cut_by_power_leaves_no_store_or_the_whole_one) {
  test::TempDir t;
  std::mt19937_64 rng(13);
  Model m;
  auto src = recovery::DurableIndex::Open(StoreOptions(t / "src", nullptr, "Flat"));
  BOOST_REQUIRE_MESSAGE(src.ok(), src.status().ToString());
  for (int i = 0; i < 120; ++i) {
    const uint64_t id = rng() % 80, seed = rng();
    auto payload = test::Payload(seed, rng() % 40);
    BOOST_REQUIRE((*src)->Upsert(id, VecFor(seed), payload).ok());
    m[id] = {VecFor(seed), payload};
  }
  const std::string root = t / "rec";
  std::filesystem::create_directories(root);
  auto rec = std::make_shared<PowerLossRecorder>(NewPosixFileSystem(test::BackendUnderTest()));
  auto to = StoreOptions(root + "/hnsw", rec, "HNSW8");
  auto rep = recovery::Reindex(**src, to);
  BOOST_REQUIRE_MESSAGE(rep.ok(), rep.status().ToString());
  const auto ops = rec->ops();
  BOOST_REQUIRE(!ops.empty());
  size_t named = 0;  // images holding the new store
  for (size_t n : CrashPointsOf(ops.size())) {
    for (CrashVariant v : kAllCrashVariants) {
      const std::string img = ImageRoot() + "/vecwal-power-rx-" + std::to_string(::getpid());
      std::filesystem::remove_all(img);
      BOOST_REQUIRE(BuildCrashImage(ops, n, v, rng, root, img).ok());
      const std::string where =
          "crash point " + std::to_string(n) + " of " + std::to_string(ops.size()) + ", " + ToString(v);
      auto at = StoreOptions(img + "/hnsw", nullptr, "HNSW8");
      if (std::filesystem::exists(at.dir)) {
        ++named;
        auto d = recovery::DurableIndex::Open(at);
        BOOST_REQUIRE_MESSAGE(d.ok(), where << ": " << d.status().ToString());
        const std::string differs = Differs(**d, m, 0);
        BOOST_REQUIRE_MESSAGE(differs.empty(), where << ": " << differs);
        BOOST_REQUIRE_MESSAGE((*d)->Upsert(1000, VecFor(1), {}).ok(), where);
      } else {
        auto again = recovery::Reindex(**src, at);  // over what the cut left beside it
        BOOST_REQUIRE_MESSAGE(again.ok(), where << ": a reindex after the cut: " << again.status().ToString());
        auto d = recovery::DurableIndex::Open(at);
        BOOST_REQUIRE_MESSAGE(d.ok() && Differs(**d, m, 0).empty(), where << ": after a reindex again");
      }
      std::filesystem::remove_all(img);
    }
  }
  BOOST_TEST(named > 0u);  // the last point's images hold it
}
