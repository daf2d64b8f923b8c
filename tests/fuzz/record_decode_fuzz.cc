// libFuzzer target: decoding a record payload of any type. Whatever decodes
// must encode back to the same bytes and decode to the same op.
#include <cstring>

#include "wal/record_ops.h"

using namespace vecwal;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const auto type = static_cast<wal::RecordType>(data[0] % 6);
  std::span<const std::byte> payload(reinterpret_cast<const std::byte*>(data + 1), size - 1);
  auto op = wal::DecodeOp(type, payload, 1);
  if (!op.ok()) return 0;
  if (wal::TypeOf(*op) != type) std::abort();
  std::vector<std::byte> again;
  wal::EncodeOp(*op, again);
  if (again.size() != payload.size() || std::memcmp(again.data(), payload.data(), again.size()) != 0) std::abort();
  return 0;
}
