// gpu/: device memory, streams and one kernel of ours. Runs on the GPU
// machine; where no CUDA device exists it says so and CTest marks it skipped.
#define BOOST_TEST_MODULE gpu
#include <boost/test/unit_test.hpp>

#include <cstdio>
#include <cstdlib>
#include <vector>

#include "gpu/device.h"

using namespace vecwal;
using namespace vecwal::gpu;

namespace {
// Boost.Test's global fixture: exit 77 (CTest's SKIP_RETURN_CODE) when there
// is no card, before any case runs.
struct RequireDevice {
  RequireDevice() {
    if (CudaDeviceCount() == 0) {
      std::printf("skipped: no CUDA device\n");
      std::exit(77);
    }
    auto d = DescribeDevice(0);
    std::printf("device 0: %s\n", d.ok() ? d->c_str() : d.status().ToString().c_str());
  }
};
}  // namespace
BOOST_TEST_GLOBAL_FIXTURE(RequireDevice);

BOOST_AUTO_TEST_CASE(kernel_fills_device_memory_and_copies_back) {
  auto stream = CudaStream::Create(0);
  BOOST_REQUIRE(stream.ok());
  auto buf = DeviceBuffer::Allocate(1000 * sizeof(float));
  BOOST_REQUIRE(buf.ok());
  BOOST_REQUIRE(FillFloats(*buf, 1000, 2.5f, *stream).ok());
  std::vector<float> host(1000, 0.f);
  BOOST_REQUIRE(buf->CopyToHost(host.data(), host.size() * sizeof(float), *stream).ok());
  BOOST_REQUIRE(stream->Synchronize().ok());
  for (float v : host) BOOST_REQUIRE(v == 2.5f);
}

BOOST_AUTO_TEST_CASE(copies_past_the_buffer_are_refused) {
  auto stream = CudaStream::Create(0);
  BOOST_REQUIRE(stream.ok());
  auto buf = DeviceBuffer::Allocate(16);
  BOOST_REQUIRE(buf.ok());
  std::vector<float> host(8);
  BOOST_TEST((buf->CopyFromHost(host.data(), 32, *stream).code() == Status::Code::kInvalidArgument));
  BOOST_TEST((FillFloats(*buf, 8, 1.f, *stream).code() == Status::Code::kInvalidArgument));
}
