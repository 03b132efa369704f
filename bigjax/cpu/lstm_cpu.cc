// One LSTM layer on CPU as two XLA FFI calls: forward through time, and its backward.
//
// Why native code: the recurrence is 2 x T small matmuls, (B, H) @ (H, 4H) forward and
// (B, 4H) @ (4H, H) backward, each followed by gate arithmetic on a few thousand floats. XLA:CPU
// runs them as a while loop of separate thunks, its matmuls at about half of what this CPU does on
// such shapes, the gate arithmetic as many tiny loops. Here each step is one register-blocked
// matmul against weights packed once per call (they stay in cache), the gates computed while the
// rows are hot. The input projection rides along in the same matmuls ([x_t, h] @ [W_x; W_h]), and
// the backward accumulates the weight gradients as it goes (one matmul per kBlock steps), so the
// (T, B, 4H) gate gradients, the largest array of the layer, never reach memory.
//
// Threads split the batch: each runs its rows' whole recurrence alone (no barrier per step), and one
// that finishes early takes over half of a busy one's remaining rows (RunRows). A row's states and
// input gradient are the same bits whoever ran it. The weight gradients are summed per fixed group
// of rows and then over the groups in order: the same bits for the same thread count.
//
// It computes what bigjax/models/lstm.py's scan path computes (tests/test_text_models.py checks),
// with the same gate order [input, forget, cell, output]. What the backward reads is smaller:
// the states, the cells c after each step and the activated gates; h and c before a step are the
// previous step's, and tanh(c) is computed again.

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kLanes = 16;  // floats per vector: one AVX-512 register, two AVX2 ones
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float)), aligned(4)));  // unaligned access

inline Vec Load(const float* p) { return *reinterpret_cast<const Vec*>(p); }
inline void Store(float* p, Vec v) { *reinterpret_cast<Vec*>(p) = v; }
inline int64_t RoundUp(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// tanh as a rational function of x^2, accurate to a few float ulps: the approximation XLA:CPU uses
// too (Eigen's), so both paths agree closely. T is float or Vec: the vector body and the scalar
// tail compute the same.
template <typename T>
inline T Tanh(T x) {
  const T clamp = T{} + 7.90531110763549805f;  // tanh is 1 in float beyond
  x = x > clamp ? clamp : x;
  x = x < -clamp ? -clamp : x;
  const T x2 = x * x;
  T p = x2 * -2.76076847742355e-16f + 2.00018790482477e-13f;
  p = p * x2 + -8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  T q = x2 * 1.19825839466702e-06f + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  return x * p / q;
}

template <typename T>
inline T Sigmoid(T x) { return Tanh(x * 0.5f) * 0.5f + 0.5f; }  // as lstm.py's _activate

// Elementwise loops are written once for T = Vec and T = float: body(j, T{}) runs for j in [0, n),
// whole vectors first, then a float at a time. (Left to itself, GCC vectorizes these loops only
// behind a runtime check that the arrays do not overlap, which here it fails.)
template <typename T>
inline T At(const float* p) {
  if constexpr (std::is_same_v<T, Vec>) return Load(p);
  else return *p;
}
inline void Put(float* p, Vec v) { Store(p, v); }
inline void Put(float* p, float v) { *p = v; }

template <typename F>
inline void Lanes(int64_t n, F body) {
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) body(j, Vec{});
  for (; j < n; ++j) body(j, 0.0f);
}

// out[j] = f(a[j] + b[j]) for j < n.
template <typename F>
inline void AddMap(const float* a, const float* b, float* out, int64_t n, F f) {
  Lanes(n, [&](int64_t j, auto lane) {
    using T = decltype(lane);
    Put(out + j, f(At<T>(a + j) + At<T>(b + j)));
  });
}

// --- matmul ---------------------------------------------------------------------------------------
// C (M, N) = or += A (M, K) @ B (K, N), N padded to whole vectors, in tiles of up to kRows rows and
// kStrip vectors whose accumulators stay in registers for the whole K loop. B is read in column
// strips: either packed (each strip contiguous, k-major: the weights, packed once per call) or in
// place (row stride ldb, rows padded to whole vectors).
constexpr int64_t kRows = 8, kStrip = 3;  // 24 accumulator registers of AVX-512's 32

struct Matrix {  // element (i, k) at data[i * row + k * col]
  const float* data;
  int64_t row, col;
};

template <int MR, int NV>
void Tile(Matrix a, int64_t k, const float* b, int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  Vec acc[MR][NV];
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NV; ++v) acc[m][v] = accumulate ? Load(c + m * ldc + v * kLanes) : Vec{};
  for (int64_t kk = 0; kk < k; ++kk) {
    Vec bk[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bk[v] = Load(b + kk * ldb + v * kLanes);
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      const float x = a.data[m * a.row + kk * a.col];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[m][v] += x * bk[v];
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NV; ++v) Store(c + m * ldc + v * kLanes, acc[m][v]);
}

template <int MR, int NV = kStrip>
void TileOfWidth(int64_t vectors, Matrix a, int64_t k, const float* b, int64_t ldb, float* c, int64_t ldc,
                 bool accumulate) {
  if constexpr (NV > 1) {
    if (vectors < NV) return TileOfWidth<MR, NV - 1>(vectors, a, k, b, ldb, c, ldc, accumulate);
  }
  Tile<MR, NV>(a, k, b, ldb, c, ldc, accumulate);
}

using TileFn = void (*)(int64_t, Matrix, int64_t, const float*, int64_t, float*, int64_t, bool);
template <size_t... MR>
constexpr std::array<TileFn, sizeof...(MR) + 1> TileTable(std::index_sequence<MR...>) {
  return {nullptr, TileOfWidth<MR + 1>...};
}
constexpr auto kTiles = TileTable(std::make_index_sequence<kRows>());  // kTiles[rows], rows <= kRows

struct Right {  // B: n_padded columns, packed in strips of packed_k rows (see Pack), or in place
  const float* data;
  int64_t n_padded, packed_k, ldb;  // packed_k 0: in place, row stride ldb
};

void Gemm(Matrix a, int64_t m, int64_t k, Right b, float* c, int64_t ldc, bool accumulate) {
  // One pass over K: streaming the whole strip from L2, with C loaded and stored once, beat passes
  // of 128 rows (each B strip's pass in L1 for all of A's rows; docs/performance.md).
  for (int64_t j = 0; j < b.n_padded; j += kStrip * kLanes) {
    const int64_t width = std::min(kStrip * kLanes, b.n_padded - j);
    const float* strip = b.packed_k ? b.data + j * b.packed_k : b.data + j;
    const int64_t ldb = b.packed_k ? width : b.ldb;
    for (int64_t i = 0; i < m; i += kRows)
      kTiles[std::min(kRows, m - i)](width / kLanes, Matrix{a.data + i * a.row, a.row, a.col}, k, strip, ldb,
                                     c + i * ldc + j, ldc, accumulate);
  }
}

// Copies row (n_padded floats) into row kk of a matrix packed for Gemm with packed_k rows a strip.
void PackRow(const float* row, int64_t kk, int64_t n_padded, int64_t packed_k, float* packed) {
  for (int64_t j = 0; j < n_padded; j += kStrip * kLanes) {
    const int64_t width = std::min(kStrip * kLanes, n_padded - j);
    std::memcpy(packed + j * packed_k + kk * width, row + j, width * sizeof(float));
  }
}

// Packs the (k, n) matrix value(kk, j) for Gemm, columns zero-padded to whole vectors.
template <typename F>
std::vector<float> Pack(int64_t k, int64_t n, F value) {
  const int64_t n_padded = RoundUp(n, kLanes);
  std::vector<float> row(n_padded, 0.0f), packed(k * n_padded);
  for (int64_t kk = 0; kk < k; ++kk) {
    for (int64_t j = 0; j < n; ++j) row[j] = value(kk, j);
    PackRow(row.data(), kk, n_padded, k, packed.data());
  }
  return packed;
}

constexpr int64_t kBlock = 8;  // steps per weight-gradient matmul in the backward: faster than 4 or 16

// --- threads --------------------------------------------------------------------------------------
// Runs part(p) for p in [0, parts) on XLA's intra-op threads and this one. Parts are claimed from a
// counter, so this thread never waits on a task that has not started: if the pool is busy it does
// the parts itself. A task that starts after all parts are claimed returns without touching them.
template <typename F>
void ParallelFor(ffi::ThreadPool& pool, int64_t parts, F part) {
  struct Shared {
    std::atomic<int64_t> next{0}, done{0};
  };
  auto shared = std::make_shared<Shared>();
  auto work = [shared, parts, &part] {
    for (int64_t p; (p = shared->next.fetch_add(1)) < parts;) {
      part(p);
      shared->done.fetch_add(1, std::memory_order_release);
    }
  };
  for (int64_t t = 1; t < parts; ++t) pool.Schedule(decltype(work)(work));
  work();
  while (shared->done.load(std::memory_order_acquire) < parts) std::this_thread::yield();
}

// The batch in groups of rows, the unit RunRows splits and moves between threads: `per_thread`
// groups a thread to start with, in whole tiles of rows where the batch allows.
int64_t GroupRows(ffi::ThreadPool& pool, int64_t batch, int64_t per_thread) {
  const int64_t split = std::max<int64_t>(1, pool.num_threads()) * per_thread;
  return std::max<int64_t>(1, RoundUp((batch + split - 1) / split, batch >= split * kRows ? kRows : 1));
}

constexpr int kClosed = -2, kOpen = -1;  // RunRows: a part not running steps; running, none asking

// Runs step(part, r0, r1, s) over rows [r0, r1) of the batch for each step s in order, every row
// once a step, where rows are independent of each other. The batch's groups of group_rows rows are
// split among parts (ParallelFor's, one a thread), each running its rows through all the steps; a
// part that finishes takes the upper half of the groups a busy part has left, from that one's next
// step on. Why: the cores of a shared VM run at speeds that wander within a call, and with a fixed
// split the call waits on the slower part. A row's results do not depend on which part ran it, and
// what a group accumulates over the steps is kept by the group.
template <typename F>
void RunRows(ffi::ThreadPool& pool, int64_t batch, int64_t group_rows, int64_t steps, F step) {
  struct alignas(64) Worker {
    std::atomic<int> asker{kClosed};  // kClosed, kOpen, or the part asking this one for groups
    std::atomic<int> answer{0};  // to this part's last request: 0 pending, 1 granted the gift, 2 refused
    int64_t gift_lo = 0, gift_hi = 0, gift_from = 0;  // groups [lo, hi), from step `from`
  };
  const int64_t groups = (batch + group_rows - 1) / group_rows;
  const int64_t parts = std::min<int64_t>(groups, std::max<int64_t>(1, pool.num_threads()));
  std::vector<Worker> workers(parts);
  ParallelFor(pool, parts, [&](int64_t part) {
    Worker& me = workers[part];
    int64_t lo = part * groups / parts, hi = (part + 1) * groups / parts, from = 0;
    for (;;) {
      me.asker.store(kOpen, std::memory_order_release);
      for (int64_t s = from; s < steps; ++s) {
        if (const int asker = me.asker.load(std::memory_order_acquire); asker >= 0) {
          const int64_t give = (hi - lo) / 2;  // our upper half; none if we are down to one group
          Worker& idle = workers[asker];
          if (give) idle.gift_lo = hi - give, idle.gift_hi = hi, idle.gift_from = s, hi -= give;
          idle.answer.store(give ? 1 : 2, std::memory_order_release);  // with our writes to its rows
          me.asker.store(kOpen, std::memory_order_release);
        }
        step(part, lo * group_rows, std::min(batch, hi * group_rows), s);
      }
      if (const int asker = me.asker.exchange(kClosed, std::memory_order_acq_rel); asker >= 0)
        workers[asker].answer.store(2, std::memory_order_release);
      // Done: ask each running part for groups until one gives some, or each has refused or finished.
      std::vector<bool> refused(parts, false);
      bool granted = false, asking = true;
      while (!granted && asking) {
        asking = false;
        for (int64_t other = 0; other < parts && !granted; ++other) {
          if (other == part || refused[other] || workers[other].asker.load(std::memory_order_acquire) == kClosed)
            continue;
          asking = true;
          me.answer.store(0, std::memory_order_relaxed);
          int open = kOpen;
          if (!workers[other].asker.compare_exchange_strong(open, static_cast<int>(part), std::memory_order_acq_rel))
            continue;  // another part is asking it: try it again on the next round
          int answer;
          while ((answer = me.answer.load(std::memory_order_acquire)) == 0) std::this_thread::yield();
          granted = answer == 1;
          refused[other] = !granted;
        }
        if (!granted && asking) std::this_thread::yield();
      }
      if (!granted) return;
      lo = me.gift_lo, hi = me.gift_hi, from = me.gift_from;
    }
  });
}

// --- the layer ------------------------------------------------------------------------------------
using F32 = ffi::Buffer<ffi::F32>;
using Out = ffi::ResultBuffer<ffi::F32>;

ffi::Error Forward(ffi::ThreadPool pool, F32 x, ffi::Buffer<ffi::PRED> valid, F32 w_input, F32 w_recurrent,
                   F32 bias, bool reverse, Out states, Out last, Out cells, Out gates) {
  const int64_t steps = x.dimensions()[0], batch = x.dimensions()[1], embed = x.dimensions()[2];
  const int64_t hidden = w_recurrent.dimensions()[0], width = 4 * hidden, width_padded = RoundUp(width, kLanes);
  const int64_t inputs = embed + hidden;  // each step multiplies [x_t, h] by [W_x; W_h]
  const float *wx = w_input.typed_data(), *wh = w_recurrent.typed_data(), *b = bias.typed_data();
  const std::vector<float> w = Pack(inputs, width, [&](int64_t k, int64_t j) {
    return k < embed ? wx[k * width + j] : wh[(k - embed) * width + j];
  });
  const float* xs = x.typed_data();
  const bool* real = valid.typed_data();
  float *h_out = states->typed_data(), *c_out = cells->typed_data(), *g_out = gates->typed_data();
  std::vector<float> xh(batch * inputs, 0.0f), c(batch * hidden, 0.0f);  // every row's [x_t, h] and c
  std::vector<std::vector<float>> pre(std::max<int64_t>(1, pool.num_threads()));  // each part's gates before activation

  RunRows(pool, batch, GroupRows(pool, batch, 4), steps, [&](int64_t part, int64_t r0, int64_t r1, int64_t s) {
    const int64_t t = reverse ? steps - 1 - s : s, rows = r1 - r0;
    std::vector<float>& p_part = pre[part];
    if (p_part.size() < static_cast<size_t>(rows * width_padded)) p_part.resize(rows * width_padded);
    for (int64_t i = r0; i < r1; ++i) std::memcpy(&xh[i * inputs], xs + (t * batch + i) * embed, embed * sizeof(float));
    Gemm(Matrix{&xh[r0 * inputs], inputs, 1}, rows, inputs, Right{w.data(), width_padded, inputs, 0}, p_part.data(),
         width_padded, false);
    for (int64_t i = r0; i < r1; ++i) {
      const int64_t row = t * batch + i;
      const float* p = &p_part[(i - r0) * width_padded];
      float* a = g_out + row * width;
      AddMap(p, b, a, 2 * hidden, [](auto v) { return Sigmoid(v); });  // input, forget
      AddMap(p + 2 * hidden, b + 2 * hidden, a + 2 * hidden, hidden, [](auto v) { return Tanh(v); });
      AddMap(p + 3 * hidden, b + 3 * hidden, a + 3 * hidden, hidden, [](auto v) { return Sigmoid(v); });
      float *h = &xh[i * inputs + embed], *cr = &c[i * hidden];
      const float *gi = a, *gf = a + hidden, *gg = a + 2 * hidden, *go = a + 3 * hidden;
      if (real[row]) {  // a pad leaves the state as it was
        Lanes(hidden, [&](int64_t u, auto lane) {
          using T = decltype(lane);
          const T c_next = At<T>(gf + u) * At<T>(cr + u) + At<T>(gi + u) * At<T>(gg + u);
          Put(cr + u, c_next);
          Put(h + u, At<T>(go + u) * Tanh(c_next));
        });
      }
      std::memcpy(h_out + row * hidden, h, hidden * sizeof(float));
      std::memcpy(c_out + row * hidden, cr, hidden * sizeof(float));
    }
  });
  for (int64_t i = 0; i < batch; ++i)
    std::memcpy(last->typed_data() + i * hidden, &xh[i * inputs + embed], hidden * sizeof(float));
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, F32 x, ffi::Buffer<ffi::PRED> valid, F32 w_input, F32 w_recurrent,
                    F32 states, F32 cells, F32 gates, F32 d_states, F32 d_last, bool reverse,
                    Out d_x, Out d_w_input, Out d_w_recurrent, Out d_bias) {
  const int64_t steps = x.dimensions()[0], batch = x.dimensions()[1], embed = x.dimensions()[2];
  const int64_t hidden = w_recurrent.dimensions()[0], width = 4 * hidden, width_padded = RoundUp(width, kLanes);
  const int64_t inputs = embed + hidden, inputs_padded = RoundUp(inputs, kLanes);
  const float *wx = w_input.typed_data(), *wh = w_recurrent.typed_data();
  const std::vector<float> w_t = Pack(width, inputs, [&](int64_t k, int64_t j) {  // [W_x; W_h]^T
    return j < embed ? wx[j * width + k] : wh[(j - embed) * width + k];
  });
  const float *xs = x.typed_data(), *hs = states.typed_data(), *cs = cells.typed_data(), *gs = gates.typed_data();
  const std::vector<float> zeros(hidden, 0.0f);  // the state before the first step
  const float *d_out = d_states.typed_data(), *d_fin = d_last.typed_data();
  const bool states_used = d_states.element_count() > 0;  // empty: the layer's caller read only `last`
  const bool* real = valid.typed_data();
  // The weight gradients are summed by groups of rows, each over its steps in order, and then over
  // the groups in order: the same bits whichever thread ran a group when. A group's sums are a
  // whole (E + H, 4H) matrix, read and written every kBlock steps: at least a tile of rows a group
  // where the batch allows, so that many threads do not make a sum of a row or two each.
  const int64_t group_rows = std::max(GroupRows(pool, batch, 2), batch >= 2 * kRows ? kRows : 1);
  const int64_t groups = (batch + group_rows - 1) / group_rows;
  struct Group {
    std::vector<float> d_w, d_b;  // ([W_x; W_h] rows, 4H padded) and (4H padded)
    std::vector<float> xh_block, d_pre_block;  // the last kBlock steps' [x_t, h_{t-1}] and d_pre (packed)
  };
  std::vector<Group> group(groups);
  std::vector<float> dh(d_fin, d_fin + batch * hidden), dc(batch * hidden, 0.0f);  // every row's
  std::vector<std::vector<float>> d_pre(std::max<int64_t>(1, pool.num_threads())), d_xh(d_pre.size());  // a part's

  RunRows(pool, batch, group_rows, steps, [&](int64_t part, int64_t r0, int64_t r1, int64_t s) {
    const int64_t t = reverse ? s : steps - 1 - s;  // back through the forward's order
    const int64_t t_before = reverse ? t + 1 : t - 1, first = s == steps - 1;  // the forward's previous step
    const int64_t rows = r1 - r0, g0 = r0 / group_rows, g1 = (r1 + group_rows - 1) / group_rows;
    std::vector<float> &dp_part = d_pre[part], &dxh_part = d_xh[part];
    if (dp_part.size() < static_cast<size_t>(rows * width_padded)) {
      dp_part.assign(rows * width_padded, 0.0f);
      dxh_part.resize(rows * inputs_padded);
    }
    for (int64_t g = g0; g < g1; ++g) {
      Group& grp = group[g];
      if (grp.d_w.empty()) {  // allocated and zeroed by the first part to run it, on its own core
        const int64_t block_rows = kBlock * std::min(group_rows, batch - g * group_rows);
        grp.d_w.assign(inputs * width_padded, 0.0f);
        grp.d_b.assign(width_padded, 0.0f);
        grp.xh_block.resize(block_rows * inputs);
        grp.d_pre_block.resize(block_rows * width_padded);
      }
    }
    for (int64_t i = r0; i < r1; ++i) {
      const int64_t row = t * batch + i, row_before = t_before * batch + i;
      const int64_t g = i / group_rows, g_rows = std::min(group_rows, batch - g * group_rows);
      float* xh = &group[g].xh_block[((s % kBlock) * g_rows + i - g * group_rows) * inputs];
      const float *h_before = first ? zeros.data() : hs + row_before * hidden;
      const float *c_before = first ? zeros.data() : cs + row_before * hidden, *c_after = cs + row * hidden;
      std::memcpy(xh, xs + row * embed, embed * sizeof(float));
      std::memcpy(xh + embed, h_before, hidden * sizeof(float));
      float *dhr = &dh[i * hidden], *dcr = &dc[i * hidden];
      float* dp = &dp_part[(i - r0) * width_padded];
      const float *a = gs + row * width, *d_o = states_used ? d_out + row * hidden : zeros.data();
      if (!real[row]) {  // a pad passed the state through: so does its gradient
        Lanes(hidden, [&](int64_t u, auto lane) { Put(dhr + u, At<decltype(lane)>(dhr + u) + At<decltype(lane)>(d_o + u)); });
        std::memset(dp, 0, width * sizeof(float));
        continue;
      }
      const float *gi = a, *gf = a + hidden, *gg = a + 2 * hidden, *go = a + 3 * hidden;
      Lanes(hidden, [&](int64_t u, auto lane) {
        using T = decltype(lane);
        const T i = At<T>(gi + u), f = At<T>(gf + u), g = At<T>(gg + u), o = At<T>(go + u);
        const T tanh_c = Tanh(At<T>(c_after + u));  // as the forward computed it
        const T d_h = At<T>(dhr + u) + At<T>(d_o + u);
        const T d_c = At<T>(dcr + u) + d_h * o * (1.0f - tanh_c * tanh_c);
        // through the activation: s (1 - s) for a sigmoid, 1 - g^2 for the tanh
        Put(dp + u, d_c * g * (i * (1.0f - i)));
        Put(dp + hidden + u, d_c * At<T>(c_before + u) * (f * (1.0f - f)));
        Put(dp + 2 * hidden + u, d_c * i * (1.0f - g * g));
        Put(dp + 3 * hidden + u, d_h * tanh_c * (o * (1.0f - o)));
        Put(dcr + u, d_c * f);
      });
    }
    for (int64_t i = r0; i < r1; ++i) {
      const int64_t g = i / group_rows, g_rows = std::min(group_rows, batch - g * group_rows);
      const float* dp = &dp_part[(i - r0) * width_padded];
      PackRow(dp, (s % kBlock) * g_rows + i - g * group_rows, width_padded, kBlock * g_rows,
              group[g].d_pre_block.data());
      float* d_b = group[g].d_b.data();
      for (int64_t j = 0; j < width_padded; j += kLanes) Store(d_b + j, Load(d_b + j) + Load(dp + j));
    }
    // [d x_t, d h_{t-1}] = d_pre @ [W_x; W_h]^T; a pad's row of d_pre is 0, so is its d x_t
    Gemm(Matrix{dp_part.data(), width_padded, 1}, rows, width, Right{w_t.data(), inputs_padded, width, 0},
         dxh_part.data(), inputs_padded, false);
    for (int64_t i = r0; i < r1; ++i) {
      const int64_t row = t * batch + i;
      std::memcpy(d_x->typed_data() + row * embed, &dxh_part[(i - r0) * inputs_padded], embed * sizeof(float));
      if (real[row]) std::memcpy(&dh[i * hidden], &dxh_part[(i - r0) * inputs_padded + embed], hidden * sizeof(float));
    }
    // Every kBlock steps, and after the last: a group's [d W_x; d W_h] += [x_t, h_{t-1}]^T @ d_pre over
    // them. (Step by step, K would be only the group's rows.) d bias sums d_pre's rows as they come.
    if (s % kBlock == kBlock - 1 || s == steps - 1) {
      for (int64_t g = g0; g < g1; ++g) {
        const int64_t g_rows = std::min(group_rows, batch - g * group_rows);
        Group& grp = group[g];
        Gemm(Matrix{grp.xh_block.data(), 1, inputs}, inputs, (s % kBlock + 1) * g_rows,
             Right{grp.d_pre_block.data(), width_padded, kBlock * g_rows, 0}, grp.d_w.data(), width_padded, true);
      }
    }
  });
  // The groups' sums, in group order.
  auto sum_groups = [&](std::vector<float> Group::*field, int64_t offset, int64_t n, float* out) {
    Lanes(n, [&](int64_t j, auto lane) {
      using T = decltype(lane);
      T sum = T{};
      for (const Group& grp : group)
        if (!(grp.*field).empty()) sum = sum + At<T>((grp.*field).data() + offset + j);  // empty: no step ran
      Put(out + j, sum);
    });
  };
  for (int64_t k = 0; k < inputs; ++k)
    sum_groups(&Group::d_w, k * width_padded, width, k < embed ? d_w_input->typed_data() + k * width
                                                               : d_w_recurrent->typed_data() + (k - embed) * width);
  sum_groups(&Group::d_b, 0, width, d_bias->typed_data());
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(BigjaxLstmForward, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>()                     // x (T, B, E)
                                  .Arg<ffi::Buffer<ffi::PRED>>()  // valid (T, B)
                                  .Arg<F32>()                     // w_input (E, 4H)
                                  .Arg<F32>()                     // w_recurrent (H, 4H)
                                  .Arg<F32>()                     // bias (4H)
                                  .Attr<bool>("reverse")
                                  .Ret<F32>()    // states (T, B, H)
                                  .Ret<F32>()    // last (B, H)
                                  .Ret<F32>()    // cells (T, B, H): c after each step
                                  .Ret<F32>());  // gates (T, B, 4H), activated

XLA_FFI_DEFINE_HANDLER_SYMBOL(BigjaxLstmBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>()                     // x
                                  .Arg<ffi::Buffer<ffi::PRED>>()  // valid
                                  .Arg<F32>()                     // w_input
                                  .Arg<F32>()                     // w_recurrent
                                  .Arg<F32>()                     // states
                                  .Arg<F32>()                     // cells
                                  .Arg<F32>()                     // gates
                                  .Arg<F32>()                     // d_states (T, B, H), or empty: zeros
                                  .Arg<F32>()                     // d_last (B, H)
                                  .Attr<bool>("reverse")
                                  .Ret<F32>()    // d_x (T, B, E)
                                  .Ret<F32>()    // d_w_input (E, 4H)
                                  .Ret<F32>()    // d_w_recurrent (H, 4H)
                                  .Ret<F32>());  // d_bias (4H)
