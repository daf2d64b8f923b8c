// gpu::OnDevice where the card cannot take the index: a store refuses to
// open, or, where asked to, opens and serves exactly from the CPU and says
// why. Runs everywhere gpu/ is built: it names a device past the last one,
// so a machine with cards tests the same as one without.
#define BOOST_TEST_MODULE gpu_fallback
#include <boost/test/unit_test.hpp>

#include <random>
#include <string>

#include "gpu/device.h"
#include "gpu/mirrored_index.h"
#include "tests/durable_index_util.h"

using namespace vecwal;
using namespace vecwal::store_test;

BOOST_AUTO_TEST_CASE(a_store_whose_card_is_missing_fails_to_open_or_serves_from_the_cpu_where_asked_to) {
  const int missing = gpu::CudaDeviceCount();
  const std::string named = "CUDA device " + std::to_string(missing) + " does not exist";
  test::TempDir dir;
  auto o = Options(dir.path());
  o.wrap_index = gpu::OnDevice(missing);
  auto refused = DurableIndex::Open(o);
  BOOST_REQUIRE(!refused.ok());
  BOOST_TEST(refused.status().ToString().find(named) != std::string::npos, refused.status().ToString());

  o.wrap_index = gpu::OnDevice(missing, gpu::IfNoCard::kSearchOnCpu);
  std::mt19937_64 rng(5);
  Model m;
  {
    auto d = OpenOrDie(o);
    const std::string on = d->Stats().searched_on;
    BOOST_TEST(on.rfind("cpu (", 0) == 0u, on);
    BOOST_TEST(on.find(named) != std::string::npos, on);
    RandomOps(*d, m, rng, 300);
    BOOST_REQUIRE(d->Checkpoint().ok());
    RandomOps(*d, m, rng, 200);
    ExpectEqual(*d, m);
  }
  auto d = OpenOrDie(o);  // loaded and replayed into the CPU index, as without a card
  ExpectEqual(*d, m);
  BOOST_TEST(d->Stats().searched_on.find(named) != std::string::npos);
  BOOST_REQUIRE(d->Close().ok());

  // An index the card could never take is a mistake in the options, card or not.
  test::TempDir other;
  auto hnsw = Options(other.path(), "HNSW16");
  hnsw.wrap_index = gpu::OnDevice(missing, gpu::IfNoCard::kSearchOnCpu);
  auto wrong = DurableIndex::Open(hnsw);
  BOOST_TEST((wrong.status().code() == Status::Code::kInvalidArgument));
  BOOST_TEST(wrong.status().ToString().find("'HNSW16'") != std::string::npos, wrong.status().ToString());
}
