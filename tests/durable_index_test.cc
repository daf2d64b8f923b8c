// recovery/: the durable index against an in-memory reference model: reopens,
// checkpoints, bad input, faults, the log limit, async writes. Writers beside
// searches, merges and checkpoints: durable_index_concurrency_test.cc.
#define BOOST_TEST_MODULE durable_index
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <atomic>
#include <thread>
#include <map>
#include <set>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>

#include <sys/stat.h>

#include "io/fault_file_system.h"
#include "recovery/checkpoint_file.h"
#include "recovery/durable_index.h"
#include "tests/durable_index_util.h"
#include "index/forwarding_index.h"
#include "tests/test_util.h"

using namespace vecwal;
using namespace vecwal::recovery;
using namespace vecwal::store_test;

namespace {

// n random vectors, row after row: a training sample.
std::vector<float> Sample(std::mt19937_64& rng, int n) {
  std::vector<float> sample;
  for (int i = 0; i < n; ++i) {
    auto v = Vec(rng);
    sample.insert(sample.end(), v.begin(), v.end());
  }
  return sample;
}

// Two checkpoints with ops before, between and after them; the newer one is
// then damaged, so that Open falls back to the older. Returns its LSN.
uint64_t DamageTheNewerOfTwoCheckpoints(const test::TempDir& dir, const DurableIndexOptions& o, Model& m,
                                        std::mt19937_64& rng) {
  uint64_t newer = 0;
  {
    auto d = OpenOrDie(o);
    RandomOps(*d, m, rng, 100);
    BOOST_REQUIRE(d->Checkpoint().ok());
    RandomOps(*d, m, rng, 100);
    newer = *d->Checkpoint();
    RandomOps(*d, m, rng, 50);
  }
  test::XorByte(dir / CheckpointFileName(newer), 5000);
  return newer;
}

// Flips a bit in the payload of `r`, a record read back from dir/wal.
void DamagePayload(const test::TempDir& dir, const test::ReadBack& r) {
  test::XorByte(test::SegmentPath(dir / "wal", r.segment_id), r.offset + wal::kRecordHeaderSize + 4);
}

// The newest checkpoint's LSN once the store's checkpointer has taken one
// past `lsn`, or after 10 s without.
uint64_t AwaitCheckpointPast(const DurableIndex& d, uint64_t lsn) {
  for (int i = 0; i < 1000 && d.Stats().last_checkpoint_lsn <= lsn; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  return d.Stats().last_checkpoint_lsn;
}

// Two generations, then ops after them, one of which is damaged on disk and
// found by a Scrub: its repair retires both and leaves one, which it returns.
// No copy of a checkpoint is kept while the store holds two.
uint64_t RepairToOneGeneration(DurableIndex& d, const test::TempDir& dir, Model& m, std::mt19937_64& rng) {
  for (int i = 0; i < 2; ++i) {
    RandomOps(d, m, rng, 100);
    BOOST_REQUIRE(d.Checkpoint().ok());
  }
  BOOST_REQUIRE(!std::filesystem::exists(dir / kCheckpointCopyDir));
  RandomOps(d, m, rng, 50);
  auto log = test::ReadLog(dir / "wal", wal::RecoveryMode::kStrict);
  BOOST_REQUIRE(log.ok());
  const test::ReadBack victim = (*log)[log->size() - 20];  // after both checkpoints
  DamagePayload(dir, victim);
  auto found = d.Scrub();
  BOOST_REQUIRE(found.ok());
  BOOST_REQUIRE(found->repaired_at_lsn >= victim.lsn);
  BOOST_REQUIRE(ListCheckpoints(*NewPosixFileSystem(), dir.path())->size() == 1u);
  return found->repaired_at_lsn;
}

// The store opened from a checkpoint below `below`, said that `damaged` did
// not verify, and equals its model.
void ExpectFellBack(const DurableIndex& d, uint64_t below, uint64_t damaged, const Model& m) {
  const auto& r = d.Stats().recovery;
  BOOST_TEST(r.checkpoint_lsn < below);
  BOOST_TEST(r.checkpoint_note.find(CheckpointFileName(damaged)) != std::string::npos, r.checkpoint_note);
  ExpectEqual(d, m);
}

}  // namespace


BOOST_AUTO_TEST_CASE(store_equals_reference_model_across_reopens_and_checkpoints) {
  test::TempDir dir;
  auto o = Options(dir.path());
  Model m;
  std::mt19937_64 rng(1);
  for (int round = 0; round < 4; ++round) {
    auto d = OpenOrDie(o);
    ExpectEqual(*d, m);
    RandomOps(*d, m, rng, 300);
    if (round == 1) BOOST_REQUIRE(d->Checkpoint().ok());
    ExpectEqual(*d, m);
  }
  auto d = OpenOrDie(o);
  BOOST_TEST(d->Stats().recovery.checkpoint_lsn > 0u);
  ExpectEqual(*d, m);
}

// Writes applied beside the index and merged into it: by the applier thread
// at recent_writes_merge_at, by a writer itself at four times that, and by a
// checkpoint. Whatever is merged and whatever is not, the store reads as its
// model: Get, Size, and searches that drop the index's stale vectors for the
// ids written since. 0 applies every write straight into the index.
BOOST_AUTO_TEST_CASE(store_equals_its_model_however_its_recent_writes_are_merged) {
  for (size_t merge_at : {size_t{0}, size_t{3}, size_t{64}}) {
    BOOST_TEST_CONTEXT("recent_writes_merge_at " << merge_at) {
      test::TempDir dir;
      auto o = Options(dir.path());
      o.recent_writes_merge_at = merge_at;
      Model m;
      std::mt19937_64 rng(11);
      for (int round = 0; round < 3; ++round) {
        auto d = OpenOrDie(o);
        ExpectEqual(*d, m);
        for (int part = 0; part < 6; ++part) {
          RandomOps(*d, m, rng, 40);
          ExpectEqual(*d, m);
        }
        if (round == 1) {
          BOOST_REQUIRE(d->Checkpoint().ok());
          BOOST_TEST(d->Stats().recent_writes == 0u);  // a checkpoint holds them all
          ExpectEqual(*d, m);
        }
        const auto st = d->Stats();
        if (merge_at == 0) BOOST_TEST(st.recent_writes == 0u);
        if (merge_at == 3) BOOST_TEST(st.merges > 10u);
        if (merge_at != 0) BOOST_TEST(st.recent_writes <= 4 * merge_at);
      }
      ExpectEqual(*OpenOrDie(o), m);
    }
  }
}

BOOST_AUTO_TEST_CASE(automatic_checkpoints_release_the_log_and_recover) {
  test::TempDir dir;
  auto o = Options(dir.path(), "HNSW8");
  o.checkpoint_every_log_bytes = 16 << 10;
  Model m;
  std::mt19937_64 rng(2);
  uint64_t logged = 0;
  {
    auto d = OpenOrDie(o);
    RandomOps(*d, m, rng, 1500);
    logged = d->Stats().durable_lsn;
    BOOST_TEST(d->Stats().last_checkpoint_lsn > logged / 2);  // only automatic ones were taken
  }
  size_t ckpts = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir.path()))
    ckpts += e.path().extension() == ".vwc";
  BOOST_TEST(ckpts == 2u);  // two generations kept
  auto d = OpenOrDie(o);
  BOOST_TEST(d->Stats().recovery.records_replayed < logged / 2);
  BOOST_REQUIRE_EQUAL(d->Size(), m.rows.size());
  for (const auto& [id, row] : m.rows) BOOST_REQUIRE((d->Get(id)->vector == row.first));
}

BOOST_AUTO_TEST_CASE(newest_checkpoint_corrupted_previous_is_used) {
  test::TempDir dir;
  auto o = Options(dir.path());
  Model m;
  std::mt19937_64 rng(3);
  const uint64_t newest = DamageTheNewerOfTwoCheckpoints(dir, o, m, rng);
  ExpectFellBack(*OpenOrDie(o), newest, newest, m);
}

// A checkpoint that did not verify is no generation: the checkpoints after a
// fallback keep the log from the newest ones that do, so that the next one
// to go bad falls back again. Counted as kept, the bad one made the next
// checkpoint retire the good one it had fallen back to, and release its log:
// a second bad checkpoint, later, left nothing to open.
BOOST_AUTO_TEST_CASE(a_checkpoint_that_did_not_verify_is_not_kept_as_a_generation) {
  test::TempDir dir;
  auto o = Options(dir.path());
  o.wal.segment_bytes = 64 << 10;  // the log before a kept checkpoint is released for real
  Model m;
  std::mt19937_64 rng(5);
  const uint64_t bad = DamageTheNewerOfTwoCheckpoints(dir, o, m, rng);
  uint64_t newest = 0;
  {
    auto d = OpenOrDie(o);
    BOOST_REQUIRE(d->Stats().recovery.checkpoint_lsn < bad);
    RandomOps(*d, m, rng, 100);
    newest = *d->Checkpoint();
    RandomOps(*d, m, rng, 50);
  }
  BOOST_TEST(!std::filesystem::exists(dir / CheckpointFileName(bad)));  // retired: never a fallback again
  test::XorByte(dir / CheckpointFileName(newest), 5000);
  ExpectFellBack(*OpenOrDie(o), bad, newest, m);
}

// Damage in the middle of the log, in each recovery mode: strict and
// tolerate_tail refuse to open, naming it; salvage opens without the damaged
// record, says which LSNs it dropped, and checkpoints past the hole at once,
// so that the store then opens in the default mode and goes on from there.
BOOST_AUTO_TEST_CASE(mid_log_damage_is_refused_unless_salvaged_and_a_salvaged_store_reopens_in_any_mode) {
  test::TempDir dir;
  auto o = Options(dir.path());
  Model m;
  std::mt19937_64 rng(11);
  {
    auto d = OpenOrDie(o);
    for (uint64_t id = 1; id <= 300; ++id) {
      auto v = Vec(rng);
      auto p = test::Payload(id, id % 30);
      BOOST_REQUIRE(d->Insert(id, v, p).ok());
      m.rows[id] = {v, p};
    }
  }
  auto log = test::ReadLog(dir / "wal", wal::RecoveryMode::kStrict);
  BOOST_REQUIRE(log.ok());
  const auto victim = std::ranges::find_if(*log, [](const test::ReadBack& r) { return r.lsn == 150; });
  BOOST_REQUIRE(victim != log->end());
  test::XorByte(test::SegmentPath(dir / "wal", victim->segment_id), victim->offset + wal::kRecordHeaderSize + 12);
  const std::string segment = wal::SegmentFileName(victim->segment_id);
  for (auto mode : {wal::RecoveryMode::kStrict, wal::RecoveryMode::kTolerateTail}) {
    o.recovery_mode = mode;
    auto refused = DurableIndex::Open(o);
    BOOST_REQUIRE(!refused.ok());
    BOOST_TEST(refused.status().code() == Status::Code::kCorruption, refused.status().ToString());
    BOOST_TEST(refused.status().message().find(segment) != std::string::npos, refused.status().ToString());
  }
  o.recovery_mode = wal::RecoveryMode::kSalvage;
  {
    auto d = OpenOrDie(o);
    const auto st = d->Stats();
    BOOST_REQUIRE(st.recovery.dropped.size() == 1u);
    BOOST_TEST(st.recovery.dropped[0].first_lsn == 150u);
    BOOST_TEST(st.recovery.dropped[0].last_lsn == 150u);
    BOOST_TEST(st.recovery.dropped[0].where.find(segment) != std::string::npos, st.recovery.dropped[0].where);
    BOOST_TEST(st.last_checkpoint_lsn == 300u);  // past the hole, before any write
    m.rows.erase(150);
    ExpectEqual(*d, m);
    auto v = Vec(rng);
    BOOST_REQUIRE(d->Insert(150, v).ok());  // the dropped id is free again
    m.rows[150] = {v, {}};
    BOOST_TEST(d->Stats().durable_lsn == 301u);
  }
  // The damaged segment is still there, below the checkpoint: kept for the
  // older one, never read again from the newer.
  BOOST_TEST(std::filesystem::exists(test::SegmentPath(dir / "wal", victim->segment_id)));
  for (auto mode : {wal::RecoveryMode::kTolerateTail, wal::RecoveryMode::kStrict}) {
    o.recovery_mode = mode;
    auto d = OpenOrDie(o);
    BOOST_TEST(d->Stats().recovery.dropped.empty());
    ExpectEqual(*d, m);
  }
}

// After a clean Close the log's seal says its last op was acknowledged: a last
// record damaged since then is refused, naming its LSN, not cut as a torn
// tail with the op gone; salvage opens without it and says so.
BOOST_AUTO_TEST_CASE(a_damaged_last_op_after_a_clean_close_is_refused_not_cut_as_a_torn_tail) {
  test::TempDir dir;
  auto o = Options(dir.path());
  Model m;
  std::mt19937_64 rng(23);
  for (uint64_t id = 1; id <= 20; ++id) m.rows[id] = {Vec(rng), {}};
  {
    auto d = OpenOrDie(o);
    for (const auto& [id, row] : m.rows) BOOST_REQUIRE(d->Insert(id, row.first).ok());
  }
  auto log = test::ReadLog(dir / "wal", wal::RecoveryMode::kStrict);
  BOOST_REQUIRE(log.ok() && log->back().lsn == 20u);
  test::Fill(test::SegmentPath(dir / "wal", log->back().segment_id), log->back().offset + wal::kRecordHeaderSize + 8,
             16, 0);
  auto refused = DurableIndex::Open(o);
  BOOST_TEST(refused.status().IsCorruption(), refused.status().ToString());
  BOOST_TEST(refused.status().message().find("LSNs 20 to 20 were acknowledged") != std::string::npos,
             refused.status().ToString());
  o.recovery_mode = wal::RecoveryMode::kSalvage;
  auto d = OpenOrDie(o);
  BOOST_REQUIRE(d->Stats().recovery.dropped.size() == 1u);
  BOOST_TEST(d->Stats().recovery.dropped[0].first_lsn == 20u);
  m.rows.erase(20);
  ExpectEqual(*d, m);
}

// The segment that holds a checkpoint's LSN holds the ops before it too
// (segments are 64 MiB, checkpoints every 256 MiB of log by default): damage
// there, in ops the checkpoint holds, opens (said in the recovery stats)
// except under strict. It refused to open in every mode but salvage.
BOOST_AUTO_TEST_CASE(damage_in_the_log_below_the_checkpoint_does_not_keep_the_store_from_opening) {
  test::TempDir dir;
  auto o = Options(dir.path());
  o.wal.segment_bytes = 4 << 20;  // one segment: each write pads to a block
  Model m;
  std::mt19937_64 rng(13);
  uint64_t checkpoint = 0;
  {
    auto d = OpenOrDie(o);
    RandomOps(*d, m, rng, 100);
    checkpoint = *d->Checkpoint();
    RandomOps(*d, m, rng, 50);
  }
  auto log = test::ReadLog(dir / "wal", wal::RecoveryMode::kStrict);
  BOOST_REQUIRE(log.ok());
  const auto victim = std::ranges::find_if(*log, [](const test::ReadBack& r) { return r.lsn == 30; });
  BOOST_REQUIRE(victim != log->end());
  BOOST_REQUIRE(victim->segment_id == log->back().segment_id);  // the segment the store reads from
  DamagePayload(dir, *victim);
  o.recovery_mode = wal::RecoveryMode::kStrict;
  auto strict = DurableIndex::Open(o);
  BOOST_TEST(strict.status().IsCorruption(), strict.status().ToString());
  for (auto mode : {wal::RecoveryMode::kTolerateTail, wal::RecoveryMode::kSalvage}) {
    o.recovery_mode = mode;
    auto d = OpenOrDie(o);
    const auto& r = d->Stats().recovery;
    BOOST_TEST(r.checkpoint_lsn == checkpoint);
    BOOST_TEST(r.dropped.empty());  // nothing the store holds is lost: no salvage checkpoint either
    BOOST_REQUIRE(r.skipped.size() == 1u);
    BOOST_TEST(r.skipped[0].first_lsn == 30u);
    BOOST_TEST(d->Stats().last_checkpoint_lsn == checkpoint);
    ExpectEqual(*d, m);
  }
}

// No checkpoint verifies: salvage replays the whole log into an empty index
// of the options' spec where the log holds every op the newest one held (a
// store before its first automatic checkpoint: all its ops in the log, beside
// the checkpoint at LSN 0), and refuses, changing nothing, where it does not
// or where the index needs training.
BOOST_AUTO_TEST_CASE(salvage_rebuilds_from_the_log_alone_only_where_the_log_holds_every_op) {
  std::mt19937_64 rng(17);
  auto damage_every_checkpoint = [](const test::TempDir& dir) {
    for (const auto& e : std::filesystem::directory_iterator(dir.path()))
      if (ParseCheckpointFileName(e.path().filename().string())) test::XorByte(e.path().string(), 100);
  };
  {
    test::TempDir dir;
    auto o = Options(dir.path());
    Model m;
    {
      auto d = OpenOrDie(o);
      RandomOps(*d, m, rng, 120);
    }
    damage_every_checkpoint(dir);
    auto refused = DurableIndex::Open(o);
    BOOST_TEST(refused.status().message().find("no checkpoint verifies") != std::string::npos, refused.status().ToString());
    o.recovery_mode = wal::RecoveryMode::kSalvage;
    {
      auto d = OpenOrDie(o);
      const auto st = d->Stats();
      BOOST_TEST(st.recovery.checkpoint_note.find("whole log replayed") != std::string::npos, st.recovery.checkpoint_note);
      BOOST_TEST(st.last_checkpoint_lsn == st.durable_lsn);  // checkpointed at once
      ExpectEqual(*d, m);
    }
    o.recovery_mode = wal::RecoveryMode::kTolerateTail;
    auto d = OpenOrDie(o);
    BOOST_TEST(d->Stats().recovery.checkpoint_note.empty());
    ExpectEqual(*d, m);
  }
  {
    test::TempDir dir;
    auto o = Options(dir.path());
    o.wal.segment_bytes = 64 << 10;  // the log below the kept checkpoint is released,
    o.keep_checkpoints = 1;          // and with it every op the log held
    Model m;
    {
      auto d = OpenOrDie(o);
      for (int i = 0; i < 3; ++i) {
        RandomOps(*d, m, rng, 100);
        BOOST_REQUIRE(d->Checkpoint().ok());
      }
    }
    damage_every_checkpoint(dir);
    o.recovery_mode = wal::RecoveryMode::kSalvage;
    auto refused = DurableIndex::Open(o);
    BOOST_TEST(refused.status().message().find("does not hold every op up to LSN") != std::string::npos,
               refused.status().ToString());
    BOOST_TEST(ListCheckpoints(*NewPosixFileSystem(), dir.path())->size() == 1u);  // not retired
  }
  {
    test::TempDir dir;
    auto o = Options(dir.path(), "IVF4,Flat");
    {
      auto d = OpenOrDie(o);
      BOOST_REQUIRE(d->Train(Sample(rng, 400)).ok());
    }
    damage_every_checkpoint(dir);
    o.recovery_mode = wal::RecoveryMode::kSalvage;
    auto refused = DurableIndex::Open(o);
    BOOST_TEST(refused.status().message().find("needs training") != std::string::npos, refused.status().ToString());
  }
}

// After a fallback the store is a generation short: with automatic
// checkpoints on, one is written at once, not an interval of log later.
BOOST_AUTO_TEST_CASE(a_fallback_is_followed_at_once_by_an_automatic_checkpoint) {
  test::TempDir dir;
  auto o = Options(dir.path());
  Model m;
  std::mt19937_64 rng(19);
  const uint64_t bad = DamageTheNewerOfTwoCheckpoints(dir, o, m, rng);
  o.checkpoint_every_log_bytes = 1ull << 30;  // on, and far from due
  auto d = OpenOrDie(o);
  BOOST_REQUIRE(d->Stats().recovery.checkpoint_lsn < bad);
  BOOST_TEST(AwaitCheckpointPast(*d, bad) == d->Stats().durable_lsn);
  BOOST_TEST(!std::filesystem::exists(dir / CheckpointFileName(bad)));
  ExpectEqual(*d, m);
}

// Scrub finds damage while the store still holds every op, and repairs it
// with a checkpoint: a damaged older checkpoint, found by no Open until the
// newer one also went bad, and a damaged log record, which would have kept
// the store from opening at all.
BOOST_AUTO_TEST_CASE(scrub_finds_damage_while_the_store_runs_and_a_checkpoint_repairs_it) {
  test::TempDir dir;
  auto o = Options(dir.path());
  Model m;
  std::mt19937_64 rng(29);
  auto d = OpenOrDie(o);
  RandomOps(*d, m, rng, 100);
  const uint64_t first = *d->Checkpoint();
  RandomOps(*d, m, rng, 100);
  const uint64_t older = *d->Checkpoint();
  auto clean = d->Scrub();
  BOOST_REQUIRE(clean.ok());
  BOOST_TEST(clean->problems.empty());
  BOOST_TEST(clean->checkpoints_verified == 2u);
  BOOST_TEST(clean->log_records_verified == d->Stats().durable_lsn - first);  // the log after the older one
  BOOST_TEST(clean->repaired_at_lsn == 0u);
  // A clean scrub leaves the generations as they were: the next checkpoint
  // keeps the one before it.
  RandomOps(*d, m, rng, 20);
  const uint64_t newest = *d->Checkpoint();
  BOOST_TEST(std::filesystem::exists(dir / CheckpointFileName(older)));

  test::XorByte(dir / CheckpointFileName(older), 5000);
  auto found = d->Scrub();
  BOOST_REQUIRE(found.ok());
  BOOST_REQUIRE(found->problems.size() == 1u);
  BOOST_TEST(found->problems[0].find(CheckpointFileName(older)) != std::string::npos, found->problems[0]);
  BOOST_TEST(found->repaired_at_lsn == newest);  // nothing logged since: written anew at its LSN
  BOOST_TEST(!std::filesystem::exists(dir / CheckpointFileName(older)));

  RandomOps(*d, m, rng, 50);  // a log record after the newest checkpoint goes bad
  auto log = test::ReadLog(dir / "wal", wal::RecoveryMode::kStrict);
  BOOST_REQUIRE(log.ok());
  const test::ReadBack victim = (*log)[log->size() - 20];
  DamagePayload(dir, victim);
  found = d->Scrub();
  BOOST_REQUIRE(found.ok());
  BOOST_REQUIRE(found->problems.size() == 1u);
  BOOST_TEST(found->problems[0].find("LSNs " + std::to_string(victim.lsn)) != std::string::npos, found->problems[0]);
  BOOST_TEST(found->repaired_at_lsn >= victim.lsn);

  RandomOps(*d, m, rng, 30);  // the newest record goes bad: to a scan, a torn tail
  log = test::ReadLog(dir / "wal", wal::RecoveryMode::kSalvage);  // past the record damaged above
  BOOST_REQUIRE(log.ok());
  const test::ReadBack newest_record = log->back();
  BOOST_REQUIRE(newest_record.lsn == d->Stats().durable_lsn);
  DamagePayload(dir, newest_record);
  found = d->Scrub();
  BOOST_REQUIRE(found.ok());
  for (const auto& p : found->problems) BOOST_TEST_MESSAGE("scrub: " << p);
  BOOST_REQUIRE(found->problems.size() == 1u);
  BOOST_TEST(found->problems[0].find("LSNs " + std::to_string(newest_record.lsn) + " to " +
                                     std::to_string(newest_record.lsn)) != std::string::npos,
             found->problems[0]);
  BOOST_TEST(found->repaired_at_lsn >= newest_record.lsn);
  BOOST_REQUIRE(d->Close().ok());
  d = OpenOrDie(o);  // the damaged record is below the checkpoint now
  BOOST_TEST(d->Stats().recovery.checkpoint_lsn >= victim.lsn);
  ExpectEqual(*d, m);
}

// A scrub's repair retired both generations below a damaged log record and
// left one: the next op logged brings the second at once, not an interval of
// log later, and a fallback is there again should the newest go bad.
BOOST_AUTO_TEST_CASE(after_a_repair_left_one_generation_the_next_logged_op_brings_a_second) {
  test::TempDir dir;
  auto o = Options(dir.path());
  o.checkpoint_every_log_bytes = 1ull << 30;  // on, and far from due
  Model m;
  std::mt19937_64 rng(61);
  auto d = OpenOrDie(o);
  const uint64_t repaired = RepairToOneGeneration(*d, dir, m, rng);
  const auto v = Vec(rng);
  BOOST_REQUIRE(d->Upsert(1000, v).ok());
  m.rows[1000] = {v, {}};
  const uint64_t newest = AwaitCheckpointPast(*d, repaired);
  BOOST_TEST(newest > repaired);
  BOOST_TEST(ListCheckpoints(*NewPosixFileSystem(), dir.path())->size() == 2u);
  BOOST_REQUIRE(d->Close().ok());
  d.reset();
  test::XorByte(dir / CheckpointFileName(newest), 5000);
  ExpectFellBack(*OpenOrDie(o), newest, newest, m);
}

// The repair above leaves one generation until something is logged. Until
// the store keeps two again, a second copy of the new checkpoint stands in
// (DIR/copy, read back when written and by every Scrub): an idle store whose
// one checkpoint goes bad still opens, from the copy, and rewrites its own.
BOOST_AUTO_TEST_CASE(a_repair_leaves_a_second_copy_that_an_idle_store_opens_from_until_it_has_two_generations) {
  test::TempDir dir;
  auto o = Options(dir.path());
  o.checkpoint_every_log_bytes = 1ull << 30;  // on, and far from due
  Model m;
  std::mt19937_64 rng(67);
  const auto copies = dir / kCheckpointCopyDir;
  uint64_t repaired = 0;
  {
    auto d = OpenOrDie(o);
    repaired = RepairToOneGeneration(*d, dir, m, rng);
    BOOST_REQUIRE((*ListCheckpoints(*NewPosixFileSystem(), copies) == std::vector<uint64_t>{repaired}));
    // A copy gone bad is found by the next Scrub and written anew, past the
    // half-written one a crash in an earlier copy left.
    const std::string stale = copies + "/" + CheckpointFileName(repaired) + ".tmp";
    std::ofstream(stale) << "half a copy";
    test::XorByte(copies + "/" + CheckpointFileName(repaired), 5000);
    auto again = d->Scrub();
    BOOST_REQUIRE(again.ok());
    BOOST_REQUIRE(again->problems.size() == 1u);
    BOOST_TEST(again->problems[0].find(kCheckpointCopyDir) != std::string::npos, again->problems[0]);
    BOOST_TEST(d->Scrub()->problems.empty());
    BOOST_TEST(!std::filesystem::exists(stale));
    BOOST_REQUIRE(d->Close().ok());
  }
  // Nothing was written after the repair; the one checkpoint goes bad.
  test::XorByte(dir / CheckpointFileName(repaired), 5000);
  auto d = OpenOrDie(o);
  const auto& r = d->Stats().recovery;
  BOOST_TEST(r.checkpoint_lsn == repaired);
  BOOST_TEST(r.checkpoint_note.find(std::string("recovered from ") + kCheckpointCopyDir + "/") != std::string::npos,
             r.checkpoint_note);
  ExpectEqual(*d, m);
  // The fallback's checkpoint writes the store's own file at that LSN anew.
  for (int i = 0; i < 1000 && d->Stats().checkpoints == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  BOOST_REQUIRE(d->Stats().checkpoints == 1u);
  BOOST_TEST(VerifyCheckpoint(*NewPosixFileSystem(), dir / CheckpointFileName(repaired))->ok());
  // Two generations again: the copy goes.
  const auto v = Vec(rng);
  BOOST_REQUIRE(d->Upsert(1000, v).ok());
  m.rows[1000] = {v, {}};
  BOOST_REQUIRE(d->Checkpoint().ok());
  BOOST_TEST(ListCheckpoints(*NewPosixFileSystem(), copies)->empty());
  ExpectEqual(*d, m);
}

// Nothing logged since the newest checkpoint: Checkpoint() returns its LSN
// and writes nothing (the file stays the same file, not a copy renamed over
// it), whether this process wrote that checkpoint or loaded it. A newest
// checkpoint that did not verify is no such checkpoint: the next one is
// written at its LSN anew.
BOOST_AUTO_TEST_CASE(checkpoint_with_nothing_new_logged_writes_nothing) {
  test::TempDir dir;
  auto o = Options(dir.path());
  auto inode = [&](uint64_t lsn) {
    struct stat st {};
    BOOST_REQUIRE(::stat((dir / CheckpointFileName(lsn)).c_str(), &st) == 0);
    return st.st_ino;
  };
  Model m;
  std::mt19937_64 rng(4);
  uint64_t lsn = 0;
  {
    auto d = OpenOrDie(o);
    RandomOps(*d, m, rng, 100);
    lsn = *d->Checkpoint();
    const auto written = inode(lsn);
    BOOST_TEST(*d->Checkpoint() == lsn);
    BOOST_TEST(inode(lsn) == written);
    const auto v = Vec(rng);
    BOOST_REQUIRE(d->Upsert(1000, v).ok());
    m.rows[1000] = {v, {}};
    const uint64_t next = *d->Checkpoint();
    BOOST_TEST(next == lsn + 1);
    lsn = next;
  }
  {
    auto d = OpenOrDie(o);
    BOOST_REQUIRE(d->Stats().recovery.checkpoint_lsn == lsn);
    const auto loaded = inode(lsn);
    BOOST_TEST(*d->Checkpoint() == lsn);
    BOOST_TEST(inode(lsn) == loaded);
  }
  test::XorByte(dir / CheckpointFileName(lsn), 5000);
  {
    auto d = OpenOrDie(o);
    BOOST_REQUIRE(d->Stats().recovery.checkpoint_lsn < lsn);
    BOOST_TEST(*d->Checkpoint() == lsn);
  }
  auto d = OpenOrDie(o);  // the rewritten one verifies
  BOOST_TEST(d->Stats().recovery.checkpoint_lsn == lsn);
  BOOST_TEST(d->Stats().recovery.checkpoint_note.empty(), d->Stats().recovery.checkpoint_note);
  ExpectEqual(*d, m);
}

BOOST_AUTO_TEST_CASE(bad_input_is_refused_before_the_log) {
  test::TempDir dir;
  auto d = OpenOrDie(Options(dir.path()));
  std::vector<float> v(kDim, 1.f);
  BOOST_REQUIRE(d->Insert(1, v).ok());
  const uint64_t lsn = d->Stats().durable_lsn;
  std::vector<float> short_v(kDim - 1, 1.f), nan_v = v, inf_v = v;
  nan_v[3] = std::nanf("");
  inf_v[5] = INFINITY;
  std::vector<std::byte> big(257);
  struct Case {
    Status s;
    std::string expect;
  };
  for (const Case& c : {Case{d->Insert(2, short_v), "dimension 7"}, Case{d->Insert(2, nan_v), "component 3 is NaN"},
                        Case{d->Insert(2, inf_v), "component 5 is infinite"},
                        Case{d->Insert(2, v, big), "payload of 257 bytes"}, Case{d->Insert(1, v), "id 1 already exists"},
                        Case{d->Update(9, v), "id 9 does not exist"}, Case{d->Remove(9), "id 9 does not exist"}}) {
    BOOST_TEST(!c.s.ok());
    BOOST_TEST(c.s.message().find(c.expect) != std::string::npos, c.s.ToString());
  }
  BOOST_TEST(d->Stats().durable_lsn == lsn);  // nothing logged
  BOOST_TEST(d->Size() == 1u);
  // A query that is not finite would find nothing, as if the store were empty.
  std::vector<float> queries = v;
  queries.insert(queries.end(), nan_v.begin(), nan_v.end());
  auto q = d->Search(queries, 1);
  BOOST_TEST(q.status().message().find("query 1: component 3 is NaN") != std::string::npos, q.status().ToString());
  // Neither does a k whose results could never fit end in std::bad_alloc,
  // with recent writes to merge or without.
  for (int merged = 0; merged < 2; ++merged) {
    if (merged == 1) BOOST_REQUIRE(d->Checkpoint().ok());
    auto huge = d->Search(v, size_t{1} << 40);
    BOOST_TEST(huge.status().message().find("k = 1099511627776 for 1 queries") != std::string::npos,
               huge.status().ToString());
  }
}

BOOST_AUTO_TEST_CASE(options_without_a_directory_are_refused_naming_it) {
  auto d = DurableIndex::Open(Options(""));
  BOOST_TEST(d.status().code() == Status::Code::kInvalidArgument);
  BOOST_TEST(d.status().message().find("dir is empty") != std::string::npos, d.status().ToString());
}

// A second Open of a store in use is refused before it reads a checkpoint:
// loading one takes as long, and as much memory, as the store has, and the
// holder may retire the file under the read, which then reads as corruption.
BOOST_AUTO_TEST_CASE(a_store_in_use_is_refused_before_any_checkpoint_is_read) {
  test::TempDir dir;
  auto o = Options(dir.path());
  auto first = OpenOrDie(o);
  BOOST_REQUIRE(first->Insert(1, std::vector<float>(kDim, 1.f)).ok());
  BOOST_REQUIRE(first->Checkpoint().ok());
  auto faulty = std::make_shared<FaultInjectionFileSystem>(NewPosixFileSystem(test::BackendUnderTest()));
  faulty->FailOpensOf(".vwc", EIO);
  o.wal.fs = faulty;
  o.wal.lock_wait_ms = 0;
  auto second = DurableIndex::Open(o);
  BOOST_REQUIRE(!second.ok());
  BOOST_TEST(second.status().code() == Status::Code::kUnavailable, second.status().ToString());
  BOOST_TEST(second.status().message().find("in use") != std::string::npos, second.status().ToString());
  first.reset();
  // Free once the first is closed; checkpoints that could not be read are no
  // corruption, which would send an operator to salvage.
  auto unreadable = DurableIndex::Open(o);
  BOOST_REQUIRE(!unreadable.ok());
  BOOST_TEST(unreadable.status().code() == Status::Code::kIOError, unreadable.status().ToString());
  BOOST_TEST(unreadable.status().sys_errno() == EIO);
  faulty->ClearFaults();
  auto d = OpenOrDie(o);
  BOOST_TEST(d->Size() == 1u);
}

BOOST_AUTO_TEST_CASE(reopening_with_another_spec_is_refused) {
  test::TempDir dir;
  { OpenOrDie(Options(dir.path())); }
  auto o = Options(dir.path());
  o.spec.dim = kDim + 1;
  auto d = DurableIndex::Open(o);
  BOOST_TEST(d.status().message().find("dimension 8") != std::string::npos, d.status().ToString());
  o = Options(dir.path(), "HNSW8");
  d = DurableIndex::Open(o);
  BOOST_TEST(d.status().message().find("vecwal-reindex") != std::string::npos, d.status().ToString());
}

namespace {

// n vectors of Vec, one after another: a training sample.
// Polls `done` for up to 30 s.
template <typename F>
bool WaitUntil(F done) {
  for (int i = 0; i < 3000 && !done(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  return done();
}

}  // namespace

BOOST_AUTO_TEST_CASE(trained_index_is_checkpointed_and_never_retrained) {
  test::TempDir dir;
  auto o = Options(dir.path(), "IVF4,Flat");
  std::mt19937_64 rng(9);
  const auto sample = Sample(rng, 400);
  Model m;
  {
    auto d = OpenOrDie(o);
    std::vector<float> v(kDim, 0.5f);
    BOOST_TEST(d->Insert(1, v).message().find("needs training") != std::string::npos);
    BOOST_REQUIRE(d->Train(sample).ok());
    BOOST_TEST(!d->Train(sample).ok());  // once only
    RandomOps(*d, m, rng, 200);
  }
  auto d = OpenOrDie(o);  // trained state comes from the checkpoint
  BOOST_REQUIRE_EQUAL(d->Size(), m.rows.size());
  for (const auto& [id, row] : m.rows) BOOST_REQUIRE((d->Get(id)->vector == row.first));
}

// The trained index reaches the disk (a checkpoint) before the store takes a
// write: replaying a logged write into an untrained index fails, and would
// keep the store from opening with that write acknowledged. So while the
// checkpoint is written the store still needs training, and a training whose
// checkpoint failed leaves it untrained and can be tried again.
BOOST_AUTO_TEST_CASE(no_write_is_taken_before_the_trained_index_is_checkpointed) {
  test::TempDir dir;
  auto faulty = std::make_shared<FaultInjectionFileSystem>(NewPosixFileSystem(test::BackendUnderTest()));
  auto o = Options(dir.path(), "IVF4,Flat");
  o.wal.fs = faulty;
  std::mt19937_64 rng(9);
  const auto sample = Sample(rng, 400);
  const std::vector<float> v(kDim, 0.5f);
  {
    auto d = OpenOrDie(o);
    faulty->FailOpensOf(".vwc", ENOSPC);
    const Status failed = d->Train(sample);
    BOOST_TEST(!failed.ok());
    BOOST_TEST(failed.message().find(".vwc") != std::string::npos, failed.ToString());
    BOOST_TEST(d->NeedsTraining());
    BOOST_TEST(d->Insert(1, v).message().find("needs training") != std::string::npos);
    faulty->ClearFaults();
    // Held while its checkpoint is written: still untrained for writers.
    faulty->HoldOpensOf(".vwc");
    Status trained;
    std::atomic<bool> stop{false};
    std::thread reader([&] {  // the index is replaced under readers' feet (ThreadSanitizer)
      while (!stop.load()) (void)(d->Contains(1) || d->Size() != 0 || !d->Search(v, 1).ok());
    });
    std::thread trainer([&] { trained = d->Train(Sample(rng, 400)); });
    const bool held = WaitUntil([&] { return faulty->opens_held() == 1; });
    const bool untrained = d->NeedsTraining();
    const Status early = d->Insert(1, v);
    faulty->ReleaseOpens();
    trainer.join();
    stop = true;
    reader.join();
    BOOST_REQUIRE_MESSAGE(trained.ok(), trained.ToString());
    BOOST_REQUIRE(held);
    BOOST_TEST(untrained);
    BOOST_TEST(early.message().find("needs training") != std::string::npos, early.ToString());
    BOOST_TEST(!d->NeedsTraining());
    BOOST_REQUIRE(d->Insert(1, v).ok());
  }
  o.wal.fs = nullptr;
  auto d = OpenOrDie(o);
  BOOST_TEST(!d->NeedsTraining());
  BOOST_TEST(d->Size() == 1u);
  BOOST_TEST(d->Get(1)->vector == v, boost::test_tools::per_element());
}


namespace {

// A store of `desc` (IVF4 behind it) that probes every list by default:
// exact, like the model's search.
DurableIndexOptions ProbingEveryList(const std::string& dir, const std::string& desc) {
  auto o = Options(dir, desc);
  o.search.nprobe = 4;
  return o;
}

}  // namespace

// The store's search knobs (options) apply where a call leaves them at 0,
// and a call's own override them; a knob the index has no part for is
// refused at Open and per call. Probing all 4 lists is exact, so the store
// equals the model's exact search; one list is not.
BOOST_AUTO_TEST_CASE(search_knobs_come_from_the_options_unless_a_call_sets_its_own) {
  test::TempDir dir;
  const auto o = ProbingEveryList(dir.path(), "IVF4,Flat");
  std::mt19937_64 rng(21);
  Model m;
  auto d = OpenOrDie(o);
  BOOST_REQUIRE(d->Train(Sample(rng, 400)).ok());
  RandomOps(*d, m, rng, 300);
  ExpectEqual(*d, m);  // recent writes and index both
  BOOST_REQUIRE(d->Checkpoint().ok());
  ExpectEqual(*d, m);  // the index alone
  const auto q = Sample(rng, 20);
  auto all = d->Search(q, 4), one = d->Search(q, 4, {.nprobe = 1});
  BOOST_REQUIRE(all.ok());
  BOOST_REQUIRE(one.ok());
  BOOST_TEST(all->ids != one->ids);
  BOOST_TEST(d->Search(q, 4)->ids == all->ids);  // the call's knob did not stay
  auto wrong = d->Search(q, 4, {.ef_search = 16});
  BOOST_TEST(wrong.status().code() == Status::Code::kInvalidArgument);
  BOOST_TEST(wrong.status().message().find("ef_search") != std::string::npos, wrong.status().ToString());
  d.reset();
  ExpectEqual(*OpenOrDie(o), m);
  test::TempDir other;
  auto h = Options(other.path(), "HNSW8");
  h.search.nprobe = 4;
  auto refused = DurableIndex::Open(h);
  BOOST_TEST(refused.status().code() == Status::Code::kInvalidArgument);
  BOOST_TEST(refused.status().message().find("nprobe 4") != std::string::npos, refused.status().ToString());
  BOOST_TEST(refused.status().message().find("'HNSW8'") != std::string::npos, refused.status().ToString());
}

// A filter, or a list of ids, applies to the recent writes, to the writes a
// merge is moving and to the index alike: the store's hits equal those of a
// FAISS Flat index of the model's ids that pass, between merges and after a
// checkpoint. The options' filter applies where a call sets none, with a
// list of ids too: an id must pass both.
BOOST_AUTO_TEST_CASE(a_search_filter_applies_to_recent_writes_and_the_index_alike) {
  test::TempDir dir;
  auto o = Options(dir.path());
  o.recent_writes_merge_at = 8;  // hits come from the recent writes and the index at once
  const auto even = [](uint64_t id) { return id % 2 == 0; };
  o.search.filter = [](uint64_t id) { return id % 3 == 0; };
  std::mt19937_64 rng(37);
  Model m;
  auto d = OpenOrDie(o);
  const auto q = Sample(rng, 8);
  auto expect = [&](const std::function<bool(uint64_t)>& passes, const index::SearchParams& p) {
    auto ref = index::NewFaissIndex({kDim, index::Metric::kL2, "Flat"});
    std::vector<uint64_t> ids;
    std::vector<float> vecs;
    for (const auto& [id, row] : m.rows)
      if (passes(id)) {
        ids.push_back(id);
        vecs.insert(vecs.end(), row.first.begin(), row.first.end());
      }
    BOOST_REQUIRE((*ref)->Add(ids, vecs).ok());
    auto want = (*ref)->Search(q, 5);
    auto got = d->Search(q, 5, p);
    BOOST_REQUIRE(want.ok() && got.ok());
    BOOST_TEST(got->ids == want->ids, boost::test_tools::per_element());
  };
  std::vector<uint64_t> even_ids;  // the same as a list: present or not, some of them twice
  for (uint64_t id = 0; id < 200; id += 2) even_ids.insert(even_ids.end(), 1 + (id % 3 == 0), id);
  const auto both = [](uint64_t id) { return id % 6 == 0; };
  for (int round = 0; round < 6; ++round) {
    RandomOps(*d, m, rng, 37);  // not a multiple of the merge size: some writes are always recent
    expect(even, {.filter = even});
    expect(both, {.ids = even_ids});  // and the options' filter, which it does not replace
    expect(o.search.filter, {});
  }
  BOOST_TEST(d->Stats().recent_writes > 0u);
  BOOST_REQUIRE(d->Checkpoint().ok());  // the index alone
  expect(even, {.filter = even});
  expect(both, {.ids = even_ids});
  expect(o.search.filter, {});
}

// Inner product ranks the other way round: the recent writes, the writes a
// merge is moving and the index are merged by it, largest first. Flat, and
// IVF probing every list, are exact: the store's hits equal those of a FAISS
// Flat inner-product index of the model, between merges, after a
// checkpoint and after a reopen.
BOOST_AUTO_TEST_CASE(an_inner_product_store_ranks_like_faiss_through_merges_checkpoints_and_reopens) {
  for (const char* desc : {"Flat", "IVF4,Flat"}) {
    BOOST_TEST_CONTEXT(desc) {
      test::TempDir dir;
      auto o = ProbingEveryList(dir.path(), desc);
      if (std::string(desc) == "Flat") o.search.nprobe = 0;
      o.spec.metric = index::Metric::kInnerProduct;
      o.recent_writes_merge_at = 8;  // hits come from the recent writes and the index at once
      std::mt19937_64 rng(31);
      Model m;
      {
        auto d = OpenOrDie(o);
        if (d->NeedsTraining()) BOOST_REQUIRE(d->Train(Sample(rng, 400)).ok());
        for (int round = 0; round < 6; ++round) {
          RandomOps(*d, m, rng, 37);  // not a multiple of the merge size: some writes are always recent
          ExpectEqual(*d, m, true, index::Metric::kInnerProduct);
        }
        BOOST_REQUIRE(d->Checkpoint().ok());
        ExpectEqual(*d, m, true, index::Metric::kInnerProduct);
        RandomOps(*d, m, rng, 50);
      }
      auto d = OpenOrDie(o);
      ExpectEqual(*d, m, true, index::Metric::kInnerProduct);
    }
  }
}

// A transform in front of IVF (PCA, OPQ) was kept under FAISS's id map,
// where the second removal aborted the process, and the op that did it was
// already in the log: every reopen replayed it and aborted again.
BOOST_AUTO_TEST_CASE(a_store_with_a_transform_in_front_of_ivf_updates_and_removes) {
  test::TempDir dir;
  const auto o = ProbingEveryList(dir.path(), "PCA8,IVF4,Flat");
  std::mt19937_64 rng(22);
  Model m;
  // The index keeps vectors through the transform, so Get gives them back
  // to within rounding; each finds itself first.
  auto expect = [&](const DurableIndex& d) {
    BOOST_REQUIRE_EQUAL(d.Size(), m.rows.size());
    for (const auto& [id, row] : m.rows) {
      auto e = d.Get(id);
      BOOST_REQUIRE_MESSAGE(e.ok(), "id " << id << ": " << e.status().ToString());
      BOOST_REQUIRE((e->payload == row.second));
      for (uint32_t j = 0; j < kDim; ++j) BOOST_REQUIRE_SMALL(e->vector[j] - row.first[j], 1e-4f);
      auto hit = d.Search(row.first, 1);
      BOOST_REQUIRE(hit.ok());
      BOOST_REQUIRE_EQUAL(hit->ids[0], id);
    }
    for (uint64_t id = 0; id < 200; ++id) BOOST_REQUIRE(d.Contains(id) == (m.rows.count(id) != 0));
  };
  {
    auto d = OpenOrDie(o);
    BOOST_REQUIRE(d->Train(Sample(rng, 400)).ok());
    RandomOps(*d, m, rng, 300);
    expect(*d);
    BOOST_REQUIRE(d->Checkpoint().ok());
    RandomOps(*d, m, rng, 300);
    expect(*d);
  }
  auto d = OpenOrDie(o);  // the checkpoint, and the log after it
  expect(*d);
  RandomOps(*d, m, rng, 100);
  expect(*d);
}

// Index types beyond Flat and HNSW through the whole store: random writes
// (updates and removals included), a checkpoint (which compacts what keeps
// tombstones: HNSW, IVF lists packed for fast scan, a Refine), more writes,
// and a reopen from the checkpoint and the log. Lossy codes give vectors back
// approximately, so the ids, payloads and counts are checked exactly, and
// every live id must be found by a search for its own vector among 5 hits.
BOOST_AUTO_TEST_CASE(every_kind_of_index_keeps_ids_and_payloads_through_checkpoints_and_reopens) {
  for (std::string desc : {"SQ8", "PQ4x4", "IVF4,SQ8", "IVF4,PQ8x4fs", "OPQ4,IVF4,PQ4x4", "HNSW8,SQ8", "IVF4,Flat,RFlat"}) {
    BOOST_TEST_CONTEXT(desc) {
      test::TempDir dir;
      auto o = Options(dir.path(), desc);
      // Fast scan and a Refine take no knobs (FAISS 1.7.3): each vector's
      // own list is probed for it, and that is the self-search below.
      if (desc.find("IVF") != std::string::npos && desc.find("fs") == std::string::npos &&
          desc.find("RFlat") == std::string::npos)
        o.search.nprobe = 4;
      o.compact_tombstone_ratio = 0;  // every checkpoint that finds tombstones rebuilds
      std::mt19937_64 rng(23);
      Model m;
      auto expect = [&](const DurableIndex& d) {
        BOOST_REQUIRE_EQUAL(d.Size(), m.rows.size());
        size_t found = 0;
        for (const auto& [id, row] : m.rows) {
          auto e = d.Get(id);
          BOOST_REQUIRE_MESSAGE(e.ok(), "id " << id << ": " << e.status().ToString());
          BOOST_REQUIRE((e->payload == row.second));
          auto hits = d.Search(row.first, 5);
          BOOST_REQUIRE_MESSAGE(hits.ok(), hits.status().ToString());
          found += std::count(hits->ids.begin(), hits->ids.end(), id);
          for (uint64_t h : hits->ids) BOOST_REQUIRE(h == index::kNoId || m.rows.count(h) == 1);
        }
        BOOST_TEST(found >= m.rows.size() * 9 / 10);  // codes of 8-d vectors in 4 bytes tell most apart
        for (uint64_t id = 0; id < 200; ++id) BOOST_REQUIRE(d.Contains(id) == (m.rows.count(id) != 0));
        // A scan lists every live id once (no tombstone), each vector decoded as Get decodes it.
        const Scanned listed = ScanAll(d, 16);
        BOOST_REQUIRE(listed.status.ok());
        BOOST_TEST(listed.repeated == 0u);
        BOOST_TEST(listed.rows.size() == m.rows.size());
        for (const auto& [id, e] : listed.rows) {
          BOOST_REQUIRE(m.rows.count(id) == 1);
          auto got = d.Get(id);
          BOOST_REQUIRE(got.ok());
          BOOST_REQUIRE((got->vector == e.first));
          BOOST_REQUIRE((got->payload == e.second));
        }
      };
      {
        auto d = OpenOrDie(o);
        if (d->NeedsTraining()) BOOST_REQUIRE(d->Train(Sample(rng, 1000)).ok());
        RandomOps(*d, m, rng, 300);
        expect(*d);
        BOOST_REQUIRE(d->Checkpoint().ok());
        expect(*d);
        RandomOps(*d, m, rng, 200);
      }
      auto d = OpenOrDie(o);
      expect(*d);
      BOOST_REQUIRE(d->Checkpoint().ok());
      BOOST_TEST(d->Stats().tombstones == 0u);
      expect(*d);
    }
  }
}

namespace {

// A store whose every file goes through a fault-injecting seam.
struct FaultyStore {
  explicit FaultyStore(const std::string& dir, size_t spare_segments = 2, uint64_t checkpoint_every_log_bytes = 0)
      : faulty(std::make_shared<FaultInjectionFileSystem>(NewPosixFileSystem(test::BackendUnderTest()))) {
    opts = Options(dir);
    opts.checkpoint_every_log_bytes = checkpoint_every_log_bytes;
    opts.wal.fs = faulty;
    opts.wal.spare_segments = spare_segments;
    store = OpenOrDie(opts);
  }
  // Upserts ids [from, to) and returns their vectors.
  std::map<uint64_t, std::vector<float>> Write(uint64_t from, uint64_t to) {
    std::map<uint64_t, std::vector<float>> m;
    for (uint64_t i = from; i < to; ++i) {
      std::vector<float> v(kDim, static_cast<float>(i) + 0.5f);
      BOOST_REQUIRE(store->Upsert(i, v).ok());
      m[i] = v;
    }
    return m;
  }
  // Reopens on a healthy file system and checks it holds exactly `want`.
  void ReopenHolds(const std::map<uint64_t, std::vector<float>>& want) {
    (void)store->Close();
    store.reset();
    auto healthy = opts;
    healthy.wal.fs = NewPosixFileSystem(test::BackendUnderTest());
    auto d = OpenOrDie(healthy);
    BOOST_TEST(d->Size() == want.size());
    for (const auto& [id, v] : want) {
      auto e = d->Get(id);
      BOOST_REQUIRE_MESSAGE(e.ok(), "id " << id << " lost");
      BOOST_TEST(e->vector == v, boost::test_tools::per_element());
    }
  }
  std::shared_ptr<FaultInjectionFileSystem> faulty;
  DurableIndexOptions opts;
  std::unique_ptr<DurableIndex> store;
};

}  // namespace

BOOST_AUTO_TEST_CASE(failed_checkpoint_write_leaves_the_previous_checkpoint_usable) {
  for (bool fail_sync : {false, true}) {
    test::TempDir t;
    FaultyStore s(t / "db");
    auto want = s.Write(0, 20);
    BOOST_REQUIRE(s.store->Checkpoint().ok());
    auto more = s.Write(20, 30);
    want.insert(more.begin(), more.end());
    if (fail_sync) s.faulty->FailSyncsFrom(0);
    else s.faulty->FailWritesFrom(0, EIO);
    auto ck = s.store->Checkpoint();
    BOOST_TEST(!ck.ok());
    BOOST_TEST(ck.status().ToString().find("injected fault") != std::string::npos, ck.status().ToString());
    s.faulty->ClearFaults();
    // The log was not touched: writes and the next checkpoint go on.
    more = s.Write(30, 35);
    want.insert(more.begin(), more.end());
    BOOST_REQUIRE(s.store->Checkpoint().ok());
    s.ReopenHolds(want);
  }
}

namespace {
// A store that checkpoints every kInterval bytes of log, on a file system
// whose faults the test sets.
struct AutoCheckpointed {
  static constexpr uint64_t kInterval = 8 << 10;
  test::TempDir t;
  FaultyStore s{t / "db", 2, kInterval};
  uint64_t limit() const { return kInterval * s.opts.stall_writes_at_intervals; }
};

// Upserts ids 0, 1, ... on a thread of its own until stopped or refused.
// Boost.Test's checks are for the main thread only: the test reads `refused`
// and `want` once it is stopped.
struct BackgroundWriter {
  explicit BackgroundWriter(DurableIndex& d)
      : thread([this, &d] {
          for (uint64_t i = 0; !stop; ++i) {
            std::vector<float> v(kDim, static_cast<float>(i) + 0.5f);
            if (refused = d.Upsert(i, v); !refused.ok()) break;
            want[i] = v;
            written = i + 1;
          }
          ended = true;
        }) {}
  ~BackgroundWriter() { Stop(); }
  void Stop() {
    stop = true;
    if (thread.joinable()) thread.join();
  }
  std::atomic<uint64_t> written{0};
  std::atomic<bool> stop{false}, ended{false};
  std::map<uint64_t, std::vector<float>> want;
  Status refused;
  std::thread thread;  // last: it starts once the rest is there
};

}  // namespace

// An automatic checkpoint that cannot be written fails no write: every write
// is in the log. Stats says so, naming the file, and the next try waits for
// another interval of log rather than following every write.
BOOST_FIXTURE_TEST_CASE(a_failed_automatic_checkpoint_fails_no_write_and_is_reported, AutoCheckpointed) {
  using namespace std::chrono_literals;
  auto want = s.Write(0, 10);
  s.faulty->FailOpensOf(".vwc", ENOSPC);
  uint64_t next = 10;
  auto write_until = [&](auto done) {
    for (int i = 0; i < 2000 && !done(); ++i, ++next) {
      auto more = s.Write(next, next + 1);  // each must succeed
      want.insert(more.begin(), more.end());
      std::this_thread::sleep_for(100us);
    }
  };
  write_until([&] { return s.store->Stats().auto_checkpoint_failures >= 2; });
  auto st = s.store->Stats();
  BOOST_TEST(st.auto_checkpoint_failures >= 2u);
  BOOST_TEST(st.checkpoints == 1u);  // the new store's, at Open
  BOOST_TEST(st.last_auto_checkpoint_error.find(".vwc") != std::string::npos, st.last_auto_checkpoint_error);
  BOOST_TEST(st.last_auto_checkpoint_error.find("injected fault") != std::string::npos, st.last_auto_checkpoint_error);
  // Tried once an interval, not once a write.
  BOOST_TEST(st.auto_checkpoint_failures <= st.log_bytes_since_checkpoint / kInterval + 1,
             st.auto_checkpoint_failures << " tries in " << st.log_bytes_since_checkpoint << " bytes of log");
  s.faulty->ClearFaults();  // space freed: the next try succeeds
  write_until([&] { return s.store->Stats().checkpoints >= 2; });
  st = s.store->Stats();
  BOOST_TEST(st.checkpoints >= 2u);
  BOOST_TEST(st.log_bytes_since_checkpoint < 2 * kInterval);
  s.ReopenHolds(want);
}

// The log a reopen replays is bounded: once it holds stall_writes_at_intervals
// intervals since the last checkpoint, writers wait for the checkpoint under
// way, here held at its file's open.
BOOST_FIXTURE_TEST_CASE(a_writer_at_the_log_limit_waits_for_the_checkpoint_under_way, AutoCheckpointed) {
  using namespace std::chrono_literals;
  const uint64_t limit = this->limit();
  s.faulty->HoldOpensOf(".vwc");
  BackgroundWriter w(*s.store);
  BOOST_REQUIRE(WaitUntil([&] { return s.store->Stats().log_bytes_since_checkpoint >= limit; }));
  BOOST_TEST(WaitUntil([&] { return s.faulty->opens_held() == 1; }));  // the checkpoint, waiting to write its file
  // The writer's write in flight at the limit has ended once it waits for room.
  BOOST_REQUIRE(WaitUntil([&] { return s.store->Stats().writes_waiting == 1; }));
  const uint64_t at_limit = w.written;
  std::this_thread::sleep_for(400ms);
  BOOST_TEST(w.written == at_limit, w.written << " writes, " << at_limit << " at the limit");
  auto st = s.store->Stats();
  BOOST_TEST(st.log_bytes_since_checkpoint < limit + 1024, st.log_bytes_since_checkpoint << " bytes of log");
  s.faulty->ReleaseOpens();  // the checkpoint ends, and takes the log below the limit
  BOOST_TEST(WaitUntil([&] { return w.written > at_limit + 10; }));
  w.Stop();
  BOOST_TEST(w.refused.ok(), w.refused.ToString());
  st = s.store->Stats();
  BOOST_TEST(st.checkpoints >= 2u);
  BOOST_TEST(st.writes_waiting == 0u);
  BOOST_TEST(st.stalled_writes >= 1u);
  BOOST_TEST(st.write_stall_s >= 0.4, st.write_stall_s << " s stalled");
  s.ReopenHolds(w.want);
}

// An async write at the log limit waits in the call, as a blocking one does,
// and is placed once the checkpoint under way ends.
BOOST_FIXTURE_TEST_CASE(an_async_write_at_the_log_limit_waits_in_the_call, AutoCheckpointed) {
  using namespace std::chrono_literals;
  s.faulty->HoldOpensOf(".vwc");
  BackgroundWriter w(*s.store);
  BOOST_REQUIRE(WaitUntil([&] { return s.store->Stats().log_bytes_since_checkpoint >= limit(); }));
  const std::vector<float> v(kDim, -1.f);
  constexpr uint64_t kId = 1ull << 40;  // none of the writer's
  std::atomic<bool> returned{false};
  std::future<Status> durable;
  std::thread caller([&] {
    durable = s.store->UpsertAsync(kId, v);
    returned = true;
  });
  std::this_thread::sleep_for(400ms);
  BOOST_TEST(!returned.load());
  BOOST_TEST(!s.store->Contains(kId));
  BOOST_TEST(WaitUntil([&] { return s.store->Stats().writes_waiting == 2; }));  // the caller, beside the writer
  s.faulty->ReleaseOpens();
  caller.join();
  BOOST_TEST(durable.get().ok());
  BOOST_TEST(s.store->Contains(kId));
  w.Stop();
  BOOST_TEST(w.refused.ok(), w.refused.ToString());
  auto want = w.want;
  want[kId] = v;
  s.ReopenHolds(want);
}

// A completion callback runs on the store's applier thread, and an async
// write it makes at the log limit waits there for the checkpoint under way.
// The checkpoint needs nothing from that thread (it applies what it waits
// for itself), so the chain goes on once the checkpoint ends.
BOOST_FIXTURE_TEST_CASE(an_async_write_from_a_callback_at_the_log_limit_goes_on_once_the_checkpoint_ends,
                        AutoCheckpointed) {
  using namespace std::chrono_literals;
  s.faulty->HoldOpensOf(".vwc");
  std::atomic<uint64_t> acked{0};
  std::atomic<bool> stop{false}, ended{false};
  Status failure;  // the chain's, read once it ended
  std::function<void(uint64_t)> chain = [&](uint64_t i) {
    s.store->UpsertAsync(i, std::vector<float>(kDim, static_cast<float>(i)), {}, [&, i](const Status& st) {
      if (!st.ok()) failure = st;
      if (!st.ok() || stop) {
        ended = true;
        return;
      }
      acked = i + 1;
      chain(i + 1);
    });
  };
  chain(0);
  BOOST_REQUIRE(WaitUntil([&] { return s.store->Stats().writes_waiting == 1; }));  // the callback's write
  const uint64_t at_limit = acked;
  std::this_thread::sleep_for(400ms);
  BOOST_TEST(acked == at_limit, acked << " acknowledged, " << at_limit << " at the limit");
  s.faulty->ReleaseOpens();
  BOOST_TEST(WaitUntil([&] { return acked > at_limit + 10 || ended; }));
  stop = true;
  BOOST_REQUIRE(WaitUntil([&] { return ended.load(); }));
  BOOST_TEST(failure.ok(), failure.ToString());
  std::map<uint64_t, std::vector<float>> want;
  for (uint64_t i = 0; i < acked; ++i) want[i] = std::vector<float>(kDim, static_cast<float>(i));
  // The op whose callback saw `stop` is durable too.
  want[acked] = std::vector<float>(kDim, static_cast<float>(acked.load()));
  s.ReopenHolds(want);
}

// Close() does not wait for the writers at the log limit: they are refused.
BOOST_FIXTURE_TEST_CASE(a_writer_waiting_at_the_log_limit_is_refused_when_the_store_closes, AutoCheckpointed) {
  s.faulty->HoldOpensOf(".vwc");
  BackgroundWriter w(*s.store);
  BOOST_REQUIRE(WaitUntil([&] { return s.store->Stats().log_bytes_since_checkpoint >= limit(); }));
  std::thread closer([&] { (void)s.store->Close(); });  // which then waits for the held checkpoint
  BOOST_TEST(WaitUntil([&] { return w.ended.load(); }));
  // Refused by the close, not let through by the checkpoint: it has not
  // reached its file, or waits there.
  BOOST_TEST(WaitUntil([&] { return s.faulty->opens_held() == 1; }));
  s.faulty->ReleaseOpens();
  closer.join();
  w.Stop();
  BOOST_TEST(w.refused.code() == Status::Code::kUnavailable, w.refused.ToString());
  BOOST_TEST(w.refused.ToString().find("closed") != std::string::npos, w.refused.ToString());
}

// With the checkpoints failing (a full disk) the writers would wait for good
// at the log limit: they are refused with the checkpoint's error, nothing is
// logged, and writes go on once a checkpoint succeeds.
BOOST_FIXTURE_TEST_CASE(writes_at_the_log_limit_fail_while_checkpoints_fail_and_go_on_once_one_succeeds,
                        AutoCheckpointed) {
  using namespace std::chrono_literals;
  const uint64_t limit = this->limit();
  auto want = s.Write(0, 10);
  s.faulty->FailOpensOf(".vwc", ENOSPC);
  uint64_t next = 10;
  Status refused;
  for (; next < 100000; ++next) {
    std::vector<float> v(kDim, static_cast<float>(next) + 0.5f);
    refused = s.store->Upsert(next, v);
    if (!refused.ok()) break;
    want[next] = v;
  }
  BOOST_REQUIRE(!refused.ok());
  BOOST_TEST(refused.IsNoSpace(), refused.ToString());
  BOOST_TEST(refused.ToString().find("at the limit") != std::string::npos, refused.ToString());
  BOOST_TEST(refused.ToString().find(".vwc") != std::string::npos, refused.ToString());
  auto st = s.store->Stats();
  BOOST_TEST(st.log_bytes_since_checkpoint >= limit);
  BOOST_TEST(st.log_bytes_since_checkpoint < limit + 1024, st.log_bytes_since_checkpoint << " bytes of log");
  std::vector<float> v(kDim, 7.f);
  BOOST_TEST(!s.store->UpsertAsync(next, v).get().ok());
  BOOST_TEST(!s.store->Upsert(next, v).ok());
  BOOST_TEST(!s.store->Contains(next));
  BOOST_TEST(s.store->Stats().durable_lsn == st.durable_lsn);  // nothing logged
  s.faulty->ClearFaults();  // space freed: the checkpointer's next try (within a second) succeeds
  Status st_after;
  for (int i = 0; i < 400; ++i) {
    if ((st_after = s.store->Upsert(next, v)).ok()) break;
    std::this_thread::sleep_for(50ms);
  }
  BOOST_TEST(st_after.ok(), st_after.ToString());
  want[next] = v;
  BOOST_TEST(s.store->Stats().checkpoints >= 2u);
  s.ReopenHolds(want);
}

BOOST_AUTO_TEST_CASE(failed_log_write_or_sync_fails_the_store_and_reopen_has_every_acknowledged_op) {
  for (bool fail_sync : {false, true}) {
    test::TempDir t;
    FaultyStore s(t / "db");
    auto want = s.Write(0, 25);
    if (fail_sync) s.faulty->FailSyncsFrom(0);
    else s.faulty->FailWritesFrom(0, EIO);
    std::vector<float> v(kDim, 9.f);
    Status st = s.store->Upsert(100, v);
    BOOST_TEST(!st.ok());
    BOOST_TEST(st.sys_errno() == EIO, st.ToString());
    BOOST_TEST(!s.store->Contains(100));  // never visible: it was never acknowledged
    s.faulty->ClearFaults();
    BOOST_TEST(!s.store->Upsert(101, v).ok());  // fail-stop: the disk "recovering" changes nothing
    BOOST_TEST(!s.store->Checkpoint().ok());
    // The failed op may have reached the disk (a failed sync says nothing
    // either way), so the reopened store holds the acknowledged ops and at
    // most that one.
    (void)s.store->Close();
    s.store.reset();
    auto healthy = s.opts;
    healthy.wal.fs = NewPosixFileSystem(test::BackendUnderTest());
    auto d = OpenOrDie(healthy);
    BOOST_TEST(!d->Contains(101));
    BOOST_TEST(d->Size() == want.size() + (d->Contains(100) ? 1 : 0));
    for (const auto& [id, vec] : want) BOOST_TEST(d->Get(id)->vector == vec, boost::test_tools::per_element());
  }
}

BOOST_AUTO_TEST_CASE(no_space_is_a_clear_error_and_reopen_loses_nothing) {
  test::TempDir t;
  FaultyStore s(t / "db", 0);
  auto want = s.Write(0, 10);
  s.faulty->FailReservations(true);
  Status last;
  std::vector<float> v(kDim, 1.f);
  uint64_t id = 1000;
  for (int i = 0; i < 5000 && last.ok(); ++i, ++id) {
    last = s.store->Upsert(id, v);
    if (last.ok()) want[id] = v;
  }
  BOOST_TEST(last.IsNoSpace(), last.ToString());
  s.faulty->ClearFaults();  // space freed
  s.ReopenHolds(want);
}

BOOST_AUTO_TEST_CASE(async_writes_complete_in_order_once_visible_and_close_drains_them) {
  test::TempDir t;
  auto o = Options(t / "db");
  o.checkpoint_every_log_bytes = 16 << 10;  // only async writes call for the checkpoints
  auto d = OpenOrDie(o);
  constexpr int kThreads = 8, kEach = 150;
  std::vector<std::vector<uint64_t>> completed(kThreads);
  std::vector<std::mutex> mu(kThreads);
  std::atomic<int> not_visible{0}, failures{0};
  std::vector<std::thread> ts;
  for (int th = 0; th < kThreads; ++th)
    ts.emplace_back([&, th] {
      for (int i = 0; i < kEach; ++i) {
        const uint64_t id = static_cast<uint64_t>(th) * 1000 + static_cast<uint64_t>(i);
        std::vector<float> v(kDim, static_cast<float>(id));
        d->UpsertAsync(id, v, {}, [&, th, id](const Status& s) {
          if (!s.ok()) ++failures;
          if (!d->Contains(id)) ++not_visible;  // visible by the time it is acknowledged
          std::lock_guard lk(mu[th]);
          completed[th].push_back(id);
        });
      }
    });
  for (auto& th : ts) th.join();
  // The checkpointer takes the automatic checkpoints that async writes call for.
  BOOST_TEST(AwaitCheckpointPast(*d, 0) > 0u, "log bytes since checkpoint " << d->Stats().log_bytes_since_checkpoint);
  BOOST_REQUIRE(d->Close().ok());  // waits for every op placed before it
  BOOST_TEST(failures.load() == 0);
  BOOST_TEST(not_visible.load() == 0);
  for (int th = 0; th < kThreads; ++th) {
    BOOST_REQUIRE(completed[th].size() == static_cast<size_t>(kEach));
    BOOST_TEST(std::is_sorted(completed[th].begin(), completed[th].end()));  // each thread's ops in its order
  }
  d.reset();
  auto again = OpenOrDie(o);
  BOOST_TEST(again->Size() == static_cast<size_t>(kThreads * kEach));
  BOOST_TEST(again->Get(3149)->vector[0] == 3149.f);
}

BOOST_AUTO_TEST_CASE(async_forms_refuse_bad_ops_at_once_and_mix_with_blocking_writes) {
  test::TempDir t;
  auto d = OpenOrDie(Options(t / "db"));
  std::vector<float> v(kDim, 1.f), bad(kDim + 1, 1.f);
  bool called = false;
  Status got;
  d->UpsertAsync(1, bad, {}, [&](const Status& s) { called = true; got = s; });
  BOOST_TEST(called);  // on the caller's thread, before the call returned
  BOOST_TEST(got.code() == Status::Code::kInvalidArgument);
  BOOST_TEST(d->UpsertAsync(1, v).get().ok());
  BOOST_TEST(d->Contains(1));
  called = false;
  d->InsertAsync(1, v, {}, [&](const Status& s) { called = true; got = s; });
  BOOST_TEST(called);
  BOOST_TEST(got.code() == Status::Code::kInvalidArgument);  // it exists
  BOOST_TEST(d->RemoveAsync(2).get().code() == Status::Code::kNotFound);
  // An async write is ordered before a later blocking one from the same thread.
  auto f = d->RemoveAsync(1);
  BOOST_REQUIRE(d->Insert(1, v).ok());  // the removal is placed first, so 1 is absent here
  BOOST_TEST(f.get().ok());
  BOOST_TEST(d->Contains(1));
  recovery::WriteBatch b;
  b.Upsert(5, v);
  b.Upsert(6, v);
  b.Remove(1);
  BOOST_TEST(d->ApplyAsync(b).get().ok());
  BOOST_TEST(d->Size() == 2u);
  std::promise<Status> updated;
  d->UpdateAsync(5, std::vector<float>(kDim, 7.f), {}, [&](const Status& s) { updated.set_value(s); });
  BOOST_TEST(updated.get_future().get().ok());
  BOOST_TEST(d->Get(5)->vector[0] == 7.f);
  BOOST_REQUIRE(d->Close().ok());
  called = false;
  d->UpsertAsync(9, v, {}, [&](const Status& s) { called = true; got = s; });
  BOOST_TEST(called);
  BOOST_TEST(got.code() == Status::Code::kUnavailable);  // closed
}

BOOST_AUTO_TEST_CASE(async_callbacks_may_write_again_even_while_checkpoints_drain) {
  test::TempDir t;
  auto o = Options(t / "db");
  o.checkpoint_every_log_bytes = 4 << 10;  // a checkpoint every few ops: drains run while callbacks chain
  auto d = OpenOrDie(o);
  constexpr uint64_t kChain = 300;
  std::promise<Status> finished;
  std::function<void(uint64_t)> next = [&](uint64_t id) {
    std::vector<float> v(kDim, static_cast<float>(id));
    d->UpsertAsync(id, v, {}, [&, id](const Status& s) {
      if (!s.ok() || id + 1 == kChain) return finished.set_value(s);
      next(id + 1);  // an async write from a callback
    });
  };
  std::thread checkpointer([&] {
    for (int i = 0; i < 20; ++i) (void)d->Checkpoint();
  });
  next(0);
  auto f = finished.get_future();
  BOOST_REQUIRE_MESSAGE(f.wait_for(std::chrono::seconds(60)) == std::future_status::ready, "the chain stalled");
  BOOST_TEST(f.get().ok());
  checkpointer.join();
  BOOST_TEST(d->Size() == kChain);
}

// A checkpoint taken while one writer updates and removes holds exactly the
// ops up to its LSN: the vectors it had not written yet when a write moved
// or replaced them were kept as they were. (One writer, one record per op:
// op i has LSN first + i.)
BOOST_AUTO_TEST_CASE(checkpoint_during_updates_and_removes_holds_exactly_its_lsn) {
  test::TempDir dir;
  auto o = Options(dir.path());
  o.keep_checkpoints = 1000;  // every one stays, to be checked
  auto d = OpenOrDie(o);
  std::mt19937_64 rng(21);
  constexpr uint64_t kIds = 3000;
  for (uint64_t id = 0; id < kIds; ++id) BOOST_REQUIRE(d->Upsert(id, Vec(rng), test::Payload(id, 8)).ok());
  const uint64_t first = d->Stats().durable_lsn + 1;
  // The ops, decided up front so the model at any LSN can be rebuilt.
  struct Op {
    uint64_t id;
    bool remove;
    std::vector<float> v;
    std::vector<std::byte> payload;  // replaces the id's; none on every other upsert
  };
  std::vector<Op> ops;
  std::map<uint64_t, bool> present;
  for (uint64_t id = 0; id < kIds; ++id) present[id] = true;
  for (int i = 0; i < 6000; ++i) {
    uint64_t id = rng() % (kIds + 500);
    bool remove = present[id] && rng() % 3 == 0;
    ops.push_back({id, remove, Vec(rng), i % 2 ? test::Payload(rng(), 1 + i % 13) : std::vector<std::byte>{}});
    present[id] = !remove;
  }
  std::atomic<bool> done{false}, failed{false};
  std::vector<uint64_t> lsns;
  std::thread checkpoints([&] {  // no Boost.Test checks off the test's thread
    while (!done && !failed) {
      auto lsn = d->Checkpoint();
      if (lsn.ok()) lsns.push_back(*lsn);
      else failed = true;
    }
  });
  // Before the first op, a state model rebuilt per checkpoint below.
  Model start;
  {
    std::mt19937_64 again(21);
    for (uint64_t id = 0; id < kIds; ++id) start.rows[id] = {Vec(again), test::Payload(id, 8)};
  }
  for (const auto& op : ops) {
    Status s = op.remove ? d->Remove(op.id) : d->Upsert(op.id, op.v, op.payload);
    BOOST_REQUIRE_MESSAGE(s.ok(), s.ToString());
  }
  done = true;
  checkpoints.join();
  BOOST_REQUIRE(!failed);
  // Payloads written while a checkpoint wrote out the earlier ones are kept.
  Model last = start;
  for (const auto& op : ops) {
    if (op.remove) last.rows.erase(op.id);
    else last.rows[op.id] = {op.v, op.payload};
  }
  ExpectEqual(*d, last);
  BOOST_REQUIRE(d->Close().ok());
  // The newest checkpoints are kept; check each one that is still there.
  // (A checkpoint with nothing logged since the last returns its LSN again.)
  auto fs = NewPosixFileSystem();
  const std::set<uint64_t> distinct(lsns.begin(), lsns.end());
  size_t checked = 0;
  for (uint64_t lsn : distinct) {
    const std::string path = dir.path() + "/" + CheckpointFileName(lsn);
    if (!std::filesystem::exists(path)) continue;
    auto ck = LoadCheckpoint(*fs, path);
    BOOST_REQUIRE_MESSAGE(ck.ok(), ck.status().ToString());
    Model m = start;
    for (uint64_t i = 0; i + first <= lsn && i < ops.size(); ++i) {
      if (ops[i].remove) m.rows.erase(ops[i].id);
      else m.rows[ops[i].id] = {ops[i].v, ops[i].payload};
    }
    BOOST_REQUIRE_EQUAL(ck->index->size(), m.rows.size());
    for (const auto& [id, row] : m.rows) {
      auto v = ck->index->Reconstruct(id);
      BOOST_REQUIRE_MESSAGE(v.ok(), "checkpoint at LSN " << lsn << " lacks id " << id);
      BOOST_REQUIRE_MESSAGE((*v == row.first), "checkpoint at LSN " << lsn << ": id " << id << " differs");
      auto p = ck->payloads.find(id);
      BOOST_REQUIRE((p == ck->payloads.end() ? row.second.empty() : p->second == row.second));
    }
    ++checked;
  }
  // Some were taken mid-stream, between the first op and the last.
  const auto mid = std::count_if(lsns.begin(), lsns.end(), [&](uint64_t l) { return l >= first && l + 1 < first + ops.size(); });
  BOOST_TEST(mid >= 1);
  // Every one of the newest keep_checkpoints is there: they alone were retired.
  BOOST_TEST(checked == std::min(distinct.size(), o.keep_checkpoints));
}

// The options' wrap_index (gpu::OnDevice's hook) gets every index the store
// makes, loads or trains, before the log is replayed into it, and the store
// then uses the one it returns.
BOOST_AUTO_TEST_CASE(wrap_index_gets_every_index_made_loaded_or_trained_and_the_store_uses_its_answer) {
  struct Searches final : index::ForwardingIndex {
    using ForwardingIndex::ForwardingIndex;
    std::atomic<int>* calls;
    using VectorIndex::Search;
    Result<index::SearchResults> Search(std::span<const float> q, size_t k, const index::IdSet* skip,
                                        const index::SearchParams& p) const override {
      ++*calls;
      return inner_->Search(q, k, skip, p);
    }
    std::string SearchedOn() const override { return "counted, " + inner_->SearchedOn(); }
  };
  std::atomic<int> searches{0};
  std::vector<std::pair<bool, size_t>> given;  // (trained, size) of each index wrapped
  auto wrap = [&](std::unique_ptr<index::VectorIndex> made) -> Result<std::unique_ptr<index::VectorIndex>> {
    given.emplace_back(made->is_trained(), made->size());
    auto w = std::make_unique<Searches>(std::move(made));
    w->calls = &searches;
    return std::unique_ptr<index::VectorIndex>(std::move(w));
  };
  test::TempDir dir;
  auto o = Options(dir.path(), "IVF4,Flat");
  o.wrap_index = wrap;
  std::mt19937_64 rng(12);
  Model m;
  {
    auto d = OpenOrDie(o);
    BOOST_REQUIRE(d->Train(Sample(rng, 400)).ok());
    RandomOps(*d, m, rng, 150);
    BOOST_REQUIRE(d->Checkpoint().ok());
    RandomOps(*d, m, rng, 150);  // left in the log
  }
  BOOST_REQUIRE(given.size() == 2u);
  BOOST_TEST((given[0] == std::pair<bool, size_t>(false, 0)));  // made at Open
  BOOST_TEST((given[1] == std::pair<bool, size_t>(true, 0)));   // trained
  const size_t at_checkpoint = [&] {
    auto d = OpenOrDie(o);
    BOOST_REQUIRE(given.size() == 3u);
    BOOST_TEST(given[2].first);  // loaded, before the log's tail is replayed into it
    BOOST_REQUIRE_EQUAL(d->Size(), m.rows.size());
    const int before = searches.load();
    BOOST_REQUIRE(d->Search(Vec(rng), 3).ok());
    BOOST_TEST(searches.load() > before);
    BOOST_TEST(d->Stats().searched_on == "counted, cpu");  // what the store's index says of itself
    return given[2].second;
  }();
  BOOST_TEST(at_checkpoint <= 200u);
  // A wrapper's error fails the Open with it; no index at all is refused by name.
  o.wrap_index = [](std::unique_ptr<index::VectorIndex>) -> Result<std::unique_ptr<index::VectorIndex>> {
    return Status::Unavailable("no card today");
  };
  BOOST_TEST(DurableIndex::Open(o).status().ToString().find("no card today") != std::string::npos);
  o.wrap_index = [](std::unique_ptr<index::VectorIndex>) -> Result<std::unique_ptr<index::VectorIndex>> {
    return std::unique_ptr<index::VectorIndex>();
  };
  auto none = DurableIndex::Open(o);
  BOOST_TEST((none.status().code() == Status::Code::kInvalidArgument));
  BOOST_TEST(none.status().ToString().find("wrap_index") != std::string::npos);
}
