// gpu/: the one seam between vecwal and CUDA. This header has no CUDA types
// and no #if: a CPU-only build does not compile gpu/ at all, and callers ask
// CudaDeviceCount() before using anything else here.
//
// Ownership: DeviceBuffer owns device memory, CudaStream owns a stream; both
// are move-only and free what they own in their destructors. A stream handed
// in by an embedding server (Borrow) is never destroyed by vecwal.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "io/status.h"

namespace vecwal::gpu {

// Devices the CUDA runtime can use here; 0 without a driver or a card.
int CudaDeviceCount();
// "NVIDIA H100 80GB HBM3, sm_90, 79 GiB", for logs and benchmark tables.
Result<std::string> DescribeDevice(int device);

class CudaStream {
 public:
  static Result<CudaStream> Create(int device);
  static CudaStream Borrow(void* stream) { return CudaStream(stream, false); }
  CudaStream(CudaStream&& o) noexcept;
  CudaStream& operator=(CudaStream&& o) noexcept;
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;
  ~CudaStream();
  void* native() const { return stream_; }  // a cudaStream_t
  Status Synchronize() const;

 private:
  CudaStream(void* s, bool owned) : stream_(s), owned_(owned) {}
  void* stream_ = nullptr;
  bool owned_ = false;
};

class DeviceBuffer {
 public:
  static Result<DeviceBuffer> Allocate(size_t bytes);
  DeviceBuffer() = default;
  DeviceBuffer(DeviceBuffer&& o) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer();
  void* data() const { return ptr_; }
  size_t size() const { return bytes_; }
  Status CopyFromHost(const void* src, size_t bytes, const CudaStream& s);
  Status CopyToHost(void* dst, size_t bytes, const CudaStream& s) const;

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Fills `n` floats of `buf` with `value` on `s`: proves a kernel of ours runs.
Status FillFloats(DeviceBuffer& buf, size_t n, float value, const CudaStream& s);

}  // namespace vecwal::gpu
