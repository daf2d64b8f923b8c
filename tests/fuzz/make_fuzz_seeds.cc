// Writes the fuzz targets' seed corpora: real segment files, record
// payloads of every type and real checkpoint files, made by the library
// itself, so each target starts from valid input and mutates from there.
#include <filesystem>
#include <fstream>
#include <iostream>

#include "recovery/checkpoint_file.h"
#include "recovery/durable_index.h"
#include "wal/record_ops.h"
#include "wal/wal.h"

using namespace vecwal;
namespace stdfs = std::filesystem;

namespace {

void Put(const std::string& path, std::span<const std::byte> prefix, const std::string& file) {
  std::ifstream in(file, std::ios::binary);
  std::string body((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(prefix.data()), static_cast<std::streamsize>(prefix.size()));
  out << body;
}

std::vector<wal::Op> SampleOps() {
  std::vector<wal::Op> ops;
  ops.push_back(wal::UpsertOp{7, {1.f, 2.f, 3.f, 4.f}, {std::byte{9}, std::byte{8}}});
  ops.push_back(wal::DeleteOp{7});
  wal::BatchOp b;
  b.ops.push_back(wal::UpsertOp{1, {0.5f, 0.25f, 0.f, -1.f}, {}});
  b.ops.push_back(wal::DeleteOp{2});
  ops.push_back(b);
  ops.push_back(wal::CheckpointMarkerOp{42, "ckpt-000000000000002a.vwc"});
  return ops;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: make_fuzz_seeds DIR\n";
    return 2;
  }
  const std::string out = argv[1], work = out + "/.work";
  stdfs::remove_all(work);
  for (const char* d : {"wal", "record", "checkpoint"}) stdfs::create_directories(out + "/" + d);
  int n = 0;
  for (const auto& op : SampleOps()) {
    std::vector<std::byte> b{static_cast<std::byte>(wal::TypeOf(op))};
    wal::EncodeOp(op, b);
    std::ofstream(out + "/record/seed-" + std::to_string(n++), std::ios::binary)
        .write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  }
  {
    wal::WalOptions o;
    o.fs = NewPosixFileSystem(IoBackend::kPortable);
    o.segment_bytes = 64 << 10;
    o.spare_segments = 0;
    auto w = wal::Wal::Open(work + "/log", o);
    if (!w.ok()) return std::cerr << w.status().ToString() << "\n", 1;
    for (int i = 0; i < 40; ++i)
      for (const auto& op : SampleOps())
        if (!(*w)->Append(op).ok()) return 1;
    (void)(*w)->Close();
    n = 0;
    for (const auto& e : stdfs::directory_iterator(work + "/log"))
      if (wal::ParseSegmentFileName(e.path().filename().string()))
        Put(out + "/wal/seed-" + std::to_string(n++), {}, e.path().string());
  }
  n = 0;
  for (const char* desc : {"Flat", "HNSW16"}) {
    recovery::DurableIndexOptions o;
    o.dir = work + "/db-" + desc;
    o.spec = {4, index::Metric::kL2, desc};
    o.wal.fs = NewPosixFileSystem(IoBackend::kPortable);
    o.wal.segment_bytes = 64 << 10;
    auto d = recovery::DurableIndex::Open(o);
    if (!d.ok()) return std::cerr << d.status().ToString() << "\n", 1;
    for (uint64_t i = 0; i < 12; ++i) {
      std::vector<float> v = {float(i), 1.f, 2.f, -float(i)};
      std::vector<std::byte> p(i % 3, std::byte{static_cast<unsigned char>(i)});
      if (!(*d)->Upsert(i, v, p).ok()) return 1;
    }
    if (!(*d)->Remove(3).ok() || !(*d)->Checkpoint().ok()) return 1;
    (void)(*d)->Close();
    for (const auto& e : stdfs::directory_iterator(o.dir))
      if (recovery::ParseCheckpointFileName(e.path().filename().string()))
        for (std::byte flag : {std::byte{0}, std::byte{1}, std::byte{3}})  // checkpoint_fuzz's forging bits
          Put(out + "/checkpoint/seed-" + std::to_string(n++), std::span(&flag, 1), e.path().string());
  }
  stdfs::remove_all(work);
  return 0;
}
