// Fixed-width vectors for the CPU row kernels, written with GCC/Clang vector extensions so that the code says what
// each vector instruction does instead of hoping the auto-vectoriser finds it (it keeps accumulators in memory and
// splits loops with a scalar tail). One vector is 64 bytes: 16 floats or 8 doubles, one AVX-512 register with
// -march=native, two AVX2 or four SSE / NEON registers elsewhere.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace memunlearn::simd {

constexpr int64_t kBytes = 64;

template <typename T>
constexpr int64_t kLanes = kBytes / static_cast<int64_t>(sizeof(T));

template <typename T>
struct Types;
template <>
struct Types<float> {
  typedef float Vec __attribute__((vector_size(kBytes)));
  typedef int32_t Mask __attribute__((vector_size(kBytes)));  // what a comparison yields, lane for lane
  using Lane = int32_t;                                        // one lane of Mask
  typedef int32_t Int32 __attribute__((vector_size(kBytes)));  // exponents of exp
};
template <>
struct Types<double> {
  typedef double Vec __attribute__((vector_size(kBytes)));
  typedef int64_t Mask __attribute__((vector_size(kBytes)));
  using Lane = int64_t;
  typedef int32_t Int32 __attribute__((vector_size(kBytes / 2)));
};

template <typename T>
using Vec = typename Types<T>::Vec;
template <typename T>
using Mask = typename Types<T>::Mask;

template <typename T>
using Lane = typename Types<T>::Lane;

template <typename T>
inline Vec<T> load(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <typename T>
inline void store(T* p, Vec<T> v) {
  std::memcpy(p, &v, sizeof v);
}

template <typename T>
inline Vec<T> broadcast(T x) {
  return Vec<T>{} + x;
}

// 0, 1, ..., lanes - 1 in the integer lanes that match T
template <typename T>
inline Mask<T> iota() {
  Mask<T> v{};
  for (int64_t l = 0; l < kLanes<T>; ++l) v[l] = static_cast<Lane<T>>(l);
  return v;
}

// lane reductions; GCC picks the shuffles (halving by hand through memcpy measured up to 2x slower)
template <typename V>
inline auto sum(V v) {
  auto total = v[0];
  for (int64_t l = 1; l < static_cast<int64_t>(sizeof(V) / sizeof(v[0])); ++l) total += v[l];
  return total;
}

template <typename V>
inline auto max(V v) {
  auto best = v[0];
  for (int64_t l = 1; l < static_cast<int64_t>(sizeof(V) / sizeof(v[0])); ++l) best = v[l] > best ? v[l] : best;
  return best;
}

template <typename V>
inline auto min(V v) {
  auto best = v[0];
  for (int64_t l = 1; l < static_cast<int64_t>(sizeof(V) / sizeof(v[0])); ++l) best = v[l] < best ? v[l] : best;
  return best;
}

// exp(d) for d <= 0, the numerator of a softmax shifted by its maximum: d = n ln2 + r with n = round(d / ln2) and
// |r| <= ln2 / 2, exp(d) = 2^n exp(r). exp(r) is Cephes' expf polynomial for float (~1 ulp) and its Taylor series
// to r^12 for double (< 1 ulp of truncation); ln2 is split in two (Cody-Waite) so n ln2 stays exact. Below the
// smallest normal power of two the result is exactly 0, as the true value rounds to (almost) that.
inline Vec<float> exp_nonpositive(Vec<float> d) {
  using Int32 = Types<float>::Int32;
  const Vec<float> lowest = broadcast(-87.0f);  // exp(-87) = 1.6e-38 > 2^-126, the smallest normal float
  const Vec<float> x = d > lowest ? d : lowest;
  const Int32 n = __builtin_convertvector(x * 1.44269504088896341f - 0.5f, Int32);  // round(x / ln2), x <= 0
  const Vec<float> nf = __builtin_convertvector(n, Vec<float>);
  Vec<float> r = x - nf * 0.693359375f;
  r = r + nf * 2.12194440e-4f;
  Vec<float> p = broadcast(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const Int32 bits = (n + 127) << 23;  // 2^n, n in [-126, 0]
  Vec<float> scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return d > lowest ? p * scale : Vec<float>{};
}

inline Vec<double> exp_nonpositive(Vec<double> d) {
  using Int32 = Types<double>::Int32;
  const Vec<double> lowest = broadcast(-708.0);  // exp(-708) = 3.3e-308 > 2^-1022, the smallest normal double
  const Vec<double> x = d > lowest ? d : lowest;
  const Int32 n = __builtin_convertvector(x * 1.44269504088896339 - 0.5, Int32);
  const Vec<double> nf = __builtin_convertvector(n, Vec<double>);
  Vec<double> r = x - nf * 6.93147180369123816490e-01;
  r = r - nf * 1.90821492927058770002e-10;
  Vec<double> p = broadcast(1.0 / 479001600.0);  // 1/12!
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * (r * r) + r + 1.0;
  const Mask<double> bits = (__builtin_convertvector(n, Mask<double>) + 1023) << 52;  // 2^n, n in [-1021, 0]
  Vec<double> scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return d > lowest ? p * scale : Vec<double>{};
}

}  // namespace memunlearn::simd
