#include <cuda_runtime.h>

#include <utility>

#include "gpu/cuda_status.h"
#include "gpu/device.h"

namespace vecwal::gpu {

Status FromCuda(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return Status::OK();
  return Status::IOError(std::string(what) + ": " + cudaGetErrorName(e) + ": " + cudaGetErrorString(e));
}

Status FromCublas(cublasStatus_t s, const char* what) {
  if (s == CUBLAS_STATUS_SUCCESS) return Status::OK();
  return Status::IOError(std::string(what) + ": " + cublasGetStatusName(s) + ": " + cublasGetStatusString(s));
}

namespace {

__global__ void FillKernel(float* p, size_t n, float v) {
  size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i < n) p[i] = v;
}

}  // namespace

int CudaDeviceCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // no driver: clear the sticky error
    return 0;
  }
  return n;
}

Result<std::string> DescribeDevice(int device) {
  cudaDeviceProp p;
  VECWAL_RETURN_IF_ERROR(FromCuda(cudaGetDeviceProperties(&p, device), "cudaGetDeviceProperties"));
  return std::string(p.name) + ", sm_" + std::to_string(p.major) + std::to_string(p.minor) + ", " +
         std::to_string(p.totalGlobalMem >> 30) + " GiB";
}

Result<CudaStream> CudaStream::Create(int device) {
  VECWAL_RETURN_IF_ERROR(FromCuda(cudaSetDevice(device), "cudaSetDevice"));
  cudaStream_t s;
  VECWAL_RETURN_IF_ERROR(FromCuda(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate"));
  return Result<CudaStream>(CudaStream(s, true));
}

CudaStream::CudaStream(CudaStream&& o) noexcept
    : stream_(std::exchange(o.stream_, nullptr)), owned_(std::exchange(o.owned_, false)) {}

CudaStream& CudaStream::operator=(CudaStream&& o) noexcept {
  if (this != &o) {
    if (owned_) cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
    stream_ = std::exchange(o.stream_, nullptr);
    owned_ = std::exchange(o.owned_, false);
  }
  return *this;
}

CudaStream::~CudaStream() {
  if (owned_) cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
}

Status CudaStream::Synchronize() const {
  return FromCuda(cudaStreamSynchronize(static_cast<cudaStream_t>(stream_)), "cudaStreamSynchronize");
}

Result<DeviceBuffer> DeviceBuffer::Allocate(size_t bytes) {
  DeviceBuffer b;
  VECWAL_RETURN_IF_ERROR(FromCuda(cudaMalloc(&b.ptr_, bytes), "cudaMalloc"));
  b.bytes_ = bytes;
  return Result<DeviceBuffer>(std::move(b));
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& o) noexcept
    : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    if (ptr_) cudaFree(ptr_);
    ptr_ = std::exchange(o.ptr_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
  }
  return *this;
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_) cudaFree(ptr_);
}

Status DeviceBuffer::CopyFromHost(const void* src, size_t bytes, const CudaStream& s) {
  if (bytes > bytes_) return Status::InvalidArgument("copy of " + std::to_string(bytes) + " bytes into a " +
                                                     std::to_string(bytes_) + "-byte device buffer");
  return FromCuda(cudaMemcpyAsync(ptr_, src, bytes, cudaMemcpyHostToDevice, static_cast<cudaStream_t>(s.native())),
                  "cudaMemcpyAsync to device");
}

Status DeviceBuffer::CopyToHost(void* dst, size_t bytes, const CudaStream& s) const {
  if (bytes > bytes_) return Status::InvalidArgument("copy of " + std::to_string(bytes) + " bytes from a " +
                                                     std::to_string(bytes_) + "-byte device buffer");
  return FromCuda(cudaMemcpyAsync(dst, ptr_, bytes, cudaMemcpyDeviceToHost, static_cast<cudaStream_t>(s.native())),
                  "cudaMemcpyAsync to host");
}

Status FillFloats(DeviceBuffer& buf, size_t n, float value, const CudaStream& s) {
  if (n * sizeof(float) > buf.size()) return Status::InvalidArgument("fill past the end of a device buffer");
  if (n == 0) return Status::OK();
  unsigned threads = 256;
  unsigned blocks = static_cast<unsigned>((n + threads - 1) / threads);
  FillKernel<<<blocks, threads, 0, static_cast<cudaStream_t>(s.native())>>>(static_cast<float*>(buf.data()), n, value);
  return FromCuda(cudaGetLastError(), "FillKernel launch");
}

}  // namespace vecwal::gpu
