// packed_documents_test.cpp — the documents the CUDA backend hands to cuDNN's ragged attention, found from doc_start
// as the model writes it (a token with position 0 starts a document; so does each row): packed rows, 1-token
// documents, a document filling its row, rows of many tiny documents, and doc_start arrays that are not contiguous
// documents (refused, so the portable kernels keep them). Also the graph sizes.
#include <cmath>
#include <vector>
#include "backend/packed_documents.h"
#include "test_util.h"

using namespace nxft;

// doc_start for B rows of T from per-row document lengths (the row's last document takes what is left), the way
// the model derives it from positions.
static std::vector<int32_t> doc_start_of(int B, int T, const std::vector<std::vector<int>>& rows) {
  std::vector<int32_t> ds(size_t(B) * T);
  for (int b = 0; b < B; b++) {
    int start = 0, next = 0;
    size_t d = 0;
    for (int t = 0; t < T; t++) {
      if (t == next) {
        start = t;
        next = d < rows[size_t(b)].size() ? t + rows[size_t(b)][d++] : T;
      }
      ds[size_t(b) * T + t] = start;
    }
  }
  return ds;
}

int main() {
  std::vector<int32_t> starts;
  int longest = 0;

  // Two rows of 300: documents of 37, 100 and 163; then one document.
  std::vector<int32_t> ds = doc_start_of(2, 300, {{37, 100}, {}});
  CHECK(find_documents(ds.data(), 2, 300, &starts, &longest));
  CHECK(starts == (std::vector<int32_t>{0, 37, 137, 300, 600}));
  CHECK(longest == 300);

  // 1-token documents, and a row that is one document of its own length.
  ds = doc_start_of(2, 8, {{1, 1, 1, 5}, {1}});
  CHECK(find_documents(ds.data(), 2, 8, &starts, &longest));
  CHECK(starts == (std::vector<int32_t>{0, 1, 2, 3, 8, 9, 16}));
  CHECK(longest == 7);

  // Many tiny documents: every start found, the longest is the largest length.
  std::vector<int> tiny;
  int used = 0;
  for (int i = 0; used + 1 + i % 5 < 600; i++) {
    tiny.push_back(1 + i % 5);
    used += tiny.back();
  }
  ds = doc_start_of(1, 600, {tiny});
  CHECK(find_documents(ds.data(), 1, 600, &starts, &longest));
  CHECK(starts.size() == tiny.size() + 2);  // the listed documents, the rest of the row, then the end
  CHECK(longest == 5);

  // Not contiguous documents: a token pointing into another document, or a row not starting at 0.
  ds = doc_start_of(1, 10, {{4}});
  ds[6] = 0;  // token 6 belongs to the document starting at 4, but says 0
  CHECK(!find_documents(ds.data(), 1, 10, &starts, &longest));
  ds = doc_start_of(1, 10, {{4}});
  ds[0] = 3;
  CHECK(!find_documents(ds.data(), 1, 10, &starts, &longest));

  // Graph sizes: powers of two, at least 8 sequences; the length is the row's, or (Pow2) at least 64 tokens and
  // never past T.
  CHECK(ragged_batch_size(1) == 8 && ragged_batch_size(8) == 8 && ragged_batch_size(9) == 16 && ragged_batch_size(1366) == 2048);
  // After a larger batch: one bucket down keeps the larger graph; two down, or up, takes its own.
  CHECK(ragged_batch_size(26, 64) == 64 && ragged_batch_size(40, 64) == 64 && ragged_batch_size(9, 64) == 16 &&
        ragged_batch_size(65, 64) == 128 && ragged_batch_size(5, 16) == 16 && ragged_batch_size(5, 8) == 8);
  CHECK(ragged_max_len(5, 2048, RaggedLen::Row) == 2048 && ragged_max_len(1500, 1500, RaggedLen::Row) == 1500);
  const RaggedLen p2 = RaggedLen::Pow2;
  CHECK(ragged_max_len(5, 2048, p2) == 64 && ragged_max_len(300, 2048, p2) == 512 && ragged_max_len(1500, 1500, p2) == 1500 &&
        ragged_max_len(2048, 2048, p2) == 2048);
  // The tile kernels' work: one document per row is the whole (1.0); 32 documents of 64 in a row of 2048 visit only
  // the 32 diagonal tiles of 528; documents of 100 tokens visit the diagonal and, where a document crosses a tile
  // boundary, the tile before.
  ds = doc_start_of(1, 2048, {{}});
  CHECK(tile_work_fraction(ds.data(), 1, 2048) == 1.0);
  std::vector<int> len64(31, 64), len100(20, 100);
  ds = doc_start_of(1, 2048, {len64});
  CHECK(std::fabs(tile_work_fraction(ds.data(), 1, 2048) - 32.0 / 528.0) < 1e-12);
  ds = doc_start_of(2, 2048, {len100, len64});
  const double f = tile_work_fraction(ds.data(), 2, 2048);
  CHECK(f > 32.0 / 528.0 && f < 64.0 / 528.0 && f < kTilesMaxWorkFraction);
  ds = doc_start_of(1, 100, {{64}});   // T not a multiple of 64: 2 query tiles, the second starting a document
  CHECK(std::fabs(tile_work_fraction(ds.data(), 1, 100) - 2.0 / 3.0) < 1e-12);
  // Ski rental: 8B 2×2048 rows at fraction 0.37 lose about 103·0.17 = 17.5 ms a step (32 layers, forward and
  // backward) on the tile kernels: 18 such batches of the shape run there, and the 19th takes cuDNN. Batches of
  // another shape, or at the threshold, lose nothing.
  const double fwd = 1.0 / 3.5, bwd = 2.5 / 3.5;
  CHECK(std::fabs(32 * (tiles_excess_ms(2, 2048, 32, 128, 0.37, fwd) + tiles_excess_ms(2, 2048, 32, 128, 0.37, bwd)) -
                  103.0 * 0.17) < 1e-9);
  CHECK(tiles_excess_ms(2, 2048, 32, 128, kTilesMaxWorkFraction, 1.0) == 0.0 && tiles_excess_ms(2, 2048, 32, 128, 0.1, 1.0) == 0.0);
  // a padding-free row of 900 tokens of ~100-token examples (fraction ~0.32): about 1.2 ms a step, 250 steps of rent
  const double small = 32 * tiles_excess_ms(1, 900, 32, 128, 0.32, 1.0);
  CHECK(small > 1.0 && small < 1.5);
  TilesRent rent;
  int batches = 0;
  while (rent.tiles(2, 2048)) {
    batches++;
    for (int layer = 0; layer < 32; layer++) {
      rent.charge(2, 2048, tiles_excess_ms(2, 2048, 32, 128, 0.37, fwd));
      rent.charge(2, 2048, tiles_excess_ms(2, 2048, 32, 128, 0.37, bwd));
    }
    CHECK(batches < 100);
    if (batches >= 100) break;
  }
  CHECK(batches == 18);
  CHECK(!rent.tiles(2, 2048) && rent.tiles(1, 8192) && rent.rent_ms(1, 8192) == 0.0);
  return test_result("packed_documents_test");
}
