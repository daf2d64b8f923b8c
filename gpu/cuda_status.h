// Inside gpu/ only: CUDA and cuBLAS errors as vecwal Statuses.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "io/status.h"

namespace vecwal::gpu {

// IOError naming the call and CUDA's own name and text for the error.
Status FromCuda(cudaError_t e, const char* what);
Status FromCublas(cublasStatus_t s, const char* what);

inline cudaStream_t Native(void* stream) { return static_cast<cudaStream_t>(stream); }

}  // namespace vecwal::gpu
