// ise's CPU kernels: paged decode attention and the fused element-wise steps of a decoder layer.
//
// Why by hand: on a 2-core CPU a decode step of a small model is a few hundred tiny operations,
// and each stock torch op pays dispatch, allocation and an OpenMP wake-up, then streams its
// operands through memory once more. Fusing the element-wise work between the matrix
// multiplications (residual add + RMSNorm, SiLU-and-multiply, rotary embedding + KV-cache write)
// turns about a dozen of those ops per layer into three, and reading the paged cache in place
// avoids gathering every request's context at every layer.
//
// All math is in float32; tensors of other floating types are converted on load and store.
// Layouts: caches [num_blocks, KVH, block_size, D], so one KV head's rows of a block are one
// contiguous stretch (slot = block * block_size + offset);
// block_tables [S, M] int32; q rows [T, H, D] with any row stride; out [T, H * D].

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#if defined(__AVX2__)
#include <immintrin.h>
#endif
#include <atomic>
#include <cmath>
#include <vector>

namespace {

// Eight floats, one AVX2 register; GCC and Clang lower these vector types to whatever SIMD the
// target has, so the kernels stay portable C++ while their inner loops are explicitly vectorized.
typedef float vec8 __attribute__((vector_size(32), aligned(4)));
constexpr int64_t kLane = 8;

inline vec8 load8(const float* p) { return *reinterpret_cast<const vec8*>(p); }
inline void store8(float* p, vec8 v) { *reinterpret_cast<vec8*>(p) = v; }
inline vec8 splat8(float x) { return vec8{} + x; }
inline float sum8(vec8 v) {
    float s = 0.0f;
    for (int i = 0; i < kLane; ++i) s += v[i];
    return s;
}

// The sums of eight vectors as one vector (out[i] = sum of a[i]): a transposing tree of adds, 7
// adds and 14 shuffles for eight dot products where reducing each alone costs 8 adds apiece.
inline vec8 sums8(const vec8* a) {
    vec8 b[4], c[2];
    for (int i = 0; i < 4; ++i) {
        const vec8 x = a[2 * i], y = a[2 * i + 1];
        b[i] = __builtin_shufflevector(x, y, 0, 8, 2, 10, 4, 12, 6, 14) +
               __builtin_shufflevector(x, y, 1, 9, 3, 11, 5, 13, 7, 15);
    }
    for (int i = 0; i < 2; ++i) {
        const vec8 x = b[2 * i], y = b[2 * i + 1];
        c[i] = __builtin_shufflevector(x, y, 0, 1, 8, 9, 4, 5, 12, 13) +
               __builtin_shufflevector(x, y, 2, 3, 10, 11, 6, 7, 14, 15);
    }
    return __builtin_shufflevector(c[0], c[1], 0, 1, 2, 3, 8, 9, 10, 11) +
           __builtin_shufflevector(c[0], c[1], 4, 5, 6, 7, 12, 13, 14, 15);
}

inline void prefetch(const void* start, int64_t bytes) {
    for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(static_cast<const char*>(start) + b);
}

// Rows handed to one thread at least: below this much work, waking the second thread costs more.
int64_t grain_rows(int64_t width) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(width, 1)); }

template <typename scalar_t>
inline void load_floats(const scalar_t* src, float* dst, int64_t n) {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

template <typename scalar_t>
inline void store_floats(const float* src, scalar_t* dst, int64_t n) {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<scalar_t>(src[i]);
}

// Positions of the context handled together: their rows of one KV head (8 KB at head_dim 64)
// stay in L1 while every query head of the group reads them.
constexpr int64_t kTile = 32;

// Where a KV head's row of each position starts in a cache, less the head's own offset.
inline void row_offsets(const int32_t* table, int64_t n, int64_t block_size, int64_t kv_heads, int64_t head_dim,
                        int64_t* offsets) {
    for (int64_t j = 0; j < n; ++j)
        offsets[j] = ((static_cast<int64_t>(table[j / block_size]) * kv_heads) * block_size + j % block_size) * head_dim;
}

// One KV head's rows of a tile of positions, as float pointers: into the cache itself for float32,
// into `buffer` (converted) otherwise. Rows of the next tile are prefetched: the hardware
// prefetcher follows a block's rows but loses the stream at each jump to another block.
template <typename scalar_t>
inline void tile_rows(const scalar_t* cache, const int64_t* offsets, int64_t count, int64_t ahead,
                      int64_t head_offset, int64_t head_dim, float* buffer, const float** rows) {
    for (int64_t i = 0; i < ahead; ++i)
        prefetch(cache + offsets[count + i] + head_offset, head_dim * static_cast<int64_t>(sizeof(scalar_t)));
    for (int64_t i = 0; i < count; ++i) {
        const scalar_t* src = cache + offsets[i] + head_offset;
        if constexpr (std::is_same_v<scalar_t, float>) {
            rows[i] = src;
        } else {
            load_floats(src, buffer + i * head_dim, head_dim);
            rows[i] = buffer + i * head_dim;
        }
    }
}

// scores[i] = q . rows[i] for `count` rows (head_dim a multiple of 8). Eight rows at a time, each
// with its own accumulator, reduced together by sums8.
inline void dot_rows(const float* q, const float* const* rows, int64_t count, int64_t head_dim, float* scores) {
    int64_t i = 0;
    for (; i + kLane <= count; i += kLane) {
        vec8 acc[kLane] = {};
        for (int64_t d = 0; d < head_dim; d += kLane) {
            const vec8 qd = load8(q + d);
            for (int r = 0; r < kLane; ++r) acc[r] += qd * load8(rows[i + r] + d);
        }
        store8(scores + i, sums8(acc));
    }
    for (; i < count; ++i) {
        vec8 acc = {};
        for (int64_t d = 0; d < head_dim; d += kLane) acc += load8(q + d) * load8(rows[i] + d);
        scores[i] = sum8(acc);
    }
}

// out += sum_i weights[i] * rows[i], 64 columns at a time held in registers across all rows.
inline void accumulate_rows(const float* weights, const float* const* rows, int64_t count, int64_t head_dim,
                            float* out) {
    constexpr int64_t kChunk = 8;  // vectors held in registers: 64 floats
    int64_t d0 = 0;
    for (; d0 + kChunk * kLane <= head_dim; d0 += kChunk * kLane) {
        vec8 acc[kChunk];
        for (int c = 0; c < kChunk; ++c) acc[c] = load8(out + d0 + c * kLane);
        for (int64_t i = 0; i < count; ++i) {
            const vec8 w = splat8(weights[i]);
            for (int c = 0; c < kChunk; ++c) acc[c] += w * load8(rows[i] + d0 + c * kLane);
        }
        for (int c = 0; c < kChunk; ++c) store8(out + d0 + c * kLane, acc[c]);
    }
    for (; d0 < head_dim; d0 += kLane) {
        vec8 acc = load8(out + d0);
        for (int64_t i = 0; i < count; ++i) acc += splat8(weights[i]) * load8(rows[i] + d0);
        store8(out + d0, acc);
    }
}

// In place over n scores: softmax. The whole context's scores fit in a small buffer, so no
// running rescaling is needed.
inline void softmax(float* s, int64_t n) {
    const float top = *std::max_element(s, s + n);
    float sum = 0.0f;
    for (int64_t j = 0; j < n; ++j) {
        s[j] = std::exp(s[j] - top);
        sum += s[j];
    }
    const float inv = 1.0f / sum;
    for (int64_t j = 0; j < n; ++j) s[j] *= inv;
}

// Query tokens of one request attended together: consecutive positions of a prompt chunk share
// their context, so each key and value row is read once for all of them.
constexpr int64_t kQueryTokens = 8;

// One work item: up to kQueryTokens consecutive query tokens of one request (a decode token alone)
// and one KV head. All their query heads sharing that KV head read each tile of its rows while
// the tile is in L1, each up to its own position; a batch of one still has a work item per KV
// head for the second core.
struct AttendItem {
    int64_t first, count, kv_head;
};

template <typename scalar_t>
void attend(const torch::Tensor& q, const torch::Tensor& k_cache, const torch::Tensor& v_cache,
            const int32_t* block_tables, int64_t max_blocks, const int32_t* seq_index, const int32_t* context_lens,
            int64_t block_size, float scale, torch::Tensor& out) {
    const int64_t tokens = q.size(0), heads = q.size(1), head_dim = q.size(2), kv_heads = k_cache.size(1);
    const int64_t group = heads / kv_heads, q_stride = q.stride(0);
    const scalar_t* qp = q.data_ptr<scalar_t>();
    const scalar_t* kp = k_cache.data_ptr<scalar_t>();
    const scalar_t* vp = v_cache.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    int64_t longest = 0;
    std::vector<AttendItem> items;
    for (int64_t t = 0; t < tokens;) {
        int64_t end = t + 1;
        while (end < tokens && end - t < kQueryTokens && seq_index[end] == seq_index[t] &&
               context_lens[end] == context_lens[end - 1] + 1)
            ++end;
        for (int64_t g = 0; g < kv_heads; ++g) items.push_back({t, end - t, g});
        longest = std::max<int64_t>(longest, context_lens[end - 1]);
        t = end;
    }
    // Items differ in cost (a chunk's tokens against a long context, a decode token against a
    // short one): the costliest go first, and each thread takes the next few when it is free.
    // Taking a few neighbours at a time keeps a thread on adjacent cache blocks (a token's KV
    // heads lie side by side), which the memory prefetchers follow.
    std::stable_sort(items.begin(), items.end(), [&](const AttendItem& a, const AttendItem& b) {
        return a.count * context_lens[a.first + a.count - 1] > b.count * context_lens[b.first + b.count - 1];
    });
    const int64_t rows_max = kQueryTokens * group, num_items = static_cast<int64_t>(items.size());
    const int64_t threads = at::get_num_threads(), grab = std::max<int64_t>(1, num_items / (8 * threads));
    std::atomic<int64_t> next{0};
    at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
        std::vector<float> qf(rows_max * head_dim), acc(rows_max * head_dim), scores(rows_max * longest);
        std::vector<float> buffer(kTile * head_dim);
        std::vector<int64_t> offsets(longest + kTile);
        const float* rows[kTile];
        for (int64_t first = next.fetch_add(grab); first < num_items; first = next.fetch_add(grab)) {
            for (int64_t index = first; index < std::min(num_items, first + grab); ++index) {
                const AttendItem item = items[index];
                const int64_t offset = item.kv_head * block_size * head_dim;
                const int64_t n = context_lens[item.first + item.count - 1];  // the last token sees the most
                row_offsets(block_tables + static_cast<int64_t>(seq_index[item.first]) * max_blocks, n, block_size,
                            kv_heads, head_dim, offsets.data());
                for (int64_t i = 0; i < item.count; ++i)
                    load_floats(qp + (item.first + i) * q_stride + item.kv_head * group * head_dim,
                                qf.data() + i * group * head_dim, group * head_dim);
                std::for_each(qf.begin(), qf.begin() + item.count * group * head_dim, [&](float& x) { x *= scale; });
                // Every tile of the context's rows, and for each row r = i * group + h (query token i,
                // head h of the group) the part of the tile that token sees: context_lens[first + i] positions.
                auto sweep = [&](const scalar_t* cache, auto&& per_row) {
                    for (int64_t j = 0; j < n; j += kTile) {
                        const int64_t count = std::min(kTile, n - j), ahead = std::min(kTile, n - j - count);
                        tile_rows(cache, offsets.data() + j, count, ahead, offset, head_dim, buffer.data(), rows);
                        for (int64_t i = 0; i < item.count; ++i) {
                            const int64_t visible = std::clamp<int64_t>(context_lens[item.first + i] - j, 0, count);
                            for (int64_t h = 0; h < group; ++h) per_row(i * group + h, j, visible);
                        }
                    }
                };
                sweep(kp, [&](int64_t r, int64_t j, int64_t visible) {
                    dot_rows(qf.data() + r * head_dim, rows, visible, head_dim, scores.data() + r * n + j);
                });
                for (int64_t i = 0; i < item.count; ++i)
                    for (int64_t h = 0; h < group; ++h) softmax(scores.data() + (i * group + h) * n, context_lens[item.first + i]);
                std::fill(acc.begin(), acc.begin() + item.count * group * head_dim, 0.0f);
                sweep(vp, [&](int64_t r, int64_t j, int64_t visible) {
                    accumulate_rows(scores.data() + r * n + j, rows, visible, head_dim, acc.data() + r * head_dim);
                });
                for (int64_t i = 0; i < item.count; ++i)
                    store_floats(acc.data() + i * group * head_dim,
                                 op + (item.first + i) * heads * head_dim + item.kv_head * group * head_dim,
                                 group * head_dim);
            }
        }
    });
}

void paged_attention(torch::Tensor out, const torch::Tensor& q, const torch::Tensor& k_cache,
                     const torch::Tensor& v_cache, const torch::Tensor& block_tables, const torch::Tensor& seq_index,
                     const torch::Tensor& context_lens, int64_t block_size, double scale) {
    TORCH_CHECK(q.dim() == 3 && q.stride(2) == 1 && q.stride(1) == q.size(2), "q: [T, H, D] with dense rows");
    TORCH_CHECK(k_cache.dim() == 4 && k_cache.is_contiguous() && v_cache.sizes() == k_cache.sizes() &&
                    v_cache.is_contiguous() && k_cache.size(2) == block_size,
                "caches: contiguous [blocks, KVH, block_size, D]");
    TORCH_CHECK(out.is_contiguous() && out.size(0) == q.size(0) && out.numel() == q.size(0) * q.size(1) * q.size(2),
                "out: contiguous [T, H * D]");
    TORCH_CHECK(q.scalar_type() == k_cache.scalar_type() && out.scalar_type() == q.scalar_type(), "one dtype");
    TORCH_CHECK(block_tables.scalar_type() == torch::kInt32 && block_tables.is_contiguous(), "block_tables: int32");
    TORCH_CHECK(seq_index.scalar_type() == torch::kInt32 && context_lens.scalar_type() == torch::kInt32, "int32 indices");
    TORCH_CHECK(q.size(1) % k_cache.size(1) == 0 && k_cache.size(3) == q.size(2), "head counts or sizes disagree");
    TORCH_CHECK(q.size(2) % kLane == 0, "head_dim must be a multiple of 8");
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "paged_attention", [&] {
        attend<scalar_t>(q, k_cache, v_cache, block_tables.data_ptr<int32_t>(), block_tables.size(1),
                         seq_index.data_ptr<int32_t>(), context_lens.data_ptr<int32_t>(), block_size,
                         static_cast<float>(scale), out);
    });
}

// With a residual: residual += x, then returns RMSNorm(residual) * weight. Without: RMSNorm(x) * weight.
torch::Tensor rms_norm(const torch::Tensor& x, std::optional<torch::Tensor> residual, const torch::Tensor& weight,
                       double eps) {
    TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && weight.is_contiguous() && weight.size(0) == x.size(1),
                "x: contiguous [T, C]; weight: [C]");
    TORCH_CHECK(!residual || (residual->is_contiguous() && residual->sizes() == x.sizes() &&
                              residual->scalar_type() == x.scalar_type()),
                "residual: like x");
    auto out = torch::empty_like(x);
    const int64_t rows = x.size(0), width = x.size(1);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "rms_norm", [&] {
        const scalar_t* xp = x.data_ptr<scalar_t>();
        scalar_t* rp = residual ? residual->data_ptr<scalar_t>() : nullptr;
        const scalar_t* wp = weight.data_ptr<scalar_t>();
        scalar_t* op = out.data_ptr<scalar_t>();
        at::parallel_for(0, rows, grain_rows(width), [&](int64_t begin, int64_t end) {
            std::vector<float> h(width), w(width);
            load_floats(wp, w.data(), width);
            for (int64_t r = begin; r < end; ++r) {
                load_floats(xp + r * width, h.data(), width);
                if (rp) {
                    scalar_t* res = rp + r * width;
                    for (int64_t c = 0; c < width; ++c) h[c] += static_cast<float>(res[c]);
                    store_floats(h.data(), res, width);
                    // Normalize what was stored, so a lower-precision residual stream rounds once.
                    load_floats(res, h.data(), width);
                }
                float squares = 0.0f;
                for (int64_t c = 0; c < width; ++c) squares += h[c] * h[c];
                const float inv = 1.0f / std::sqrt(squares / static_cast<float>(width) + static_cast<float>(eps));
                scalar_t* dst = op + r * width;
                for (int64_t c = 0; c < width; ++c) dst[c] = static_cast<scalar_t>(h[c] * inv * w[c]);
            }
        });
    });
    return out;
}

// gate_up [T, 2I] (gate first) -> SiLU(gate) * up [T, I].
torch::Tensor silu_mul(const torch::Tensor& gate_up) {
    TORCH_CHECK(gate_up.dim() == 2 && gate_up.is_contiguous() && gate_up.size(1) % 2 == 0, "gate_up: [T, 2I]");
    const int64_t rows = gate_up.size(0), inner = gate_up.size(1) / 2;
    auto out = torch::empty({rows, inner}, gate_up.options());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, gate_up.scalar_type(), "silu_mul", [&] {
        const scalar_t* src = gate_up.data_ptr<scalar_t>();
        scalar_t* dst = out.data_ptr<scalar_t>();
        at::parallel_for(0, rows, grain_rows(2 * inner), [&](int64_t begin, int64_t end) {
            std::vector<float> g(inner), u(inner);
            for (int64_t r = begin; r < end; ++r) {
                load_floats(src + r * 2 * inner, g.data(), inner);
                load_floats(src + r * 2 * inner + inner, u.data(), inner);
                for (int64_t c = 0; c < inner; ++c) g[c] = g[c] / (1.0f + std::exp(-g[c])) * u[c];
                store_floats(g.data(), dst + r * inner, inner);
            }
        });
    });
    return out;
}

// qkv [T, (H + 2 KVH) * D], in place: rotates the query and key heads by the rotary embedding
// (the half-split layout of Llama-family models: element i pairs with i + D/2), then writes each
// token's keys and values into its cache slot. cos and sin: [T, D].
void rotary_cache_write(torch::Tensor qkv, const torch::Tensor& cos, const torch::Tensor& sin, int64_t heads,
                        torch::Tensor k_cache, torch::Tensor v_cache, const torch::Tensor& slots) {
    TORCH_CHECK(qkv.dim() == 2 && qkv.is_contiguous() && k_cache.dim() == 4 && k_cache.is_contiguous() &&
                    v_cache.sizes() == k_cache.sizes() && v_cache.is_contiguous(),
                "contiguous qkv and caches [blocks, KVH, block_size, D]");
    const int64_t tokens = qkv.size(0), kv_heads = k_cache.size(1), block_size = k_cache.size(2);
    const int64_t head_dim = k_cache.size(3);
    TORCH_CHECK(qkv.size(1) == (heads + 2 * kv_heads) * head_dim && head_dim % 2 == 0, "qkv width");
    TORCH_CHECK(cos.is_contiguous() && sin.is_contiguous() && cos.size(0) == tokens && cos.size(1) == head_dim &&
                    cos.scalar_type() == torch::kFloat32 && sin.sizes() == cos.sizes() &&
                    sin.scalar_type() == torch::kFloat32,
                "cos, sin: float32 [T, D]");
    TORCH_CHECK(slots.scalar_type() == torch::kInt64 && slots.numel() == tokens, "slots: int64 [T]");
    TORCH_CHECK(k_cache.scalar_type() == qkv.scalar_type() && v_cache.scalar_type() == qkv.scalar_type(), "one dtype");
    const int64_t half = head_dim / 2, width = qkv.size(1);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, qkv.scalar_type(), "rotary_cache_write", [&] {
        scalar_t* base = qkv.data_ptr<scalar_t>();
        scalar_t* kc = k_cache.data_ptr<scalar_t>();
        scalar_t* vc = v_cache.data_ptr<scalar_t>();
        const float* cp = cos.data_ptr<float>();
        const float* sp = sin.data_ptr<float>();
        const int64_t* slot = slots.data_ptr<int64_t>();
        at::parallel_for(0, tokens, grain_rows(width), [&](int64_t begin, int64_t end) {
            std::vector<float> x(head_dim);
            for (int64_t t = begin; t < end; ++t) {
                scalar_t* row = base + t * width;
                const float* c = cp + t * head_dim;
                const float* s = sp + t * head_dim;
                for (int64_t h = 0; h < heads + kv_heads; ++h) {
                    scalar_t* head = row + h * head_dim;
                    load_floats(head, x.data(), head_dim);
                    for (int64_t i = 0; i < half; ++i) {
                        head[i] = static_cast<scalar_t>(x[i] * c[i] - x[i + half] * s[i]);
                        head[i + half] = static_cast<scalar_t>(x[i + half] * c[i + half] + x[i] * s[i + half]);
                    }
                }
                const int64_t block = slot[t] / block_size, at = slot[t] % block_size;
                for (int64_t h = 0; h < kv_heads; ++h) {
                    const int64_t dst = ((block * kv_heads + h) * block_size + at) * head_dim;
                    const scalar_t* k = row + (heads + h) * head_dim;
                    const scalar_t* v = row + (heads + kv_heads + h) * head_dim;
                    std::copy(k, k + head_dim, kc + dst);
                    std::copy(v, v + head_dim, vc + dst);
                }
            }
        });
    });
}

// ---- Linear layers: out = x @ W^T + bias, float32 arithmetic ----
//
// Why by hand: at the row counts of decode steps (1-64 rows) oneDNN's AVX2 matmul ran the model's
// shapes at 14-33 GFLOP/s (1 row) and 117-147 (32 rows) on the EPYC under this project; this
// kernel, one register-blocked loop, ran them at 39-49 and 175-179, and as fast as oneDNN at
// prefill sizes. It also fixes every output's summation order, k = 0, 1, ..., K-1 in one
// accumulator lane, whatever the number of rows, the row's place among them or the thread that
// computes it: a request's tokens come out bit for bit the same alone or batched.
//
// The weight is packed once into panels of kPanel output columns, [panels][K][kPanel], zero-padded
// past N, so the inner loop reads it as one contiguous stream.
constexpr int64_t kPanel = 2 * kLane;
// Rows computed together: 6 x 2 accumulators, 2 weight vectors and the broadcast row value fill
// the 16 vector registers of AVX2.
constexpr int64_t kRows = 6;
static_assert(kRows == 6, "linear()'s switch covers tails of 1 to 5 rows");
// Bytes of input rows kept in L2 while a thread sweeps panels over them.
constexpr int64_t kRowBlockBytes = 128 * 1024;
constexpr int64_t kPanelsPerItem = 4;

// Weights as stored: float32; bfloat16 (a model loaded in bfloat16, on a CPU without fast
// bfloat16 arithmetic: half the bytes stream from memory, the arithmetic stays float32); or int8
// with one float scale per output column (weight-only quantization: a quarter of the bytes).
// A bfloat16 is the top half of a float32, so widening it is a shift.
template <typename W>
inline void load_weights(const W* p, vec8& w0, vec8& w1) {
    if constexpr (std::is_same_v<W, float>) {
        w0 = load8(p);
        w1 = load8(p + kLane);
    } else if constexpr (std::is_same_v<W, at::BFloat16>) {
        typedef uint16_t halves8 __attribute__((vector_size(16), aligned(2)));
        typedef uint32_t words8 __attribute__((vector_size(32)));
        const auto* h = reinterpret_cast<const halves8*>(p);
        w0 = reinterpret_cast<vec8>(__builtin_convertvector(h[0], words8) << 16);
        w1 = reinterpret_cast<vec8>(__builtin_convertvector(h[1], words8) << 16);
    } else {
#if defined(__AVX2__)
        // GCC lowers the portable conversion below to one scalar load per byte; these are two
        // instructions per eight weights.
        const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
        w0 = reinterpret_cast<vec8>(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes)));
        w1 = reinterpret_cast<vec8>(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(bytes, 8))));
#else
        typedef int8_t bytes8 __attribute__((vector_size(8), aligned(1)));
        w0 = __builtin_convertvector(*reinterpret_cast<const bytes8*>(p), vec8);
        w1 = __builtin_convertvector(*reinterpret_cast<const bytes8*>(p + kLane), vec8);
#endif
    }
}

// Steps over k that one 64-byte cache line of a panel holds.
template <typename W>
constexpr int64_t kStepsPerLine = 64 / (kPanel * static_cast<int64_t>(sizeof(W)));

// Packs weight [N, K] (float32 or bfloat16) into panels of the same dtype. With `quantize`
// (float32 only), int8 panels instead, and each output column's scale: symmetric int8, the
// column's largest magnitude mapped to 127.
std::vector<torch::Tensor> pack_linear_weight(const torch::Tensor& weight, bool quantize) {
    TORCH_CHECK(weight.dim() == 2 && weight.is_contiguous() &&
                    (weight.scalar_type() == torch::kFloat32 || weight.scalar_type() == torch::kBFloat16),
                "weight: contiguous float32 or bfloat16 [N, K]");
    TORCH_CHECK(!quantize || weight.scalar_type() == torch::kFloat32, "int8 quantization packs float32 weights");
    const int64_t n = weight.size(0), k = weight.size(1), panels = (n + kPanel - 1) / kPanel;
    auto packed = torch::zeros({panels, k, kPanel}, weight.options().dtype(quantize ? torch::kInt8 : weight.scalar_type()));
    auto scales = torch::ones({quantize ? n : 0}, weight.options().dtype(torch::kFloat32));
    float* sp = scales.data_ptr<float>();
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, weight.scalar_type(), "pack_linear_weight", [&] {
        const scalar_t* w = weight.data_ptr<scalar_t>();
        at::parallel_for(0, panels, 1, [&](int64_t begin, int64_t end) {
            for (int64_t p = begin; p < end; ++p)
                for (int64_t c = 0; c < kPanel && p * kPanel + c < n; ++c) {
                    const int64_t col = p * kPanel + c;
                    const scalar_t* row = w + col * k;
                    if (!quantize) {
                        scalar_t* dst = packed.data_ptr<scalar_t>();
                        for (int64_t i = 0; i < k; ++i) dst[(p * k + i) * kPanel + c] = row[i];
                        continue;
                    }
                    float top = 0.0f;
                    for (int64_t i = 0; i < k; ++i) top = std::max(top, std::abs(static_cast<float>(row[i])));
                    sp[col] = top > 0.0f ? top / 127.0f : 1.0f;
                    int8_t* dst = packed.data_ptr<int8_t>();
                    for (int64_t i = 0; i < k; ++i)
                        dst[(p * k + i) * kPanel + c] = static_cast<int8_t>(std::lround(static_cast<float>(row[i]) / sp[col]));
                }
        });
    });
    return {packed, scales};
}

// `rows` (at most kRows) rows of x times one weight panel, into `cols` (at most kPanel) columns of out.
// With `ahead`, each step over k also asks for the next panel's bytes of that k: the next panel
// arrives from memory while this one is computed.
template <int rows, typename W>
inline void panel_rows(const float* x, int64_t k, const W* panel, const W* ahead, const float* scale,
                       const float* bias, float* out, int64_t ldo, int64_t cols) {
    vec8 acc[rows][2];
    for (int r = 0; r < rows; ++r) acc[r][0] = acc[r][1] = vec8{};
    for (int64_t i = 0; i < k; ++i) {
        if (ahead && i % kStepsPerLine<W> == 0) __builtin_prefetch(ahead + i * kPanel);
        vec8 w0, w1;
        load_weights(panel + i * kPanel, w0, w1);
        for (int r = 0; r < rows; ++r) {
            const vec8 xv = splat8(x[r * k + i]);
            acc[r][0] += xv * w0;
            acc[r][1] += xv * w1;
        }
    }
    float tile[kPanel];
    for (int r = 0; r < rows; ++r) {
        store8(tile, acc[r][0]);
        store8(tile + kLane, acc[r][1]);
        for (int64_t c = 0; c < cols; ++c) {
            const float value = scale ? tile[c] * scale[c] : tile[c];
            out[r * ldo + c] = bias ? value + bias[c] : value;
        }
    }
}

// Rows r0..r1 of x times one panel: full tiles of kRows rows, then the rest.
template <typename W>
inline void panel_passes(const float* xp, int64_t k, const W* panel, const W* ahead, const float* s, const float* b,
                         float* op, int64_t n, int64_t r0, int64_t r1, int64_t c0, int64_t cols) {
    int64_t r = r0;
    for (; r + kRows <= r1; r += kRows, ahead = nullptr)
        panel_rows<kRows>(xp + r * k, k, panel, ahead, s, b, op + r * n + c0, n, cols);
    float* o = op + r * n + c0;
    const float* xr = xp + r * k;
    switch (r1 - r) {
        case 1: panel_rows<1>(xr, k, panel, ahead, s, b, o, n, cols); break;
        case 2: panel_rows<2>(xr, k, panel, ahead, s, b, o, n, cols); break;
        case 3: panel_rows<3>(xr, k, panel, ahead, s, b, o, n, cols); break;
        case 4: panel_rows<4>(xr, k, panel, ahead, s, b, o, n, cols); break;
        case 5: panel_rows<5>(xr, k, panel, ahead, s, b, o, n, cols); break;
        default: break;
    }
}

template <typename W>
void linear_rows(const float* xp, const W* wp, const float* sp, const float* bp, float* op, int64_t m, int64_t k,
                 int64_t n, int64_t panels) {
    const int64_t block = std::max<int64_t>(kRows, kRowBlockBytes / (k * 4) / kRows * kRows);
    // Work items: a block of rows times a few neighbouring panels, handed to whichever thread is
    // free. A static half for each core waited on the slower one whenever the other tenants of
    // this shared machine slowed one core; taken this way, faster in the median of runs
    // (benchmarks/RESULTS.md).
    const int64_t groups = (panels + kPanelsPerItem - 1) / kPanelsPerItem, items = groups * ((m + block - 1) / block);
    std::atomic<int64_t> next{0};
    at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t, int64_t) {
        std::vector<float> widened(std::is_same_v<W, float> ? 0 : k * kPanel);
        for (int64_t item = next++; item < items; item = next++) {
            const int64_t r0 = item / groups * block, r1 = std::min(m, r0 + block);
            const int64_t p0 = item % groups * kPanelsPerItem, p1 = std::min(panels, p0 + kPanelsPerItem);
            for (int64_t p = p0; p < p1; ++p) {
                const W* stored = wp + p * k * kPanel;
                const int64_t c0 = p * kPanel, cols = std::min(kPanel, n - c0);
                const float* s = sp ? sp + c0 : nullptr;
                const float* b = bp ? bp + c0 : nullptr;
                // The first pass over this panel fetches the next one; later passes find both cached.
                const W* next_panel = p + 1 < p1 ? stored + k * kPanel : nullptr;
                if constexpr (!std::is_same_v<W, float>) {
                    // Several passes over a narrow panel: widen it to float once, in cache, rather
                    // than at every pass. Same values, so the same sums to the bit either way.
                    if (r1 - r0 > kRows) {
                        for (int64_t i = 0; i < k; ++i) {
                            if (next_panel && i % kStepsPerLine<W> == 0) __builtin_prefetch(next_panel + i * kPanel);
                            vec8 w0, w1;
                            load_weights(stored + i * kPanel, w0, w1);
                            store8(widened.data() + i * kPanel, w0);
                            store8(widened.data() + i * kPanel + kLane, w1);
                        }
                        panel_passes(xp, k, widened.data(), static_cast<const float*>(nullptr), s, b, op, n, r0, r1,
                                     c0, cols);
                        continue;
                    }
                }
                panel_passes(xp, k, stored, next_panel, s, b, op, n, r0, r1, c0, cols);
            }
        }
    });
}

// out = x @ W^T (* scales, for int8 weights) + bias. x and out in float32, or both in bfloat16
// (the arithmetic in float32, out rounded once) for bfloat16 weights.
torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& packed, const torch::Tensor& scales,
                     const std::optional<torch::Tensor>& bias, int64_t n) {
    const auto wtype = packed.scalar_type();
    TORCH_CHECK(wtype == torch::kFloat32 || wtype == torch::kBFloat16 || wtype == torch::kInt8,
                "packed weight: float32, bfloat16 or int8");
    const auto xtype = wtype == torch::kBFloat16 ? torch::kBFloat16 : torch::kFloat32;
    TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.scalar_type() == xtype,
                "x: contiguous [M, K], bfloat16 for bfloat16 weights, else float32");
    TORCH_CHECK(packed.dim() == 3 && packed.size(1) == x.size(1) && packed.size(2) == kPanel &&
                    packed.size(0) == (n + kPanel - 1) / kPanel && packed.is_contiguous(),
                "packed weight does not match x or n");
    const bool quantized = wtype == torch::kInt8;
    TORCH_CHECK(!quantized || (scales.numel() == n && scales.is_contiguous() && scales.scalar_type() == torch::kFloat32),
                "int8 weights need float32 scales [N]");
    TORCH_CHECK(!bias || (bias->is_contiguous() && bias->numel() == n && bias->scalar_type() == torch::kFloat32),
                "bias: float32 [N]");
    const int64_t m = x.size(0), k = x.size(1), panels = packed.size(0);
    const torch::Tensor xf = x.to(torch::kFloat32);
    auto out = torch::empty({m, n}, xf.options());
    const float* xp = xf.data_ptr<float>();
    const float* bp = bias ? bias->data_ptr<float>() : nullptr;
    float* op = out.data_ptr<float>();
    if (quantized)
        linear_rows(xp, packed.data_ptr<int8_t>(), scales.data_ptr<float>(), bp, op, m, k, n, panels);
    else if (wtype == torch::kBFloat16)
        linear_rows(xp, packed.data_ptr<at::BFloat16>(), static_cast<const float*>(nullptr), bp, op, m, k, n, panels);
    else
        linear_rows(xp, packed.data_ptr<float>(), static_cast<const float*>(nullptr), bp, op, m, k, n, panels);
    return out.to(xtype);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    // Each releases the GIL: the event loop keeps streaming while the engine thread is in here.
    auto nogil = py::call_guard<py::gil_scoped_release>();
    m.def("paged_attention", &paged_attention, nogil);
    m.def("rms_norm", &rms_norm, nogil);
    m.def("silu_mul", &silu_mul, nogil);
    m.def("rotary_cache_write", &rotary_cache_write, nogil);
    m.def("pack_linear_weight", &pack_linear_weight, nogil);
    m.def("linear", &linear, nogil);
}
