// SM4 (GB/T 32907-2016) and SM4-GCM (NIST SP 800-38D with SM4, RFC 8998) as a Node-API addon, for the broker's
// hot path (opening every uplink envelope). OpenSSL 3.0 has no SM4-GCM and its generic SM4 runs at about 90 MB/s
// here; this does the whole AEAD in one native call: SM4 on AES-NI (or table-driven rounds on CPUs without it)
// and GHASH on PCLMULQDQ. Loaded by protocol/sm4-gcm-addon.ts, which runs a known-answer test before using it.
//
// Side channels: with AES-NI nothing here indexes memory by secret data; the table-driven rounds do, as
// OpenSSL's generic C SM4 does. See docs/ARCHITECTURE.md, "Cryptography".
//
// The broker loads this from a worker thread, and every thread that loads it runs init(): the shared tables and
// CPU flags are set exactly once per process (pthread_once / InitOnceExecuteOnce), keys are externals carrying a
// type tag so that no other external can be taken for one, and every Node-API call's status is checked.
#define NAPI_VERSION 8
#include <node_api.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _WIN32
#include <windows.h>
#else
#include <pthread.h>
#endif

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define QK_X86_SIMD 1 // PCLMULQDQ and AES-NI code paths, used when the CPU has them
#include <immintrin.h>
#define QK_TARGET __attribute__((target("pclmul,ssse3")))
#define QK_AESNI_TARGET __attribute__((target("aes,ssse3")))
#endif

/** CPU features, set once at load: PCLMULQDQ for GHASH, AES-NI for SM4 without secret-indexed tables. */
static int has_clmul = 0;
static int has_aesni = 0;

static void wipe(void *p, size_t n) {
  volatile uint8_t *v = (volatile uint8_t *)p;
  while (n--) *v++ = 0;
}

// GB/T 32907-2016 §6.2 (b): the S-box.
static const uint8_t SBOX[256] = {
  0xd6, 0x90, 0xe9, 0xfe, 0xcc, 0xe1, 0x3d, 0xb7, 0x16, 0xb6, 0x14, 0xc2, 0x28, 0xfb, 0x2c, 0x05,
  0x2b, 0x67, 0x9a, 0x76, 0x2a, 0xbe, 0x04, 0xc3, 0xaa, 0x44, 0x13, 0x26, 0x49, 0x86, 0x06, 0x99,
  0x9c, 0x42, 0x50, 0xf4, 0x91, 0xef, 0x98, 0x7a, 0x33, 0x54, 0x0b, 0x43, 0xed, 0xcf, 0xac, 0x62,
  0xe4, 0xb3, 0x1c, 0xa9, 0xc9, 0x08, 0xe8, 0x95, 0x80, 0xdf, 0x94, 0xfa, 0x75, 0x8f, 0x3f, 0xa6,
  0x47, 0x07, 0xa7, 0xfc, 0xf3, 0x73, 0x17, 0xba, 0x83, 0x59, 0x3c, 0x19, 0xe6, 0x85, 0x4f, 0xa8,
  0x68, 0x6b, 0x81, 0xb2, 0x71, 0x64, 0xda, 0x8b, 0xf8, 0xeb, 0x0f, 0x4b, 0x70, 0x56, 0x9d, 0x35,
  0x1e, 0x24, 0x0e, 0x5e, 0x63, 0x58, 0xd1, 0xa2, 0x25, 0x22, 0x7c, 0x3b, 0x01, 0x21, 0x78, 0x87,
  0xd4, 0x00, 0x46, 0x57, 0x9f, 0xd3, 0x27, 0x52, 0x4c, 0x36, 0x02, 0xe7, 0xa0, 0xc4, 0xc8, 0x9e,
  0xea, 0xbf, 0x8a, 0xd2, 0x40, 0xc7, 0x38, 0xb5, 0xa3, 0xf7, 0xf2, 0xce, 0xf9, 0x61, 0x15, 0xa1,
  0xe0, 0xae, 0x5d, 0xa4, 0x9b, 0x34, 0x1a, 0x55, 0xad, 0x93, 0x32, 0x30, 0xf5, 0x8c, 0xb1, 0xe3,
  0x1d, 0xf6, 0xe2, 0x2e, 0x82, 0x66, 0xca, 0x60, 0xc0, 0x29, 0x23, 0xab, 0x0d, 0x53, 0x4e, 0x6f,
  0xd5, 0xdb, 0x37, 0x45, 0xde, 0xfd, 0x8e, 0x2f, 0x03, 0xff, 0x6a, 0x72, 0x6d, 0x6c, 0x5b, 0x51,
  0x8d, 0x1b, 0xaf, 0x92, 0xbb, 0xdd, 0xbc, 0x7f, 0x11, 0xd9, 0x5c, 0x41, 0x1f, 0x10, 0x5a, 0xd8,
  0x0a, 0xc1, 0x31, 0x88, 0xa5, 0xcd, 0x7b, 0xbd, 0x2d, 0x74, 0xd0, 0x12, 0xb8, 0xe5, 0xb4, 0xb0,
  0x89, 0x69, 0x97, 0x4a, 0x0c, 0x96, 0x77, 0x7e, 0x65, 0xb9, 0xf1, 0x09, 0xc5, 0x6e, 0xc6, 0x84,
  0x18, 0xf0, 0x7d, 0xec, 0x3a, 0xdc, 0x4d, 0x20, 0x79, 0xee, 0x5f, 0x3e, 0xd7, 0xcb, 0x39, 0x48
};

// GB/T 32907-2016 §7.3: system parameter FK.
static const uint32_t FK[4] = {0xa3b1bac6, 0x56aa3350, 0x677d9197, 0xb27022dc};

// Round function T = L(tau(.)) per input byte position, T0 for the most significant byte. L commutes with
// rotation, so T1..T3 are rotations of T0.
static uint32_t T0[256], T1[256], T2[256], T3[256];

static inline uint32_t rotl(uint32_t x, int n) { return (x << n) | (x >> (32 - n)); }

static inline uint32_t load_be32(const uint8_t *p) {
  return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static inline void store_be32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}

static void init_round_tables(void) {
  for (int i = 0; i < 256; i++) {
    uint32_t b = (uint32_t)SBOX[i] << 24;
    // GB/T 32907-2016 §6.2 (c): L(B) = B ^ (B <<< 2) ^ (B <<< 10) ^ (B <<< 18) ^ (B <<< 24).
    uint32_t l = b ^ rotl(b, 2) ^ rotl(b, 10) ^ rotl(b, 18) ^ rotl(b, 24);
    T0[i] = l;
    T1[i] = rotl(l, 24);
    T2[i] = rotl(l, 16);
    T3[i] = rotl(l, 8);
  }
}

static inline uint32_t tau(uint32_t a) {
  return ((uint32_t)SBOX[a >> 24] << 24) | ((uint32_t)SBOX[(a >> 16) & 0xff] << 16) |
         ((uint32_t)SBOX[(a >> 8) & 0xff] << 8) | (uint32_t)SBOX[a & 0xff];
}

#define ROUND_T(t) (T0[(t) >> 24] ^ T1[((t) >> 16) & 0xff] ^ T2[((t) >> 8) & 0xff] ^ T3[(t) & 0xff])

// GB/T 32907-2016 §7.1: X_{i+4} = X_i ^ T(X_{i+1} ^ X_{i+2} ^ X_{i+3} ^ rk_i); output (X35, X34, X33, X32).
static void sm4_encrypt1(const uint32_t rk[32], const uint8_t in[16], uint8_t out[16]) {
  uint32_t x0 = load_be32(in), x1 = load_be32(in + 4), x2 = load_be32(in + 8), x3 = load_be32(in + 12), t;
  for (int i = 0; i < 32; i += 4) {
    t = x1 ^ x2 ^ x3 ^ rk[i], x0 ^= ROUND_T(t);
    t = x2 ^ x3 ^ x0 ^ rk[i + 1], x1 ^= ROUND_T(t);
    t = x3 ^ x0 ^ x1 ^ rk[i + 2], x2 ^= ROUND_T(t);
    t = x0 ^ x1 ^ x2 ^ rk[i + 3], x3 ^= ROUND_T(t);
  }
  store_be32(out, x3), store_be32(out + 4, x2), store_be32(out + 8, x1), store_be32(out + 12, x0);
}

// The same for four independent blocks, interleaved so that their table lookups overlap. Fully unrolled: with
// the state in 16 named registers the compiler keeps it out of memory.
#define SM4_R4(x0, x1, x2, x3, k)                                                                                \
  do {                                                                                                           \
    uint32_t ta = a##x1 ^ a##x2 ^ a##x3 ^ (k), tb = b##x1 ^ b##x2 ^ b##x3 ^ (k);                                 \
    uint32_t tc = c##x1 ^ c##x2 ^ c##x3 ^ (k), td = d##x1 ^ d##x2 ^ d##x3 ^ (k);                                 \
    a##x0 ^= ROUND_T(ta), b##x0 ^= ROUND_T(tb), c##x0 ^= ROUND_T(tc), d##x0 ^= ROUND_T(td);                      \
  } while (0)

static void sm4_encrypt4(const uint32_t rk[32], const uint8_t in[64], uint8_t out[64]) {
  uint32_t a0 = load_be32(in), a1 = load_be32(in + 4), a2 = load_be32(in + 8), a3 = load_be32(in + 12);
  uint32_t b0 = load_be32(in + 16), b1 = load_be32(in + 20), b2 = load_be32(in + 24), b3 = load_be32(in + 28);
  uint32_t c0 = load_be32(in + 32), c1 = load_be32(in + 36), c2 = load_be32(in + 40), c3 = load_be32(in + 44);
  uint32_t d0 = load_be32(in + 48), d1 = load_be32(in + 52), d2 = load_be32(in + 56), d3 = load_be32(in + 60);
  for (int i = 0; i < 32; i += 4) {
    SM4_R4(0, 1, 2, 3, rk[i]);
    SM4_R4(1, 2, 3, 0, rk[i + 1]);
    SM4_R4(2, 3, 0, 1, rk[i + 2]);
    SM4_R4(3, 0, 1, 2, rk[i + 3]);
  }
  store_be32(out, a3), store_be32(out + 4, a2), store_be32(out + 8, a1), store_be32(out + 12, a0);
  store_be32(out + 16, b3), store_be32(out + 20, b2), store_be32(out + 24, b1), store_be32(out + 28, b0);
  store_be32(out + 32, c3), store_be32(out + 36, c2), store_be32(out + 40, c1), store_be32(out + 44, c0);
  store_be32(out + 48, d3), store_be32(out + 52, d2), store_be32(out + 56, d1), store_be32(out + 60, d0);
}

typedef struct {
  uint32_t rk[32];
  uint8_t h[16]; // H = E_K(0^128), SP 800-38D §7.1 step 1
  int live;
} gcm_key;


#ifdef QK_X86_SIMD
// SM4 on AES-NI, four blocks at a time (the technique of Saarinen's sm4ni): the SM4 S-box is affine-equivalent to
// the AES S-box, S_sm4(x) = Q(S_aes(P(x))) with P and Q affine over GF(2)^8, because both are inversion in
// GF(2^8) between affine maps (GB/T 32907 uses x^8+x^7+x^6+x^5+x^4+x^2+1, AES x^8+x^4+x^3+x+1). P and Q are
// applied as two 16-entry nibble lookups each (PSHUFB); AESENCLAST with a zero round key does SubBytes and
// ShiftRows, and a byte shuffle by the inverse ShiftRows beforehand cancels the latter. The tables below were
// derived for this file: P = T.A, Q = A.T^-1.Aff_aes^-1 (A, 0xd3: the SM4 S-box's affine part; T: the field
// isomorphism), and checked against the S-box for all 256 inputs; the known-answer tests check them again.
// No table lookup here depends on secret data.
QK_AESNI_TARGET static inline __m128i sm4ni_sbox(__m128i x) {
  const __m128i nibble = _mm_set1_epi8(0x0f);
  const __m128i p_lo = _mm_setr_epi8(0x3e, (char)0xb2, 0x0e, (char)0x82, (char)0xbb, 0x37, (char)0x8b, 0x07,
                                     (char)0xa1, 0x2d, (char)0x91, 0x1d, 0x24, (char)0xa8, 0x14, (char)0x98);
  const __m128i p_hi = _mm_setr_epi8(0x00, (char)0xdc, 0x2e, (char)0xf2, (char)0xc5, 0x19, (char)0xeb, 0x37, 0x08,
                                     (char)0xd4, 0x26, (char)0xfa, (char)0xcd, 0x11, (char)0xe3, 0x3f);
  const __m128i q_lo = _mm_setr_epi8(0x6c, (char)0xd4, (char)0xa6, 0x1e, 0x52, (char)0xea, (char)0x98, 0x20, 0x0b,
                                     (char)0xb3, (char)0xc1, 0x79, 0x35, (char)0x8d, (char)0xff, 0x47);
  const __m128i q_hi = _mm_setr_epi8(0x00, (char)0xe0, 0x50, (char)0xb0, (char)0x9d, 0x7d, (char)0xcd, 0x2d,
                                     (char)0xc0, 0x20, (char)0x90, 0x70, 0x5d, (char)0xbd, 0x0d, (char)0xed);
  const __m128i inv_shift_rows = _mm_setr_epi8(0, 13, 10, 7, 4, 1, 14, 11, 8, 5, 2, 15, 12, 9, 6, 3);
  __m128i t = _mm_xor_si128(_mm_shuffle_epi8(p_lo, _mm_and_si128(x, nibble)),
                            _mm_shuffle_epi8(p_hi, _mm_and_si128(_mm_srli_epi64(x, 4), nibble)));
  t = _mm_aesenclast_si128(_mm_shuffle_epi8(t, inv_shift_rows), _mm_setzero_si128());
  return _mm_xor_si128(_mm_shuffle_epi8(q_lo, _mm_and_si128(t, nibble)),
                       _mm_shuffle_epi8(q_hi, _mm_and_si128(_mm_srli_epi64(t, 4), nibble)));
}

QK_AESNI_TARGET static uint32_t sm4ni_tau(uint32_t a) {
  return (uint32_t)_mm_cvtsi128_si32(sm4ni_sbox(_mm_cvtsi32_si128((int)a)));
}

// T(x) = L(tau(x)) on four words; L(B) = B ^ (B <<< 24) ^ ((B ^ (B <<< 8) ^ (B <<< 16)) <<< 2) (GB/T 32907 §6.2).
QK_AESNI_TARGET static inline __m128i sm4ni_t(__m128i x) {
  const __m128i rot8 = _mm_setr_epi8(3, 0, 1, 2, 7, 4, 5, 6, 11, 8, 9, 10, 15, 12, 13, 14);
  const __m128i rot16 = _mm_setr_epi8(2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
  const __m128i rot24 = _mm_setr_epi8(1, 2, 3, 0, 5, 6, 7, 4, 9, 10, 11, 8, 13, 14, 15, 12);
  __m128i b = sm4ni_sbox(x);
  __m128i m = _mm_xor_si128(_mm_xor_si128(b, _mm_shuffle_epi8(b, rot8)), _mm_shuffle_epi8(b, rot16));
  m = _mm_or_si128(_mm_slli_epi32(m, 2), _mm_srli_epi32(m, 30));
  return _mm_xor_si128(_mm_xor_si128(b, m), _mm_shuffle_epi8(b, rot24));
}

// 4x4 transpose of 32-bit words: block-major <-> word-major.
#define SM4NI_TRANSPOSE(a, b, c, d)                                                                              \
  do {                                                                                                           \
    __m128i t0 = _mm_unpacklo_epi32(a, b), t1 = _mm_unpacklo_epi32(c, d);                                        \
    __m128i t2 = _mm_unpackhi_epi32(a, b), t3 = _mm_unpackhi_epi32(c, d);                                        \
    a = _mm_unpacklo_epi64(t0, t1), b = _mm_unpackhi_epi64(t0, t1);                                              \
    c = _mm_unpacklo_epi64(t2, t3), d = _mm_unpackhi_epi64(t2, t3);                                              \
  } while (0)

// Eight blocks as two independent groups of four, so that one group's AESENCLAST and shuffles fill the other's
// latency.
QK_AESNI_TARGET static void sm4ni_encrypt8(const uint32_t rk[32], const uint8_t in[128], uint8_t out[128]) {
  const __m128i be32 = _mm_setr_epi8(3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8, 15, 14, 13, 12);
#define LOAD(i) _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(in + 16 * (i))), be32)
  __m128i x0 = LOAD(0), x1 = LOAD(1), x2 = LOAD(2), x3 = LOAD(3);
  __m128i y0 = LOAD(4), y1 = LOAD(5), y2 = LOAD(6), y3 = LOAD(7);
#undef LOAD
  SM4NI_TRANSPOSE(x0, x1, x2, x3); // x_j = word j of blocks 0-3
  SM4NI_TRANSPOSE(y0, y1, y2, y3); // y_j = word j of blocks 4-7
#define ROUND(a0, a1, a2, a3, b0, b1, b2, b3, k)                                                                 \
  do {                                                                                                           \
    const __m128i rkv = _mm_set1_epi32((int)(k));                                                                \
    __m128i ta = sm4ni_t(_mm_xor_si128(_mm_xor_si128(a1, a2), _mm_xor_si128(a3, rkv)));                          \
    __m128i tb = sm4ni_t(_mm_xor_si128(_mm_xor_si128(b1, b2), _mm_xor_si128(b3, rkv)));                          \
    a0 = _mm_xor_si128(a0, ta), b0 = _mm_xor_si128(b0, tb);                                                      \
  } while (0)
  for (int i = 0; i < 32; i += 4) {
    ROUND(x0, x1, x2, x3, y0, y1, y2, y3, rk[i]);
    ROUND(x1, x2, x3, x0, y1, y2, y3, y0, rk[i + 1]);
    ROUND(x2, x3, x0, x1, y2, y3, y0, y1, rk[i + 2]);
    ROUND(x3, x0, x1, x2, y3, y0, y1, y2, rk[i + 3]);
  }
#undef ROUND
  SM4NI_TRANSPOSE(x3, x2, x1, x0); // output (X35, X34, X33, X32), block-major again
  SM4NI_TRANSPOSE(y3, y2, y1, y0);
#define STORE(i, v) _mm_storeu_si128((__m128i *)(out + 16 * (i)), _mm_shuffle_epi8(v, be32))
  STORE(0, x3), STORE(1, x2), STORE(2, x1), STORE(3, x0), STORE(4, y3), STORE(5, y2), STORE(6, y1), STORE(7, y0);
#undef STORE
}
#endif

// tau and whole blocks through AES-NI when the CPU has it (no secret-indexed memory access), tables otherwise.
static uint32_t tau_secure(uint32_t a) {
#ifdef QK_X86_SIMD
  if (has_aesni) return sm4ni_tau(a);
#endif
  return tau(a);
}

static void sm4_block(const uint32_t rk[32], const uint8_t in[16], uint8_t out[16]) {
#ifdef QK_X86_SIMD
  if (has_aesni) {
    uint8_t blocks[128] = {0};
    memcpy(blocks, in, 16);
    sm4ni_encrypt8(rk, blocks, blocks);
    memcpy(out, blocks, 16);
    wipe(blocks, sizeof blocks);
    return;
  }
#endif
  sm4_encrypt1(rk, in, out);
}

// GB/T 32907-2016 §7.3: rk_i = K_{i+4} = K_i ^ T'(K_{i+1} ^ K_{i+2} ^ K_{i+3} ^ CK_i), T' = L'(tau(.)),
// L'(B) = B ^ (B <<< 13) ^ (B <<< 23), ck_{i,j} = (4i + j) * 7 mod 256.
static void sm4_key_schedule(const uint8_t key[16], uint32_t rk[32]) {
  uint32_t k0 = load_be32(key) ^ FK[0], k1 = load_be32(key + 4) ^ FK[1];
  uint32_t k2 = load_be32(key + 8) ^ FK[2], k3 = load_be32(key + 12) ^ FK[3];
  for (int i = 0; i < 32; i++) {
    uint32_t ck = 0;
    for (int j = 0; j < 4; j++) ck = (ck << 8) | (uint8_t)((4 * i + j) * 7);
    uint32_t s = tau_secure(k1 ^ k2 ^ k3 ^ ck);
    uint32_t next = k0 ^ s ^ rotl(s, 13) ^ rotl(s, 23);
    rk[i] = next;
    k0 = k1;
    k1 = k2;
    k2 = k3;
    k3 = next;
  }
}

// SP 800-38D §6.5 GCTR with the counter blocks nonce || ctr for ctr = 1, 2, ... (inc32 wraps mod 2^32): the first
// block is E_K(J0), returned in ek_j0 (§7.1 step 2, J0 = IV || 0^31 || 1); the rest are XORed over in -> out
// (§7.1 step 3, §7.2 step 4, from inc32(J0)). E_K(J0) comes out of the first batch, so `proceed`, when given, can
// check the tag before any output is written; if it returns 0 nothing is written. Each block of `in` is read
// before the same block of `out` is written, so out may equal in.
static int gcm_ctr(const gcm_key *k, const uint8_t nonce[12], const uint8_t *in, uint8_t *out, size_t len,
                   uint8_t ek_j0[16], int (*proceed)(const uint8_t ek_j0[16], const void *ctx), const void *ctx) {
  const size_t batch = has_aesni ? 128 : 64;
  uint8_t counters[128], stream[128];
  uint32_t ctr = 1;
  size_t skip = 16; // the first batch starts with E_K(J0)
  int ok = 1;
  for (int b = 0; b < 8; b++) memcpy(counters + 16 * b, nonce, 12);
  do {
    for (size_t b = 0; b < batch / 16; b++) store_be32(counters + 16 * b + 12, ctr + (uint32_t)b);
    ctr += (uint32_t)(batch / 16);
#ifdef QK_X86_SIMD
    if (has_aesni)
      sm4ni_encrypt8(k->rk, counters, stream);
    else
#endif
        if (len + skip > 16)
      sm4_encrypt4(k->rk, counters, stream);
    else
      sm4_encrypt1(k->rk, counters, stream);
    if (skip) {
      memcpy(ek_j0, stream, 16);
      if (proceed && !proceed(ek_j0, ctx)) {
        ok = 0;
        break;
      }
    }
    size_t n = batch - skip < len ? batch - skip : len;
    for (size_t i = 0; i < n; i++) out[i] = in[i] ^ stream[skip + i];
    in += n, out += n, len -= n, skip = 0;
  } while (len > 0);
  wipe(stream, sizeof stream);
  return ok;
}

#ifdef QK_X86_SIMD
// GHASH multiplication in GF(2^128) on byte-reflected operands (Gueron and Kounavis, "Intel Carry-Less
// Multiplication Instruction and its Usage for Computing the GCM Mode", rev. 2.02, Figure 5): 256-bit product,
// a one-bit left shift for the reflected bit order, then reduction modulo x^128 + x^7 + x^2 + x + 1.
QK_TARGET static inline __m128i gf_mul(__m128i a, __m128i b) {
  __m128i lo = _mm_clmulepi64_si128(a, b, 0x00);
  __m128i mid = _mm_xor_si128(_mm_clmulepi64_si128(a, b, 0x10), _mm_clmulepi64_si128(a, b, 0x01));
  __m128i hi = _mm_clmulepi64_si128(a, b, 0x11);
  lo = _mm_xor_si128(lo, _mm_slli_si128(mid, 8));
  hi = _mm_xor_si128(hi, _mm_srli_si128(mid, 8));
  __m128i lo_carry = _mm_srli_epi32(lo, 31), hi_carry = _mm_srli_epi32(hi, 31);
  lo = _mm_slli_epi32(lo, 1);
  hi = _mm_slli_epi32(hi, 1);
  __m128i across = _mm_srli_si128(lo_carry, 12);
  hi_carry = _mm_slli_si128(hi_carry, 4);
  lo_carry = _mm_slli_si128(lo_carry, 4);
  lo = _mm_or_si128(lo, lo_carry);
  hi = _mm_or_si128(_mm_or_si128(hi, hi_carry), across);
  __m128i t = _mm_xor_si128(_mm_xor_si128(_mm_slli_epi32(lo, 31), _mm_slli_epi32(lo, 30)), _mm_slli_epi32(lo, 25));
  __m128i t_hi = _mm_srli_si128(t, 4);
  lo = _mm_xor_si128(lo, _mm_slli_si128(t, 12));
  __m128i u = _mm_xor_si128(_mm_xor_si128(_mm_srli_epi32(lo, 1), _mm_srli_epi32(lo, 2)), _mm_srli_epi32(lo, 7));
  u = _mm_xor_si128(u, t_hi);
  lo = _mm_xor_si128(lo, u);
  return _mm_xor_si128(hi, lo);
}

QK_TARGET static inline __m128i bswap128(__m128i x) {
  return _mm_shuffle_epi8(x, _mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
}

// SP 800-38D §6.4: Y_i = (Y_{i-1} ^ X_i) * H; the last partial block is zero-padded (§7.1 step 5: 0^v, 0^u).
QK_TARGET static __m128i ghash_update(__m128i y, __m128i h, const uint8_t *data, size_t len) {
  for (; len >= 16; data += 16, len -= 16)
    y = gf_mul(_mm_xor_si128(y, bswap128(_mm_loadu_si128((const __m128i *)data))), h);
  if (len > 0) {
    uint8_t block[16] = {0};
    memcpy(block, data, len);
    y = gf_mul(_mm_xor_si128(y, bswap128(_mm_loadu_si128((const __m128i *)block))), h);
  }
  return y;
}

// SP 800-38D §7.1 step 5: S = GHASH_H(A || 0^v || C || 0^u || [len(A)]64 || [len(C)]64). The tag is E_K(J0) ^ S.
QK_TARGET static void gcm_ghash(const gcm_key *k, const uint8_t *aad, size_t aad_len, const uint8_t *ct,
                                 size_t ct_len, uint8_t s[16]) {
  __m128i h = bswap128(_mm_loadu_si128((const __m128i *)k->h));
  __m128i y = ghash_update(_mm_setzero_si128(), h, aad, aad_len);
  y = ghash_update(y, h, ct, ct_len);
  uint8_t lengths[16];
  uint64_t abits = (uint64_t)aad_len * 8, cbits = (uint64_t)ct_len * 8;
  for (int i = 0; i < 8; i++) {
    lengths[i] = (uint8_t)(abits >> (56 - 8 * i));
    lengths[8 + i] = (uint8_t)(cbits >> (56 - 8 * i));
  }
  y = ghash_update(y, h, lengths, 16);
  _mm_storeu_si128((__m128i *)s, bswap128(y));
}
#endif

// ---- One-time initialisation, shared by every thread that loads the addon. ----

static void init_once(void) {
  init_round_tables();
#ifdef QK_X86_SIMD
  __builtin_cpu_init();
  has_clmul = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("ssse3");
  has_aesni = __builtin_cpu_supports("aes") && __builtin_cpu_supports("ssse3") && !getenv("QKEY_SM4GCM_NO_AESNI");
#endif
}

#ifdef _WIN32
static INIT_ONCE init_guard = INIT_ONCE_STATIC_INIT;
static BOOL CALLBACK init_once_win(PINIT_ONCE once, PVOID param, PVOID *ctx) {
  (void)once, (void)param, (void)ctx;
  init_once();
  return TRUE;
}
static int run_init_once(void) { return InitOnceExecuteOnce(&init_guard, init_once_win, NULL, NULL) ? 0 : -1; }
#else
static pthread_once_t init_guard = PTHREAD_ONCE_INIT;
static int run_init_once(void) { return pthread_once(&init_guard, init_once); }
#endif

// ---- Node-API glue: argument checks here are a backstop; protocol/sm4-gcm-addon.ts validates first. ----

/** Marks the externals this file creates as SM4-GCM keys (random; napi_check_object_type_tag compares it). */
static const napi_type_tag GCM_KEY_TAG = {0x5d2c8a0f3b6e4174ULL, 0x9e1f7c35a4d2b860ULL};

/**
 * Throws an error unless one is pending already. Throwing can only fail when an exception is pending, which is
 * then the one the caller sees, so its status needs no further handling.
 */
static napi_value throw_error(napi_env env, const char *code, const char *msg) {
  bool pending = false;
  if (napi_is_exception_pending(env, &pending) == napi_ok && pending) return NULL;
  if (napi_throw_error(env, code, msg) != napi_ok) return NULL;
  return NULL;
}

static napi_value throw_type(napi_env env, const char *msg) {
  bool pending = false;
  if (napi_is_exception_pending(env, &pending) == napi_ok && pending) return NULL;
  if (napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg) != napi_ok) return NULL;
  return NULL;
}

/** For a failed Node-API call: its own message, read before any other call replaces it. */
static napi_value throw_napi_failure(napi_env env) {
  const napi_extended_error_info *info = NULL;
  const char *msg = "Node-API call failed";
  if (napi_get_last_error_info(env, &info) == napi_ok && info && info->error_message) msg = info->error_message;
  return throw_error(env, "ERR_NAPI", msg);
}

/** Every napi_* call in a function returning napi_value goes through this: a failure throws and returns. */
#define NAPI_CHECK(env, call)                                                                                    \
  do {                                                                                                           \
    if ((call) != napi_ok) return throw_napi_failure(env);                                                       \
  } while (0)

static napi_value throw_unavailable(napi_env env) {
  return throw_error(env, "ERR_UNAVAILABLE", "SM4-GCM needs PCLMULQDQ, which this CPU or build lacks");
}

/** The arguments of a call, exactly `want` of them, or NULL with a TypeError thrown. */
static int get_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv) {
  size_t argc = want;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) {
    throw_napi_failure(env);
    return 0;
  }
  if (argc < want) {
    throw_type(env, "missing arguments");
    return 0;
  }
  return 1;
}

static int get_bytes(napi_env env, napi_value v, uint8_t **data, size_t *len) {
  napi_typedarray_type type;
  size_t length, offset;
  void *base;
  napi_value ab;
  if (napi_get_typedarray_info(env, v, &type, &length, &base, &ab, &offset) != napi_ok) return 0;
  if (type != napi_uint8_array) return 0;
  *data = (uint8_t *)base;
  *len = length;
  return 1;
}

// Whether two byte ranges overlap other than exactly in place (in place is fine: each block is read before the same
// block is written). A shifted overlap would overwrite input before it is read.
static int overlap_differs(const uint8_t *a, size_t a_len, const uint8_t *b, size_t b_len) {
  if (a == b || a_len == 0 || b_len == 0) return 0;
  uintptr_t a0 = (uintptr_t)a, b0 = (uintptr_t)b;
  return a0 < b0 + b_len && b0 < a0 + a_len;
}

static void finalize_key(napi_env env, void *data, void *hint) {
  (void)env, (void)hint;
  wipe(data, sizeof(gcm_key));
  free(data);
}

// A live key created by this file, or NULL: an external from anywhere else fails the type tag check and is never
// dereferenced.
static gcm_key *get_key(napi_env env, napi_value v) {
  void *data = NULL;
  napi_valuetype t;
  bool tagged = false;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_external) return NULL;
  if (napi_check_object_type_tag(env, v, &GCM_KEY_TAG, &tagged) != napi_ok || !tagged) return NULL;
  if (napi_get_value_external(env, v, &data) != napi_ok) return NULL;
  gcm_key *k = (gcm_key *)data;
  return k && k->live ? k : NULL;
}

// createKey(key: Uint8Array(16)) -> an external holding the round keys and H, wiped when collected.
static napi_value create_key(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  uint8_t *key;
  size_t len;
  if (!get_args(env, info, 1, argv)) return NULL;
  if (!get_bytes(env, argv[0], &key, &len) || len != 16) return throw_type(env, "key must be 16 bytes");
  gcm_key *k = (gcm_key *)calloc(1, sizeof(gcm_key));
  if (!k) return throw_error(env, "ERR_MEMORY", "out of memory");
  sm4_key_schedule(key, k->rk);
  memset(k->h, 0, 16);
  sm4_block(k->rk, k->h, k->h);
  k->live = 1;
  napi_value out;
  if (napi_create_external(env, k, finalize_key, NULL, &out) != napi_ok) {
    napi_value failure = throw_napi_failure(env);
    finalize_key(env, k, NULL);
    return failure;
  }
  // The external owns k from here: the finalizer wipes and frees it even if tagging fails.
  if (napi_type_tag_object(env, out, &GCM_KEY_TAG) != napi_ok) {
    k->live = 0;
    return throw_napi_failure(env);
  }
  return out;
}

// destroyKey(k): wipes the key now; any later use throws.
static napi_value destroy_key(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!get_args(env, info, 1, argv)) return NULL;
  gcm_key *k = get_key(env, argv[0]);
  if (k) wipe(k, sizeof(gcm_key));
  return NULL;
}

// encryptBlocks(k, blocks, out): SM4-ECB over whole blocks, for the known-answer tests of the cipher alone.
static napi_value encrypt_blocks(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  uint8_t *in, *out;
  size_t in_len, out_len;
  if (!get_args(env, info, 3, argv)) return NULL;
  gcm_key *k = get_key(env, argv[0]);
  if (!k) return throw_type(env, "not a live SM4-GCM key");
  if (!get_bytes(env, argv[1], &in, &in_len) || !get_bytes(env, argv[2], &out, &out_len) || in_len % 16 != 0 ||
      out_len < in_len)
    return throw_type(env, "blocks must be whole 16-byte blocks and out at least as long");
  for (size_t i = 0; i < in_len; i += 16) sm4_block(k->rk, in + i, out + i);
  return NULL;
}

// seal(k, nonce(12), aad, plaintext, out, offset): writes ciphertext || tag into out at offset.
static napi_value seal(napi_env env, napi_callback_info info) {
  if (!has_clmul) return throw_unavailable(env);
#ifdef QK_X86_SIMD
  napi_value argv[6];
  uint8_t *nonce, *aad, *pt, *out;
  size_t nonce_len, aad_len, pt_len, out_len;
  uint32_t offset;
  if (!get_args(env, info, 6, argv)) return NULL;
  gcm_key *k = get_key(env, argv[0]);
  if (!k) return throw_type(env, "not a live SM4-GCM key");
  if (!get_bytes(env, argv[1], &nonce, &nonce_len) || nonce_len != 12) return throw_type(env, "nonce must be 12 bytes");
  if (!get_bytes(env, argv[2], &aad, &aad_len) || !get_bytes(env, argv[3], &pt, &pt_len) ||
      !get_bytes(env, argv[4], &out, &out_len) || napi_get_value_uint32(env, argv[5], &offset) != napi_ok)
    return throw_type(env, "aad, plaintext and out must be Uint8Arrays and offset a number");
  if ((uint64_t)offset + pt_len + 16 > out_len) return throw_type(env, "out is too small for ciphertext and tag");
  if (overlap_differs(pt, pt_len, out + offset, pt_len + 16))
    return throw_type(env, "plaintext and out overlap at different offsets");
  uint8_t ek_j0[16], *tag = out + offset + pt_len;
  gcm_ctr(k, nonce, pt, out + offset, pt_len, ek_j0, NULL, NULL);
  gcm_ghash(k, aad, aad_len, out + offset, pt_len, tag);
  for (int i = 0; i < 16; i++) tag[i] ^= ek_j0[i]; // §7.1 step 6: T = MSB_t(GCTR_K(J0, S))
  wipe(ek_j0, sizeof ek_j0);
#endif
  return NULL;
}

#ifdef QK_X86_SIMD
struct tag_check {
  uint8_t s[16];
  const uint8_t *tag;
};

// SP 800-38D §7.2 steps 7-8: T' = E_K(J0) ^ S must equal T; compared in time independent of where they differ.
static int tag_matches(const uint8_t ek_j0[16], const void *ctx) {
  const struct tag_check *c = (const struct tag_check *)ctx;
  uint8_t diff = 0;
  for (int i = 0; i < 16; i++) diff |= (uint8_t)(ek_j0[i] ^ c->s[i] ^ c->tag[i]);
  return diff == 0;
}
#endif

// open(k, nonce(12), aad, ciphertext, tag(16), out) -> boolean. The plaintext is written into out only when the
// tag verifies (SP 800-38D §7.2 step 8); the tag comparison takes the same time wherever the tags differ.
static napi_value open_(napi_env env, napi_callback_info info) {
  if (!has_clmul) return throw_unavailable(env);
  napi_value result = NULL;
#ifdef QK_X86_SIMD
  napi_value argv[6];
  uint8_t *nonce, *aad, *ct, *tag, *out;
  size_t nonce_len, aad_len, ct_len, tag_len, out_len;
  if (!get_args(env, info, 6, argv)) return NULL;
  gcm_key *k = get_key(env, argv[0]);
  if (!k) return throw_type(env, "not a live SM4-GCM key");
  if (!get_bytes(env, argv[1], &nonce, &nonce_len) || nonce_len != 12) return throw_type(env, "nonce must be 12 bytes");
  if (!get_bytes(env, argv[4], &tag, &tag_len) || tag_len != 16) return throw_type(env, "tag must be 16 bytes");
  if (!get_bytes(env, argv[2], &aad, &aad_len) || !get_bytes(env, argv[3], &ct, &ct_len) ||
      !get_bytes(env, argv[5], &out, &out_len))
    return throw_type(env, "aad, ciphertext and out must be Uint8Arrays");
  if (out_len < ct_len) return throw_type(env, "out is too small for the plaintext");
  if (overlap_differs(ct, ct_len, out, ct_len)) return throw_type(env, "ciphertext and out overlap at different offsets");
  struct tag_check check;
  uint8_t ek_j0[16];
  gcm_ghash(k, aad, aad_len, ct, ct_len, check.s);
  check.tag = tag;
  int ok = gcm_ctr(k, nonce, ct, out, ct_len, ek_j0, tag_matches, &check);
  wipe(ek_j0, sizeof ek_j0);
  wipe(check.s, sizeof check.s);
  NAPI_CHECK(env, napi_get_boolean(env, ok, &result));
#endif
  return result;
}

static napi_value init(napi_env env, napi_value exports) {
  // Each thread that loads the addon gets here; the tables and CPU flags are written once, before any reader.
  if (run_init_once() != 0) return throw_error(env, "ERR_INIT", "SM4-GCM one-time initialisation failed");
  napi_property_descriptor props[] = {
      {"createKey", NULL, create_key, NULL, NULL, NULL, napi_default, NULL},
      {"destroyKey", NULL, destroy_key, NULL, NULL, NULL, napi_default, NULL},
      {"encryptBlocks", NULL, encrypt_blocks, NULL, NULL, NULL, napi_default, NULL},
      {"seal", NULL, seal, NULL, NULL, NULL, napi_default, NULL},
      {"open", NULL, open_, NULL, NULL, NULL, napi_default, NULL},
  };
  NAPI_CHECK(env, napi_define_properties(env, exports, sizeof props / sizeof props[0], props));
  napi_value gcm, sm4;
  NAPI_CHECK(env, napi_get_boolean(env, has_clmul, &gcm));
  NAPI_CHECK(env, napi_set_named_property(env, exports, "gcm", gcm));
  NAPI_CHECK(env, napi_create_string_utf8(env, has_aesni ? "aesni" : "tables", NAPI_AUTO_LENGTH, &sm4));
  NAPI_CHECK(env, napi_set_named_property(env, exports, "sm4", sm4));
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
