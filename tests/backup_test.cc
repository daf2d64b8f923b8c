// DurableIndex::Backup: a copy of the store that opens as the store was,
// beside writers, and what it does when the disk on either side is wrong.
#define BOOST_TEST_MODULE backup
#include <boost/test/unit_test.hpp>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <random>
#include <tuple>
#include <thread>
#include <vector>

#include "io/fault_file_system.h"
#include "recovery/checkpoint_file.h"
#include "recovery/durable_index.h"
#include "tests/durable_index_util.h"
#include "tests/test_util.h"

using namespace vecwal;
using namespace vecwal::recovery;
using namespace vecwal::store_test;

namespace {

bool HoldsACheckpoint(const std::string& dir) {
  auto l = ListCheckpoints(*NewPosixFileSystem(), dir);
  return l.ok() && !l->empty();
}

bool HoldsOnly(const std::string& dir, const std::vector<std::string>& names) {
  std::vector<std::string> have;
  for (const auto& e : std::filesystem::directory_iterator(dir)) have.push_back(e.path().filename().string());
  std::sort(have.begin(), have.end());
  auto want = names;
  std::sort(want.begin(), want.end());
  return have == want;
}

// A store of 200 random ops, and its model, on a disk that breaks on command.
struct RandomStore {
  explicit RandomStore(uint64_t seed) : rng(seed) {
    o.wal.fs = disk;
    d = OpenOrDie(o);
    RandomOps(*d, m, rng, 200);
  }
  test::TempDir t;
  DurableIndexOptions o = Options(t / "db");
  std::shared_ptr<FaultInjectionFileSystem> disk =
      std::make_shared<FaultInjectionFileSystem>(NewPosixFileSystem(test::BackendUnderTest()));
  std::mt19937_64 rng;
  Model m;
  std::unique_ptr<DurableIndex> d;
};

}  // namespace

// The backup holds the store as it was at the call, loads from its checkpoint
// with nothing to replay, and goes on from the next LSN; the store goes on
// apart from it. With nothing logged since the newest checkpoint, that one
// is copied and none is written.
BOOST_AUTO_TEST_CASE(a_backup_opens_as_the_store_was_when_it_was_taken) {
  RandomStore s(41);
  auto [t, o, m, rng, d] = std::tie(s.t, s.o, s.m, s.rng, s.d);
  BOOST_REQUIRE(d->Checkpoint().ok());
  RandomOps(*d, m, rng, 150);  // after the newest checkpoint: the backup writes one
  const Model at_backup = m;
  const uint64_t checkpoints = d->Stats().checkpoints;
  auto info = d->Backup(t / "backup");
  BOOST_REQUIRE_MESSAGE(info.ok(), info.status().ToString());
  BOOST_TEST(info->lsn == d->Stats().durable_lsn);
  BOOST_TEST(d->Stats().checkpoints == checkpoints + 1);
  BOOST_TEST(info->path == t / "backup" + "/" + CheckpointFileName(info->lsn));
  BOOST_TEST(info->bytes == std::filesystem::file_size(info->path));
  RandomOps(*d, m, rng, 100);  // not in the backup

  auto bo = Options(t / "backup");
  {
    auto b = OpenOrDie(bo);
    BOOST_TEST(b->Stats().recovery.checkpoint_lsn == info->lsn);
    BOOST_TEST(b->Stats().recovery.records_replayed == 0u);
    ExpectEqual(*b, at_backup);
    BOOST_REQUIRE(b->Upsert(9999, Vec(rng)).ok());
    BOOST_TEST(b->Stats().durable_lsn == info->lsn + 1);  // LSNs go on past the copy
  }
  ExpectEqual(*d, m);

  // Nothing logged since: the newest checkpoint is the backup.
  BOOST_REQUIRE(d->Checkpoint().ok());
  const uint64_t before = d->Stats().checkpoints;
  auto again = d->Backup(t / "again");
  BOOST_REQUIRE_MESSAGE(again.ok(), again.status().ToString());
  BOOST_TEST(d->Stats().checkpoints == before);
  BOOST_TEST(again->lsn == d->Stats().last_checkpoint_lsn);
  BOOST_REQUIRE(d->Close().ok());
  ExpectEqual(*OpenOrDie(Options(t / "again")), m);
  ExpectEqual(*OpenOrDie(o), m);
}

// A trained index (IVF: its centroids) and a graph with tombstones back up
// and open as they were, untrained stores included.
BOOST_AUTO_TEST_CASE(trained_and_graph_indexes_back_up_as_they_are) {
  for (const std::string desc : {"IVF4,Flat", "HNSW8"}) {
    BOOST_TEST_CONTEXT(desc) {
      test::TempDir t;
      auto options = [&](const std::string& dir) {
        auto o = Options(dir, desc);
        if (desc == "IVF4,Flat") o.search.nprobe = 4;  // every list: exact, as the model's search
        o.compact_tombstone_ratio = 1;                 // HNSW keeps its tombstones in the checkpoint
        return o;
      };
      auto o = options(t / "db");
      std::mt19937_64 rng(59);
      Model m;
      auto d = OpenOrDie(o);
      if (d->NeedsTraining()) {
        auto untrained = d->Backup(t / "untrained");
        BOOST_REQUIRE_MESSAGE(untrained.ok(), untrained.status().ToString());
        BOOST_TEST(OpenOrDie(options(t / "untrained"))->NeedsTraining());
        std::vector<float> sample;
        for (int i = 0; i < 400; ++i) {
          auto v = Vec(rng);
          sample.insert(sample.end(), v.begin(), v.end());
        }
        BOOST_REQUIRE(d->Train(sample).ok());
      }
      RandomOps(*d, m, rng, 300);
      auto info = d->Backup(t / "backup");
      BOOST_REQUIRE_MESSAGE(info.ok(), info.status().ToString());
      auto b = OpenOrDie(options(t / "backup"));
      BOOST_TEST(!b->NeedsTraining());
      ExpectEqual(*b, m, /*exact_search=*/desc != "HNSW8");
    }
  }
}

// Each writer's upserts are acknowledged in order, so a backup at any LSN
// holds a prefix of each writer's ids: at least those acknowledged before the
// call, at most those placed before it returned.
BOOST_AUTO_TEST_CASE(a_backup_beside_writers_holds_every_op_acknowledged_before_it) {
  test::TempDir t;
  auto o = Options(t / "db");
  auto d = OpenOrDie(o);
  constexpr uint64_t kWriters = 4, kStride = 1'000'000;
  auto vec_of = [](uint64_t id) {
    std::mt19937_64 r(id);
    return Vec(r);
  };
  std::atomic<bool> stop{false};
  std::array<std::atomic<uint64_t>, kWriters> acked{};
  std::atomic<int> failures{0};
  std::vector<std::thread> writers;
  for (uint64_t w = 0; w < kWriters; ++w)
    writers.emplace_back([&, w] {
      for (uint64_t i = 0; !stop; ++i) {
        if (!d->Upsert(w * kStride + i, vec_of(w * kStride + i)).ok()) ++failures;
        acked[w] = i + 1;
      }
    });
  while (acked[0] < 200) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  std::array<uint64_t, kWriters> before{}, after{};
  for (uint64_t w = 0; w < kWriters; ++w) before[w] = acked[w];
  auto info = d->Backup(t / "backup");
  for (uint64_t w = 0; w < kWriters; ++w) after[w] = acked[w];
  stop = true;
  for (auto& w : writers) w.join();
  BOOST_REQUIRE_MESSAGE(info.ok(), info.status().ToString());
  BOOST_REQUIRE(failures == 0);

  auto b = OpenOrDie(Options(t / "backup"));
  uint64_t total = 0;
  for (uint64_t w = 0; w < kWriters; ++w) {
    uint64_t n = 0;
    while (b->Contains(w * kStride + n)) ++n;
    BOOST_TEST_CONTEXT("writer " << w << ": " << before[w] << " acknowledged before, " << after[w] << " after") {
      BOOST_TEST(n >= before[w]);
      BOOST_TEST(n <= after[w] + 1);  // one more may have been placed, not yet acknowledged
      for (uint64_t i = 0; i < n; ++i) {
        auto e = b->Get(w * kStride + i);
        BOOST_REQUIRE(e.ok() && e->vector == vec_of(w * kStride + i));
      }
    }
    total += n;
  }
  BOOST_TEST(b->Size() == total);  // a prefix each, and nothing else
  BOOST_TEST(b->Stats().recovery.checkpoint_lsn == info->lsn);
  BOOST_TEST(info->lsn == total);  // one LSN per upsert, from 1
}

// A destination that holds anything but a lock file is refused, and so is a
// closed store: nothing is written, nothing is removed.
BOOST_AUTO_TEST_CASE(a_backup_refuses_a_destination_that_is_not_empty) {
  test::TempDir t;
  auto o = Options(t / "db");
  auto d = OpenOrDie(o);
  BOOST_REQUIRE(d->Upsert(1, std::vector<float>(kDim, 1.f)).ok());
  std::filesystem::create_directories(t / "full");
  std::ofstream(t / "full/notes.txt") << "keep me";
  auto refused = d->Backup(t / "full");
  BOOST_TEST(refused.status().code() == Status::Code::kInvalidArgument);
  BOOST_TEST(refused.status().message().find(t / "full") != std::string::npos, refused.status().ToString());
  BOOST_TEST(refused.status().message().find("notes.txt") != std::string::npos, refused.status().ToString());
  BOOST_TEST(HoldsOnly(t / "full", {"notes.txt"}));
  BOOST_TEST(!d->Backup(o.dir).ok());  // the store's own directory
  BOOST_TEST(!d->Backup("").ok());
  BOOST_REQUIRE(d->Close().ok());
  auto closed = d->Backup(t / "later");
  BOOST_TEST(closed.status().code() == Status::Code::kUnavailable, closed.status().ToString());
  BOOST_TEST(!HoldsACheckpoint(t / "later"));
}

// The store's newest checkpoint went bad on its disk after it was written,
// and nothing was logged since: the backup finds the damage as it reads the
// file, writes the checkpoint anew and copies that. The store's own file
// verifies again.
BOOST_AUTO_TEST_CASE(a_backup_writes_a_checkpoint_that_no_longer_verifies_anew_and_copies_that) {
  RandomStore s(43);
  auto [t, m, d] = std::tie(s.t, s.m, s.d);
  const uint64_t lsn = *d->Checkpoint();
  test::XorByte(t / "db/" + CheckpointFileName(lsn), 5000);
  const uint64_t checkpoints = d->Stats().checkpoints;
  auto info = d->Backup(t / "backup");
  BOOST_REQUIRE_MESSAGE(info.ok(), info.status().ToString());
  BOOST_TEST(info->lsn == lsn);
  BOOST_TEST(d->Stats().checkpoints == checkpoints + 1);
  auto own = VerifyCheckpoint(*NewPosixFileSystem(), t / "db/" + CheckpointFileName(lsn));
  BOOST_REQUIRE(own.ok());
  BOOST_TEST(own->ok());
  ExpectEqual(*OpenOrDie(Options(t / "backup")), m);
  ExpectEqual(*d, m);
}

// A write of the copy fails (ENOSPC): the backup fails with the disk's error,
// the destination holds no checkpoint and no partial file, and the store goes
// on taking writes; a backup tried again succeeds there.
BOOST_AUTO_TEST_CASE(a_backup_that_fails_to_write_leaves_no_checkpoint_and_the_store_goes_on) {
  RandomStore s(47);
  BOOST_REQUIRE(s.d->Checkpoint().ok());  // nothing to write before the copy: its writes are the ones counted
  s.disk->FailWritesFrom(1, ENOSPC);
  const std::string dest = s.t / "backup";
  auto failed = s.d->Backup(dest);
  BOOST_REQUIRE(!failed.ok());
  BOOST_TEST(failed.status().sys_errno() == ENOSPC, failed.status().ToString());
  BOOST_TEST(failed.status().message().find(dest) != std::string::npos, failed.status().ToString());
  BOOST_TEST(HoldsOnly(dest, {"LOCK"}));
  s.disk->ClearFaults();
  RandomOps(*s.d, s.m, s.rng, 50);
  auto info = s.d->Backup(dest);
  BOOST_REQUIRE_MESSAGE(info.ok(), info.status().ToString());
  ExpectEqual(*OpenOrDie(Options(dest)), s.m);
  ExpectEqual(*s.d, s.m);
}

// The destination's disk stores other bytes than it acknowledged: only the
// read-back finds it. The backup fails as Corruption and leaves no checkpoint
// there, not one that a later Open would refuse (or fall back from).
BOOST_AUTO_TEST_CASE(a_backup_whose_copy_reads_back_wrong_is_refused) {
  RandomStore s(53);
  const std::string dest = s.t / "backup";
  s.disk->FlipBitInWritesTo(dest + "/");
  auto failed = s.d->Backup(dest);
  BOOST_REQUIRE(!failed.ok());
  BOOST_TEST(failed.status().code() == Status::Code::kCorruption, failed.status().ToString());
  BOOST_TEST(failed.status().message().find("read back") != std::string::npos, failed.status().ToString());
  BOOST_TEST(!HoldsACheckpoint(dest));
  s.disk->ClearFaults();
  ExpectEqual(*s.d, s.m);  // the store's own checkpoint was written where no bit flips
  BOOST_REQUIRE(s.d->Close().ok());
  ExpectEqual(*OpenOrDie(s.o), s.m);
}
