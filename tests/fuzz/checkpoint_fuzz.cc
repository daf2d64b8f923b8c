// libFuzzer target: loading an arbitrary checkpoint file. The first byte says
// which checksums the target forges after mutation:
// - bit 0: the header block's, so that the fields and the section table
//   behind it are reached;
// - bit 1: each section's whose bytes vecwal's own parsers read (payloads,
//   and index sections that index::NewIndexLoader takes), and then the
//   header's again (the table holds the section CRCs).
// An index section that would go to FAISS's own parser keeps the CRC it came
// with: FAISS trusts the counts it reads, and the CRC is the line past which
// bytes are trusted (see SectionCrcMatches in recovery/checkpoint_file.cc,
// which keeps that comparison from the fuzzer's tracing).
#include <cstring>
#include <vector>

#include "index/vector_index.h"
#include "io/crc32c.h"
#include "recovery/checkpoint_file.h"
#include "tests/fuzz/fuzz_util.h"

using namespace vecwal;

namespace {

// docs/FORMAT.md, "Checkpoint file": the header block and its section table.
constexpr size_t kHeader = 4096, kCrcAt = kHeader - 4, kTableAt = 1088, kEntryBytes = 32, kEntryCrcAt = 24;

void ForgeHeaderCrc(std::vector<uint8_t>& file) {
  uint32_t crc = crc32c::Value(file.data(), kCrcAt);
  std::memcpy(file.data() + kCrcAt, &crc, 4);
}

// Gives the sections that vecwal parses itself the CRC of their bytes.
void ForgeOwnSectionCrcs(std::vector<uint8_t>& file, FileSystem& fs, const std::string& path) {
  auto report = recovery::VerifyCheckpoint(fs, path);
  if (!report.ok()) return;
  for (size_t i = 0; i < report->sections.size(); ++i) {
    const auto& s = report->sections[i];
    if (s.offset > file.size() || s.length > file.size() - s.offset) continue;
    std::span<const std::byte> bytes{reinterpret_cast<const std::byte*>(file.data()) + s.offset, s.length};
    const bool ours =
        s.name == "payloads" ||
        (s.name == "index" &&
         index::NewIndexLoader(report->info.spec, bytes.first(std::min(bytes.size(), index::kLoaderHeadBytes)),
                               s.length) != nullptr);
    if (!ours) continue;
    uint32_t crc = crc32c::Value(bytes);
    std::memcpy(file.data() + kTableAt + i * kEntryBytes + kEntryCrcAt, &crc, 4);
  }
  ForgeHeaderCrc(file);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static auto fs = NewPosixFileSystem(IoBackend::kPortable);
  if (size < 1) return 0;
  std::vector<uint8_t> file(data + 1, data + size);
  const std::string path = fuzz::ScratchDir() + "/" + recovery::CheckpointFileName(1);
  if ((data[0] & 1) && file.size() >= kHeader) ForgeHeaderCrc(file);
  if ((data[0] & 2) && file.size() >= kHeader) {
    fuzz::WriteFile(path, file.data(), file.size());
    ForgeOwnSectionCrcs(file, *fs, path);
  }
  fuzz::WriteFile(path, file.data(), file.size());
  (void)recovery::ReadCheckpointInfo(*fs, path);
  (void)recovery::VerifyCheckpoint(*fs, path);
  (void)recovery::LoadCheckpoint(*fs, path);
  return 0;
}
