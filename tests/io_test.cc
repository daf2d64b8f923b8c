// io/: checksums, errors, files, and both durable-write backends.
#define BOOST_TEST_MODULE io
#include <boost/test/unit_test.hpp>

#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "io/aligned_buffer.h"
#include "io/crc32c.h"
#include "io/fault_file_system.h"
#include "io/status.h"
#include "io/time_slice.h"
#include "tests/test_util.h"

using namespace vecwal;

BOOST_AUTO_TEST_CASE(crc32c_matches_rfc3720_vectors) {
  std::vector<uint8_t> zeros(32, 0), ones(32, 0xff), inc(32), dec(32);
  for (int i = 0; i < 32; ++i) {
    inc[i] = static_cast<uint8_t>(i);
    dec[i] = static_cast<uint8_t>(31 - i);
  }
  BOOST_TEST(crc32c::Value(zeros.data(), 32) == 0x8a9136aau);
  BOOST_TEST(crc32c::Value(ones.data(), 32) == 0x62a8ab43u);
  BOOST_TEST(crc32c::Value(inc.data(), 32) == 0x46dd794eu);
  BOOST_TEST(crc32c::Value(dec.data(), 32) == 0x113fdb5cu);
  BOOST_TEST(crc32c::Value("123456789", 9) == 0xe3069283u);
}

BOOST_AUTO_TEST_CASE(crc32c_extend_equals_whole) {
  auto p = test::Payload(7, 1000);
  for (size_t split : {0, 1, 7, 8, 9, 500, 999, 1000}) {
    uint32_t a = crc32c::Extend(crc32c::Value(p.data(), split), p.data() + split, p.size() - split);
    BOOST_TEST(a == crc32c::Value(p.data(), p.size()));
  }
}

BOOST_AUTO_TEST_CASE(errno_maps_to_status_codes) {
  BOOST_TEST(Status::FromErrno(ENOSPC, "x").IsNoSpace());
  BOOST_TEST(Status::FromErrno(ENOENT, "x").IsNotFound());
  Status s = Status::FromErrno(EIO, "write f at 4096");
  BOOST_TEST(s.sys_errno() == EIO);
  BOOST_TEST(s.ToString().find("write f at 4096") != std::string::npos);
}

// Ends by asking for the default slice again.
BOOST_AUTO_TEST_CASE(a_requested_time_slice_is_what_the_kernel_reports) {
  errno = 0;
  const int nice = getpriority(PRIO_PROCESS, 0);
  BOOST_REQUIRE(RequestTimeSlice(100).ok());
  BOOST_TEST(getpriority(PRIO_PROCESS, 0) == nice);  // the nice value stays
  if (test::KernelHasCustomSlices()) {
    BOOST_TEST(test::ReportedSlice() == 100'000u);
    BOOST_REQUIRE(RequestTimeSlice(2000).ok());
    BOOST_TEST(test::ReportedSlice() == 2'000'000u);
  } else {
    BOOST_TEST_MESSAGE("kernel before 6.12: it takes the request and ignores the slice");
  }
  BOOST_REQUIRE(RequestTimeSlice(0).ok());
  if (test::KernelHasCustomSlices()) BOOST_TEST(test::ReportedSlice() != 2'000'000u);
}

BOOST_AUTO_TEST_CASE(aligned_buffer_is_aligned_and_zeroed) {
  AlignedBuffer b(5000, 4096);
  BOOST_TEST(reinterpret_cast<uintptr_t>(b.data()) % 4096 == 0u);
  BOOST_TEST(b.size() == 8192u);
  for (auto x : b.span()) BOOST_REQUIRE(x == std::byte{0});
  AlignedBuffer c = std::move(b);
  BOOST_TEST(b.data() == nullptr);
  BOOST_TEST(c.size() == 8192u);
}

BOOST_AUTO_TEST_CASE(reserved_file_is_zero_filled_and_direct) {
  test::TempDir dir;
  auto fs = NewPosixFileSystem(test::BackendUnderTest());
  FileOpenOptions o;
  o.create = o.writable = true;
  o.zero_fill_bytes = 1 << 20;
  auto f = fs->Open(dir / "seg", o);
  BOOST_REQUIRE(f.ok());
  BOOST_TEST(*(*f)->Size() == uint64_t{1 << 20});
  auto bytes = ReadRange(**f, 12345, 100);
  BOOST_REQUIRE(bytes.ok());
  for (auto x : *bytes) BOOST_REQUIRE(x == std::byte{0});
}

// Every backend: a write acknowledged by the queue reads back.
BOOST_AUTO_TEST_CASE(durable_write_queue_round_trips_in_both_modes) {
  test::TempDir dir;
  auto fs = NewPosixFileSystem(test::BackendUnderTest());
  for (auto mode : {DurableWriteMode::kDsyncWrite, DurableWriteMode::kWriteThenFdatasync}) {
    FileOpenOptions o;
    o.create = o.writable = true;
    o.zero_fill_bytes = 1 << 20;
    std::string path = dir / (std::string("f") + ToString(mode)[0]);
    auto f = fs->Open(path, o);
    BOOST_REQUIRE(f.ok());
    auto q = fs->NewWriteQueue(4, mode);
    BOOST_REQUIRE(q.ok());
    std::vector<AlignedBuffer> bufs;
    for (int i = 0; i < 16; ++i) {
      bufs.emplace_back(8192, 4096);
      auto p = test::Payload(i, 8192);
      std::memcpy(bufs.back().data(), p.data(), 8192);
    }
    std::vector<WriteCompletion> done;
    size_t submitted = 0, outstanding = 0;
    while (done.size() < bufs.size()) {
      while (submitted < bufs.size() && outstanding < 4) {
        BOOST_REQUIRE((*q)->Submit({f->get(), submitted * 8192, bufs[submitted].span(), submitted}).ok());
        ++submitted;
        ++outstanding;
      }
      size_t before = done.size();
      BOOST_REQUIRE((*q)->Wait(done, true).ok());
      outstanding -= done.size() - before;
    }
    for (auto& c : done) BOOST_TEST(c.status.ok(), c.status.ToString());
    for (int i = 0; i < 16; ++i) {
      auto back = ReadRange(**f, i * 8192, 8192);
      BOOST_REQUIRE(back.ok());
      BOOST_TEST((*back == test::Payload(i, 8192)));
    }
  }
}

BOOST_AUTO_TEST_CASE(wake_ends_a_blocked_wait) {
  auto fs = NewPosixFileSystem(test::BackendUnderTest());
  auto q = fs->NewWriteQueue(2, DurableWriteMode::kDsyncWrite);
  BOOST_REQUIRE(q.ok());
  std::thread t([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    (*q)->Wake();
  });
  std::vector<WriteCompletion> done;
  BOOST_TEST((*q)->Wait(done, true).ok());  // returns, with nothing done
  BOOST_TEST(done.empty());
  t.join();
}

BOOST_AUTO_TEST_CASE(directory_lock_refuses_a_second_holder) {
  test::TempDir dir;
  auto fs = NewPosixFileSystem(test::BackendUnderTest());
  auto a = fs->LockDir(dir.path(), 0);
  BOOST_REQUIRE(a.ok());
  auto b = fs->LockDir(dir.path(), 50);
  BOOST_TEST(!b.ok());
  BOOST_TEST(b.status().code() == Status::Code::kUnavailable);
  BOOST_TEST(b.status().message().find(dir.path()) != std::string::npos);
  a->reset();
  BOOST_TEST(fs->LockDir(dir.path(), 0).ok());
}

BOOST_AUTO_TEST_CASE(fault_seam_fails_writes_and_syncs_on_command) {
  test::TempDir dir;
  auto fs = std::make_shared<FaultInjectionFileSystem>(NewPosixFileSystem(test::BackendUnderTest()));
  FileOpenOptions o;
  o.create = o.writable = true;
  auto f = fs->Open(dir / "x", o);
  BOOST_REQUIRE(f.ok());
  AlignedBuffer b(4096, 4096);
  fs->FailWritesFrom(1, ENOSPC);
  BOOST_TEST((*f)->WriteAt(0, b.span()).ok());
  Status s = (*f)->WriteAt(4096, b.span());
  BOOST_TEST(s.IsNoSpace());
  fs->ClearFaults();
  fs->FailSyncsFrom(0);
  BOOST_TEST((*f)->WriteAt(0, b.span()).ok());
  BOOST_TEST(!(*f)->Sync().ok());
  fs->ClearFaults();
  fs->FailReservations(true);
  o.zero_fill_bytes = 1 << 20;
  BOOST_TEST(fs->Open(dir / "y", o).status().IsNoSpace());
}

// RLIMIT_FSIZE makes the kernel write only up to the limit: a real short
// write. The queue must resume the rest, which then fails (EFBIG), and report
// the request as failed: never durable, never silently shortened.
BOOST_AUTO_TEST_CASE(short_write_is_resumed_and_its_failure_reported) {
  test::TempDir dir;
  auto fs = NewPosixFileSystem(test::BackendUnderTest());
  FileOpenOptions o;
  o.create = o.writable = true;
  auto f = fs->Open(dir / "short", o);
  BOOST_REQUIRE(f.ok());
  auto q = fs->NewWriteQueue(2, DurableWriteMode::kDsyncWrite);
  BOOST_REQUIRE(q.ok());
  AlignedBuffer buf(16384, 4096);
  ::signal(SIGXFSZ, SIG_IGN);
  rlimit old;
  ::getrlimit(RLIMIT_FSIZE, &old);
  rlimit lim = old;
  lim.rlim_cur = 8192;
  BOOST_REQUIRE(::setrlimit(RLIMIT_FSIZE, &lim) == 0);
  std::vector<WriteCompletion> done;
  Status submitted = (*q)->Submit({f->get(), 0, buf.span(), 7});
  while (submitted.ok() && done.empty()) submitted = (*q)->Wait(done, true);
  ::setrlimit(RLIMIT_FSIZE, &old);
  BOOST_REQUIRE(submitted.ok());
  BOOST_REQUIRE(done.size() == 1u);
  BOOST_TEST(done[0].tag == 7u);
  BOOST_TEST(!done[0].status.ok());
  BOOST_TEST(done[0].status.sys_errno() == EFBIG, done[0].status.ToString());
  BOOST_TEST(*(*f)->Size() == 8192u);  // the first part did land
}
