// packed_documents.cpp — see packed_documents.h.
#include "backend/packed_documents.h"
#include <algorithm>

namespace nxft {

std::vector<int32_t> doc_start_of_positions(const int32_t* positions, int B, int T) {
  std::vector<int32_t> ds(size_t(B) * size_t(T));
  for (int b = 0; b < B; b++)
    for (int t = 0, start = 0; t < T; t++) {
      if (t == 0 || positions[size_t(b) * T + t] == 0) start = t;
      ds[size_t(b) * T + t] = start;
    }
  return ds;
}

bool find_documents(const int32_t* ds, int B, int T, std::vector<int32_t>* starts, int* longest) {
  starts->clear();
  *longest = 0;
  for (int b = 0; b < B; b++) {
    int begin = 0;  // the current document's first key index in this row
    for (int t = 0; t < T; t++) {
      const int32_t d = ds[size_t(b) * T + t];
      if (t == 0 || d == t) {  // a document starts here (position 0 or the row's start)
        if (d != t) return false;
        if (t > 0) *longest = std::max(*longest, t - begin);
        begin = t;
        starts->push_back(int32_t(b * T + t));
      } else if (d != begin) {
        return false;  // not the run's own start: not contiguous documents
      }
    }
    *longest = std::max(*longest, T - begin);
  }
  starts->push_back(int32_t(B * T));
  return true;
}

double tile_work_fraction(const int32_t* doc_start, int B, int T) {
  constexpr int kTile = 64;   // attention_tiles.cu's forward tile
  double work = 0, whole = 0;
  for (int b = 0; b < B; b++)
    for (int q0 = 0; q0 < T; q0 += kTile) {
      const int qt = (std::min(q0 + kTile, T) - 1) / kTile;
      work += qt - doc_start[size_t(b) * T + q0] / kTile + 1;
      whole += qt + 1;
    }
  return whole > 0 ? work / whole : 0.0;
}

static int pow2_at_least(int n) {
  int p = 1;
  while (p < n) p <<= 1;
  return p;
}
int ragged_batch_size(int documents, int largest_so_far) {
  const int own = std::max(8, pow2_at_least(documents));
  return largest_so_far == 2 * own ? largest_so_far : own;
}
int ragged_max_len(int longest, int T, RaggedLen how) {
  return how == RaggedLen::Row ? T : std::min(T, std::max(64, pow2_at_least(longest)));
}

bool TilesRent::tiles(int B, int T) { return rent_ms(B, T) < kCudnnFirstUseMs; }

double tiles_excess_ms(int B, int T, int NH, int HD, double fraction, double share) {
  // per layer at 8B 2×2048: 103 ms / 32 layers per unit of fraction, over 2·2048²/2 causal pairs × 4096 columns
  constexpr double kMsPerPairColumn = 103.0 / 32.0 / (2.0 * 2048.0 * 2048.0 / 2.0) / 4096.0;
  const double pairs = double(B) * double(T) * double(T) / 2.0;
  return std::max(0.0, fraction - kTilesMaxWorkFraction) * kMsPerPairColumn * pairs * double(NH) * HD * share;
}

}  // namespace nxft
