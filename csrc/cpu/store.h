// Writing an output row. Large outputs are streamed past the caches with non-temporal stores:
// an ordinary store first reads the line it writes (read-for-ownership), so a kernel that reads
// one array and writes another moves 3 bytes per 2 it needs; streamed, it moves 2 (measured here:
// 30 vs 45 GB/s for a scaled copy on 2 cores). Small outputs, which the next op reads from cache,
// are stored normally.
#pragma once

#include <cstdint>
#include <cstring>

#include "isa.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace megagoku {
namespace kernels {
namespace {

constexpr int kLineBytes = 64;

// Copy one 64-byte line from `src` (aligned) to `dst` (aligned) with non-temporal stores, as wide
// as the translation unit's ISA allows. GCC's `#pragma GCC target` does not define __AVX2__ and
// friends in C++, so the per-ISA files say which they are (MEGAGOKU_ROWS_AVX512 / _AVX2).
inline void stream_line(void* dst, const void* src) {
#if defined(MEGAGOKU_ROWS_AVX512)
  _mm512_stream_si512(static_cast<__m512i*>(dst), _mm512_load_si512(src));
#elif defined(MEGAGOKU_ROWS_AVX2)
  const __m256i* s = static_cast<const __m256i*>(src);
  __m256i* d = static_cast<__m256i*>(dst);
  _mm256_stream_si256(d, _mm256_load_si256(s));
  _mm256_stream_si256(d + 1, _mm256_load_si256(s + 1));
#elif defined(__SSE2__)
  const __m128i* s = static_cast<const __m128i*>(src);
  __m128i* d = static_cast<__m128i*>(dst);
  for (int i = 0; i < 4; ++i) _mm_stream_si128(d + i, _mm_load_si128(s + i));
#else
  std::memcpy(dst, src, kLineBytes);
#endif
}

// Streamed stores are weakly ordered: fence them before the data is handed to another thread.
inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

// out[c] = value(c) for c in [0, n), streaming the 64-byte-aligned middle when `stream`.
template <typename T, typename F>
inline void write_row(T* __restrict out, int64_t n, bool stream, F value) {
  int64_t c = 0;
  if (stream) {
    constexpr int kPerLine = kLineBytes / static_cast<int>(sizeof(T));
    for (; c < n && reinterpret_cast<uintptr_t>(out + c) % kLineBytes != 0; ++c) out[c] = value(c);
    for (; c + kPerLine <= n; c += kPerLine) {
      alignas(kLineBytes) T line[kPerLine];
      for (int i = 0; i < kPerLine; ++i) line[i] = value(c + i);
      stream_line(out + c, line);
    }
  }
  for (; c < n; ++c) out[c] = value(c);
}

}  // namespace
}  // namespace kernels
}  // namespace megagoku
