// recovery/: payloads a checkpoint reads whole while writes go on.
#define BOOST_TEST_MODULE payload_store
#include <boost/test/unit_test.hpp>

#include "recovery/payload_store.h"
#include "tests/test_util.h"

using namespace vecwal;
using namespace vecwal::recovery;

namespace {

std::vector<std::byte> P(uint64_t key) { return test::Payload(key, 5 + key % 7); }

}  // namespace

BOOST_AUTO_TEST_CASE(a_frozen_map_stays_as_it_was_while_lookups_see_the_writes) {
  PayloadStore s;
  for (uint64_t id = 1; id <= 3; ++id) s.Set(id, P(id));
  const Payloads& frozen = s.Freeze();
  const Payloads before = frozen;
  s.Set(1, P(10));
  s.Erase(2);
  s.Set(4, P(4));
  s.Set(5, P(5));
  s.Erase(5);
  BOOST_TEST((frozen == before));
  BOOST_TEST((*s.Find(1) == P(10)));
  BOOST_TEST(s.Find(2) == nullptr);
  BOOST_TEST((*s.Find(3) == P(3)));
  BOOST_TEST((*s.Find(4) == P(4)));
  BOOST_TEST(s.Find(5) == nullptr);
  BOOST_TEST(s.size() == 3u);
  s.Thaw();
  const Payloads& after = s.Freeze();
  BOOST_TEST((after == Payloads{{1, P(10)}, {3, P(3)}, {4, P(4)}}));
  s.Thaw();
}

BOOST_AUTO_TEST_CASE(an_empty_payload_is_none_frozen_or_not) {
  PayloadStore s;
  s.Set(7, P(7));
  s.Set(7, {});
  BOOST_TEST(s.Find(7) == nullptr);
  BOOST_TEST(s.size() == 0u);
  s.Set(8, P(8));
  (void)s.Freeze();
  s.Set(8, {});
  s.Erase(9);  // absent: nothing to count
  BOOST_TEST(s.Find(8) == nullptr);
  BOOST_TEST(s.size() == 0u);
  s.Thaw();
  BOOST_TEST(s.Find(8) == nullptr);
  BOOST_TEST(s.Freeze().empty());
  s.Thaw();
}

BOOST_AUTO_TEST_CASE(reset_replaces_every_payload) {
  PayloadStore s;
  s.Set(1, P(1));
  s.Reset(Payloads{{2, P(2)}, {3, P(3)}});
  BOOST_TEST(s.Find(1) == nullptr);
  BOOST_TEST((*s.Find(2) == P(2)));
  BOOST_TEST(s.size() == 2u);
}
