// recovery/: checkpoint files.
#define BOOST_TEST_MODULE checkpoint
#include <boost/test/unit_test.hpp>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <random>

#include "io/power_loss_file_system.h"
#include "recovery/checkpoint_file.h"
#include "recovery/io_threads.h"
#include "tests/test_util.h"

using namespace vecwal;
using namespace vecwal::recovery;

namespace {

constexpr uint32_t kDim = 8;

std::unique_ptr<index::VectorIndex> Filled(const std::string& desc, size_t n) {
  std::mt19937_64 rng(5);
  std::normal_distribution<float> g;
  std::vector<float> v(std::max<size_t>(n, 500) * kDim);
  for (auto& x : v) x = g(rng);
  auto idx = index::NewFaissIndex({kDim, index::Metric::kL2, desc});
  BOOST_REQUIRE(idx.ok());
  if (!(*idx)->is_trained()) BOOST_REQUIRE((*idx)->Train(v).ok());
  std::vector<uint64_t> ids(n);
  for (size_t i = 0; i < n; ++i) ids[i] = 3 * i + 1;
  BOOST_REQUIRE((*idx)->Add(ids, std::span(v).first(n * kDim)).ok());
  BOOST_REQUIRE((*idx)->Remove(std::span(ids).first(n / 10)).ok());
  return std::move(idx).value();
}

Payloads SomePayloads(size_t n) {
  Payloads p;
  for (size_t i = 0; i < n; ++i) p[3 * i + 1] = test::Payload(i, i % 50);
  return p;
}

}  // namespace

BOOST_AUTO_TEST_CASE(checkpoint_round_trips_index_ids_and_payloads) {
  auto fs = NewPosixFileSystem(test::BackendUnderTest());
  for (std::string desc : {"Flat", "HNSW8", "IVF4,Flat"}) {
    test::TempDir dir;
    auto idx = Filled(desc, 400);
    auto payloads = SomePayloads(400);
    auto path = WriteCheckpoint(*fs, dir.path(), 777, *idx, payloads);
    BOOST_REQUIRE_MESSAGE(path.ok(), path.status().ToString());
    BOOST_TEST(*path == dir / "ckpt-0000000000000309.vwc");
    BOOST_TEST(ParseCheckpointFileName("ckpt-0000000000000309.vwc").value_or(0) == 777u);
    BOOST_TEST(!ParseCheckpointFileName("ckpt-000000000000030g.vwc"));
    auto ck = LoadCheckpoint(*fs, *path);
    BOOST_REQUIRE_MESSAGE(ck.ok(), ck.status().ToString());
    BOOST_TEST(ck->info.lsn == 777u);
    BOOST_TEST(ck->info.spec.description == desc);
    BOOST_TEST(ck->info.spec.dim == kDim);
    BOOST_TEST(ck->index->size() == idx->size());
    BOOST_TEST((ck->payloads == payloads));
    std::vector<float> q(3 * kDim, 0.25f);
    auto a = idx->Search(q, 5), b = ck->index->Search(q, 5);
    BOOST_REQUIRE(a.ok() && b.ok());
    BOOST_TEST(a->ids == b->ids, boost::test_tools::per_element());
  }
}

BOOST_AUTO_TEST_CASE(damage_in_any_section_is_named) {
  auto fs = NewPosixFileSystem(test::BackendUnderTest());
  test::TempDir dir;
  auto idx = Filled("Flat", 300);
  auto path = WriteCheckpoint(*fs, dir.path(), 5, *idx, SomePayloads(300));
  BOOST_REQUIRE(path.ok());
  auto size = std::filesystem::file_size(*path);
  struct Case {
    uint64_t offset;
    std::string expect;
  };
  // Header; the index section (starts at 4096); the payloads (the file's last bytes).
  for (const Case& c : {Case{20, "header block checksum mismatch at offset 0"},
                        Case{4096 + 100, "index section at offset 4096"},
                        Case{size - 4096 + 10, "payloads section"}}) {
    // The payload section is short: find a byte inside it, not in its padding.
    test::XorByte(*path, c.offset);
    auto ck = LoadCheckpoint(*fs, *path);
    BOOST_TEST(ck.status().IsCorruption(), c.expect);
    BOOST_TEST(ck.status().message().find(c.expect) != std::string::npos, ck.status().ToString());
    BOOST_TEST(ck.status().message().find(*path) != std::string::npos);
    test::XorByte(*path, c.offset);
  }
  BOOST_TEST(LoadCheckpoint(*fs, *path).ok());
}

BOOST_AUTO_TEST_CASE(leftover_temporary_file_does_not_block_a_checkpoint) {
  auto fs = NewPosixFileSystem(test::BackendUnderTest());
  test::TempDir dir;
  test::Fill(dir / "ckpt-0000000000000009.vwc.tmp", 0, 100, 0xab);
  auto idx = Filled("Flat", 10);
  auto path = WriteCheckpoint(*fs, dir.path(), 9, *idx, {});
  BOOST_REQUIRE(path.ok());
  BOOST_TEST(!std::filesystem::exists(dir / "ckpt-0000000000000009.vwc.tmp"));
  BOOST_TEST(LoadCheckpoint(*fs, *path).ok());
}

// The index section must load in stock FAISS (Debian's python3-faiss).
BOOST_AUTO_TEST_CASE(index_section_loads_in_stock_faiss) {
  auto fs = NewPosixFileSystem(test::BackendUnderTest());
  test::TempDir dir;
  auto idx = Filled("HNSW8", 200);
  auto path = WriteCheckpoint(*fs, dir.path(), 1, *idx, {});
  BOOST_REQUIRE(path.ok());
  std::string script =
      "import faiss, numpy as np, struct, sys\n"
      "d = open(sys.argv[1], 'rb').read()\n"
      "n = struct.unpack_from('<I', d, 48)[0]\n"
      "for i in range(n):\n"
      "    kind, _, off, length = struct.unpack_from('<IIQQ', d, 1088 + 32 * i)\n"
      "    if kind == 1:\n"
      "        ix = faiss.deserialize_index(np.frombuffer(d[off:off + length], dtype='uint8'))\n"
      "        assert ix.d == 8 and ix.ntotal == 200, (ix.d, ix.ntotal)\n"
      "        sys.exit(0)\n"
      "sys.exit(1)\n";
  std::string py = dir / "check.py";
  {
    std::FILE* f = std::fopen(py.c_str(), "w");
    std::fputs(script.c_str(), f);
    std::fclose(f);
  }
  BOOST_TEST(std::system(("/usr/bin/python3 " + py + " " + *path).c_str()) == 0);
}

// A flat index section longer than the loader's reads in flight (8 MiB
// each, three buffers): every chunk lands in its place, the ring of buffers
// wraps, the last chunk is partial, and damage in a late chunk is found.
BOOST_AUTO_TEST_CASE(flat_section_of_many_read_chunks_loads_whole_and_late_damage_is_found) {
  auto fs = NewPosixFileSystem(test::BackendUnderTest());
  test::TempDir dir;
  constexpr uint32_t kWide = 256;
  constexpr size_t kRows = 41000;  // ~42 MB: six chunks, the last partial
  auto idx = index::NewFaissIndex({kWide, index::Metric::kL2, "Flat"});
  BOOST_REQUIRE(idx.ok());
  std::vector<float> v(kRows * kWide);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>((i * 2654435761u) % 1000) / 1000.0f;
  std::vector<uint64_t> ids(kRows);
  for (size_t i = 0; i < kRows; ++i) ids[i] = 5 * i + 2;
  BOOST_REQUIRE((*idx)->Add(ids, v).ok());
  auto path = WriteCheckpoint(*fs, dir.path(), 3, **idx, {});
  BOOST_REQUIRE(path.ok());
  auto ck = LoadCheckpoint(*fs, *path);
  BOOST_REQUIRE_MESSAGE(ck.ok(), ck.status().ToString());
  BOOST_TEST(ck->index->size() == kRows);
  for (size_t row : {size_t{0}, size_t{8191}, size_t{16384}, size_t{32768 + 7}, kRows - 1}) {
    auto back = ck->index->Reconstruct(ids[row]);
    BOOST_REQUIRE(back.ok());
    BOOST_TEST(std::equal(back->begin(), back->end(), v.begin() + row * kWide), "row " << row);
  }
  const uint64_t late = 4096 + 5 * (8ull << 20) + 12345;  // inside the sixth chunk
  BOOST_REQUIRE(late < std::filesystem::file_size(*path));
  test::XorByte(*path, late);
  auto bad = LoadCheckpoint(*fs, *path);
  BOOST_TEST(bad.status().IsCorruption());
  BOOST_TEST(bad.status().message().find("checksum mismatch") != std::string::npos, bad.status().ToString());
}

// While the log is active a checkpoint writes in small pieces, so that a log
// write never queues behind a large one; while it is quiet, in whole stages.
BOOST_AUTO_TEST_CASE(checkpoint_writes_small_pieces_while_the_log_is_active) {
  test::TempDir dir;
  auto rec = std::make_shared<PowerLossRecorder>(NewPosixFileSystem(test::BackendUnderTest()));
  auto idx = index::NewFaissIndex({256, index::Metric::kL2, "Flat"});
  BOOST_REQUIRE(idx.ok());
  std::vector<float> v(20000 * 256, 0.5f);  // ~20 MB: several stages
  std::vector<uint64_t> ids(20000);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = i;
  BOOST_REQUIRE((*idx)->Add(ids, v).ok());
  auto largest_write = [&](uint64_t lsn, const CheckpointPacing& pacing) {
    const size_t first = rec->ops().size();
    auto ex = (*idx)->BeginExport();  // written as the store writes it: the export straight into the stages
    BOOST_REQUIRE(ex.ok());
    BOOST_REQUIRE(*ex != nullptr);
    auto path = WriteCheckpoint(*rec, dir.path(), lsn, (*idx)->spec(), (*idx)->size(),
                                [&](std::span<std::byte> room) { return (*ex)->Next(room); }, {}, pacing);
    ex->reset();
    BOOST_REQUIRE(path.ok());
    BOOST_REQUIRE(LoadCheckpoint(*rec, *path).ok());
    size_t largest = 0, writes = 0;
    const auto ops = rec->ops();
    for (size_t i = first; i < ops.size(); ++i)
      if (ops[i].kind == DiskOp::kWrite) largest = std::max(largest, ops[i].data.size()), ++writes;
    BOOST_TEST(writes > 3u);
    return largest;
  };
  BOOST_TEST(largest_write(1, {}) == kCheckpointStageBytes);
  BOOST_TEST(largest_write(2, {[] { return false; }}) == kCheckpointStageBytes);
  BOOST_TEST(largest_write(3, {[] { return true; }}) == kQuietWriteBytes);
  int asked = 0;  // active for the first pieces only: small, then whole stages again
  BOOST_TEST(largest_write(4, {[&] { return ++asked < 5; }}) == kCheckpointStageBytes);
}

// A retired checkpoint's file is kept as the spare and the next checkpoint is
// written over it: it loads whole, holds none of the old bytes past its end,
// and only one spare is ever kept.
BOOST_AUTO_TEST_CASE(retired_checkpoint_file_is_overwritten_by_the_next_one) {
  auto fs = NewPosixFileSystem(test::BackendUnderTest());
  test::TempDir dir;
  const std::string spare = dir / kSpareCheckpointName;
  auto big = Filled("Flat", 3000), small = Filled("Flat", 40);
  auto a = WriteCheckpoint(*fs, dir.path(), 1, *big, SomePayloads(3000));
  BOOST_REQUIRE(a.ok());
  const auto big_size = std::filesystem::file_size(*a);
  BOOST_REQUIRE(RetireCheckpoint(*fs, dir.path(), 1).ok());
  BOOST_TEST(!std::filesystem::exists(*a));
  BOOST_TEST(std::filesystem::file_size(spare) == big_size);
  auto lsns = ListCheckpoints(*fs, dir.path());
  BOOST_REQUIRE(lsns.ok());
  BOOST_TEST(lsns->empty());  // the spare is no checkpoint

  auto b = WriteCheckpoint(*fs, dir.path(), 2, *small, SomePayloads(40));  // over the spare, smaller
  BOOST_REQUIRE(b.ok());
  BOOST_TEST(!std::filesystem::exists(spare));
  auto ck = LoadCheckpoint(*fs, *b);
  BOOST_REQUIRE_MESSAGE(ck.ok(), ck.status().ToString());
  BOOST_TEST(ck->index->size() == small->size());
  BOOST_TEST((ck->payloads == SomePayloads(40)));
  const auto small_size = std::filesystem::file_size(*b);
  BOOST_TEST(small_size < big_size);
  auto fresh = WriteCheckpoint(*fs, dir.path(), 3, *small, SomePayloads(40));  // no spare: a new file
  BOOST_REQUIRE(fresh.ok());
  BOOST_TEST(std::filesystem::file_size(*fresh) == small_size);  // nothing of the old file is left

  BOOST_REQUIRE(RetireCheckpoint(*fs, dir.path(), 2).ok());
  BOOST_REQUIRE(RetireCheckpoint(*fs, dir.path(), 3).ok());  // a spare exists: this one goes
  BOOST_TEST(!std::filesystem::exists(*fresh));
  BOOST_TEST(std::filesystem::file_size(spare) == small_size);
  auto c = WriteCheckpoint(*fs, dir.path(), 4, *big, SomePayloads(3000));  // over the spare, larger
  BOOST_REQUIRE(c.ok());
  auto back = LoadCheckpoint(*fs, *c);
  BOOST_REQUIRE_MESSAGE(back.ok(), back.status().ToString());
  BOOST_TEST(back->index->size() == big->size());
  BOOST_TEST(std::filesystem::file_size(*c) == big_size);
}

// Each task waits until all three have started: with fewer threads than
// asked for, the first waits out its 20 s and returns "ran alone", and the
// test fails.
BOOST_AUTO_TEST_CASE(io_threads_run_tasks_side_by_side_and_return_each_status) {
  IoThreads io(3);
  std::mutex mu;
  std::condition_variable cv;
  int started = 0;
  std::vector<std::future<Status>> done;
  for (int i = 0; i < 3; ++i)
    done.push_back(io.Run([&, i] {
      std::unique_lock lk(mu);
      ++started;
      cv.notify_all();
      if (!cv.wait_for(lk, std::chrono::seconds(20), [&] { return started == 3; }))
        return Status::IOError("task " + std::to_string(i) + " ran alone");
      return i == 1 ? Status::IOError("task 1 failed") : Status::OK();
    }));
  BOOST_TEST(done[0].get().ok());
  Status s1 = done[1].get();
  BOOST_TEST(s1.ToString().find("task 1 failed") != std::string::npos);
  BOOST_TEST(done[2].get().ok());
}

// Owners rely on it: tasks reference buffers destroyed right after IoThreads.
BOOST_AUTO_TEST_CASE(io_threads_run_every_queued_task_before_the_destructor_returns) {
  std::atomic<int> ran{0};
  {
    IoThreads io(1);
    for (int i = 0; i < 50; ++i)
      (void)io.Run([&] {
        std::this_thread::sleep_for(std::chrono::microseconds(200));
        ++ran;
        return Status::OK();
      });
  }
  BOOST_TEST(ran.load() == 50);
}
