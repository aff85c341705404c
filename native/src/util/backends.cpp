// backends.cpp — the CPU-only definition of cuda_backend_available(); CUDA builds get theirs from
// src/backend/cuda/ (see backends.h).
#include "util/backends.h"

#ifndef NXFT_HAVE_CUDA
namespace nxft {
bool cuda_backend_available() { return false; }
}  // namespace nxft
#endif
