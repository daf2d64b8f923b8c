// Bit flips in log segments and checkpoint files: every flip in bytes that
// hold data is found and named (file, offset, LSN), and no mode ever hands
// out a record or a checkpoint whose bytes differ from what was written.
//
// VECWAL_FLIP_STRIDE=N flips one bit in every Nth byte (default 3; 1 flips a
// bit of every byte).
#define BOOST_TEST_MODULE bitflip
#include <boost/test/unit_test.hpp>

#include <map>

#include "recovery/checkpoint_file.h"
#include "recovery/durable_index.h"
#include "tests/test_util.h"

using namespace vecwal;

namespace {

// Flips bits without the fsync test::XorByte pays for: reads see the page
// cache (O_DIRECT reads write dirty pages back first).
void Flip(const std::string& path, uint64_t offset, uint8_t mask) {
  int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  unsigned char b = 0;
  if (fd < 0 || ::pread(fd, &b, 1, static_cast<off_t>(offset)) != 1) std::abort();
  b ^= mask;
  if (::pwrite(fd, &b, 1, static_cast<off_t>(offset)) != 1) std::abort();
  ::close(fd);
}

size_t Stride() {
  const char* env = std::getenv("VECWAL_FLIP_STRIDE");
  return env && std::atoi(env) > 0 ? static_cast<size_t>(std::atoi(env)) : 3;
}

}  // namespace

BOOST_AUTO_TEST_CASE(every_flip_in_a_log_record_is_found_in_every_mode) {
  test::TempDir t;
  const std::string log = t / "log";
  {
    auto o = test::SmallLogOptions();
    o.segment_bytes = 64 << 10;
    auto w = wal::Wal::Open(log, o);
    BOOST_REQUIRE(w.ok());
    for (uint64_t i = 1; i <= 40; ++i)
      BOOST_REQUIRE((*w)->Append(wal::RecordType::kOpaque, test::Payload(i, 50 + (i * 37) % 3000)).ok());
    BOOST_REQUIRE((*w)->Close().ok());
  }
  auto clean = test::ReadLog(log, wal::RecoveryMode::kStrict);
  BOOST_REQUIRE(clean.ok());
  BOOST_REQUIRE(clean->size() == 40u);
  BOOST_REQUIRE(clean->back().segment_id > 1);  // the flips cross a rotation
  std::map<uint64_t, std::vector<std::byte>> want;
  for (const auto& r : *clean) want[r.lsn] = r.payload;

  size_t flips = 0;
  for (const auto& victim : *clean) {
    const std::string path = test::SegmentPath(log, victim.segment_id);
    const uint64_t begin = victim.offset, end = victim.offset + wal::kRecordHeaderSize + victim.payload.size();
    for (uint64_t pos = begin; pos < end; pos += Stride()) {
      const uint8_t mask = static_cast<uint8_t>(1u << (pos % 8));
      Flip(path, pos, mask);
      ++flips;
      const std::string where = path + " offset " + std::to_string(pos) + " (LSN " + std::to_string(victim.lsn) + ")";
      // strict: an error naming the file, the record's offset and its LSN.
      auto strict = test::ReadLog(log, wal::RecoveryMode::kStrict);
      BOOST_REQUIRE_MESSAGE(!strict.ok(), where << ": flip not found");
      const std::string msg = strict.status().ToString();
      BOOST_REQUIRE_MESSAGE(msg.find(path + " offset " + std::to_string(victim.offset)) != std::string::npos &&
                                msg.find("LSN " + std::to_string(victim.lsn)) != std::string::npos,
                            where << ": error does not name the record: " << msg);
      // tolerate_tail: the records before it, intact; the flipped one never.
      auto tail = test::ReadLog(log, wal::RecoveryMode::kTolerateTail);
      if (tail.ok()) {
        BOOST_REQUIRE_MESSAGE(victim.lsn == 40, where << ": mid-log damage read as a torn tail");
        BOOST_REQUIRE(tail->size() == 39u);
      }
      // salvage: every other record, intact, and the flipped one reported.
      wal::LogScanReport rep;
      auto salvage = test::ReadLog(log, wal::RecoveryMode::kSalvage, &rep);
      BOOST_REQUIRE_MESSAGE(salvage.ok(), where << ": " << salvage.status().ToString());
      for (const auto& r : *salvage) {
        BOOST_REQUIRE_MESSAGE(r.lsn != victim.lsn, where << ": flipped record handed out");
        BOOST_REQUIRE_MESSAGE(r.payload == want[r.lsn], where << ": LSN " << r.lsn << " garbled");
      }
      BOOST_REQUIRE_MESSAGE(salvage->size() == 39u || victim.lsn == 40, where << ": salvage lost more than the flip");
      bool reported = false;
      for (const auto& d : rep.dropped) reported |= d.first_lsn <= victim.lsn && victim.lsn <= d.last_lsn;
      BOOST_REQUIRE_MESSAGE(reported || (victim.lsn == 40 && rep.tail_cut), where << ": drop not reported");
      Flip(path, pos, mask);
    }
  }
  BOOST_TEST_MESSAGE(flips << " bit flips in log records, each found");
}

BOOST_AUTO_TEST_CASE(every_flip_in_a_checkpoint_is_refused_or_harmless) {
  test::TempDir t;
  recovery::DurableIndexOptions o;
  o.dir = t / "db";
  o.spec = {8, index::Metric::kL2, "Flat"};
  o.wal = test::SmallLogOptions();
  o.checkpoint_every_log_bytes = 0;
  std::string path;
  {
    auto d = recovery::DurableIndex::Open(o);
    BOOST_REQUIRE(d.ok());
    for (uint64_t i = 0; i < 50; ++i) {
      std::vector<float> v(8, static_cast<float>(i));
      BOOST_REQUIRE((*d)->Upsert(i, v, test::Payload(i, i % 20)).ok());
    }
    auto lsn = (*d)->Checkpoint();
    BOOST_REQUIRE(lsn.ok());
    path = o.dir + "/" + recovery::CheckpointFileName(*lsn);
  }
  auto fs = NewPosixFileSystem(test::BackendUnderTest());
  auto good = recovery::LoadCheckpoint(*fs, path);
  BOOST_REQUIRE(good.ok());
  const uint64_t size = std::filesystem::file_size(path);
  size_t flips = 0, refused = 0;
  // The header block densely; the sections, mostly vector bytes, sparser.
  for (uint64_t pos = 0; pos < size; pos += pos < 4096 ? Stride() : 5 * Stride()) {
    const uint8_t mask = static_cast<uint8_t>(1u << (pos % 8));
    Flip(path, pos, mask);
    ++flips;
    auto got = recovery::LoadCheckpoint(*fs, path);
    if (!got.ok()) {
      ++refused;
      BOOST_REQUIRE_MESSAGE(got.status().ToString().find(path) != std::string::npos,
                            "offset " << pos << ": error does not name the file: " << got.status().ToString());
    } else {
      // Only padding outside every checksummed byte may flip unnoticed, and
      // then what loads is exactly what was written.
      BOOST_REQUIRE_MESSAGE(got->payloads == good->payloads && got->info.live_count == good->info.live_count,
                            "offset " << pos << ": a flipped checkpoint loaded different content");
      for (uint64_t i = 0; i < 50; ++i)
        BOOST_REQUIRE(*got->index->Reconstruct(i) == *good->index->Reconstruct(i));
    }
    Flip(path, pos, mask);
  }
  BOOST_TEST_MESSAGE(flips << " bit flips in a checkpoint, " << refused << " refused, the rest in padding");
  BOOST_TEST(refused > flips / 2);
}
