// wal/: the record format, the group-commit writer and the reader's
// recovery modes. Runs once per backend (see tests/CMakeLists.txt).
#define BOOST_TEST_MODULE wal
// GCC 12 reports moves of std::variant<vector...> as maybe-uninitialized, a
// false positive at -O2; the rest of the project keeps the warning.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <boost/test/unit_test.hpp>

#include <atomic>
#include <cstring>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "io/fault_file_system.h"
#include "tests/test_util.h"
#include "wal/record_ops.h"
#include "wal/segment_allocator.h"
#include "wal/segment_files.h"
#include "wal/segment_window.h"
#include "wal/wal.h"

using namespace vecwal;
using namespace vecwal::wal;
using test::Payload;
using test::ReadLog;

namespace {

struct LogFixture {
  test::TempDir dir;
  WalOptions opts = test::SmallLogOptions();
  std::unique_ptr<Wal> wal;

  void Open() {
    wal.reset();
    auto w = Wal::Open(dir.path(), opts);
    BOOST_REQUIRE_MESSAGE(w.ok(), w.status().ToString());
    wal = std::move(w).value();
  }
  void Close() {
    BOOST_REQUIRE(wal->Close().ok());
    wal.reset();
  }
  // Leaves the log as a crash would, with no seal past what it wrote (here
  // none at all): what a test then tears could have been in flight.
  void CloseAsCrash() {
    Close();
    std::filesystem::remove(dir / kSealFileName);
  }
  uint64_t Write(uint64_t key, size_t size = 3000) {
    auto p = Payload(key, size);
    auto lsn = wal->Append(RecordType::kOpaque, p);
    BOOST_REQUIRE_MESSAGE(lsn.ok(), lsn.status().ToString());
    return *lsn;
  }
  std::vector<test::ReadBack> Read(RecoveryMode mode = RecoveryMode::kTolerateTail, LogScanReport* rep = nullptr) {
    auto r = ReadLog(dir.path(), mode, rep);
    BOOST_REQUIRE_MESSAGE(r.ok(), r.status().ToString());
    return *r;
  }
  Status ReadStatus(RecoveryMode mode) { return ReadLog(dir.path(), mode).status(); }
};

}  // namespace

BOOST_FIXTURE_TEST_SUITE(wal_suite, LogFixture)

BOOST_AUTO_TEST_CASE(round_trip) {
  Open();
  std::vector<size_t> sizes{0, 1, 7, 8, 40, 3000, 4096, 20000};
  for (size_t i = 0; i < sizes.size(); ++i) BOOST_TEST(Write(i, sizes[i]) == i + 1);
  Close();
  auto recs = Read(RecoveryMode::kStrict);
  BOOST_REQUIRE(recs.size() == sizes.size());
  for (size_t i = 0; i < sizes.size(); ++i) {
    BOOST_TEST(recs[i].lsn == i + 1);
    BOOST_TEST((recs[i].payload == Payload(i, sizes[i])));
  }
}

BOOST_AUTO_TEST_CASE(rotation_spreads_records_over_segments) {
  Open();
  for (int i = 0; i < 300; ++i) Write(i);  // ~900 KiB over 256 KiB segments
  BOOST_TEST(wal->stats().writer.rotations >= 3u);
  Close();
  auto recs = Read(RecoveryMode::kStrict);
  BOOST_REQUIRE(recs.size() == 300u);
  std::set<uint64_t> segs;
  for (size_t i = 0; i < recs.size(); ++i) {
    BOOST_REQUIRE(recs[i].lsn == i + 1);
    BOOST_REQUIRE((recs[i].payload == Payload(i, 3000)));
    segs.insert(recs[i].segment_id);
  }
  BOOST_TEST(segs.size() >= 4u);
}

BOOST_AUTO_TEST_CASE(restart_continues_lsns) {
  Open();
  for (int i = 0; i < 10; ++i) Write(i);
  Close();
  Open();
  BOOST_TEST(wal->open_report().last_lsn == 10u);
  BOOST_TEST(Write(10) == 11u);
  Close();
  Open();  // twice, to cover a reopen of a segment continued in place
  BOOST_TEST(Write(11) == 12u);
  Close();
  auto recs = Read(RecoveryMode::kStrict);
  BOOST_REQUIRE(recs.size() == 12u);
  for (size_t i = 0; i < 12; ++i) BOOST_TEST((recs[i].payload == Payload(i, 3000)));
}

BOOST_AUTO_TEST_CASE(open_visits_records_from_the_given_lsn) {
  Open();
  for (int i = 0; i < 100; ++i) Write(i);
  Close();
  std::vector<uint64_t> seen;
  auto w = Wal::Open(dir.path(), opts, [&](const LogRecord& r) {
    seen.push_back(r.lsn);
    return Status::OK();
  }, 60);
  BOOST_REQUIRE(w.ok());
  BOOST_REQUIRE(seen.size() == 41u);
  BOOST_TEST(seen.front() == 60u);
  BOOST_TEST(seen.back() == 100u);
}

BOOST_AUTO_TEST_CASE(many_writers_every_acked_lsn_reads_back) {
  Open();
  constexpr int kThreads = 16, kPerThread = 200;
  std::mutex mu;
  std::map<uint64_t, uint64_t> acked;  // lsn -> key
  std::atomic<int> errors{0};  // Boost.Test's checks are not thread-safe
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; ++t)
    ts.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        uint64_t key = uint64_t(t) << 32 | i;
        auto p = Payload(key, 100 + (key % 3000));
        auto lsn = wal->Append(RecordType::kOpaque, p);
        if (!lsn.ok() || wal->durable_lsn() < *lsn) {
          ++errors;
          continue;
        }
        std::lock_guard lk(mu);
        acked[*lsn] = key;
      }
    });
  for (auto& t : ts) t.join();
  BOOST_TEST(errors.load() == 0);
  BOOST_TEST(wal->stats().writer.flushes < uint64_t{kThreads * kPerThread});  // grouped
  Close();
  auto recs = Read(RecoveryMode::kStrict);
  BOOST_REQUIRE(recs.size() == acked.size());
  for (const auto& r : recs) {
    uint64_t key = acked.at(r.lsn);
    BOOST_REQUIRE((r.payload == Payload(key, 100 + (key % 3000))));
  }
}

BOOST_AUTO_TEST_CASE(async_appends_complete_when_durable) {
  Open();
  std::atomic<int> ok{0};
  std::atomic<uint64_t> max_lsn{0};
  std::vector<std::vector<std::byte>> payloads;
  for (int i = 0; i < 500; ++i) payloads.push_back(Payload(i, 500));
  for (int i = 0; i < 500; ++i)
    wal->AppendAsync(RecordType::kOpaque, payloads[i], [&](const Status& s, uint64_t lsn) {
      if (s.ok() && wal->durable_lsn() >= lsn) ++ok;
      uint64_t m = max_lsn.load();
      while (lsn > m && !max_lsn.compare_exchange_weak(m, lsn)) {}
    });
  auto fut = wal->AppendAsync(RecordType::kOpaque, payloads[0]);
  auto r = fut.get();
  BOOST_REQUIRE(r.ok());
  BOOST_TEST(*r == 501u);
  Close();  // callbacks all ran before Close returns
  BOOST_TEST(ok.load() == 500);
  BOOST_TEST(Read().size() == 501u);
}

BOOST_AUTO_TEST_CASE(append_many_is_durable_and_ordered) {
  Open();
  std::vector<std::vector<std::byte>> ps;
  for (int i = 0; i < 1024; ++i) ps.push_back(Payload(i, 3072));
  std::vector<RecordView> views;
  for (auto& p : ps) views.push_back({RecordType::kOpaque, p});
  std::vector<uint64_t> lsns;
  BOOST_REQUIRE(wal->AppendMany(views, &lsns).ok());
  BOOST_TEST(lsns.size() == 1024u);
  BOOST_TEST(wal->durable_lsn() >= lsns.back());
  Close();
  auto recs = Read(RecoveryMode::kStrict);
  BOOST_REQUIRE(recs.size() == 1024u);
  for (size_t i = 0; i < recs.size(); ++i) BOOST_REQUIRE((recs[i].payload == ps[i]));
}

// One thread keeps several batches in flight: each completes once, in
// order, with its last LSN, and the log holds every record in append order
// across segment rotations.
BOOST_AUTO_TEST_CASE(async_batches_complete_in_order_with_their_last_lsn) {
  Open();
  constexpr int kBatches = 24, kPerBatch = 100;
  std::vector<std::vector<std::byte>> ps;
  for (int i = 0; i < kBatches * kPerBatch; ++i) ps.push_back(Payload(i, 3072));
  std::mutex mu;
  std::vector<uint64_t> done_lsns;
  std::atomic<int> failed{0}, early{0};
  for (int b = 0; b < kBatches; ++b) {
    std::vector<RecordView> views;
    for (int i = 0; i < kPerBatch; ++i) views.push_back({RecordType::kOpaque, ps[b * kPerBatch + i]});
    wal->AppendManyAsync(views, [&](const Status& s, uint64_t lsn) {
      // On the log's thread: Boost.Test's checks are for the test's own.
      if (!s.ok()) ++failed;
      if (lsn > wal->durable_lsn()) ++early;  // acknowledged before durable
      std::lock_guard lk(mu);
      done_lsns.push_back(lsn);
    });
  }
  Close();  // every callback ran before Close returns
  BOOST_TEST(failed.load() == 0);
  BOOST_TEST(early.load() == 0);
  BOOST_REQUIRE(done_lsns.size() == static_cast<size_t>(kBatches));
  for (int b = 0; b < kBatches; ++b) BOOST_TEST(done_lsns[b] == static_cast<uint64_t>((b + 1) * kPerBatch));
  auto recs = Read(RecoveryMode::kStrict);
  BOOST_REQUIRE(recs.size() == ps.size());
  BOOST_TEST(recs.back().segment_id > recs.front().segment_id);  // the batches crossed rotations
  for (size_t i = 0; i < recs.size(); ++i) BOOST_REQUIRE((recs[i].payload == ps[i]));
}

// The reader sees a segment a window at a time. Records that straddle a
// chunk, records longer than what a window carries over, and segments
// bigger than a chunk all read back whole.
BOOST_AUTO_TEST_CASE(records_straddling_read_windows_read_back) {
  opts.segment_bytes = 24 << 20;  // three default 8 MiB chunks
  opts.max_write_bytes = 1 << 20;
  Open();
  std::vector<std::vector<std::byte>> ps;
  std::mt19937_64 rng(7);
  for (int i = 0; i < 60; ++i) {
    // Mostly odd sizes around a vector; now and then one past the 4 MiB carry.
    size_t size = i % 17 == 5 ? (5 << 20) + 123 : 3000 + rng() % 400000;
    ps.push_back(Payload(i, size));
    auto r = wal->Append(RecordType::kOpaque, ps.back());
    BOOST_REQUIRE_MESSAGE(r.ok(), r.status().ToString());
  }
  Close();
  LogScanReport rep;
  auto recs = Read(RecoveryMode::kStrict, &rep);
  BOOST_REQUIRE(recs.size() == ps.size());
  for (size_t i = 0; i < recs.size(); ++i) BOOST_REQUIRE((recs[i].payload == ps[i]));
  BOOST_TEST(rep.live_segments >= 2u);
}

// The window itself, with small chunks so that every path runs: forward
// slides with a carried head, reads longer than the carry, steps back,
// and the next segment's first chunk read ahead.
BOOST_AUTO_TEST_CASE(segment_window_returns_the_bytes_asked_for) {
  auto fs = NewPosixFileSystem(test::BackendUnderTest());
  constexpr uint64_t kFile = 1 << 20;
  std::vector<SegmentFileInfo> infos(2);
  for (int f = 0; f < 2; ++f) {
    infos[f].id = f + 1;
    infos[f].path = dir.path() + "/seg" + std::to_string(f);
    infos[f].file_bytes = kFile;
    std::vector<std::byte> bytes(kFile);
    for (uint64_t i = 0; i < kFile; ++i) bytes[i] = static_cast<std::byte>((i * 131 + f * 7 + i / 4096) & 0xff);
    FILE* out = std::fopen(infos[f].path.c_str(), "wb");
    BOOST_REQUIRE(out != nullptr);
    BOOST_REQUIRE(std::fwrite(bytes.data(), 1, bytes.size(), out) == bytes.size());
    std::fclose(out);
  }
  auto expect = [&](int f, uint64_t pos, size_t len, const std::byte* got) {
    for (size_t i = 0; i < len; ++i) {
      const uint64_t at = pos + i;
      if (got[i] != static_cast<std::byte>((at * 131 + f * 7 + at / 4096) & 0xff)) {
        BOOST_ERROR("segment " << f << " offset " << at << " (read at " << pos << ", " << len << " bytes) differs");
        return;
      }
    }
  };
  SegmentWindow w(*fs, 64 << 10, 16 << 10, 3);
  BOOST_REQUIRE(w.Begin(infos[0], &infos[1]).ok());
  std::mt19937_64 rng(3);
  uint64_t pos = 0;
  // Reads whose buffer the test keeps, as replay does: they must still hold
  // their bytes after every later read, however the window reused buffers.
  struct Kept {
    std::shared_ptr<const void> buf;
    const std::byte* p;
    uint64_t pos;
    size_t len;
  };
  std::vector<Kept> kept;
  while (pos < kFile) {
    // Short and long reads, some past the 16 KiB carry, some past a chunk.
    size_t len = std::min<uint64_t>(kFile - pos, rng() % 5 == 0 ? 70000 + rng() % 30000 : 1 + rng() % 9000);
    auto p = w.At(pos, len);
    BOOST_REQUIRE_MESSAGE(p.ok(), p.status().ToString());
    expect(0, pos, len, *p);
    if (rng() % 4 == 0) kept.push_back({w.Keep(), *p, pos, len});
    if (kept.size() > 6) kept.erase(kept.begin() + static_cast<long>(rng() % kept.size()));  // let some go
    if (rng() % 11 == 0 && pos > 50000) pos -= 40000;  // a step back, as salvage takes
    else pos += len;
  }
  BOOST_REQUIRE(!kept.empty());
  for (const auto& k : kept) expect(0, k.pos, k.len, k.p);
  BOOST_REQUIRE(w.Begin(infos[1], nullptr).ok());  // its first chunk was read ahead
  for (uint64_t at : {uint64_t{0}, uint64_t{65000}, kFile - 10}) {
    auto p = w.At(at, 10);
    BOOST_REQUIRE(p.ok());
    expect(1, at, 10, *p);
  }
  BOOST_TEST(w.bytes_read() >= 2 * kFile);
  w.End();
  for (const auto& k : kept) expect(0, k.pos, k.len, k.p);  // held past the window's end, too
}

BOOST_AUTO_TEST_CASE(record_larger_than_a_segment_is_refused) {
  Open();
  std::vector<std::byte> big(opts.segment_bytes);
  auto r = wal->Append(RecordType::kOpaque, big);
  BOOST_TEST(r.status().code() == Status::Code::kInvalidArgument);
  BOOST_TEST(r.status().message().find("does not fit in a segment") != std::string::npos);
  BOOST_TEST(Write(1) == 1u);  // the log is unharmed
  // The largest record that fits is accepted.
  std::vector<std::byte> max_rec(opts.segment_bytes - 4096 - kRecordHeaderSize);
  BOOST_TEST(wal->Append(RecordType::kOpaque, max_rec).ok());
  Close();
  BOOST_TEST(Read(RecoveryMode::kStrict).size() == 2u);
}

BOOST_AUTO_TEST_CASE(second_open_of_a_directory_is_refused) {
  Open();
  auto second = Wal::Open(dir.path(), opts);
  BOOST_TEST(second.status().code() == Status::Code::kUnavailable);
  BOOST_TEST(second.status().message().find("in use") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(torn_tail_is_cut) {
  Open();
  for (int i = 0; i < 5; ++i) Write(i);
  CloseAsCrash();
  auto recs = Read();
  // Tear the last record: keep its first 512-byte sector, zero the rest.
  const auto& last = recs.back();
  std::string seg = test::SegmentPath(dir.path(), last.segment_id);
  test::Fill(seg, last.offset + 512, 4096 - 512, 0);
  BOOST_TEST(ReadStatus(RecoveryMode::kStrict).IsCorruption());
  LogScanReport rep;
  BOOST_TEST(Read(RecoveryMode::kTolerateTail, &rep).size() == 4u);
  BOOST_TEST(rep.tail_cut);
  BOOST_TEST(rep.tail_note.find("LSN 5") != std::string::npos);
  Open();  // cuts the tail and continues at LSN 5 in a new segment
  BOOST_TEST(wal->open_report().tail_cut);
  BOOST_TEST(Write(100) == 5u);
  BOOST_TEST(Write(101) == 6u);
  Close();
  recs = Read(RecoveryMode::kStrict);  // the cut tail is no longer damage
  BOOST_REQUIRE(recs.size() == 6u);
  BOOST_TEST((recs[4].payload == Payload(100, 3000)));
  Open();
  BOOST_TEST(Write(102) == 7u);
}

// Found by the power-loss campaign (power_loss_test, under load): with two
// flushes in flight, the later one reached the disk whole while a power loss
// tore the earlier one's zero padding, whose missing sectors then showed a
// recycled file's old bytes. The next LSN sits at the next block, so nothing
// is missing; the reader had called it damage and refused to open the log.
BOOST_AUTO_TEST_CASE(torn_flush_padding_before_the_next_flush_loses_nothing) {
  Open();
  for (int i = 0; i < 3; ++i) Write(i);
  Close();
  auto recs = Read();
  BOOST_REQUIRE(recs.size() == 3u);
  const auto& first = recs[0];
  const uint64_t pad = first.offset + RecordFootprint(first.payload.size());
  BOOST_REQUIRE(recs[1].segment_id == first.segment_id);
  BOOST_REQUIRE(recs[1].offset > pad);  // the next flush, at a later block
  const std::string seg = test::SegmentPath(dir.path(), first.segment_id);
  for (uint64_t o = pad; o < recs[1].offset; o += 97) test::XorByte(seg, o, 0x5a);
  BOOST_TEST(ReadStatus(RecoveryMode::kStrict).IsCorruption());  // strict names any stray byte
  LogScanReport rep;
  auto back = Read(RecoveryMode::kTolerateTail, &rep);
  BOOST_REQUIRE(back.size() == 3u);
  for (size_t i = 0; i < 3; ++i) BOOST_TEST((back[i].payload == Payload(i, 3000)));
  BOOST_TEST(rep.torn_padding_skipped == 1u);
  BOOST_TEST(!rep.tail_cut);
  Open();
  BOOST_TEST(Write(9) == 4u);
  Close();
  // A damaged record where the next flush begins is still damage (later flushes acknowledged it).
  test::XorByte(seg, recs[1].offset + 30, 0x5a);
  BOOST_TEST(ReadStatus(RecoveryMode::kTolerateTail).IsCorruption());
}

// Found by the bit-flip campaign (bitflip_test): a record at a block start
// whose segment id field took a flip looked like bytes of a recycled file's
// earlier life, so even strict mode read the log as ending cleanly before
// it, and the acknowledged last record vanished without a word.
BOOST_AUTO_TEST_CASE(flipped_segment_id_in_the_last_record_is_not_taken_for_stale_bytes) {
  Open();
  for (int i = 0; i < 5; ++i) Write(i);
  Close();
  auto recs = Read();
  const auto& last = recs.back();
  BOOST_REQUIRE(last.offset % 4096 == 0);  // each flush starts a block
  std::string seg = test::SegmentPath(dir.path(), last.segment_id);
  test::XorByte(seg, last.offset + 24, 0x02);  // the segment id field
  Status strict = ReadStatus(RecoveryMode::kStrict);
  BOOST_TEST(strict.IsCorruption());
  BOOST_TEST(strict.ToString().find("LSN 5") != std::string::npos);
  LogScanReport rep;
  BOOST_TEST(Read(RecoveryMode::kTolerateTail, &rep).size() == 4u);
  BOOST_TEST(rep.tail_cut);  // reported, not silent
}

BOOST_AUTO_TEST_CASE(unacknowledged_writes_past_a_torn_one_are_discarded) {
  // One AppendMany call places 20 records in 10 flushes before any of them
  // is durable: each says acked = 0. A crash that tears flush 3 and lands
  // the later ones leaves valid records after a hole, none acknowledged.
  opts.max_write_bytes = 8192;
  Open();
  std::vector<std::vector<std::byte>> ps;
  std::vector<RecordView> views;
  for (int i = 0; i < 20; ++i) ps.push_back(Payload(i, 3000));
  for (auto& p : ps) views.push_back({RecordType::kOpaque, p});
  BOOST_REQUIRE(wal->AppendMany(views).ok());
  CloseAsCrash();
  auto recs = Read();
  BOOST_REQUIRE(recs.size() == 20u);
  std::string seg = test::SegmentPath(dir.path(), recs[4].segment_id);
  test::Fill(seg, recs[4].offset, 512, 0);  // record 5's first sector never landed
  BOOST_TEST(ReadStatus(RecoveryMode::kStrict).IsCorruption());
  LogScanReport rep;
  BOOST_TEST(Read(RecoveryMode::kTolerateTail, &rep).size() == 4u);
  BOOST_TEST(rep.tail_cut);
  BOOST_TEST(rep.discarded_unacked == 15u);
  Open();
  BOOST_TEST(Write(100) == 5u);
  Close();
  recs = Read(RecoveryMode::kStrict);
  BOOST_REQUIRE(recs.size() == 5u);
  BOOST_TEST((recs[4].payload == Payload(100, 3000)));
}

// The newest records have no later record to say they were acknowledged, so
// their damage reads as a torn tail; the seal says it for them. After a clean
// Close, a torn-looking last record is damage: Open refuses, naming the LSNs,
// where it used to cut them without a word; salvage drops them, says so, and
// lowers the seal, so that the log opens again and goes on.
BOOST_AUTO_TEST_CASE(a_torn_looking_record_below_the_seal_is_damage_not_a_torn_tail) {
  Open();
  for (int i = 0; i < 5; ++i) Write(i);
  Close();
  auto recs = Read();
  const std::string seg = test::SegmentPath(dir.path(), recs.back().segment_id);
  test::Fill(seg, recs.back().offset + 512, 4096 - 512, 0);  // as torn_tail_is_cut tears it
  LogScanReport rep;
  BOOST_TEST(Read(RecoveryMode::kTolerateTail, &rep).size() == 4u);  // the reader alone: a torn tail
  BOOST_TEST(rep.tail_cut);
  for (auto mode : {RecoveryMode::kTolerateTail, RecoveryMode::kStrict}) {
    opts.recovery_mode = mode;
    auto refused = Wal::Open(dir.path(), opts);
    BOOST_REQUIRE(!refused.ok());
    BOOST_TEST(refused.status().IsCorruption());
    if (mode == RecoveryMode::kTolerateTail)
      BOOST_TEST(refused.status().message().find("LSNs 5 to 5 were acknowledged") != std::string::npos,
                 refused.status().ToString());
  }
  BOOST_TEST(Read(RecoveryMode::kTolerateTail).size() == 4u);  // refusing changed nothing
  opts.recovery_mode = RecoveryMode::kSalvage;
  Open();
  BOOST_REQUIRE(wal->open_report().dropped.size() == 1u);
  BOOST_TEST(wal->open_report().dropped[0].first_lsn == 5u);
  BOOST_TEST(wal->open_report().dropped[0].last_lsn == 5u);
  wal.reset();  // a crash right after: the lowered seal must let the log open
  opts.recovery_mode = RecoveryMode::kTolerateTail;
  Open();
  BOOST_TEST(Write(100) == 5u);
  Close();
  // A seal neither of whose slots verifies protects nothing, and is said.
  test::XorByte(dir / kSealFileName, 3);
  test::XorByte(dir / kSealFileName, 4096 + 3);
  Open();
  BOOST_TEST(wal->open_report().seal_note.find("neither slot verifies") != std::string::npos);
  BOOST_TEST(Write(101) == 6u);
  Close();  // seals LSN 6 in slot 1
  Open();
  BOOST_TEST(Write(102) == 7u);
  Close();  // seals LSN 7 in slot 0
  recs = Read();
  test::Fill(test::SegmentPath(dir.path(), recs.back().segment_id), recs.back().offset + 512, 4096 - 512, 0);
  test::XorByte(dir / kSealFileName, 4096 + 3);  // the older slot torn: the newer one is read
  BOOST_TEST(!Wal::Open(dir.path(), opts).ok());
  test::XorByte(dir / kSealFileName, 4096 + 3);
  test::XorByte(dir / kSealFileName, 3);  // the newer torn: the older, LSN 6, does not cover LSN 7
  Open();
  BOOST_TEST(wal->open_report().tail_cut);
  BOOST_TEST(Write(103) == 7u);
}

// While the log runs, it seals on a timer: after a crash only the records of
// the last interval are judged without the seal.
BOOST_AUTO_TEST_CASE(a_running_log_seals_its_durable_lsn_on_a_timer) {
  opts.seal_interval_ms = 5;
  Open();
  for (int i = 0; i < 3; ++i) Write(i);
  auto fs = NewPosixFileSystem(test::BackendUnderTest());
  auto sealed = [&] { return (*LogSeal::Open(*fs, dir.path()))->sealed_lsn(); };
  for (int i = 0; i < 400 && sealed() < 3; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  BOOST_TEST(sealed() == 3u);  // read while the log runs: no Close has sealed it
}

BOOST_AUTO_TEST_CASE(damage_proven_acknowledged_is_corruption_not_a_torn_tail) {
  opts.max_writes_in_flight = 1;
  Open();
  for (int i = 0; i < 3; ++i) Write(i);  // serial: record 3's flush says acked = 2
  Close();
  auto recs = Read();
  BOOST_REQUIRE(recs.size() == 3u);
  std::string seg = test::SegmentPath(dir.path(), recs[1].segment_id);
  test::XorByte(seg, recs[1].offset + 100);
  Status s = ReadStatus(RecoveryMode::kTolerateTail);
  BOOST_TEST(s.IsCorruption());
  BOOST_TEST(s.message().find("acknowledged") != std::string::npos);
  // Damage to the newest record alone proves nothing: a torn tail, cut.
  test::XorByte(seg, recs[1].offset + 100);
  test::XorByte(seg, recs[2].offset + 100);
  LogScanReport rep;
  BOOST_TEST(Read(RecoveryMode::kTolerateTail, &rep).size() == 2u);
  BOOST_TEST(rep.tail_cut);
}

BOOST_AUTO_TEST_CASE(mid_log_corruption_found_in_each_mode) {
  Open();
  for (int i = 0; i < 200; ++i) Write(i);
  Close();
  auto recs = Read();
  const auto& victim = recs[20];  // in the first segment, far from the tail
  test::XorByte(test::SegmentPath(dir.path(), victim.segment_id), victim.offset + 60);
  Status strict = ReadStatus(RecoveryMode::kStrict);
  BOOST_TEST(strict.IsCorruption());
  BOOST_TEST(strict.message().find(test::SegmentPath(dir.path(), victim.segment_id)) != std::string::npos);
  BOOST_TEST(strict.message().find("offset " + std::to_string(victim.offset)) != std::string::npos);
  BOOST_TEST(strict.message().find("LSN 21") != std::string::npos);
  BOOST_TEST(ReadStatus(RecoveryMode::kTolerateTail).IsCorruption());
  LogScanReport rep;
  auto salvaged = Read(RecoveryMode::kSalvage, &rep);
  BOOST_TEST(salvaged.size() == 199u);
  BOOST_REQUIRE(rep.dropped.size() == 1u);
  BOOST_TEST(rep.dropped[0].first_lsn == 21u);
  BOOST_TEST(rep.dropped[0].last_lsn == 21u);
  for (const auto& r : salvaged) BOOST_REQUIRE((r.payload == Payload(r.lsn - 1, 3000)));
  // Opening refuses a damaged log by default, and loses nothing by refusing.
  BOOST_TEST(!Wal::Open(dir.path(), opts).ok());
}

// A store's checkpoint holds the ops below the LSN it reads the log from, and
// a segment holds records on both sides of it: damage below that LSN, in a
// record or in a whole segment's header, is passed over and said (strict
// refuses it). Damage at or above it is the usual error.
BOOST_AUTO_TEST_CASE(damage_below_the_scans_first_lsn_is_passed_over_unless_strict) {
  Open();
  for (int i = 0; i < 200; ++i) Write(i);
  Close();
  auto recs = Read();
  BOOST_REQUIRE(recs[20].segment_id == recs[40].segment_id);
  const std::string first_seg = test::SegmentPath(dir.path(), recs[20].segment_id);
  test::XorByte(first_seg, recs[20].offset + 60);  // LSN 21
  auto fs = NewPosixFileSystem(test::BackendUnderTest());
  auto scan = [&](uint64_t from, RecoveryMode mode, uint64_t* visited = nullptr) {
    return ScanLog(*fs, dir.path(), from, mode, [&](const LogRecord& r) {
      if (visited != nullptr && r.payload.size() == 3000 && std::ranges::equal(r.payload, Payload(r.lsn - 1, 3000)))
        ++*visited;
      return Status::OK();
    });
  };
  for (auto mode : {RecoveryMode::kTolerateTail, RecoveryMode::kSalvage}) {
    uint64_t visited = 0;
    auto rep = scan(41, mode, &visited);
    BOOST_REQUIRE_MESSAGE(rep.ok(), rep.status().ToString());
    BOOST_TEST(visited == 160u);  // LSNs 41..200, each intact
    BOOST_TEST(rep->dropped.empty());
    BOOST_REQUIRE(rep->skipped.size() == 1u);
    BOOST_TEST(rep->skipped[0].first_lsn == 21u);
    BOOST_TEST(rep->skipped[0].last_lsn == 21u);
    BOOST_TEST(rep->skipped[0].where == first_seg + " offset " + std::to_string(recs[20].offset));
  }
  BOOST_TEST(scan(41, RecoveryMode::kStrict).status().IsCorruption());
  BOOST_TEST(scan(21, RecoveryMode::kTolerateTail).status().IsCorruption());  // LSN 21 asked for
  BOOST_TEST(scan(22, RecoveryMode::kTolerateTail).ok());

  // The first segment's header, both copies: the second segment's first LSN
  // proves the first holds nothing at or above it.
  test::XorByte(first_seg, 10);
  test::XorByte(first_seg, 2048 + 10);
  const auto second = std::ranges::find_if(recs, [&](const auto& r) { return r.segment_id != recs[0].segment_id; });
  BOOST_REQUIRE(second != recs.end());
  uint64_t visited = 0;
  auto rep = scan(second->lsn, RecoveryMode::kTolerateTail, &visited);
  BOOST_REQUIRE_MESSAGE(rep.ok(), rep.status().ToString());
  BOOST_TEST(visited == 201 - second->lsn);
  BOOST_REQUIRE(rep->skipped.size() == 1u);
  BOOST_TEST(rep->skipped[0].where == first_seg);
  BOOST_TEST(rep->skipped[0].last_lsn == second->lsn - 1);
  BOOST_TEST(scan(second->lsn, RecoveryMode::kStrict).status().IsCorruption());
  BOOST_TEST(scan(second->lsn - 1, RecoveryMode::kTolerateTail).status().IsCorruption());
}

BOOST_AUTO_TEST_CASE(bit_flip_detected_anywhere_in_a_record) {
  Open();
  for (int i = 0; i < 3; ++i) Write(i, 200);
  Close();
  auto recs = Read();
  std::string seg = test::SegmentPath(dir.path(), recs[1].segment_id);
  uint64_t footprint = RecordFootprint(200);
  for (uint64_t off = 0; off < kRecordHeaderSize + 200; off += 7) {
    for (uint8_t bit : {0x01, 0x80}) {
      test::XorByte(seg, recs[1].offset + off, bit);
      BOOST_TEST_INFO("byte " << off << " bit " << int(bit));
      BOOST_TEST(ReadStatus(RecoveryMode::kStrict).IsCorruption());
      test::XorByte(seg, recs[1].offset + off, bit);
    }
  }
  BOOST_TEST(footprint >= kRecordHeaderSize + 200);
  BOOST_TEST(ReadStatus(RecoveryMode::kStrict).ok());
}

BOOST_AUTO_TEST_CASE(damaged_segment_header_copy_is_survived) {
  Open();
  Write(1);
  Close();
  std::string seg = test::SegmentPath(dir.path(), Read()[0].segment_id);
  test::XorByte(seg, 20);  // the first copy
  BOOST_TEST(Read(RecoveryMode::kStrict).size() == 1u);
  test::XorByte(seg, kHeaderCopyOffset + 20);  // and the second
  BOOST_TEST(ReadStatus(RecoveryMode::kStrict).IsCorruption());
}

BOOST_AUTO_TEST_CASE(stale_records_in_a_recycled_segment_never_replay) {
  opts.spare_segments = 4;
  Open();
  for (int i = 0; i < 200; ++i) Write(i);
  uint64_t released_below = wal->durable_lsn();
  auto released = wal->ReleaseBefore(released_below);
  BOOST_REQUIRE(released.ok());
  BOOST_TEST(*released >= 2u);
  // New records reuse the retired files, whose old records are still there.
  for (int i = 200; i < 400; ++i) Write(i);
  BOOST_TEST(wal->stats().writer.rotations >= 2u);
  Close();
  LogScanReport rep;
  auto recs = Read(RecoveryMode::kStrict, &rep);
  BOOST_TEST(rep.first_lsn > 1u);
  for (size_t i = 0; i + 1 < recs.size(); ++i) BOOST_REQUIRE(recs[i + 1].lsn == recs[i].lsn + 1);
  for (const auto& r : recs) BOOST_REQUIRE((r.payload == Payload(r.lsn - 1, 3000)));
  BOOST_TEST(recs.back().lsn == 400u);
  // Plant an old-epoch record right after the live tail: still ignored.
  Open();
  BOOST_TEST(Write(400) == 401u);
}

BOOST_AUTO_TEST_CASE(release_keeps_the_segments_a_reader_needs) {
  Open();
  for (int i = 0; i < 300; ++i) Write(i);
  auto released = wal->ReleaseBefore(150);
  BOOST_REQUIRE(released.ok());
  Close();
  auto recs = Read(RecoveryMode::kStrict);
  BOOST_TEST(recs.front().lsn <= 150u);
  BOOST_TEST(recs.back().lsn == 300u);
}

BOOST_AUTO_TEST_CASE(failed_write_fails_pending_and_later_appends) {
  auto faulty = std::make_shared<FaultInjectionFileSystem>(opts.fs);
  opts.fs = faulty;
  Open();
  for (int i = 0; i < 10; ++i) Write(i);
  faulty->FailWritesFrom(0, EIO);
  auto r = wal->Append(RecordType::kOpaque, Payload(10, 100));
  BOOST_TEST(!r.ok());
  BOOST_TEST(r.status().sys_errno() == EIO);
  faulty->ClearFaults();  // the disk "recovers": the log must stay failed
  auto later = wal->Append(RecordType::kOpaque, Payload(11, 100));
  BOOST_TEST(!later.ok());
  BOOST_TEST(later.status().message().find("failed") != std::string::npos);
  BOOST_TEST(!wal->Close().ok());
  wal.reset();
  opts.fs = NewPosixFileSystem(test::BackendUnderTest());
  Open();  // the acknowledged prefix is all there
  BOOST_TEST(wal->open_report().last_lsn == 10u);
  BOOST_TEST(Write(12) == 11u);
}

BOOST_AUTO_TEST_CASE(failed_write_fails_every_batch_in_flight) {
  auto faulty = std::make_shared<FaultInjectionFileSystem>(opts.fs);
  opts.fs = faulty;
  Open();
  Write(0);
  faulty->FailWritesFrom(0, EIO);
  std::vector<std::vector<std::byte>> ps;
  for (int i = 0; i < 40; ++i) ps.push_back(Payload(i, 3000));
  std::atomic<int> ok{0}, failed{0};
  for (int b = 0; b < 4; ++b) {
    std::vector<RecordView> views;
    for (int i = 0; i < 10; ++i) views.push_back({RecordType::kOpaque, ps[b * 10 + i]});
    wal->AppendManyAsync(views, [&](const Status& s, uint64_t) { (s.ok() ? ok : failed)++; });
  }
  BOOST_TEST(!wal->Close().ok());
  BOOST_TEST(ok.load() == 0);
  BOOST_TEST(failed.load() == 4);
  wal.reset();
  opts.fs = NewPosixFileSystem(test::BackendUnderTest());
  Open();
  BOOST_TEST(wal->open_report().last_lsn == 1u);
}

// Blocking appenders whose records sit in a failed write, in writes behind it
// (in flight or not yet submitted) and in the open buffer all return the
// error; none hangs, and every LSN acknowledged before reads back.
// A lost wake hangs: the timeout turns that into a failure.
BOOST_AUTO_TEST_CASE(failed_write_wakes_every_blocking_appender_with_the_error, *boost::unit_test::timeout(120)) {
  auto faulty = std::make_shared<FaultInjectionFileSystem>(opts.fs);
  opts.fs = faulty;
  Open();
  faulty->FailWritesFrom(6, EIO);
  std::mutex mu;
  std::vector<uint64_t> acked;
  std::atomic<int> errors{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < 12; ++t)
    ts.emplace_back([&, t] {
      std::vector<std::vector<std::byte>> ps;
      for (int i = 0; i < 30; ++i) ps.push_back(Payload(t * 100 + i, 3000));
      for (int round = 0; round < 1000; ++round) {
        std::vector<uint64_t> lsns;
        Status s;
        if (t % 2 == 0) {  // single records
          auto r = wal->Append(RecordType::kOpaque, ps[round % ps.size()]);
          s = r.status();
          if (r.ok()) lsns.push_back(*r);
        } else {  // batches wider than a write: several flushes each
          std::vector<RecordView> views;
          for (auto& p : ps) views.push_back({RecordType::kOpaque, p});
          s = wal->AppendMany(views, &lsns);
        }
        if (!s.ok()) {
          ++errors;
          return;
        }
        std::lock_guard lk(mu);
        acked.insert(acked.end(), lsns.begin(), lsns.end());
      }
    });
  for (auto& t : ts) t.join();
  BOOST_TEST(errors.load() == 12);
  BOOST_TEST(!wal->Append(RecordType::kOpaque, Payload(1, 10)).ok());
  BOOST_TEST(!wal->Close().ok());
  wal.reset();
  std::set<uint64_t> read;
  for (const auto& r : Read()) read.insert(r.lsn);
  for (uint64_t lsn : acked) BOOST_TEST_REQUIRE(read.count(lsn) == 1u, "acknowledged LSN " << lsn << " is lost");
}

BOOST_AUTO_TEST_CASE(failed_sync_is_never_acknowledged) {
  auto faulty = std::make_shared<FaultInjectionFileSystem>(opts.fs);
  opts.fs = faulty;
  Open();
  Write(0);
  faulty->FailSyncsFrom(0);
  std::atomic<int> failures{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < 8; ++t)
    ts.emplace_back([&, t] {
      auto p = Payload(t, 100);
      if (!wal->Append(RecordType::kOpaque, p).ok()) ++failures;
    });
  for (auto& t : ts) t.join();
  BOOST_TEST(failures.load() == 8);
  BOOST_TEST(wal->durable_lsn() == 1u);
  wal.reset();
  opts.fs = NewPosixFileSystem(test::BackendUnderTest());
  Open();  // data may have reached the disk; the acknowledged record surely did
  BOOST_TEST(wal->open_report().last_lsn >= 1u);
}

BOOST_AUTO_TEST_CASE(no_space_for_a_new_segment_is_a_clear_error) {
  auto faulty = std::make_shared<FaultInjectionFileSystem>(opts.fs);
  opts.fs = faulty;
  opts.spare_segments = 0;
  Open();
  faulty->FailReservations(true);
  Status last;
  uint64_t acked = 0;
  for (int i = 0; i < 200 && last.ok(); ++i) {
    auto r = wal->Append(RecordType::kOpaque, Payload(i, 3000));
    if (r.ok()) acked = *r;
    last = r.status();
  }
  // The spare for the next segment may have been made before the fault.
  if (last.ok()) {
    for (int i = 0; i < 200 && last.ok(); ++i) {
      auto r = wal->Append(RecordType::kOpaque, Payload(1000 + i, 3000));
      if (r.ok()) acked = *r;
      last = r.status();
    }
  }
  BOOST_TEST(last.IsNoSpace(), last.ToString());
  BOOST_TEST(last.message().find("reserving segment") != std::string::npos);
  wal.reset();
  faulty->ClearFaults();
  Open();
  BOOST_TEST(wal->open_report().last_lsn == acked);
}

BOOST_AUTO_TEST_CASE(crash_mid_write_keeps_the_acknowledged_prefix) {
  for (size_t keep : {0, 512, 1024, 3584}) {
    test::TempDir d;
    auto faulty = std::make_shared<FaultInjectionFileSystem>(NewPosixFileSystem(test::BackendUnderTest()));
    WalOptions o = opts;
    o.fs = faulty;
    uint64_t acked = 0;
    {
      auto w = Wal::Open(d.path(), o);
      BOOST_REQUIRE(w.ok());
      for (int i = 0; i < 5; ++i) acked = *(*w)->Append(RecordType::kOpaque, Payload(i, 3000));
      faulty->CrashAtWrite(0, keep);
      BOOST_TEST(!(*w)->Append(RecordType::kOpaque, Payload(99, 3000)).ok());
    }
    auto w = Wal::Open(d.path(), test::SmallLogOptions());
    BOOST_REQUIRE_MESSAGE(w.ok(), w.status().ToString());
    // The torn record is gone unless all of it landed; it was never
    // acknowledged, so either is right.
    uint64_t expect_max = keep >= RecordFootprint(3000) ? acked + 1 : acked;
    BOOST_TEST((*w)->open_report().last_lsn >= acked);
    BOOST_TEST((*w)->open_report().last_lsn <= expect_max);
  }
}

BOOST_AUTO_TEST_CASE(ops_round_trip_and_truncation_names_the_lsn) {
  std::vector<Op> ops;
  ops.push_back(UpsertOp{42, {1.f, 2.f, 3.f}, {std::byte{9}}});
  ops.push_back(DeleteOp{7});
  ops.push_back(BatchOp{{UpsertOp{1, {0.5f}, {}}, DeleteOp{2}}});
  ops.push_back(CheckpointMarkerOp{1234, "ckpt-1.vwc"});
  for (const auto& op : ops) {
    std::vector<std::byte> buf;
    EncodeOp(op, buf);
    auto back = DecodeOp(TypeOf(op), buf, 5);
    BOOST_REQUIRE(back.ok());
    std::vector<std::byte> again;
    EncodeOp(*back, again);
    BOOST_TEST((again == buf));
    if (buf.size() > 1) {
      auto cut = DecodeOp(TypeOf(op), std::span(buf).first(buf.size() - 1), 77);
      BOOST_TEST(cut.status().IsCorruption());
      BOOST_TEST(cut.status().message().find("LSN 77") != std::string::npos);
    }
  }
  Open();
  auto lsn = wal->Append(ops[0]);
  BOOST_REQUIRE(lsn.ok());
  Close();
  auto recs = Read();
  auto op = DecodeOp(recs[0].type, recs[0].payload, recs[0].lsn);
  BOOST_REQUIRE(op.ok());
  BOOST_TEST(std::get<UpsertOp>(*op).id == 42u);
}

// Replay decodes ops as views into the log's bytes. They say what DecodeOp
// says, and a batch damaged anywhere yields an error and no op at all: a
// batch is applied whole or not.
BOOST_AUTO_TEST_CASE(op_views_match_decoded_ops_and_a_damaged_batch_yields_none) {
  BatchOp batch{{UpsertOp{1, {0.5f, 1.5f}, {std::byte{3}}}, DeleteOp{2}, UpsertOp{3, {2.5f, 3.5f}, {}}}};
  std::vector<std::byte> buf;
  EncodeOp(batch, buf);
  std::vector<OpView> views(1);  // appended to, not replaced
  BOOST_REQUIRE(DecodeOpViews(RecordType::kBatch, buf, 9, views).ok());
  BOOST_REQUIRE(views.size() == 4u);
  BOOST_TEST((views[1].id == 1u && !views[1].is_delete && views[1].dim == 2u));
  float v[2];
  std::memcpy(v, views[1].vector.data(), sizeof v);
  BOOST_TEST((v[0] == 0.5f && v[1] == 1.5f));
  BOOST_TEST((views[1].payload.size() == 1u && views[1].payload[0] == std::byte{3}));
  BOOST_TEST((views[2].is_delete && views[2].id == 2u));
  BOOST_TEST((views[3].id == 3u && views[3].payload.empty()));
  // Every cut of the batch, and a flipped op type, is refused whole.
  for (size_t cut = 0; cut < buf.size(); ++cut) {
    std::vector<OpView> none;
    Status s = DecodeOpViews(RecordType::kBatch, std::span(buf).first(cut), 11, none);
    BOOST_TEST(s.IsCorruption());
    BOOST_TEST(none.empty());
  }
  auto bad = buf;
  // count, then (type, length, body) per op; the first body is an upsert of
  // id, dim, payload length, two floats and one payload byte.
  bad[4 + 1 + 4 + (8 + 4 + 4 + 8 + 1)] = std::byte{0x7f};  // the second op's type
  std::vector<OpView> none;
  BOOST_TEST(DecodeOpViews(RecordType::kBatch, bad, 12, none).message().find("has type") != std::string::npos);
  BOOST_TEST(none.empty());
  // A checkpoint marker carries no op to apply.
  none.clear();
  std::vector<std::byte> marker;
  EncodeOp(CheckpointMarkerOp{5, "x"}, marker);
  BOOST_TEST(DecodeOpViews(RecordType::kCheckpointMarker, marker, 13, none).ok());
  BOOST_TEST(none.empty());
}

// Regression (found by the crash loop): a blank file adopted as a spare at
// open could be renamed over a segment that had gone live under the same
// name, losing its acknowledged records.
BOOST_AUTO_TEST_CASE(adopted_spare_is_never_renamed_over_a_live_segment) {
  auto fs = opts.fs;
  FileOpenOptions make;
  make.create = make.writable = true;
  make.zero_fill_bytes = opts.segment_bytes;
  for (uint64_t id : {1, 3}) BOOST_REQUIRE(fs->Open(test::SegmentPath(dir.path(), id), make).ok());
  SegmentAllocator alloc(*fs, dir.path(), opts.segment_bytes, 4);
  alloc.AdoptSpare(test::SegmentPath(dir.path(), 1));
  alloc.AdoptSpare(test::SegmentPath(dir.path(), 3));
  auto three = alloc.Take(3);  // must be wal-3 itself, and no longer a spare
  BOOST_REQUIRE(three.ok());
  BOOST_REQUIRE(WriteSegmentHeader(**three, {3, 77, 100, opts.segment_bytes, 4096}).ok());
  auto four = alloc.Take(4);   // must come from wal-1
  BOOST_REQUIRE(four.ok());
  auto files = ListSegmentFiles(*fs, dir.path());
  BOOST_REQUIRE(files.ok());
  BOOST_REQUIRE(files->size() == 2u);
  BOOST_TEST((*files)[0].id == 3u);
  BOOST_TEST(((*files)[0].state == SegmentFileInfo::State::kLive));
  BOOST_TEST((*files)[1].id == 4u);
  // And a spare that is not blank is refused outright.
  alloc.AdoptSpare(test::SegmentPath(dir.path(), 3));
  auto five = alloc.Take(5);
  BOOST_TEST(five.status().IsCorruption(), five.status().ToString());
}

BOOST_AUTO_TEST_SUITE_END()
