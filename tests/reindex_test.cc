// recovery::Reindex: a store copied into a new store of another index
// description, which opens with every entry the source held.
#define BOOST_TEST_MODULE reindex
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>

#include "io/fault_file_system.h"
#include "recovery/checkpoint_file.h"
#include "recovery/reindex.h"
#include "tests/durable_index_util.h"
#include "tests/test_util.h"

using namespace vecwal;
using namespace vecwal::recovery;
using namespace vecwal::store_test;

namespace {

// A Flat store of random ops (some in its recent writes, some checkpointed), and its model.
struct FlatStore {
  FlatStore() {
    std::mt19937_64 rng(5);
    d = OpenOrDie(Options(t / "flat"));
    RandomOps(*d, m, rng, 300);
    BOOST_REQUIRE(d->Checkpoint().ok());
    RandomOps(*d, m, rng, 300);
  }
  test::TempDir t;
  Model m;
  std::unique_ptr<DurableIndex> d;
};

}  // namespace

BOOST_AUTO_TEST_CASE(a_flat_store_reindexed_into_ivf_or_hnsw_opens_with_every_entry) {
  FlatStore s;
  for (const std::string desc : {"IVF4,Flat", "HNSW16", "IVF4,Flat copy-first", "HNSW16 copy-first"}) {
    BOOST_TEST_CONTEXT(desc) {
      const bool copy_first = desc.ends_with(" copy-first");
      auto to = Options(s.t / desc, desc.substr(0, desc.find(' ')));
      ReindexOptions how;
      how.batch = 16;
      how.copy_first = copy_first;
      std::vector<uint64_t> seen;
      how.progress = [&](uint64_t copied) { seen.push_back(copied); };
      auto rep = Reindex(*s.d, to, how);
      BOOST_REQUIRE_MESSAGE(rep.ok(), rep.status().ToString());
      BOOST_TEST(rep->entries == s.m.rows.size());
      // One call a batch of at most 16, up to every entry.
      BOOST_REQUIRE(!seen.empty());
      for (size_t i = 0; i < seen.size(); ++i) {
        const uint64_t step = seen[i] - (i == 0 ? 0 : seen[i - 1]);
        BOOST_TEST((step >= 1 && step <= 16), "call " << i << ": " << step << " entries");
      }
      BOOST_TEST(seen.back() == rep->entries);
      BOOST_TEST(rep->from_lsn == s.d->Stats().durable_lsn);
      BOOST_TEST(rep->trained_on == (desc.starts_with("HNSW16") ? 0u : s.m.rows.size()));
      // Each entry written once: one checkpoint, at LSN 1, and no log.
      std::vector<std::string> files;
      for (const auto& e : std::filesystem::directory_iterator(to.dir)) files.push_back(e.path().filename());
      std::sort(files.begin(), files.end());
      BOOST_TEST(files == (std::vector<std::string>{"LOCK", CheckpointFileName(1)}), files.size() << " files");
      BOOST_TEST(rep->checkpoint_lsn == 1u);
      auto copy = OpenOrDie(to);
      BOOST_TEST(copy->Stats().recovery.records_replayed == 0u);  // the checkpoint holds them all
      BOOST_TEST(copy->Stats().last_checkpoint_lsn == rep->checkpoint_lsn);
      ExpectEqual(*copy, s.m, /*exact_search=*/false);
      // Its log starts after the checkpoint, and what is written there stays.
      Model more = s.m;
      std::mt19937_64 rng(11);
      const auto v = Vec(rng);
      BOOST_REQUIRE(copy->Upsert(1000, v).ok());
      more.rows[1000] = {v, {}};
      BOOST_TEST(copy->Stats().durable_lsn == 2u);
      RandomOps(*copy, more, rng, 20);
      BOOST_REQUIRE(copy->Close().ok());
      ExpectEqual(*OpenOrDie(to), more, false);
    }
  }
  ExpectEqual(*s.d, s.m);  // the source is as it was
}

// Of 20000 offered rows (row i's first component is i), 500 kept: as many
// from each half, and some from the last tenth, within a few deviations.
BOOST_AUTO_TEST_CASE(a_training_sample_keeps_each_offered_vector_equally_likely) {
  TrainingSample s(2, 500, 9);
  for (int i = 0; i < 20000; ++i) {
    const float v[2] = {static_cast<float>(i), 1.f};
    s.Offer(v);
  }
  BOOST_REQUIRE(s.rows() == 500u);
  size_t first_half = 0, last_tenth = 0;
  for (size_t r = 0; r < s.rows(); ++r) {
    first_half += s.vectors()[2 * r] < 10000;
    last_tenth += s.vectors()[2 * r] >= 18000;
  }
  BOOST_TEST(first_half >= 200u);  // 250 expected, deviation 11
  BOOST_TEST(first_half <= 300u);
  BOOST_TEST(last_tenth >= 25u);  // 50 expected, deviation 7
  TrainingSample few(2, 500, 9);
  const float v[2] = {3.f, 4.f};
  few.Offer(v);
  BOOST_TEST(few.rows() == 1u);
}

BOOST_AUTO_TEST_CASE(a_training_sample_is_drawn_up_to_its_size) {
  FlatStore s;
  for (const bool copy_first : {false, true}) {
    BOOST_TEST_CONTEXT("copy_first " << copy_first) {
      auto to = Options(s.t / ("ivf" + std::to_string(copy_first)), "IVF4,Flat");
      ReindexOptions how;
      how.train_sample = 40;
      how.copy_first = copy_first;
      auto rep = Reindex(*s.d, to, how);
      BOOST_REQUIRE_MESSAGE(rep.ok(), rep.status().ToString());
      BOOST_TEST(rep->trained_on == 40u);
      ExpectEqual(*OpenOrDie(to), s.m, false);
    }
  }
}

BOOST_AUTO_TEST_CASE(reindex_refuses_a_directory_in_use_another_dimension_and_an_empty_source_to_train_on) {
  FlatStore s;
  auto to = Options(s.t / "taken");
  std::filesystem::create_directories(to.dir);
  std::ofstream(to.dir + "/notes.txt") << "mine";
  auto taken = Reindex(*s.d, to);
  BOOST_TEST((taken.status().code() == Status::Code::kInvalidArgument));
  BOOST_TEST(taken.status().ToString().find("notes.txt") != std::string::npos, taken.status().ToString());
  BOOST_TEST((Reindex(*s.d, Options(s.t / "flat")).status().code() == Status::Code::kInvalidArgument));  // its own
  // A target below a file: the error says which reindex it stopped.
  auto below_file = Reindex(*s.d, Options(to.dir + "/notes.txt/new"));
  BOOST_REQUIRE(!below_file.ok());
  BOOST_TEST(below_file.status().ToString().find("reindex into " + to.dir + "/notes.txt/new") != std::string::npos,
             below_file.status().ToString());

  auto wide = Options(s.t / "wide");
  wide.spec.dim = kDim + 1;
  auto w = Reindex(*s.d, wide);
  BOOST_TEST((w.status().code() == Status::Code::kInvalidArgument));
  BOOST_TEST(w.status().ToString().find("dimension " + std::to_string(kDim) + "; the new store's options say " +
                                        std::to_string(kDim + 1)) != std::string::npos,
             w.status().ToString());

  auto empty = OpenOrDie(Options(s.t / "empty"));
  auto e = Reindex(*empty, Options(s.t / "empty-ivf", "IVF4,Flat"));
  BOOST_TEST((e.status().code() == Status::Code::kInvalidArgument));
  BOOST_TEST(e.status().ToString().find("source is empty") != std::string::npos, e.status().ToString());
  // An empty source into an index that needs no training: an empty store.
  auto flat = Reindex(*empty, Options(s.t / "empty-flat"));
  BOOST_REQUIRE_MESSAGE(flat.ok(), flat.status().ToString());
  BOOST_TEST(flat->entries == 0u);
  BOOST_TEST(OpenOrDie(Options(s.t / "empty-flat"))->Size() == 0u);
}

// Built beside the target and renamed once complete: a failure part way
// (a payload over the new store's cap) leaves no store at the target, and
// what a crash left beside it is cleared by the next reindex.
BOOST_AUTO_TEST_CASE(a_reindex_that_fails_part_way_leaves_no_store_and_a_crashed_ones_leftovers_are_cleared) {
  FlatStore s;
  auto small = Options(s.t / "small");
  small.max_payload_bytes = 4;
  ReindexOptions how;
  how.batch = 8;
  auto failed = Reindex(*s.d, small, how);
  BOOST_REQUIRE(!failed.ok());
  BOOST_TEST(failed.status().ToString().find("entries after the first") != std::string::npos,
             failed.status().ToString());
  BOOST_TEST(!std::filesystem::exists(small.dir));
  BOOST_TEST(!std::filesystem::exists(small.dir + kReindexingSuffix));

  auto to = Options(s.t / "again");
  std::filesystem::create_directories(to.dir + kReindexingSuffix + "/wal");
  std::ofstream(to.dir + kReindexingSuffix + "/wal/junk") << "a crash's";
  std::filesystem::create_directories(to.dir);  // empty: taken
  auto rep = Reindex(*s.d, Options(s.t / "again/"), how);
  BOOST_REQUIRE_MESSAGE(rep.ok(), rep.status().ToString());
  BOOST_TEST(!std::filesystem::exists(to.dir + kReindexingSuffix));
  BOOST_TEST(!std::filesystem::exists(to.dir + "/wal/junk"));
  ExpectEqual(*OpenOrDie(to), s.m);
}

// copy_first: the source's merges wait for the copy alone, not for the new
// index's adds. A writer upserts into the source throughout, its recent
// writes bounded at 16; each add (of 8 entries) takes 10 ms more (its
// progress call), about half a second in all. While the scan holds merges
// the writer waits at the bound, so only with copy_first do its writes go
// on between the first add and the last.
BOOST_AUTO_TEST_CASE(with_copy_first_the_sources_writers_wait_for_the_copy_not_for_the_adds) {
  test::TempDir t;
  auto o = Options(t / "flat");
  o.recent_writes_merge_at = 4;
  auto d = OpenOrDie(o);
  std::mt19937_64 rng(3);
  for (uint64_t id = 0; id < 400; ++id) BOOST_REQUIRE(d->Upsert(id, Vec(rng)).ok());
  for (const bool copy_first : {false, true}) {
    std::atomic<bool> stop{false};
    std::atomic<uint64_t> written{0};
    std::atomic<bool> failed{false};
    std::thread writer([&, first = 1000 + 100000 * uint64_t{copy_first}] {
      std::mt19937_64 wr(first);
      for (uint64_t id = first; !stop; ++id) {
        if (!d->Upsert(id, Vec(wr)).ok()) failed = true;
        ++written;
      }
    });
    ReindexOptions how;
    how.copy_first = copy_first;
    how.batch = 8;
    uint64_t at_first = 0, at_last = 0;
    how.progress = [&](uint64_t copied) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      if (copied <= 8) at_first = written;
      at_last = written;
    };
    auto rep = Reindex(*d, Options(t / ("hnsw" + std::to_string(copy_first)), "HNSW16"), how);
    stop = true;
    writer.join();
    BOOST_REQUIRE_MESSAGE(rep.ok(), rep.status().ToString());
    BOOST_TEST(!failed);
    BOOST_TEST_CONTEXT("copy_first " << copy_first << ": " << at_last - at_first
                                     << " writes between the first add and the last") {
      if (copy_first) BOOST_TEST(at_last - at_first > 100u);
      else BOOST_TEST(at_last - at_first <= 40u);  // the bound (16), and the writes in flight
    }
  }
}

// ReindexOptions::threads caps FAISS's threads on the calling thread for
// the build (the progress callback runs there), and the cap goes with it.
BOOST_AUTO_TEST_CASE(a_reindex_builds_with_the_threads_it_is_given_and_gives_them_back) {
  FlatStore s;
  const size_t all = index::SearchThreads();
  for (const bool copy_first : {false, true}) {
    ReindexOptions how;
    how.threads = 1;
    how.copy_first = copy_first;
    size_t during = 0;
    how.progress = [&](uint64_t) { during = std::max(during, index::SearchThreads()); };
    auto rep = Reindex(*s.d, Options(s.t / ("ivf" + std::to_string(copy_first)), "IVF4,Flat"), how);
    BOOST_REQUIRE_MESSAGE(rep.ok(), rep.status().ToString());
    BOOST_TEST(during == 1u);
    BOOST_TEST(index::SearchThreads() == all);
  }
  ReindexOptions every;
  size_t during = 0;
  every.progress = [&](uint64_t) { during = std::max(during, index::SearchThreads()); };
  BOOST_REQUIRE(Reindex(*s.d, Options(s.t / "every", "IVF4,Flat"), every).ok());
  BOOST_TEST(during == all);
}

// The new store's checkpoint is its only copy of the entries: a disk that
// keeps other bytes than it was given, or a sync that fails, fails the
// reindex before the store is named, and nothing is left.
BOOST_AUTO_TEST_CASE(a_new_store_whose_checkpoint_does_not_read_back_or_sync_is_never_named) {
  FlatStore s;
  for (const bool flip : {true, false}) {
    BOOST_TEST_CONTEXT((flip ? "a flipped bit" : "a failed sync")) {
      auto fs = std::make_shared<FaultInjectionFileSystem>(NewPosixFileSystem());
      if (flip) fs->FlipBitInWritesTo(".vwc");
      else fs->FailSyncsFrom(0);
      auto to = Options(s.t / (flip ? "flipped" : "unsynced"), "HNSW16");
      to.wal.fs = fs;
      auto rep = Reindex(*s.d, to);
      BOOST_REQUIRE(!rep.ok());
      if (flip)
        BOOST_TEST(rep.status().ToString().find("read back") != std::string::npos, rep.status().ToString());
      BOOST_TEST(!std::filesystem::exists(to.dir));
      BOOST_TEST(!std::filesystem::exists(to.dir + kReindexingSuffix));
    }
  }
}

// A reindex holds its build directory's lock until the store is named: a
// second one into the same target is refused, and what the first has built
// stays.
BOOST_AUTO_TEST_CASE(a_second_reindex_into_the_same_target_is_refused_while_the_first_builds) {
  FlatStore s;
  auto to = Options(s.t / "ivf", "IVF4,Flat");
  const std::string building = to.dir + kReindexingSuffix;
  std::filesystem::create_directories(building);
  std::ofstream(building + "/" + CheckpointFileName(1)) << "the first's";
  auto fs = NewPosixFileSystem();
  auto first = fs->LockDir(building, 0);
  BOOST_REQUIRE(first.ok());
  auto second = Reindex(*s.d, to);
  BOOST_REQUIRE(!second.ok());
  BOOST_TEST(second.status().ToString().find("LOCK") != std::string::npos, second.status().ToString());
  BOOST_TEST(std::filesystem::exists(building + "/" + CheckpointFileName(1)));
  BOOST_TEST(!std::filesystem::exists(to.dir));
  first->reset();
  auto rep = Reindex(*s.d, to);  // the first one's leftovers, once it is gone
  BOOST_REQUIRE_MESSAGE(rep.ok(), rep.status().ToString());
  ExpectEqual(*OpenOrDie(to), s.m, false);
}

// The recipe for a store in service: Reindex a Backup of it, opened as a
// store of its own. The copy holds the store as it was at the backup, and
// the store's writes go on past it.
BOOST_AUTO_TEST_CASE(a_backup_of_a_store_in_service_reindexes_as_the_store_was_at_the_backup) {
  FlatStore s;
  auto b = s.d->Backup(s.t / "backup");
  BOOST_REQUIRE_MESSAGE(b.ok(), b.status().ToString());
  const Model at_backup = s.m;
  std::mt19937_64 rng(8);
  RandomOps(*s.d, s.m, rng, 100);  // the store goes on
  auto backup = OpenOrDie(Options(s.t / "backup"));
  auto rep = Reindex(*backup, Options(s.t / "hnsw", "HNSW16"));
  BOOST_REQUIRE_MESSAGE(rep.ok(), rep.status().ToString());
  BOOST_TEST(rep->from_lsn == b->lsn);
  ExpectEqual(*OpenOrDie(Options(s.t / "hnsw", "HNSW16")), at_backup, false);
}
