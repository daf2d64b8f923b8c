// libFuzzer target: loading an arbitrary checkpoint file. When the first
// byte is odd, the header block's CRC is made right after mutation, so that
// the fields and the section table behind it are reached; section bytes
// stay covered by their own CRCs, which is what keeps FAISS's own parser
// from ever seeing bytes vecwal did not write.
#include <cstring>
#include <vector>

#include "io/crc32c.h"
#include "recovery/checkpoint_file.h"
#include "tests/fuzz/fuzz_util.h"

using namespace vecwal;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static auto fs = NewPosixFileSystem(IoBackend::kPortable);
  if (size < 1) return 0;
  std::vector<uint8_t> file(data + 1, data + size);
  constexpr size_t kHeader = 4096, kCrcAt = kHeader - 4;
  if ((data[0] & 1) && file.size() >= kHeader) {
    uint32_t crc = crc32c::Value(reinterpret_cast<const std::byte*>(file.data()), kCrcAt);
    std::memcpy(file.data() + kCrcAt, &crc, 4);
  }
  const std::string path = fuzz::ScratchDir() + "/" + recovery::CheckpointFileName(1);
  fuzz::WriteFile(path, file.data(), file.size());
  (void)recovery::ReadCheckpointInfo(*fs, path);
  (void)recovery::VerifyCheckpoint(*fs, path);
  (void)recovery::LoadCheckpoint(*fs, path);
  return 0;
}
