// backends.h — which compute backends this build can use right now.
// cuda_backend_available() is implemented by the CUDA backend (src/backend/cuda/, compiled only when
// NXFT_HAVE_CUDA) and must return true only when a usable device is present. CPU-only builds get the
// definition in util/backends.cpp, which returns false.
#pragma once

namespace nxft {

bool cuda_backend_available();

}  // namespace nxft
